"""The retry policy: retry what is worth retrying, fail at once on everything else."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy

# failure_kind lives with the error taxonomy; callbacks and tests import it from here too.
from market_pipeline.errors import failure_kind

__all__ = ["MarketRetryPolicy", "failure_kind", "tries_since_clear"]


def tries_since_clear(try_number: int, max_tries: int, retries: int | None) -> int:
    """Which try this is since the instance was last cleared (1 for the first).

    Airflow never resets ``try_number``: a clear keeps it and raises ``max_tries`` to
    ``try_number + retries`` (``airflow.models.taskinstance.clear_task_instances``), and
    the first try of an instance has ``max_tries == retries``. So the tries so far are
    ``try_number - (max_tries - retries)``, the same count Airflow uses to find the first
    reschedule of a try (``RuntimeTaskInstance.get_first_reschedule_date``). Unknown
    ``retries`` or values that do not fit (a clear while running keeps ``max_tries``; the
    retries of a task changed since) fall back to the bounds ``1..try_number``.
    """
    if retries is None or max_tries < 0:
        return max(try_number, 1)
    return min(max(try_number - (max_tries - retries), 1), max(try_number, 1))


def _retries_of(context) -> int | None:
    if not context:
        return None
    task = context.get("task") or getattr(context.get("ti"), "task", None)
    retries = getattr(task, "retries", None)
    return int(retries) if isinstance(retries, int) else None


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
        """The delay after try ``try_number`` (counted since the last clear) failed."""
        backoff = self.base_delay.total_seconds() * self.multiplier ** max(try_number - 1, 0)
        seconds = max(backoff, retry_after or 0.0)
        return timedelta(seconds=min(seconds, self.max_delay.total_seconds()))

    def evaluate(self, exception, try_number, max_tries, context=None) -> RetryDecision:
        kind = failure_kind(exception)
        if kind != "transient":
            return RetryDecision.fail(reason=f"{kind} error is not retried: {exception}")
        # The backoff restarts at each clear: Airflow's try_number keeps rising across clears.
        tries = tries_since_clear(try_number, max_tries, _retries_of(context))
        delay = self.delay_for(tries, getattr(exception, "retry_after", None))
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
