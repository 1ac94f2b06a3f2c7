"""File-drop deliveries the DAG-level tests write: a symbol's synthetic bars as a vendor
file would hold them, and the +80 % spike a raw gate must stop."""

from __future__ import annotations

from datetime import date

import pandas as pd

from market_pipeline.sources.synthetic import SyntheticSource


def bars(symbol: str, session: date, sessions: int) -> pd.DataFrame:
    """The symbol's last ``sessions`` synthetic bars up to ``session``, a file's columns."""
    out = SyntheticSource().history(symbol, session).tail(sessions).reset_index(drop=True)
    return out.rename(columns={"trade_date": "date"})


def spike_last(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its last close 80 % above the one before (high raised to match)."""
    last = frame.index[-1]
    frame.loc[last, "close"] = round(frame.loc[last - 1, "close"] * 1.8, 4)
    frame.loc[last, "high"] = max(frame.loc[last, "high"], frame.loc[last, "close"])
    return frame
