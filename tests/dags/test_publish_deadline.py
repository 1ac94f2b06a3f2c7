"""The DAG carries the publish deadline as an Airflow Deadline Alert, configured at parse time
by MARKET_PUBLISH_DEADLINE_MINUTES, and it survives serialization (what the scheduler reads)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _parse(monkeypatch, minutes: str | None):
    from airflow.dag_processing.dagbag import DagBag

    if minutes is None:
        monkeypatch.delenv("MARKET_PUBLISH_DEADLINE_MINUTES", raising=False)
    else:
        monkeypatch.setenv("MARKET_PUBLISH_DEADLINE_MINUTES", minutes)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["market_daily"]


@pytest.mark.parametrize(("minutes", "interval"), [("90", 60), ("300", 300 - 30)])
def test_the_dag_alerts_when_scores_are_not_served_by_the_configured_time_after_the_close(
    monkeypatch, minutes, interval
):
    from airflow.sdk import AsyncCallback, DeadlineReference

    dag = _parse(monkeypatch, minutes)

    alert = dag.deadline[0] if isinstance(dag.deadline, list) else dag.deadline
    # Queued 30 min after the close (the timetable's delay): the deadline is the rest.
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(minutes=interval)
    assert isinstance(alert.callback, AsyncCallback)  # run by the triggerer
    assert alert.callback.path == "market_airflow.notify.publish_deadline_missed"
    assert alert.callback.kwargs["after_close_minutes"] == interval + 30


def test_the_deadline_survives_serialization_as_the_scheduler_reads_it(monkeypatch):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _parse(monkeypatch, "90")

    encoded = DagSerialization.to_dict(dag)["dag"]["deadline"]

    (alert,) = encoded
    assert alert["name"] == "scores_published"
    assert alert["reference"] == {"reference_type": "DagRunQueuedAtDeadline"}
    assert alert["interval"]["__data__"] == 3600.0
    callback = alert["callback"]
    assert callback["__classname__"] == "airflow.sdk.definitions.callback.AsyncCallback"
    assert callback["__data__"]["path"] == "market_airflow.notify.publish_deadline_missed"
    assert callback["__data__"]["kwargs"]["after_close_minutes"] == 90.0


@pytest.mark.parametrize("minutes", ["0", None])
def test_a_deadline_of_zero_or_unset_is_off(monkeypatch, minutes):
    dag = _parse(monkeypatch, minutes)

    assert not dag.deadline
