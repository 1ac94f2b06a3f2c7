"""compute_indicators: recompute over the trailing clean window, upsert this run's sessions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from market_pipeline import indicators, store
from market_pipeline.config import HISTORY_SESSIONS
from market_pipeline.errors import MarketPipelineError
from market_pipeline.stages.outcome import Outcome, run_each, write_passed
from market_pipeline.stages.settings import Settings


def compute_indicators(
    conn,
    symbols: Sequence[str],
    session: date,
    settings: Settings,
    *,
    starts: Mapping[str, date],
    chunk: bool,
) -> Outcome:
    """Indicators of each symbol over its last ``HISTORY_SESSIONS`` clean sessions; the rows
    from ``starts[symbol]`` (the window the raw gate promoted) to D of every symbol are upserted
    in one statement.

    The result per symbol: ``{"rows", "window_start"}``.
    """
    schema = settings.schema
    histories = store.clean_history_many(
        conn, dict.fromkeys(symbols, session), HISTORY_SESSIONS, schema=schema
    )

    def compute(symbol: str) -> dict:
        history = histories[symbol]
        if history.empty or history["trade_date"].iloc[-1] != session:
            raise MarketPipelineError(
                f"expected a clean bar for {session} before computing indicators, found "
                f"{'none' if history.empty else history['trade_date'].iloc[-1]}",
                symbol=symbol,
                session=session,
            )
        frame = indicators.compute_frame(history)
        return frame[frame["trade_date"] >= starts[symbol]]

    computed = run_each(symbols, compute, conn=conn, chunk=chunk)
    columns = indicators.INDICATOR_COLUMNS
    upsert = store.upsert_indicator_rows
    write_passed(computed, lambda rows: upsert(conn, rows, columns, schema), conn=conn, chunk=chunk)
    computed.ok = {
        s: {"rows": len(frame), "window_start": starts[s].isoformat()}
        for s, frame in computed.ok.items()
    }
    return computed
