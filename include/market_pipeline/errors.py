"""The pipeline's error taxonomy.

Every error names the symbol and session it concerns and what was expected and found.
Only :class:`TransientSourceError` (and infrastructure errors such as a dropped Redis
connection or an Execution API outage) is worth retrying; everything else fails the task
at once.
"""

from __future__ import annotations

from datetime import date


class MarketPipelineError(Exception):
    """Base class: carries the symbol, session and cause of a failure."""

    #: The DLQ ``kind`` this error is recorded as.
    kind = "code"

    def __init__(
        self,
        message: str,
        *,
        symbol: str | None = None,
        session: date | None = None,
        cause: str | None = None,
        action: str | None = None,
    ) -> None:
        self.symbol = symbol
        self.session = session
        self.cause = cause
        #: The one next action (see :func:`next_action`): it ends the message.
        self.action = action
        where = ", ".join(
            part
            for part in (
                f"symbol={symbol}" if symbol else "",
                f"session={session.isoformat()}" if session else "",
            )
            if part
        )
        text = f"{message} [{where}]" if where else message
        super().__init__(f"{text}{NEXT}{action}" if action else text)


class TransientSourceError(MarketPipelineError):
    """A source failure worth retrying: network, timeout, rate limit (429), 5xx.

    ``retry_after`` is the delay in seconds the source asked for, when it said one.
    """

    kind = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PermanentSourceError(MarketPipelineError):
    """A source failure retrying cannot fix: 4xx other than 429, unknown symbol, bad payload."""

    kind = "source"


class DataQualityError(MarketPipelineError):
    """A quality gate's critical expectation failed; the data must not go further."""

    kind = "data_quality"

    def __init__(self, message: str, *, failed_expectations: list[str] | None = None, **kw):
        super().__init__(message, **kw)
        self.failed_expectations = list(failed_expectations or [])


class NotDeliveredError(MarketPipelineError):
    """The data for the session has not arrived (a late file); the gate gave up waiting."""

    kind = "not_delivered"


class ConfigurationError(MarketPipelineError):
    """Invalid configuration (a bad symbol in the universe, an unknown source name...)."""

    kind = "code"


# Infrastructure errors that a later attempt can cure (matched by class path, so this
# module does not import psycopg2/redis/requests).
_TRANSIENT_CLASS_PATHS = (
    "psycopg2.OperationalError",
    "redis.exceptions.ConnectionError",
    "redis.exceptions.TimeoutError",
    "requests.exceptions.ConnectionError",
    "requests.exceptions.Timeout",
)


def _is_transient_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    for klass in type(exc).__mro__:
        if f"{klass.__module__}.{klass.__qualname__}" in _TRANSIENT_CLASS_PATHS:
            return True
    return False


#: Execution API answers a later try can get right: the api-server (or its metadata database)
#: failed, timed out or shed load. A 4xx other than these is a request that will stay wrong.
_TRANSIENT_API_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient_execution_api_error(exc: BaseException) -> bool:
    """An ``airflow.sdk.exceptions.AirflowRuntimeError`` a retry can cure.

    The task process reaches the api-server through its supervisor, which turns an HTTP error
    into ``API_SERVER_ERROR`` with the status code and a network error (``httpx.ConnectError``,
    a timeout: the api-server is down) into ``API_SERVER_ERROR`` without one. Both are
    transient when the status is missing or one of 408, 425, 429 and 5xx; a ``PERMISSION_DENIED``,
    a not-found or a 4xx request error is not. Matched by class path: no Airflow import here.
    """
    if not any(
        f"{k.__module__}.{k.__qualname__}" == "airflow.sdk.exceptions.AirflowRuntimeError"
        for k in type(exc).__mro__
    ):
        return False
    response = getattr(exc, "error", None)
    error_type = getattr(getattr(response, "error", None), "value", None)
    if error_type != "API_SERVER_ERROR":
        return False
    detail = getattr(response, "detail", None) or {}
    status = detail.get("status_code") if isinstance(detail, dict) else None
    if status is None:
        return True
    try:
        status = int(status)
    except (TypeError, ValueError):
        return True
    return status >= 500 or status in _TRANSIENT_API_STATUS


def failure_kind(exc: BaseException | None) -> str:
    """The DLQ kind of an exception (see docs/operations.md)."""
    if exc is None:
        return "code"
    if isinstance(exc, MarketPipelineError):
        return exc.kind
    name = type(exc).__name__
    if name == "AirflowSensorTimeout":
        return "not_delivered"
    if name in ("AirflowTaskTimeout", "AirflowTaskTerminated"):
        return "killed"
    if _is_transient_infrastructure(exc) or is_transient_execution_api_error(exc):
        return "transient"
    return "code"


# --------------------------------------------------------------------------- the next action

#: Gate rules a true market event can break (a real +80 % move): the operator may acknowledge
#: them (``market-recovery ack``). Every other rule is broken only by a bad delivery.
EVENT_RULES = frozenset({"max_close_move"})
#: Where every failure message ends: ``… — next: <the one action>``.
NEXT = " — next: "


def instance(task_id: str, label: str | None) -> str:
    """How the operator finds a task instance: ``per_symbol.validate_bars[IBM]``."""
    return f"{task_id}[{label}]" if label else task_id


def next_action(
    kind: str,
    *,
    task_id: str,
    label: str | None = None,
    symbol: str | None = None,
    session: date | None = None,
    event_sessions: dict[str, list[str]] | None = None,
    gate: str = "bars",
) -> str:
    """The one thing to do about a failure, ending every DLQ message, task log and alert.

    ``label`` names the failed instance (its symbol, or a chunk's ``FIRST..LAST``);
    ``event_sessions`` (a failed gate whose every failed rule can be a true market event):
    ``{rule: [session, …]}`` — the exact ``market-recovery ack`` commands are given.
    """
    target = instance(task_id, label or symbol)
    clear = f"clear {target} with downstream"
    if event_sessions and symbol:
        acks = " && ".join(
            f"market-recovery ack {symbol} {day} --rule {rule}"
            + ("" if gate == "bars" else f" --gate {gate}")
            + ' --reason "<the event>"'
            for rule, days in sorted(event_sessions.items())
            for day in (days or [session.isoformat() if session else "<session>"])
        )
        return (
            f"if it is a true market event, run `{acks}` and {clear}; "
            f"otherwise fix the delivery and {clear}"
        )
    if kind in ("data_quality", "source", "not_delivered"):
        return f"fix the delivery and {clear}"
    if kind == "transient":
        return f"{clear} once the source and the databases answer again"
    if kind == "killed":
        return f"{clear} (give the worker room or raise the task's timeout first)"
    if kind == "upstream":
        return f"{clear} once its upstream tasks succeeded"
    return f"fix the cause (code or configuration) and {clear}"


def with_next_action(message: str, action: str) -> str:
    """``message — next: action`` (once: a message that has its action already keeps it)."""
    if NEXT in message:
        return message
    return f"{message}{NEXT}{action}"
