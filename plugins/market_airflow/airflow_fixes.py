"""Workarounds for known Airflow defects this project meets, each in one place with its test.

**Clearing a run whose queued-at deadline has not fired fails (HTTP 500).** Airflow 3.3.x
(apache/airflow#70368, fix proposed in #70370, not released in 3.3.2): since 3.3.0 a
deadline alert's interval is stored as JSON (a serialised ``timedelta``), but the clear path
(``clear_task_instances`` → ``_recalculate_dagrun_queued_at_deadlines``) still reads it as
seconds: ``timedelta(seconds={...})`` raises ``TypeError`` and the api-server answers 500.
market_daily's publish deadline counts from ``DAGRUN_QUEUED_AT`` (``notify.publish_deadline``)
and ``make up`` turns it on, so every clear of a red run within the deadline — the operator's
recovery path, in the UI and through ``market-recovery replay`` — would fail.

:func:`apply` replaces that one function with one that decodes the stored interval the way
Airflow's DagRun creation does (``decode_deadline_alert``). It is applied in the api-server
(``market_ui.app.create_app``), where the UI's and the REST API's clears run. It changes
nothing once Airflow stores or reads the interval correctly: :func:`needed` looks for the
defect in the installed code, and ``tests/plugins/test_airflow_fixes.py`` fails when the
defect is gone, so the workaround is removed with the upgrade that fixes it.
"""

from __future__ import annotations

import inspect
import logging

log = logging.getLogger(__name__)

#: The defective line of the installed ``_recalculate_dagrun_queued_at_deadlines``.
_DEFECT = "timedelta(seconds=deadline_alert.interval)"


def needed() -> bool:
    """Whether the installed Airflow still reads the stored interval as seconds."""
    from airflow.models import taskinstance

    original = getattr(taskinstance, "_recalculate_dagrun_queued_at_deadlines", None)
    if original is None or getattr(original, "__market_fix__", False):
        return False
    return _DEFECT in inspect.getsource(original)


def _stored_interval(deadline_alert):
    """A deadline alert row's interval as a ``timedelta`` (JSON, or seconds before 3.3)."""
    from airflow.serialization.decoders import decode_deadline_alert
    from airflow.serialization.definitions.deadline import (
        DeadlineAlertFields,
        SerializedVariableInterval,
    )
    from airflow.serialization.enums import DagAttributeTypes, Encoding

    decoded = decode_deadline_alert(
        {
            Encoding.TYPE: DagAttributeTypes.DEADLINE_ALERT,
            Encoding.VAR: {
                DeadlineAlertFields.REFERENCE: deadline_alert.reference,
                DeadlineAlertFields.INTERVAL: deadline_alert.interval,
                DeadlineAlertFields.CALLBACK: deadline_alert.callback_def,
            },
        }
    )
    interval = decoded.interval
    if isinstance(interval, SerializedVariableInterval):
        interval = interval.resolve()
    return interval


def _recalculate_dagrun_queued_at_deadlines(dagrun, new_queued_at, session) -> None:
    """Move the run's pending queued-at deadlines to ``new_queued_at`` + their interval (what
    Airflow's own function does, with the interval decoded)."""
    from airflow.models.deadline import Deadline, ReferenceModels
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel
    from sqlalchemy import false, select

    pending = session.execute(
        select(Deadline, DeadlineAlertModel)
        .join(DeadlineAlertModel, Deadline.deadline_alert_id == DeadlineAlertModel.id)
        .where(
            Deadline.dagrun_id == dagrun.id,
            Deadline.missed == false(),
            DeadlineAlertModel.reference[ReferenceModels.REFERENCE_TYPE_FIELD].as_string()
            == ReferenceModels.DagRunQueuedAtDeadline.__name__,
        )
    ).all()
    for deadline, alert in pending:
        deadline.deadline_time = new_queued_at + _stored_interval(alert)
    # The caller commits, as with Airflow's own function.


_recalculate_dagrun_queued_at_deadlines.__market_fix__ = True


def apply() -> bool:
    """Install the workaround where the installed Airflow needs it; whether it did."""
    if not needed():
        return False
    from airflow.models import taskinstance

    taskinstance._recalculate_dagrun_queued_at_deadlines = _recalculate_dagrun_queued_at_deadlines
    log.info("applied the workaround for apache/airflow#70368 (clear with a queued-at deadline)")
    return True
