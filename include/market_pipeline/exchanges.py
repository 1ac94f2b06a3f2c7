"""Which exchange codes the trading calendar knows, answered without importing it.

The dag-processor validates the timetable at every parse; importing ``exchange_calendars``
(and with it pandas) there would cost every parse ~1 s. The calendar package ships one
module per exchange, ``exchange_calendar_<code>.py``, so the canonical codes can be read
from its file names. Aliases (``NYSE`` for ``XNYS``) are not accepted: the project names
exchanges by their canonical ISO 10383 code everywhere (schedule, ingestion, gates).
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

_MODULE = re.compile(r"^exchange_calendar_([a-z0-9]+)\.py$")


@lru_cache(maxsize=1)
def known_exchanges() -> frozenset[str]:
    """Canonical exchange codes of the installed ``exchange_calendars`` (``XNYS``, ``XLON``…)."""
    spec = importlib.util.find_spec("exchange_calendars")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    codes = set()
    for location in spec.submodule_search_locations:
        for path in Path(location).iterdir():
            match = _MODULE.match(path.name)
            if match:
                codes.add(match.group(1).upper())
    return frozenset(codes)


def is_known_exchange(code: str) -> bool:
    """Whether ``code`` is a canonical exchange code the calendar can build."""
    return code in known_exchanges()
