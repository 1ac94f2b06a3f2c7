"""compute_indicators: recompute over the trailing clean window, upsert this run's sessions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import pandas as pd

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

    The chunk's histories are one long frame and one kernel call
    (``indicators.compute_universe``: equal, value for value, to one call per symbol).
    The result per symbol: ``{"rows", "window_start"}``.
    """
    schema = settings.schema
    bars = store.clean_history_frame(
        conn, dict.fromkeys(symbols, session), HISTORY_SESSIONS, schema=schema
    )
    # Each symbol's last bar (the frame is by symbol, oldest first).
    last = bars.drop_duplicates("symbol", keep="last")
    newest = dict(zip(last["symbol"].tolist(), last["trade_date"].dt.date.tolist(), strict=True))

    def present(symbol: str) -> None:
        found = newest.get(symbol)
        if found != session:
            raise MarketPipelineError(
                f"expected a clean bar for {session} before computing indicators, found "
                f"{'none' if found is None else found}",
                symbol=symbol,
                session=session,
            )

    computed = run_each(symbols, present, chunk=chunk)
    rows = _window_rows(bars[bars["symbol"].isin(list(computed.ok))], starts, chunk, computed)
    counts = rows["symbol"].value_counts().to_dict()
    computed.ok = {s: counts.get(s, 0) for s in symbols if s not in computed.failed}
    columns = indicators.INDICATOR_COLUMNS

    def write(passed: dict[str, int]) -> None:
        part = rows if len(passed) == len(computed.ok) else rows[rows["symbol"].isin(list(passed))]
        store.upsert_indicator_frame(conn, part, columns, schema)

    write_passed(computed, write, conn=conn, chunk=chunk)
    computed.ok = {
        s: {"rows": n, "window_start": starts[s].isoformat()} for s, n in computed.ok.items()
    }
    return computed


def _window_rows(
    bars: pd.DataFrame, starts: Mapping[str, date], chunk: bool, out: Outcome
) -> pd.DataFrame:
    """The indicator rows of the symbols in ``bars`` from ``starts[symbol]`` on, one long
    frame (``symbol``, ``trade_date``, ``close``, the indicator columns).

    The kernel runs once over all of them; should that fail inside a chunk, once per symbol,
    so that only a symbol whose own history fails fails (kept in ``out``)."""
    try:
        frame = indicators.compute_universe(bars)
    except Exception:
        if not chunk:
            raise
        histories = dict(tuple(bars.groupby("symbol", sort=False)))
        each = run_each(histories, lambda s: indicators.compute_frame(histories[s]), chunk=True)
        out.absorb(each)
        # compute_universe of no bars is the empty frame with its columns
        frame = pd.concat(
            [f.assign(symbol=s) for s, f in each.ok.items()]
            or [indicators.compute_universe(bars.iloc[:0])],
            ignore_index=True,
        )
    dates = pd.to_datetime(frame["trade_date"])
    written = dates >= frame["symbol"].map({s: pd.Timestamp(d) for s, d in starts.items()})
    return frame[written].assign(trade_date=dates[written].dt.date)  # the few rows written
