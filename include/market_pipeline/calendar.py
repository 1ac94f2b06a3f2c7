"""The one trading calendar: timetable, ingestion windows and gate staleness all use it.

Backed by ``exchange_calendars`` (maintained, knows half days and special closures).
Calendars are built with an explicit ``start`` because the library's default window
reaches back only about 20 years and the real-data sample starts in 2000.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache

import pandas as pd

CALENDAR_START = "1999-01-04"
CALENDAR_END_YEARS_AHEAD = 2


@lru_cache(maxsize=8)
def get_calendar(exchange: str = "XNYS"):
    """The exchange calendar, built once per process with an explicit start."""
    import exchange_calendars as xcals

    end = pd.Timestamp.today().normalize() + pd.DateOffset(years=CALENDAR_END_YEARS_AHEAD)
    return xcals.get_calendar(exchange, start=CALENDAR_START, end=end.strftime("%Y-%m-%d"))


def _ts(d: date | str | datetime) -> pd.Timestamp:
    ts = pd.Timestamp(d)
    return (ts.tz_localize(None) if ts.tzinfo else ts).normalize()


def is_session(d: date | str, exchange: str = "XNYS") -> bool:
    """Whether ``d`` is a trading session of ``exchange``."""
    return bool(get_calendar(exchange).is_session(_ts(d)))


def sessions_between(start: date | str, end: date | str, exchange: str = "XNYS") -> list[date]:
    """Sessions in the closed range [start, end], oldest first."""
    start_ts, end_ts = _ts(start), _ts(end)
    if end_ts < start_ts:
        return []
    return [ts.date() for ts in get_calendar(exchange).sessions_in_range(start_ts, end_ts)]


def previous_sessions(end: date | str, count: int, exchange: str = "XNYS") -> list[date]:
    """The ``count`` sessions ending at ``end`` (inclusive when ``end`` is a session)."""
    cal = get_calendar(exchange)
    last = cal.date_to_session(_ts(end), direction="previous")
    first_allowed = cal.first_session
    window = cal.sessions_window(last, -count) if count > 0 else []
    return [ts.date() for ts in window if ts >= first_allowed]


def previous_session(d: date | str, exchange: str = "XNYS") -> date:
    """The session before ``d`` (``d`` need not be a session)."""
    cal = get_calendar(exchange)
    return cal.date_to_session(_ts(d) - pd.Timedelta(days=1), direction="previous").date()


def next_session(d: date | str, exchange: str = "XNYS") -> date:
    """The session after ``d`` (``d`` need not be a session)."""
    cal = get_calendar(exchange)
    return cal.date_to_session(_ts(d) + pd.Timedelta(days=1), direction="next").date()


def sessions_apart(older: date | str, newer: date | str, exchange: str = "XNYS") -> int:
    """How many sessions ``newer`` is after ``older`` (0 when the same session)."""
    older_ts, newer_ts = _ts(older), _ts(newer)
    if newer_ts <= older_ts:
        return -len(sessions_between(newer_ts, older_ts, exchange)[1:])
    return len(sessions_between(older_ts, newer_ts, exchange)) - (
        1 if is_session(older_ts, exchange) else 0
    )


def session_open(d: date | str, exchange: str = "XNYS") -> datetime:
    """Open of session ``d`` as a timezone-aware UTC datetime."""
    return get_calendar(exchange).session_open(_ts(d)).to_pydatetime()


def session_close(d: date | str, exchange: str = "XNYS") -> datetime:
    """Close of session ``d`` (early on half days) as a timezone-aware UTC datetime."""
    return get_calendar(exchange).session_close(_ts(d)).to_pydatetime()
