"""Task and DAG callbacks: the DLQ lifecycle and the run alert.

Callbacks never raise: a broken DLQ database must not hide the task's own error, so
every failure here is logged and swallowed.
"""

from __future__ import annotations

import logging

from market_airflow.retry import failure_kind

log = logging.getLogger(__name__)


def _stage(task_id: str) -> str:
    return task_id.rsplit(".", 1)[-1]


def symbol_of(context) -> str | None:
    """The symbol a (mapped) task instance works on."""
    if context.get("symbol"):
        return context["symbol"]
    ti = context.get("ti")
    label = getattr(ti, "rendered_map_index", None)
    if label and not str(label).isdigit():
        return str(label)
    op_kwargs = getattr(context.get("task"), "op_kwargs", None) or {}
    value = op_kwargs.get("symbol")
    return value if isinstance(value, str) else None


def trade_date_of(context):
    from market_airflow import stages

    try:
        return stages.trade_date(context)
    except Exception:
        return None


def record_failure(context) -> None:
    """``on_failure_callback``: open (or update) the DLQ row of the failed instance."""
    try:
        from market_airflow.hooks import MarketDbHook
        from market_pipeline import store

        ti = context["ti"]
        exc = context.get("exception")
        if getattr(exc, "restates_dlq", False):
            return
        dag_run = context.get("dag_run")
        entry = store.DlqEntry(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            logical_date=getattr(dag_run, "logical_date", None),
            trade_date=trade_date_of(context),
            task_id=ti.task_id,
            map_index=ti.map_index if ti.map_index is not None else -1,
            symbol=symbol_of(context),
            stage=_stage(ti.task_id),
            try_number=ti.try_number,
            kind=failure_kind(exc),
            error_class=type(exc).__name__ if exc else "Unknown",
            error_message=str(exc) if exc else "failed without an exception",
        )
        conn = MarketDbHook().get_conn()
        try:
            store.dlq_record(conn, entry)
        finally:
            conn.close()
        log.info("DLQ: recorded %s/%s[%s] kind=%s", entry.run_id, entry.task_id,
                 entry.map_index, entry.kind)  # fmt: skip
    except Exception:
        log.exception("DLQ: could not record the failure (the task's own error stands)")


def resolve_success(context) -> None:
    """``on_success_callback``: resolve the instance's open DLQ row, if any."""
    try:
        from market_airflow.hooks import MarketDbHook
        from market_pipeline import store

        ti = context["ti"]
        conn = MarketDbHook().get_conn()
        try:
            resolved = store.dlq_resolve(
                conn,
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index if ti.map_index is not None else -1,
                try_number=ti.try_number,
                trade_date=trade_date_of(context),
                symbol=symbol_of(context),
            )
        finally:
            conn.close()
        if resolved:
            log.info("DLQ: resolved %s open row(s) for %s", resolved, ti.task_id)
    except Exception:
        log.exception("DLQ: could not resolve rows for the succeeded task")


def alert_on_failure(context) -> None:
    """DAG ``on_failure_callback``: one alert with failed symbols per stage and kind."""
    try:
        from market_airflow.notify import send_run_alert

        send_run_alert(context)
    except Exception:
        log.exception("alert: could not send the run-failure alert")
