"""The one trading calendar: timetable, ingestion windows and gate staleness all use it.

Backed by ``exchange_calendars`` (maintained, knows half days and special closures).
Calendars are built with an explicit ``start`` because the library's default window
reaches back only about 20 years and the real-data sample starts in 2000.
"""

from __future__ import annotations

import threading
from datetime import date, datetime
from functools import lru_cache

import pandas as pd

from market_pipeline.exchanges import is_known_exchange  # noqa: F401  (re-exported)

CALENDAR_START = "1999-01-04"
#: How far past the latest date asked for a calendar is built. A calendar only ever grows:
#: a date within ``CALENDAR_MARGIN_DAYS`` of its end rebuilds it this far past that date,
#: so a scheduler that runs for years never needs a restart to see new sessions.
CALENDAR_END_YEARS_AHEAD = 2
CALENDAR_MARGIN_DAYS = 370

_CALENDARS: dict[str, object] = {}
_BUILD_LOCK = threading.Lock()


def get_calendar(exchange: str = "XNYS", covering: date | str | datetime | None = None):
    """The exchange calendar from ``CALENDAR_START`` to at least a year past ``covering``.

    Built once per process and rebuilt (extended) only when a date near its end is asked
    for: today's date always counts, so a long-running process keeps a calendar that
    reaches well beyond the sessions it schedules.
    """
    import exchange_calendars as xcals

    today = pd.Timestamp.today().normalize()
    need = today if covering is None else max(today, _ts(covering))
    cal = _CALENDARS.get(exchange)
    if cal is not None and need + pd.Timedelta(days=CALENDAR_MARGIN_DAYS) <= cal.last_session:
        return cal
    with _BUILD_LOCK:
        cal = _CALENDARS.get(exchange)
        if cal is None or need + pd.Timedelta(days=CALENDAR_MARGIN_DAYS) > cal.last_session:
            end = need + pd.DateOffset(years=CALENDAR_END_YEARS_AHEAD)
            cal = xcals.get_calendar(exchange, start=CALENDAR_START, end=end.strftime("%Y-%m-%d"))
            _CALENDARS[exchange] = cal
            _sessions_in_range.cache_clear()
        return cal


def _ts(d: date | str | datetime) -> pd.Timestamp:
    ts = pd.Timestamp(d)
    return (ts.tz_localize(None) if ts.tzinfo else ts).normalize()


def is_session(d: date | str, exchange: str = "XNYS") -> bool:
    """Whether ``d`` is a trading session of ``exchange``."""
    return bool(get_calendar(exchange, d).is_session(_ts(d)))


def sessions_between(start: date | str, end: date | str, exchange: str = "XNYS") -> list[date]:
    """Sessions in the closed range [start, end], oldest first."""
    start_ts, end_ts = _ts(start), _ts(end)
    if end_ts < start_ts:
        return []
    return list(_sessions_in_range(start_ts, end_ts, exchange))


@lru_cache(maxsize=256)
def _sessions_in_range(start: pd.Timestamp, end: pd.Timestamp, exchange: str) -> tuple[date, ...]:
    # A chunk task asks for the same ranges once per symbol (the synthetic source for its
    # whole history, the gates for their windows); the date list is pure calendar data.
    return tuple(get_calendar(exchange, end).sessions_in_range(start, end).date)


def previous_sessions(end: date | str, count: int, exchange: str = "XNYS") -> list[date]:
    """The ``count`` sessions ending at ``end`` (inclusive when ``end`` is a session).

    Fewer than ``count`` when the calendar starts sooner (see ``CALENDAR_START``).
    """
    if count <= 0:
        return []
    cal = get_calendar(exchange, end)
    last = cal.date_to_session(_ts(end), direction="previous")
    available = cal.sessions.get_loc(last) + 1
    return [ts.date() for ts in cal.sessions_window(last, -min(count, available))]


def previous_session(d: date | str, exchange: str = "XNYS") -> date:
    """The session before ``d`` (``d`` need not be a session)."""
    cal = get_calendar(exchange, d)
    return cal.date_to_session(_ts(d) - pd.Timedelta(days=1), direction="previous").date()


def next_session(d: date | str, exchange: str = "XNYS") -> date:
    """The session after ``d`` (``d`` need not be a session)."""
    cal = get_calendar(exchange, d)
    return cal.date_to_session(_ts(d) + pd.Timedelta(days=1), direction="next").date()


def sessions_apart(older: date | str, newer: date | str, exchange: str = "XNYS") -> int:
    """How many sessions ``newer`` is after ``older`` (0 when the same session)."""
    # Counts the sessions in the half-open range (older, newer], negated when reversed.
    older_ts, newer_ts = _ts(older), _ts(newer)
    if newer_ts < older_ts:
        return -sessions_apart(newer_ts, older_ts, exchange)
    return len(sessions_between(older_ts, newer_ts, exchange)) - (
        1 if is_session(older_ts, exchange) else 0
    )


def session_open(d: date | str, exchange: str = "XNYS") -> datetime:
    """Open of session ``d`` as a timezone-aware UTC datetime."""
    return get_calendar(exchange, d).session_open(_ts(d)).to_pydatetime()


def session_close(d: date | str, exchange: str = "XNYS") -> datetime:
    """Close of session ``d`` (early on half days) as a timezone-aware UTC datetime."""
    return get_calendar(exchange, d).session_close(_ts(d)).to_pydatetime()


def session_on_or_before(d: date | str, exchange: str = "XNYS") -> date:
    """``d`` itself when it is a session, else the session before it."""
    return get_calendar(exchange, d).date_to_session(_ts(d), direction="previous").date()


def session_on_or_after(d: date | str, exchange: str = "XNYS") -> date:
    """``d`` itself when it is a session, else the session after it.

    Dates before the calendar's first session map to that first session.
    """
    cal = get_calendar(exchange, d)
    ts = max(_ts(d), cal.first_session)
    return cal.date_to_session(ts, direction="next").date()


def calendar_date(moment: datetime, exchange: str = "XNYS") -> date:
    """The calendar date a moment names, for manual runs and schedule bounds.

    Exactly midnight UTC is a date-only value (``airflow dags test DAG 2024-11-29``,
    ``--from-date 2024-12-20``, ``start_date=datetime(2024, 1, 2, tzinfo=UTC)``) and names
    its UTC date; any other moment names its exchange-local date. Naive values are UTC.
    """
    ts = pd.Timestamp(moment)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ts == ts.normalize():
        return ts.date()
    return ts.tz_convert(get_calendar(exchange, ts).tz).date()


def session_for_interval(start: datetime, end: datetime, exchange: str = "XNYS") -> date:
    """The session a run's data interval stands for: every stage's ``trade_date``.

    A timetable interval runs from a session's open to its close, so the session is the
    exchange-local date of ``end``. A zero-width interval (a manual run of a DAG without
    the session timetable, e.g. ``airflow dags test DAG 2024-11-29``) stands for the
    session on or before ``calendar_date(start)`` — the UTC date for a date-only value,
    as ``ExchangeSessionTimetable.infer_manual_data_interval`` reads it. Any other
    interval whose end falls on a non-session maps to the session before it.
    """
    if end > start:
        end_ts = pd.Timestamp(end)
        end_ts = end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts
        d = end_ts.tz_convert(get_calendar(exchange, end_ts).tz).date()
    else:
        d = calendar_date(start, exchange)
    return session_on_or_before(d, exchange)
