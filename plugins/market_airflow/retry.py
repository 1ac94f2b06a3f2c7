"""The retry policy: retry what is worth retrying, fail at once on everything else."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy

# failure_kind lives with the error taxonomy; callbacks and tests import it from here too.
from market_pipeline.errors import failure_kind

__all__ = ["MarketRetryPolicy", "failure_kind"]


class MarketRetryPolicy(RetryPolicy):
    """Transient errors retry with exponential backoff capped at ``max_delay`` (honouring a
    source's Retry-After); data-quality, source and code errors fail at once.

    :param base_delay: delay before the first retry.
    :param max_delay: cap of the exponential backoff.
    :param multiplier: growth of the delay per try.
    """

    def __init__(
        self,
        base_delay: timedelta = timedelta(seconds=30),
        max_delay: timedelta = timedelta(minutes=10),
        multiplier: float = 2.0,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.multiplier = multiplier

    def delay_for(self, try_number: int, retry_after: float | None = None) -> timedelta:
        backoff = self.base_delay.total_seconds() * self.multiplier ** max(try_number - 1, 0)
        seconds = max(backoff, retry_after or 0.0)
        return timedelta(seconds=min(seconds, self.max_delay.total_seconds()))

    def evaluate(self, exception, try_number, max_tries, context=None) -> RetryDecision:
        kind = failure_kind(exception)
        if kind != "transient":
            return RetryDecision.fail(reason=f"{kind} error is not retried: {exception}")
        delay = self.delay_for(try_number, getattr(exception, "retry_after", None))
        return RetryDecision.retry(delay=delay, reason=f"transient error, retry in {delay}")

    def serialize(self) -> dict[str, Any]:
        return {
            "__type": "MarketRetryPolicy",
            "base_delay": self.base_delay.total_seconds(),
            "max_delay": self.max_delay.total_seconds(),
            "multiplier": self.multiplier,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> MarketRetryPolicy:
        return cls(
            timedelta(seconds=data["base_delay"]),
            timedelta(seconds=data["max_delay"]),
            data["multiplier"],
        )
