"""Per-symbol failure isolation inside one stage run over several symbols (a chunk).

With one symbol (``chunk`` false) a symbol's error propagates: the task fails with it, and
Airflow's retry policy and the DLQ callbacks handle it as for any task. With a chunk, each
symbol's error is caught and kept in :attr:`Outcome.failed`, and the stage hands on only the
symbols that passed (``plugins/market_airflow/chunking.py`` records the failed ones and
decides the task's fate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from market_pipeline.errors import failure_kind

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a stage did to each symbol of its chunk: results of the passed, errors of the
    failed."""

    ok: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)

    def fail(self, symbol: str, exc: BaseException) -> None:
        self.ok.pop(symbol, None)
        self.failed[symbol] = exc

    def absorb(self, other: Outcome) -> Outcome:
        """Take ``other``'s failures (a later phase of the same stage)."""
        for symbol, exc in other.failed.items():
            self.fail(symbol, exc)
        return self


def is_chunk(symbols: Sequence[str]) -> bool:
    """True when a task carries several symbols and isolates them itself."""
    return len(symbols) > 1


def run_each(
    symbols: Iterable[str], work: Callable[[str], Any], *, conn=None, chunk: bool
) -> Outcome:
    """``work(symbol)`` for each symbol; with ``chunk`` a symbol's error is caught and kept.

    Without ``chunk`` (one symbol per task) the error propagates: the task fails with it.
    ``conn`` is rolled back after a caught error so the next symbol starts clean.
    """
    out = Outcome()
    for symbol in symbols:
        if not chunk:
            out.ok[symbol] = work(symbol)
            continue
        try:
            out.ok[symbol] = work(symbol)
        except Exception as exc:  # isolated: kept in the outcome, the chunk goes on
            if conn is not None and not conn.closed:
                conn.rollback()
            log.warning("%s failed (%s): %s", symbol, failure_kind(exc), exc)
            out.failed[symbol] = exc
    return out


def write_passed(
    out: Outcome, write: Callable[[dict[str, Any]], Any], *, conn, chunk: bool
) -> Outcome:
    """Write the passed symbols' results with ``write({symbol: result, ...})``: all at once
    (one statement and one commit for the chunk instead of one per symbol), or — when that
    fails inside a chunk — one symbol at a time, so that only a symbol whose own write fails
    fails. Without a chunk the error propagates."""
    if not out.ok:
        return out
    try:
        write(dict(out.ok))
    except Exception as exc:
        if not chunk:
            raise
        if not conn.closed:
            conn.rollback()
        log.warning("the chunk's write failed (%s): writing symbol by symbol", exc)
        passed = dict(out.ok)
        out.absorb(run_each(sorted(passed), lambda s: write({s: passed[s]}), conn=conn, chunk=True))
    return out
