"""A timetable that runs once per exchange session, a fixed delay after the close.

Every date comes from ``market_pipeline.calendar`` (the one calendar of the project), so
the scheduler, ingestion and the gates agree on what a session is. Registered with Airflow
by ``plugins/market_timetable_plugin.py``; the scheduler and dag-processor rebuild it from
the serialized DAG through ``serialize``/``deserialize``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from types import ModuleType
from typing import Any

import pendulum
from airflow.exceptions import AirflowTimetableInvalid
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable
from airflow.utils.types import DagRunType


def _calendar() -> ModuleType:
    # Imported on first use: pandas and exchange_calendars cost ~1 s, and the plugin module
    # is imported by every Airflow process (CLI, api-server, tasks), most never schedule.
    from market_pipeline import calendar

    return calendar


def _utc(moment: datetime) -> pendulum.DateTime:
    return pendulum.instance(moment).in_timezone(pendulum.UTC)


def _format_delay(delay: timedelta) -> str:
    minutes, seconds = divmod(int(delay.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{seconds} s" if seconds else "")
    return " ".join(p for p in parts if p) or "0 min"


class ExchangeSessionTimetable(Timetable):
    """One run per trading session of ``exchange``, ``delay`` after its (possibly early) close.

    The data interval is the session, open to close (UTC); the logical date is the open, whose
    exchange-local date is the session date every stage uses as ``trade_date``.

    :param exchange: exchange_calendars code of the exchange, e.g. ``"XNYS"``.
    :param delay: how long after the close the run may start (non-negative).
    """

    periodic = True
    can_be_scheduled = True

    def __init__(self, exchange: str = "XNYS", delay: timedelta = timedelta(minutes=30)) -> None:
        self.exchange = exchange
        self.delay = delay
        self.description = f"{exchange} sessions, {_format_delay(delay)} after close"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExchangeSessionTimetable):
            return NotImplemented
        return (self.exchange, self.delay) == (other.exchange, other.delay)

    def __hash__(self) -> int:
        return hash((self.exchange, self.delay))

    def __repr__(self) -> str:
        return f"ExchangeSessionTimetable(exchange={self.exchange!r}, delay={self.delay!r})"

    @property
    def summary(self) -> str:
        return self.description

    def serialize(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "delay_seconds": self.delay.total_seconds()}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ExchangeSessionTimetable:
        return cls(exchange=data["exchange"], delay=timedelta(seconds=data["delay_seconds"]))

    def validate(self) -> None:
        """Reject an unknown exchange code or a negative delay when the DAG is parsed.

        Runs in the dag-processor at every parse, so it reads the known codes from the
        calendar package's file names instead of importing it (and pandas).
        """
        from market_pipeline.exchanges import is_known_exchange

        if not is_known_exchange(self.exchange):
            raise AirflowTimetableInvalid(
                f"exchange must be a canonical exchange_calendars code such as 'XNYS' "
                f"(set MARKET_EXCHANGE); found {self.exchange!r}"
            )
        if self.delay < timedelta(0):
            raise AirflowTimetableInvalid(
                f"delay after the close must be >= 0; found {self.delay} for {self.exchange}"
            )

    def session_interval(self, session: date) -> DataInterval:
        """The data interval of ``session``: its open to its close, in UTC."""
        calendar = _calendar()
        return DataInterval(
            start=_utc(calendar.session_open(session, self.exchange)),
            end=_utc(calendar.session_close(session, self.exchange)),
        )

    def _run_info(self, session: date) -> DagRunInfo:
        interval = self.session_interval(session)
        return DagRunInfo(run_after=interval.end + self.delay, data_interval=interval)

    def _latest_due_session(self, now: datetime) -> date:
        """The newest session whose close plus delay is not after ``now``."""
        calendar = _calendar()
        session = calendar.session_on_or_before(
            calendar.calendar_date(now, self.exchange), self.exchange
        )
        while calendar.session_close(session, self.exchange) + self.delay > now:
            session = calendar.previous_session(session, self.exchange)
        return session

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        # Bounds (start_date/end_date, backfill --from-date/--to-date) are compared as
        # session dates, read by calendar_date: a date-only bound includes that
        # day's session although the session opens after midnight UTC.
        calendar = _calendar()
        candidates: list[date] = []
        if last_automated_data_interval is not None:
            last = calendar.session_for_interval(
                last_automated_data_interval.start, last_automated_data_interval.end, self.exchange
            )
            candidates.append(calendar.next_session(last, self.exchange))
        if restriction.earliest is not None:
            first = calendar.calendar_date(restriction.earliest, self.exchange)
            candidates.append(calendar.session_on_or_after(first, self.exchange))
        if not restriction.catchup:
            candidates.append(self._latest_due_session(pendulum.now(pendulum.UTC)))
        if not candidates:
            return None  # catchup without a start date or a previous run: nothing to anchor on
        session = max(candidates)
        if restriction.latest is not None and session > calendar.calendar_date(
            restriction.latest, self.exchange
        ):
            return None
        return self._run_info(session)

    def generate_run_id(
        self,
        *,
        run_type: DagRunType,
        run_after: datetime,
        data_interval: DataInterval | None,
        **extra: Any,
    ) -> str:
        """``<type>__<session>`` for a scheduled run (one per session), and
        ``<type>__<session>__<run after, UTC>`` for a manual or backfill run (a session may
        have several), so every run id names the session it stands for.

        Airflow asks the timetable for every run id it mints: the scheduler, a trigger from
        the UI or the REST API without an id, a backfill.
        """
        if data_interval is None:
            return super().generate_run_id(
                run_type=run_type, run_after=run_after, data_interval=data_interval, **extra
            )
        session = _calendar().session_for_interval(
            data_interval.start, data_interval.end, self.exchange
        )
        if run_type == DagRunType.SCHEDULED:
            return run_type.generate_run_id(suffix=session.isoformat())
        when = _utc(run_after).strftime("%Y-%m-%dT%H:%M:%S")
        return run_type.generate_run_id(suffix=f"{session.isoformat()}__{when}")

    def infer_manual_data_interval(self, *, run_after: datetime) -> DataInterval:
        """The latest session on or before the date ``run_after`` names.

        That date is the exchange-local date of ``run_after``, except at exactly midnight
        UTC (a date-only logical date such as ``airflow dags test market_daily 2024-11-28``),
        which names its UTC date; see ``calendar.calendar_date``.
        """
        calendar = _calendar()
        named = calendar.calendar_date(run_after, self.exchange)
        return self.session_interval(calendar.session_on_or_before(named, self.exchange))
