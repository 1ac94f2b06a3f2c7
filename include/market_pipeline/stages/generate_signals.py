"""generate_signals: evaluate every signal rule on each symbol's indicators for D."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from market_pipeline import indicators, signals, store
from market_pipeline.stages import INDICATOR_WINDOW
from market_pipeline.stages.outcome import Outcome, run_each
from market_pipeline.stages.settings import Settings


def generate_signals(
    conn, symbols: Sequence[str], session: date, settings: Settings, *, chunk: bool
) -> Outcome:
    """Upsert each symbol's signals for D. The result per symbol: ``{"signals": {rule:
    direction}}``."""
    schema = settings.schema
    frames = store.indicator_history_many(
        conn, symbols, session, INDICATOR_WINDOW, indicators.INDICATOR_COLUMNS, schema=schema
    )

    def evaluate(symbol: str) -> dict:
        results = signals.evaluate(frames[symbol], session)
        store.upsert_signals(conn, symbol, session, results, schema=schema)
        return {"signals": {r.rule: r.direction for r in results}}

    return run_each(symbols, evaluate, conn=conn, chunk=chunk)
