"""generate_signals: evaluate every signal rule on each symbol's indicators for D."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from market_pipeline import indicators, signals, store
from market_pipeline.stages import INDICATOR_WINDOW
from market_pipeline.stages.outcome import Outcome, run_each, write_passed
from market_pipeline.stages.settings import Settings


def generate_signals(
    conn, symbols: Sequence[str], session: date, settings: Settings, *, chunk: bool
) -> Outcome:
    """Evaluate each symbol's rules for D, then upsert every symbol's signals in one statement.
    The result per symbol: ``{"signals": {rule: direction}}``."""
    schema = settings.schema
    frames = store.indicator_history_many(
        conn, symbols, session, INDICATOR_WINDOW, indicators.INDICATOR_COLUMNS, schema=schema
    )

    evaluated = run_each(
        symbols, lambda s: signals.evaluate(frames[s], session), conn=conn, chunk=chunk
    )
    upsert = store.upsert_signals_many
    write_passed(
        evaluated, lambda found: upsert(conn, session, found, schema), conn=conn, chunk=chunk
    )
    evaluated.ok = {
        s: {"signals": {r.rule: r.direction for r in found}} for s, found in evaluated.ok.items()
    }
    return evaluated
