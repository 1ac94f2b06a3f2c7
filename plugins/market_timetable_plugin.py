"""Registers ExchangeSessionTimetable so Airflow can rebuild it from serialized DAGs."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from market_airflow.timetable import ExchangeSessionTimetable


class MarketTimetablePlugin(AirflowPlugin):
    """Makes the exchange-session timetable known to the scheduler and dag-processor."""

    name = "market_timetable"
    timetables = [ExchangeSessionTimetable]  # noqa: RUF012 - AirflowPlugin declares a list
