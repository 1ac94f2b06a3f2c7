"""generate_signals: evaluate every signal rule on each symbol's indicators for D."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from market_pipeline import indicators, signals, store
from market_pipeline.stages.outcome import Outcome, run_each, write_passed
from market_pipeline.stages.settings import Settings


def generate_signals(
    conn, symbols: Sequence[str], session: date, settings: Settings, *, chunk: bool
) -> Outcome:
    """Evaluate each symbol's rules for D, then upsert every symbol's signals in one statement.
    The result per symbol: ``{"signals": {rule: direction}}``."""
    schema = settings.schema
    # The rules read D and the row before it; a symbol still in warm-up is evaluated again
    # with its count of rows, which its not-ready verdicts report.
    frames = store.indicator_history_many(
        conn, symbols, session, signals.ROWS_READ, indicators.INDICATOR_COLUMNS, schema=schema
    )
    evaluated = run_each(
        symbols, lambda s: signals.evaluate(frames[s], session), conn=conn, chunk=chunk
    )
    warming = [s for s, found in evaluated.ok.items() if not all(r.ready for r in found)]
    if warming:
        counts = store.indicator_session_counts(conn, warming, session, schema=schema)
        for s in warming:
            evaluated.ok[s] = signals.evaluate(frames[s], session, sessions=counts[s])
    upsert = store.upsert_signals_many
    write_passed(
        evaluated, lambda found: upsert(conn, session, found, schema), conn=conn, chunk=chunk
    )
    evaluated.ok = {
        s: {"signals": {r.rule: r.direction for r in found}} for s, found in evaluated.ok.items()
    }
    return evaluated
