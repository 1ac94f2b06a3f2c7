"""What Airflow's metadata database knows about market_daily's runs (read-only).

The plugin runs inside the api-server, so it reads the metadata database with the session
the api-server gives each request (``SessionDep``), as Airflow's own routes do: DAG runs,
task-instance states of the per-symbol chain, the ``universe`` task's output (which symbols
each map index carries) and when ``publish_cache`` last finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from market_pipeline.health import GROUP_ID, STAGE_IDS

UNIVERSE_TASK = "universe"
PUBLISH_TASK = "publish_cache"


@dataclass(frozen=True)
class Run:
    """One DAG run, with the fields the health page shows."""

    dag_id: str
    run_id: str
    state: str | None
    run_type: str
    logical_date: datetime | None
    run_after: datetime | None
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    start_date: datetime | None
    end_date: datetime | None

    def duration_seconds(self, now: datetime) -> float | None:
        """Wall time from start to end (to ``now`` while it runs)."""
        if self.start_date is None:
            return None
        return max(((self.end_date or now) - self.start_date).total_seconds(), 0.0)


def _run(dr) -> Run:
    return Run(
        dag_id=dr.dag_id,
        run_id=dr.run_id,
        state=str(dr.state) if dr.state is not None else None,
        run_type=str(dr.run_type),
        logical_date=dr.logical_date,
        run_after=dr.run_after,
        data_interval_start=dr.data_interval_start,
        data_interval_end=dr.data_interval_end,
        start_date=dr.start_date,
        end_date=dr.end_date,
    )


def recent_runs(session, dag_id: str, limit: int = 20) -> list[Run]:
    """The newest runs of ``dag_id`` (by run_after), newest first."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    rows = session.scalars(
        select(DagRun)
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.run_after.desc(), DagRun.id.desc())
        .limit(limit)
    )
    return [_run(dr) for dr in rows]


def get_run(session, dag_id: str, run_id: str) -> Run | None:
    """One run, or None when the DAG has no run with that id."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    return _run(dr) if dr is not None else None


def stage_states(session, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
    """``{(stage, map_index): state}`` of the run's per-symbol task instances."""
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    task_ids = [f"{GROUP_ID}.{stage}" for stage in STAGE_IDS]
    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id.in_(task_ids),
        )
    )
    return {
        (task_id.rsplit(".", 1)[-1], map_index): (str(state) if state is not None else None)
        for task_id, map_index, state in rows
    }


def universe_chunks(session, dag_id: str, run_id: str) -> list[list[str]] | None:
    """The symbols of each map index, as the run's ``universe`` task returned them."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.scalar(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == UNIVERSE_TASK,
            XComModel.map_index == -1,
            XComModel.key == "return_value",
        )
    )
    if row is None:
        return None
    value = XComModel.deserialize_value(row)
    if not isinstance(value, list) or not all(isinstance(c, list) for c in value):
        return None
    return [[str(s) for s in chunk] for chunk in value]


def published_at(session, dag_id: str, run_id: str) -> datetime | None:
    """When the run's ``publish_cache`` instance last succeeded (None when unknown)."""
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    return session.scalar(
        select(TaskInstance.end_date).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == PUBLISH_TASK,
            TaskInstance.state == "success",
        )
    )


def exchange() -> str:
    """The ``market_exchange`` Variable (environment first, then the metadata DB)."""
    from airflow.sdk import Variable

    return Variable.get("market_exchange", default="XNYS") or "XNYS"
