"""The pipeline's error taxonomy.

Every error names the symbol and session it concerns and what was expected and found.
Only :class:`TransientSourceError` (and infrastructure errors such as a dropped Redis
connection) is worth retrying; everything else fails the task at once.
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
