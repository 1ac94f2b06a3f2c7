"""Airflow Variables with documented defaults (never read at parse time).

The tasks read them through ``market_pipeline.stages.settings.Settings(read=var)``, which
parses and checks each on first use.
"""

from __future__ import annotations

import os
import time

from market_pipeline.config import VARIABLE_DEFAULTS

# A task reads the same few Variables several times (the exchange alone 3-5 times); each
# read of a Variable not set in the environment is a round trip to the api-server. Values
# are kept this long per process (a task process lives for one try; `airflow dags test`
# runs a whole DAG in one process, so a change still shows within a minute).
CACHE_SECONDS = 60.0
_cache: dict[str, tuple[float, str | None]] = {}


def var(name: str) -> str:
    """The Variable ``name`` (or ``AIRFLOW_VAR_<NAME>``), else its default from config."""
    if name not in VARIABLE_DEFAULTS:
        raise KeyError(f"unknown market variable {name!r}; known: {sorted(VARIABLE_DEFAULTS)}")
    env = os.environ.get(f"AIRFLOW_VAR_{name.upper()}")
    if env is not None:
        value: str | None = env
    else:
        now = time.monotonic()
        cached = _cache.get(name)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            value = cached[1]
        else:
            from airflow.sdk import Variable

            value = Variable.get(name, default=None)
            _cache[name] = (now, value)
    return VARIABLE_DEFAULTS[name] if value in (None, "") else str(value)
