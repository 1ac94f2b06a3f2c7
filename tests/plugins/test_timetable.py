"""ExchangeSessionTimetable: called directly, through DAG serialization and through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pendulum
import pytest
from airflow.exceptions import AirflowTimetableInvalid
from airflow.timetables.base import DataInterval, TimeRestriction
from market_airflow.timetable import ExchangeSessionTimetable

from market_pipeline import calendar
from tests.support.airflow_home import make_airflow_home
from tests.support.sessions import NYSE_YEAR_END_2024

REPO = Path(__file__).resolve().parents[2]
NEW_YORK = "America/New_York"
CATCHUP_FROM_2024 = TimeRestriction(
    earliest=pendulum.datetime(2024, 1, 1, tz="UTC"), latest=None, catchup=True
)

DAG_SOURCE = """
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, task
from market_airflow.timetable import ExchangeSessionTimetable

with DAG(
    dag_id="session_probe",
    schedule=ExchangeSessionTimetable(exchange="{exchange}", delay=timedelta(minutes={minutes})),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
):

    @task
    def noop() -> None:
        return None

    noop()
"""


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> pendulum.DateTime:
    return pendulum.datetime(year, month, day, hour, minute, tz=NEW_YORK)


def interval_of(session: str) -> DataInterval:
    return ExchangeSessionTimetable().session_interval(date.fromisoformat(session))


def run_after(session: str, timetable: ExchangeSessionTimetable | None = None):
    """The DagRunInfo the timetable schedules after the run for ``session``."""
    timetable = timetable or ExchangeSessionTimetable()
    return timetable.next_dagrun_info(
        last_automated_data_interval=interval_of(session), restriction=CATCHUP_FROM_2024
    )


# --- next_dagrun_info: holidays, half days, weekends, DST -------------------------------


def test_half_day_2024_07_03_runs_30_minutes_after_the_1300_close():
    info = run_after("2024-07-02")

    assert info.run_after == ny(2024, 7, 3, 13, 30)
    assert info.data_interval == DataInterval(ny(2024, 7, 3, 9, 30), ny(2024, 7, 3, 13, 0))


def test_independence_day_2024_07_04_is_skipped():
    info = run_after("2024-07-03")

    assert info.data_interval.end.in_timezone(NEW_YORK).date() == date(2024, 7, 5)
    assert info.run_after == ny(2024, 7, 5, 16, 30)


def test_thanksgiving_is_skipped_and_the_half_day_after_runs_after_1330():
    info = run_after("2024-11-27")

    assert info.run_after == ny(2024, 11, 29, 13, 30)
    assert info.data_interval == DataInterval(ny(2024, 11, 29, 9, 30), ny(2024, 11, 29, 13, 0))


def test_a_friday_is_followed_by_the_monday():
    info = run_after("2024-06-14")

    assert info.data_interval.start == ny(2024, 6, 17, 9, 30)
    assert info.run_after == ny(2024, 6, 17, 16, 30)


@pytest.mark.parametrize(
    ("friday", "monday", "friday_run_utc", "monday_run_utc"),
    [
        # 2024-03-10: New York moves from EST (UTC-5) to EDT (UTC-4).
        ("2024-03-08", date(2024, 3, 11), (21, 30), (20, 30)),
        # 2024-11-03: back from EDT to EST.
        ("2024-11-01", date(2024, 11, 4), (20, 30), (21, 30)),
    ],
    ids=["march", "november"],
)
def test_dst_changes_keep_the_run_at_1630_new_york_time(
    friday, monday, friday_run_utc, monday_run_utc
):
    timetable = ExchangeSessionTimetable()
    before = run_after(calendar.previous_session(friday).isoformat())
    after = run_after(friday)

    assert (before.run_after.hour, before.run_after.minute) == friday_run_utc
    assert (after.run_after.hour, after.run_after.minute) == monday_run_utc
    assert after.data_interval == timetable.session_interval(monday)
    for info in (before, after):
        assert info.run_after.in_timezone(NEW_YORK).time() == pendulum.time(16, 30)


def test_intervals_are_aware_utc_pendulum_datetimes():
    info = run_after("2024-06-14")

    for moment in (info.run_after, *info.data_interval):
        assert isinstance(moment, pendulum.DateTime)
        assert moment.utcoffset() == timedelta(0)


def test_the_logical_date_is_the_open_whose_new_york_date_is_the_session():
    info = run_after("2024-11-27")

    assert info.logical_date == ny(2024, 11, 29, 9, 30)
    assert info.logical_date.in_timezone(NEW_YORK).date() == date(2024, 11, 29)


def test_the_delay_is_added_to_the_close():
    timetable = ExchangeSessionTimetable(delay=timedelta(hours=2, minutes=15))

    info = run_after("2024-07-02", timetable)

    assert info.run_after == ny(2024, 7, 3, 15, 15)


def test_the_exchange_parameter_selects_that_exchanges_sessions_and_hours():
    london = ExchangeSessionTimetable(exchange="XLON", delay=timedelta(minutes=30))

    info = london.next_dagrun_info(
        last_automated_data_interval=london.session_interval(date(2024, 12, 24)),
        restriction=CATCHUP_FROM_2024,
    )

    # Boxing Day is a London holiday; 2024-12-24 itself closed early at 12:30.
    assert london.session_interval(date(2024, 12, 24)).end == pendulum.datetime(
        2024, 12, 24, 12, 30, tz="Europe/London"
    )
    assert info.data_interval.start.in_timezone("Europe/London").date() == date(2024, 12, 27)


# --- restrictions: start/end dates, catchup -----------------------------------------------


def test_the_first_run_is_the_first_session_on_or_after_a_date_only_start_date():
    restriction = TimeRestriction(pendulum.datetime(2024, 7, 4, tz="UTC"), None, catchup=True)

    info = ExchangeSessionTimetable().next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )

    assert info.data_interval == interval_of("2024-07-05")


def test_a_start_date_at_new_york_midnight_includes_that_days_session():
    restriction = TimeRestriction(ny(2024, 7, 3), None, catchup=True)

    info = ExchangeSessionTimetable().next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )

    assert info.data_interval == interval_of("2024-07-03")


def test_no_run_is_scheduled_for_a_session_after_the_end_date():
    restriction = TimeRestriction(
        pendulum.datetime(2024, 1, 1, tz="UTC"), pendulum.datetime(2024, 7, 4, tz="UTC"), True
    )

    info = ExchangeSessionTimetable().next_dagrun_info(
        last_automated_data_interval=interval_of("2024-07-03"), restriction=restriction
    )

    assert info is None


def test_the_session_on_a_date_only_end_date_is_still_scheduled():
    restriction = TimeRestriction(
        pendulum.datetime(2024, 1, 1, tz="UTC"), pendulum.datetime(2024, 7, 3, tz="UTC"), True
    )

    info = ExchangeSessionTimetable().next_dagrun_info(
        last_automated_data_interval=interval_of("2024-07-02"), restriction=restriction
    )

    assert info.data_interval == interval_of("2024-07-03")


def test_catchup_iteration_over_a_range_yields_exactly_the_sessions():
    timetable = ExchangeSessionTimetable()
    restriction = TimeRestriction(
        pendulum.datetime(2024, 12, 20, tz="UTC"), pendulum.datetime(2025, 1, 3, tz="UTC"), True
    )
    sessions, last = [], None

    while info := timetable.next_dagrun_info(
        last_automated_data_interval=last, restriction=restriction
    ):
        sessions.append(calendar.session_for_interval(*info.data_interval))
        last = info.data_interval

    assert [d.isoformat() for d in sessions] == NYSE_YEAR_END_2024


def test_without_catchup_the_first_run_is_the_latest_session_already_due():
    restriction = TimeRestriction(pendulum.datetime(2024, 1, 1, tz="UTC"), None, catchup=False)

    info = ExchangeSessionTimetable().next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )
    now = pendulum.now("UTC")

    session = calendar.session_for_interval(*info.data_interval)
    following = ExchangeSessionTimetable().session_interval(calendar.next_session(session))
    assert info.run_after <= now
    assert following.end + timedelta(minutes=30) > now


def test_without_catchup_missed_sessions_after_the_last_run_are_skipped():
    restriction = TimeRestriction(pendulum.datetime(2024, 1, 1, tz="UTC"), None, catchup=False)
    timetable = ExchangeSessionTimetable()
    latest_due = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )

    info = timetable.next_dagrun_info(
        last_automated_data_interval=interval_of("2024-07-02"), restriction=restriction
    )

    assert info == latest_due


def test_with_catchup_and_neither_start_date_nor_previous_run_nothing_is_scheduled():
    restriction = TimeRestriction(earliest=None, latest=None, catchup=True)

    info = ExchangeSessionTimetable().next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )

    assert info is None


# --- manual runs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_after_utc", "expected_session"),
    [
        (pendulum.datetime(2024, 11, 29, tz="UTC"), "2024-11-29"),  # dags test ... 2024-11-29
        (pendulum.datetime(2024, 11, 28, tz="UTC"), "2024-11-27"),  # Thanksgiving
        (pendulum.datetime(2024, 11, 30, 2, 0, tz="UTC"), "2024-11-29"),  # Fri 21:00 New York
        (pendulum.datetime(2024, 12, 2, 15, 0, tz="UTC"), "2024-12-02"),  # Mon 10:00 New York
        (pendulum.datetime(2024, 11, 30, 18, 0, tz="UTC"), "2024-11-29"),  # Saturday
    ],
    ids=["date-only-session", "date-only-holiday", "evening", "mid-session", "weekend"],
)
def test_a_manual_run_takes_the_latest_session_on_or_before_the_named_date(
    run_after_utc, expected_session
):
    interval = ExchangeSessionTimetable().infer_manual_data_interval(run_after=run_after_utc)

    assert interval == interval_of(expected_session)


@pytest.mark.parametrize(
    "run_after_utc",
    [
        pendulum.datetime(2024, 11, 28, tz="UTC"),
        pendulum.datetime(2024, 11, 29, tz="UTC"),
        pendulum.datetime(2024, 11, 30, 2, 0, tz="UTC"),
        pendulum.datetime(2024, 3, 10, 7, 0, tz="UTC"),
    ],
)
def test_session_for_interval_reads_a_manual_interval_as_the_timetable_chose_it(run_after_utc):
    interval = ExchangeSessionTimetable().infer_manual_data_interval(run_after=run_after_utc)

    trade_date = calendar.session_for_interval(interval.start, interval.end)

    assert trade_date == calendar.session_for_interval(run_after_utc, run_after_utc)
    assert interval == interval_of(trade_date.isoformat())


# --- parameters, UI text, validation, serialization -----------------------------------------


def test_summary_and_description_read_as_sessions_and_delay():
    timetable = ExchangeSessionTimetable(exchange="XNYS", delay=timedelta(minutes=30))

    assert timetable.summary == "XNYS sessions, 30 min after close"
    assert timetable.description == "XNYS sessions, 30 min after close"


def test_description_spells_out_hours_and_minutes():
    timetable = ExchangeSessionTimetable(exchange="XLON", delay=timedelta(hours=1, minutes=15))

    assert timetable.description == "XLON sessions, 1 h 15 min after close"


def test_serialize_then_deserialize_keeps_exchange_and_delay():
    original = ExchangeSessionTimetable(exchange="XLON", delay=timedelta(minutes=45))

    rebuilt = ExchangeSessionTimetable.deserialize(original.serialize())

    assert (rebuilt.exchange, rebuilt.delay) == ("XLON", timedelta(minutes=45))
    assert rebuilt == original


def test_an_unknown_exchange_is_rejected_at_validation():
    with pytest.raises(AirflowTimetableInvalid, match="found 'NOPE'"):
        ExchangeSessionTimetable(exchange="NOPE").validate()


def test_a_negative_delay_is_rejected_at_validation():
    with pytest.raises(AirflowTimetableInvalid, match="delay after the close must be >= 0"):
        ExchangeSessionTimetable(delay=timedelta(minutes=-5)).validate()


@pytest.fixture
def plugins_from(monkeypatch):
    """Point Airflow's plugin loader at a folder, with its caches cleared before and after."""
    from airflow import plugins_manager, settings

    def clear() -> None:
        plugins_manager._get_plugins.cache_clear()
        plugins_manager.get_timetables_plugins.cache_clear()

    def use(folder: Path) -> None:
        monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(folder))
        clear()

    yield use
    clear()


