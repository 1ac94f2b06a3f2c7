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
    ) -> None:
        self.symbol = symbol
        self.session = session
        self.cause = cause
        where = ", ".join(
            part
            for part in (
                f"symbol={symbol}" if symbol else "",
                f"session={session.isoformat()}" if session else "",
            )
            if part
        )
        super().__init__(f"{message} [{where}]" if where else message)


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
