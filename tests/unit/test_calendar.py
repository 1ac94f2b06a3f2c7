"""market_pipeline.calendar: the one trading calendar of the project."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_pipeline import calendar
from tests.support.sessions import NYSE_YEAR_END_2024

REPO = Path(__file__).resolve().parents[2]
NEW_YORK = ZoneInfo("America/New_York")
UTC = UTC
DATES_2023_2025 = st.dates(min_value=date(2023, 1, 1), max_value=date(2025, 12, 31))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2024-07-03", True),  # half day
        ("2024-07-04", False),  # Independence Day
        ("2024-11-28", False),  # Thanksgiving
        ("2024-06-15", False),  # Saturday
        ("2001-09-11", False),  # special closure
        ("2012-10-29", False),  # Hurricane Sandy
        ("2000-01-03", True),  # first session of the real-data sample
    ],
)
def test_is_session_knows_holidays_weekends_and_special_closures(day, expected):
    assert calendar.is_session(day) is expected


def test_the_calendar_reaches_back_to_1999_for_the_2000_sample():
    assert calendar.get_calendar().first_session.date() == date(1999, 1, 4)


def test_sessions_between_is_inclusive_and_skips_holidays():
    sessions = calendar.sessions_between("2024-12-20", "2025-01-03")

    assert [d.isoformat() for d in sessions] == NYSE_YEAR_END_2024


def test_sessions_between_a_reversed_range_is_empty():
    assert calendar.sessions_between("2024-12-31", "2024-12-20") == []


def test_previous_sessions_ends_at_a_session_end_date_inclusive():
    assert calendar.previous_sessions("2024-11-29", 3) == [
        date(2024, 11, 26),
        date(2024, 11, 27),
        date(2024, 11, 29),
    ]


def test_previous_sessions_from_a_holiday_ends_at_the_session_before():
    assert calendar.previous_sessions("2024-11-28", 2) == [date(2024, 11, 26), date(2024, 11, 27)]


def test_previous_sessions_stops_at_the_calendar_start_instead_of_raising():
    assert calendar.previous_sessions("1999-01-06", 5) == [
        date(1999, 1, 4),
        date(1999, 1, 5),
        date(1999, 1, 6),
    ]


def test_previous_sessions_of_zero_is_empty():
    assert calendar.previous_sessions("2024-11-29", 0) == []


def test_previous_and_next_session_step_over_thanksgiving():
    assert calendar.previous_session("2024-11-29") == date(2024, 11, 27)
    assert calendar.next_session("2024-11-27") == date(2024, 11, 29)


def test_next_session_from_a_friday_is_the_monday():
    assert calendar.next_session("2024-06-14") == date(2024, 6, 17)


def test_session_on_or_before_and_after_keep_a_session_and_move_off_a_holiday():
    assert calendar.session_on_or_before("2024-11-29") == date(2024, 11, 29)
    assert calendar.session_on_or_before("2024-11-28") == date(2024, 11, 27)
    assert calendar.session_on_or_after("2024-11-28") == date(2024, 11, 29)


def test_session_on_or_after_a_date_before_the_calendar_is_the_first_session():
    assert calendar.session_on_or_after("1990-06-01") == date(1999, 1, 4)


@pytest.mark.parametrize(
    ("older", "newer", "expected"),
    [
        ("2024-11-27", "2024-11-29", 1),  # across Thanksgiving
        ("2024-11-29", "2024-11-29", 0),
        ("2024-11-23", "2024-11-25", 1),  # Saturday to Monday
        ("2024-11-22", "2024-11-23", 0),  # Friday to Saturday
        ("2024-11-25", "2024-11-23", -1),  # Monday back to Saturday
        ("2024-11-29", "2024-11-27", -1),
    ],
)
def test_sessions_apart_counts_sessions_after_older_up_to_newer(older, newer, expected):
    assert calendar.sessions_apart(older, newer) == expected


@given(DATES_2023_2025, DATES_2023_2025)
def test_sessions_apart_is_antisymmetric(a, b):
    assert calendar.sessions_apart(a, b) == -calendar.sessions_apart(b, a)


def test_session_open_and_close_of_a_half_day_are_930_and_1300_new_york():
    assert calendar.session_open("2024-11-29") == ny(2024, 11, 29, 9, 30)
    assert calendar.session_close("2024-11-29") == ny(2024, 11, 29, 13, 0)


@pytest.mark.parametrize(
    ("day", "close_utc"),
    [("2024-03-08", utc(2024, 3, 8, 21)), ("2024-03-11", utc(2024, 3, 11, 20))],
    ids=["EST", "EDT"],
)
def test_session_close_is_1600_new_york_on_both_sides_of_dst(day, close_utc):
    assert calendar.session_close(day) == close_utc


def test_session_close_is_timezone_aware_utc():
    assert calendar.session_close("2024-07-03").utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (utc(2024, 11, 29), date(2024, 11, 29)),  # date-only value: its UTC date
        (datetime(2024, 11, 29), date(2024, 11, 29)),  # naive is UTC
        (utc(2024, 11, 30, 2, 0), date(2024, 11, 29)),  # 21:00 New York
        (ny(2024, 11, 29), date(2024, 11, 29)),  # New York midnight
    ],
)
def test_calendar_date_reads_utc_midnight_as_a_date_and_anything_else_in_new_york(moment, expected):
    assert calendar.calendar_date(moment) == expected


def test_session_for_interval_of_a_session_is_the_new_york_date_of_its_close():
    start, end = calendar.session_open("2024-11-29"), calendar.session_close("2024-11-29")

    assert calendar.session_for_interval(start, end) == date(2024, 11, 29)


def test_session_for_a_zero_width_interval_on_a_holiday_is_the_session_before():
    moment = utc(2024, 11, 28)

    assert calendar.session_for_interval(moment, moment) == date(2024, 11, 27)


def test_session_for_a_daily_interval_ending_on_a_holiday_is_the_session_before():
    assert calendar.session_for_interval(utc(2024, 7, 4), utc(2024, 7, 5)) == date(2024, 7, 3)


def test_is_known_exchange_accepts_xnys_and_rejects_nonsense():
    assert calendar.is_known_exchange("XNYS")
    assert not calendar.is_known_exchange("NOPE")


def test_no_module_but_calendar_imports_a_calendar_or_holiday_library():
    pattern = re.compile(
        r"^\s*(import|from)\s+(exchange_calendars|pandas_market_calendars|holidays"
        r"|pandas\.tseries\.holiday)\b",
        re.M,
    )
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("include", "plugins", "dags")
        for path in (REPO / folder).rglob("*.py")
        if path != REPO / "include/market_pipeline/calendar.py"
        and pattern.search(path.read_text(encoding="utf-8"))
    ]

    assert offenders == []


def test_a_calendar_extends_itself_when_a_later_date_is_asked_for():
    # A scheduler started long ago built its calendar then; a session past that calendar's
    # end must still be known without a restart.
    cal = calendar.get_calendar("XNYS")
    beyond = (cal.last_session + pd.Timedelta(days=400)).date()

    after = calendar.next_session(beyond, "XNYS")

    assert after > beyond
    assert calendar.get_calendar("XNYS").last_session.date() > after
    assert calendar.is_session(after, "XNYS")


def test_is_known_exchange_reads_canonical_codes_without_importing_the_calendar_library():
    from market_pipeline import exchanges

    assert exchanges.is_known_exchange("XLON")
    assert not exchanges.is_known_exchange("NYSE")  # an alias: the canonical code is XNYS
    assert exchanges.known_exchanges() >= {"XNYS", "XLON", "XTKS"}