def load_probe_dag(folder: Path, exchange: str = "XNYS", minutes: int = 30):
    from airflow.dag_processing.dagbag import DagBag

    (folder / "session_probe.py").write_text(DAG_SOURCE.format(exchange=exchange, minutes=minutes))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags["session_probe"]


def test_a_dag_file_with_an_unknown_exchange_is_an_import_error(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "session_probe.py").write_text(DAG_SOURCE.format(exchange="NOPE", minutes=30))

    bag = DagBag(dag_folder=str(tmp_path))

    assert "found 'NOPE'" in next(iter(bag.import_errors.values()))
    assert "session_probe" not in bag.dags


def test_a_serialized_dag_rebuilds_the_timetable_through_the_plugin(tmp_path, plugins_from):
    from airflow.serialization.serialized_objects import DagSerialization

    plugins_from(REPO / "plugins")
    dag = load_probe_dag(tmp_path, exchange="XLON", minutes=45)

    rebuilt = DagSerialization.from_json(DagSerialization.to_json(dag))

    assert rebuilt.timetable == ExchangeSessionTimetable("XLON", timedelta(minutes=45))
    assert rebuilt.timetable.summary == "XLON sessions, 45 min after close"


def test_without_the_plugin_the_dag_cannot_be_serialized(tmp_path, plugins_from):
    from airflow.serialization.serialized_objects import DagSerialization

    (tmp_path / "no_plugins").mkdir()
    plugins_from(tmp_path / "no_plugins")
    dag = load_probe_dag(tmp_path)

    with pytest.raises(Exception, match="is not registered"):
        DagSerialization.to_json(dag)


