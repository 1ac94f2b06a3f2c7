"""The validation frame of one GX run: every symbol's rows stacked, plus the rules' columns.

:class:`Run` holds one call's inputs (session D, exchange, bounds); :class:`Stack` holds the
rows of one GX run, one symbol after the other, each sorted by session, with the lookups that
several rules' derived columns share (numeric prices, session positions, ...), each computed
once, on first use. :func:`validation_frame` adds every rule's derived columns in rule order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from market_pipeline import calendar

if TYPE_CHECKING:
    from market_pipeline.quality.rules import Rule

PRICE_COLUMNS = ("open", "high", "low", "close")
#: The default bound of a close-to-close move (±50 %) for the ``max_close_move`` rule.
DEFAULT_MAX_MOVE = 0.5
#: Row identity in GX results: every unexpected row is reported with these columns.
INDEX_COLUMNS = ("symbol", "session")


def as_date(value: Any) -> date | None:
    """``value`` as a ``datetime.date`` (None where it is not a date)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(ts) else ts.date()


def dates_of(frame: pd.DataFrame) -> pd.Series:
    """trade_date coerced to ``datetime.date`` (None where unparseable)."""
    if "trade_date" not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    column = frame["trade_date"]
    if pd.api.types.infer_dtype(column, skipna=False) == "date" and not any(
        isinstance(d, datetime) for d in column
    ):
        # Every cell already a datetime.date (the usual case): no per-row parsing. pandas
        # infers "date" for dates mixed with datetimes (a date subclass), hence the check.
        return column.astype(object)
    return column.map(as_date).astype(object)


def _iso(dates: pd.Series) -> pd.Series:
    """ISO strings of ``dates_of`` output ("unparseable" for None), vectorised when possible."""
    if len(dates) and dates.notna().all():
        days = np.array(dates.tolist(), dtype="datetime64[D]")
        return pd.Series(np.datetime_as_string(days, unit="D"), index=dates.index, dtype=object)
    return dates.map(lambda d: d.isoformat() if d else "unparseable").astype(object)


def numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as float64 (NaN where missing or not a number)."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")


class Sessions:
    """Session lookups over one calendar range, shared by all symbols of a run."""

    def __init__(self, dates: Iterable[date | None], trade_date: date, exchange: str) -> None:
        cal = calendar.get_calendar(exchange)
        known = [d for d in dates if d is not None]
        first = min([*known, trade_date])
        last = max([*known, trade_date])
        lo = max(pd.Timestamp(first), cal.first_session)
        hi = min(pd.Timestamp(last), cal.last_session)
        index = cal.sessions_in_range(lo, hi) if lo <= hi else pd.DatetimeIndex([])
        self.index = pd.DatetimeIndex(index).tz_localize(None)
        self.iso = [ts.date().isoformat() for ts in self.index]

    def positions(self, dates: pd.Series) -> np.ndarray:
        """Position of each date in the session index (NaN for unknown dates); a date that is
        not a session gets the position of the next session."""
        stamps = pd.to_datetime(dates, errors="coerce")
        out = self.index.searchsorted(stamps).astype("float64")
        out[stamps.isna().to_numpy()] = np.nan
        return out


@dataclass
class Run:
    """One validation call's inputs, shared by every GX run (group of symbols) of the call.

    ``frames`` is every symbol of the call. ``max_move`` (raw bars): the move bound, > 0.
    ``explained`` (raw bars): per symbol, the dates whose move has a known cause.
    ``history_sessions`` (indicators): per symbol (or for all), the clean sessions up to D,
    None for "the frame is the whole history".
    """

    trade_date: date
    exchange: str
    frames: Mapping[str, pd.DataFrame]
    max_move: float = DEFAULT_MAX_MOVE
    explained: Mapping[str, set[date]] = field(default_factory=dict)
    history_sessions: Mapping[str, int | None] | int | None = None

    @cached_property
    def sessions(self) -> Sessions:
        """The exchange's sessions over every date of the call (and D)."""
        dates = [d for f in self.frames.values() for d in dates_of(f)]
        return Sessions(dates, self.trade_date, self.exchange)

    def history_of(self, symbol: str, rows_up_to_d: int) -> int:
        """The symbol's clean sessions up to D (its rows up to D when not given)."""
        given = self.history_sessions
        if isinstance(given, Mapping):
            given = given.get(symbol)
        return rows_up_to_d if given is None else int(given)


