"""Task and DAG callbacks: the DLQ lifecycle and the run alert.

Callbacks never raise: a broken DLQ database must not hide the task's own error, so
every failure here is logged and swallowed.
"""

from __future__ import annotations

import logging

from market_airflow.retry import failure_kind

log = logging.getLogger(__name__)


def symbol_of(context) -> str | None:
    """The symbol (or chunk label) a (mapped) task instance works on."""
    if context.get("symbol"):
        return context["symbol"]
    ti = context.get("ti")
    label = getattr(ti, "rendered_map_index", None)
    if label and not str(label).isdigit():
        return str(label)
    op_kwargs = getattr(context.get("task"), "op_kwargs", None) or {}
    value = op_kwargs.get("symbols")
    if isinstance(value, list | tuple) and len(value) == 1:
        return str(value[0])
    return None


def symbols_of(context) -> list[str | None]:
    """Every symbol the instance carries: one per DLQ row (``[None]`` when unknown)."""
    symbols = context.get("symbols")
    if not symbols:
        op_kwargs = getattr(context.get("task"), "op_kwargs", None) or {}
        value = op_kwargs.get("symbols")
        symbols = list(value) if isinstance(value, list | tuple) else None
    if symbols and len(symbols) > 1:
        return [str(s) for s in symbols]
    return [symbol_of(context)]


def trade_date_of(context):
    from market_airflow import runtime

    try:
        return runtime.session(context)
    except Exception:
        return None


def dlq_message(
    exc: BaseException | None,
    kind: str,
    symbol: str | None,
    day,
    *,
    task_id: str | None = None,
    label: str | None = None,
) -> str:
    """The DLQ message of a failure, in words a person can act on, ending with the one next
    action (``… — next: fix the delivery and clear per_symbol.validate_bars[IBM] …``).

    It carries the error class (a ``KeyError`` says only ``-1``), and a bar that never came
    (the raw gate's sensor timed out) names the source and the file or endpoint it waited on.
    """
    from market_pipeline.errors import MarketPipelineError, next_action, with_next_action
    from market_pipeline.recovery import error_text

    action = None
    if task_id:
        action = next_action(kind, task_id=task_id, label=label, symbol=symbol, session=day)
    if exc is None:
        message = "failed without an exception"
        return with_next_action(message, action) if action else message
    message = error_text(type(exc).__name__, str(exc))
    # Airflow's sensor timeout knows nothing of sources; our own errors say where themselves.
    if kind == "not_delivered" and symbol and not isinstance(exc, MarketPipelineError):
        where = _delivery_location(symbol)
        message = (
            f"expected the bar of {symbol} for {day or 'the session'} from {where}, "
            f"found none when the raw gate stopped waiting ({message})"
        )
    return with_next_action(message, action) if action else message


def _delivery_location(symbol: str) -> str:
    from market_airflow.runtime import delivery_location

    return delivery_location(symbol)


def _action_of(message: str) -> str:
    from market_pipeline.errors import NEXT

    return message.rsplit(NEXT, 1)[-1]


def _failure_entries(context) -> list:
    from market_airflow.chunking import dlq_entry

    ti = context["ti"]
    exc = context.get("exception")
    day = trade_date_of(context)
    # No exception: the try did not end by raising (killed; its heartbeat stopped) and the
    # scheduler had the dag-processor run the callback.
    kind = failure_kind(exc) if exc is not None else "killed"
    return [
        dlq_entry(
            context,
            day,
            symbol,
            kind,
            type(exc).__name__ if exc else "Unknown",
            dlq_message(exc, kind, symbol, day, task_id=ti.task_id, label=symbol_of(context))
            if exc is not None
            else "the try ended without an exception (killed, or its heartbeat stopped)",
        )
        for symbol in symbols_of(context)  # a chunk that failed as a whole: every symbol
    ]


def record_failure(context) -> None:
    """``on_failure_callback`` and ``on_retry_callback``: open (or update) the DLQ row of the
    failed try; a try that is retried counts in the row's ``failures`` too, so a failure that
    a retry cured stays visible once the row is resolved.

    When the market database cannot be reached the row is spooled (``market_pipeline.
    dlq_spool``) and written by the next DLQ writer: a later callback or ``run_health``.
    """
    try:
        exc = context.get("exception")
        if getattr(exc, "restates_dlq", False):
            return
        entries = _failure_entries(context)
    except Exception:
        log.exception("DLQ: could not describe the failure (the task's own error stands)")
        return
    if entries:  # the task log ends with what to do about it, whatever happens to the DLQ
        log.warning("next action: %s", _action_of(entries[0].error_message))
    recorded: list = []
    try:
        from market_airflow.hooks import MarketDbHook
        from market_pipeline import dlq_spool, store

        conn = MarketDbHook().get_conn()
        try:
            # After every failure spooled while the database was down (an earlier try's
            # comes first); if the database goes away meanwhile, this one is spooled behind them.
            with dlq_spool.applied_first(conn):
                while entries:
                    store.dlq_record(conn, entries[0])
                    recorded.append(entries.pop(0))
        finally:
            conn.close()
    except Exception:
        log.exception("DLQ: could not record the failure (the task's own error stands)")
        _spool(entries)  # only what did not reach the database
        return
    entries = recorded
    log.info(
        "DLQ: recorded %s/%s[%s] kind=%s try=%s (%d symbol row(s))",
        entries[0].run_id,
        entries[0].task_id,
        entries[0].map_index,
        entries[0].kind,
        entries[0].try_number,
        len(entries),
    )


def _spool(entries) -> None:
    try:
        from market_pipeline import dlq_spool

        path = dlq_spool.spool_records(entries)
        log.warning(
            "DLQ: market database unreachable; the row is kept in %s and written by the next "
            "DLQ writer (run_health reconciles it)",
            path,
        )
    except Exception:
        log.exception("DLQ: could not spool the failure either (run_health reconciles the gap)")


def resolve_success(context) -> None:
    """``on_success_callback``: resolve the instance's open DLQ row, if any."""
    try:
        ti = context["ti"]
        if len(symbols_of(context)) > 1:
            return  # a chunk resolves its symbols' rows itself (chunking.settle)
        what = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": ti.map_index if ti.map_index is not None else -1,
            "try_number": ti.try_number,
            "trade_date": trade_date_of(context),
            "symbol": symbol_of(context),
        }
    except Exception:
        log.exception("DLQ: could not describe the succeeded task")
        return
    try:
        from market_airflow.hooks import MarketDbHook
        from market_pipeline import dlq_spool, store

        conn = MarketDbHook().get_conn()
        try:
            # Only after the failures it resolves, even one another process is applying.
            with dlq_spool.applied_first(conn):
                resolved = store.dlq_resolve(conn, **what)
        finally:
            conn.close()
        if resolved:
            log.info("DLQ: resolved %s open row(s) for %s", resolved, what["task_id"])
    except Exception:
        log.exception("DLQ: could not resolve rows for the succeeded task")
        try:
            from market_pipeline import dlq_spool

            dlq_spool.spool_resolve(**what)
        except Exception:
            log.exception("DLQ: could not spool the resolve either")


def alert_on_failure(context) -> None:
    """DAG ``on_failure_callback``: one alert with failed symbols per stage and kind."""
    try:
        from market_airflow.notify import send_run_alert

        send_run_alert(context)
    except Exception:
        log.exception("alert: could not send the run-failure alert")