# --- a real Airflow process: backfill dry run -----------------------------------------------


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, airflow_home_template):
    """A throwaway Airflow home (SQLite) whose only DAG uses the timetable, serialized."""
    home = make_airflow_home(tmp_path_factory.mktemp("airflow_home"), airflow_home_template).path
    dags = home / "dags"
    dags.mkdir()
    (dags / "session_probe.py").write_text(DAG_SOURCE.format(exchange="XNYS", minutes=30))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")]),
    )
    airflow(env, "dags", "reserialize")
    return env


def airflow(env: dict[str, str], *args: str) -> str:
    cli = Path(sys.executable).with_name("airflow")
    done = subprocess.run(
        [str(cli), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_backfill_dry_run_lists_exactly_the_xnys_sessions_in_the_range(airflow_home):
    out = airflow(
        airflow_home,
        "backfill",
        "create",
        "--dag-id",
        "session_probe",
        "--from-date",
        "2024-12-20",
        "--to-date",
        "2025-01-03",
        "--dry-run",
    )

    logical_dates = re.findall(r"^\|\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00)\s*\|", out, re.M)
    sessions = [pendulum.parse(d).in_timezone(NEW_YORK).date().isoformat() for d in logical_dates]
    assert sessions == NYSE_YEAR_END_2024, out
    assert all(d.endswith("14:30:00+00:00") for d in logical_dates)


def test_every_run_id_airflow_mints_names_the_session_it_stands_for():
    from airflow.utils.types import DagRunType

    timetable = ExchangeSessionTimetable()
    friday = timetable.session_interval(date(2024, 11, 29))  # the early close after Thanksgiving
    clicked = pendulum.datetime(2026, 11, 30, 21, 15, 3, tz="UTC")

    def run_id(run_type, run_after, interval=friday):
        return timetable.generate_run_id(
            run_type=run_type, run_after=run_after, data_interval=interval
        )

    assert run_id(DagRunType.SCHEDULED, friday.end) == "scheduled__2024-11-29"
    assert run_id(DagRunType.MANUAL, clicked) == "manual__2024-11-29__2026-11-30T21:15:03"
    assert (
        run_id(DagRunType.BACKFILL_JOB, friday.end) == "backfill__2024-11-29__2024-11-29T18:00:00"
    )
    # A trigger without a logical date has no interval: Airflow's own id.
    assert run_id(DagRunType.MANUAL, clicked, None) == "manual__2026-11-30T21:15:03+00:00"
    # Airflow reads the run type back from the prefix.
    assert DagRunType.from_run_id(run_id(DagRunType.MANUAL, clicked)) == DagRunType.MANUAL