class Stack:
    """The rows of one GX run: every symbol's rows one after the other, each sorted by
    session, with ``symbol`` and ``session`` columns.

    ``dates`` are the rows' dates, ``order`` each row's symbol position in ``symbols``,
    ``first`` the mask of each symbol's first row (nothing before it to compare with) and
    ``bounds`` the row bounds of each symbol (``bounds[i]:bounds[i + 1]``). A derived column
    that looks at the previous row restarts at each symbol's first row, so the stack is, row
    for row, each symbol's frame built alone and concatenated (tested).
    """

    def __init__(self, frames: Mapping[str, pd.DataFrame], run: Run) -> None:
        self.run = run
        self.symbols = list(frames)
        sizes = [len(f) for f in frames.values()]
        frame = pd.concat(list(frames.values()), ignore_index=True) if frames else pd.DataFrame()
        frame["symbol"] = np.repeat(np.array(self.symbols, dtype=object), sizes)
        frame["_order"] = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        dates = dates_of(frame)
        frame = frame.assign(_sort=pd.to_datetime(dates, errors="coerce"))
        frame = frame.sort_values(["_order", "_sort"], kind="stable").reset_index(drop=True)
        self.order = frame["_order"].to_numpy()
        frame = frame.drop(columns=["_sort", "_order"])
        self.dates = dates_of(frame)
        frame["session"] = _iso(self.dates)
        first = np.ones(len(frame), dtype=bool)
        first[1:] = self.order[1:] != self.order[:-1]
        self.first = first
        self.bounds = [*np.flatnonzero(first), len(frame)]
        self.frame = frame

    def spans(self) -> Iterable[tuple[str, int, int]]:
        """(symbol, lo, hi) for each symbol with rows: its rows are ``lo:hi``."""
        for lo, hi in itertools.pairwise(self.bounds):
            yield self.symbols[self.order[lo]], lo, hi

    @cached_property
    def day_list(self) -> list[date | None]:
        return self.dates.tolist()

    @cached_property
    def latest(self) -> list[tuple[str, int, int, date | None, bool]]:
        """(symbol, lo, hi, its latest date, whether it has a row for D) per symbol."""
        is_d = (self.dates == self.run.trade_date).to_numpy()
        days = self.day_list
        out = []
        for symbol, lo, hi in self.spans():
            # Rows are sorted by date, unparseable ones last: the latest is the last date.
            last = hi - 1
            while last >= lo and days[last] is None:
                last -= 1
            latest = days[last] if last >= lo else None
            out.append((symbol, lo, hi, latest, bool(is_d[lo:hi].any())))
        return out

    @cached_property
    def prices(self) -> dict[str, pd.Series]:
        """open, high, low and close as float64."""
        return {col: numeric(self.frame, col) for col in PRICE_COLUMNS}

    @cached_property
    def volume(self) -> pd.Series:
        return numeric(self.frame, "volume")

    @cached_property
    def session_positions(self) -> pd.Series:
        """Each row's position in the run's session index (NaN for an unparseable date)."""
        return pd.Series(self.run.sessions.positions(self.dates), index=self.frame.index)

    @cached_property
    def history_positions(self) -> tuple[np.ndarray, dict[str, int]]:
        """Each row's position in its symbol's clean history (0 = the first session ever),
        and each symbol's history length up to D (symbols without a row included)."""
        d = self.run.trade_date
        position = np.zeros(len(self.frame), dtype=np.int64)
        histories = {s: self.run.history_of(s, 0) for s in self.symbols}
        for symbol, lo, hi in self.spans():
            known = [x for x in self.day_list[lo:hi] if x is not None]
            upto_d = sum(x <= d for x in known)
            history = histories[symbol] = self.run.history_of(symbol, upto_d)
            position[lo:hi] = np.arange(hi - lo) + (history - upto_d)
        return position, histories


def validation_frame(stack: Stack, rules: Sequence[Rule]) -> pd.DataFrame:
    """The stacked rows with every rule's derived columns, added in rule order."""
    frame = stack.frame
    for rule in rules:
        for column, derive in rule.columns.items():
            frame[column] = derive(stack)
    return frame
