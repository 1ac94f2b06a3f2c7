"""The source interface every bar source implements."""

from __future__ import annotations

import itertools
from datetime import date
from typing import Protocol

import pandas as pd

#: Columns (and order) of a bar frame, as every source returns it.
BAR_COLUMNS = ("trade_date", "open", "high", "low", "close", "volume")


class BarSource(Protocol):
    """Fetches daily bars for one symbol.

    ``fetch`` returns a frame with exactly :data:`BAR_COLUMNS`: ``trade_date`` as
    ``datetime.date``, prices as float, volume as int64, one row per session in
    ``[start, end]`` that the source has, oldest first. Sessions the source has not
    delivered yet are simply absent (an empty frame is not an error). Failures raise
    :class:`~market_pipeline.errors.TransientSourceError` (worth retrying) or
    :class:`~market_pipeline.errors.PermanentSourceError` (not).
    """

    name: str

    def fetch(self, symbol: str, start: date, end: date) -> pd.DataFrame: ...


def empty_bars() -> pd.DataFrame:
    """An empty bar frame with the right columns and dtypes."""
    return normalise_bars(pd.DataFrame({c: [] for c in BAR_COLUMNS}))


def normalise_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame holding :data:`BAR_COLUMNS` to the canonical dtypes and order."""
    days = frame["trade_date"].tolist()
    if days and all(type(d) is date for d in days):
        # The usual case (every source hands plain dates): one frame built from the typed
        # columns, no per-row parsing; sorted only when out of order.
        order = None if all(a < b for a, b in itertools.pairwise(days)) else _stable_order(days)
        data = {"trade_date": days}
        for col in ("open", "high", "low", "close"):
            data[col] = frame[col].astype("float64").to_numpy()
        data["volume"] = frame["volume"].astype("int64").to_numpy()
        if order is not None:
            data = {
                c: [v[i] for i in order] if c == "trade_date" else v[order] for c, v in data.items()
            }
        return pd.DataFrame(data)
    out = frame.loc[:, list(BAR_COLUMNS)].copy()
    out["trade_date"] = pd.to_datetime(out["trade_date"]).dt.date
    for col in ("open", "high", "low", "close"):
        out[col] = out[col].astype("float64")
    out["volume"] = out["volume"].astype("int64")
    return out.sort_values("trade_date", kind="stable").reset_index(drop=True)


def _stable_order(days: list[date]) -> list[int]:
    return sorted(range(len(days)), key=days.__getitem__)
