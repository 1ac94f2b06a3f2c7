"""The retry policy: Execution API outages are transient, and the backoff restarts at a clear."""

from __future__ import annotations

from datetime import timedelta

import pytest
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import RetryAction
from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
from airflow.sdk.execution_time.comms import ErrorResponse
from market_airflow.retry import MarketRetryPolicy, failure_kind, tries_since_clear


def _api_error(error: ErrorType, status: int | None) -> AirflowRuntimeError:
    # What the supervisor sends the task process when its call to the api-server failed
    # (airflow.sdk.execution_time.supervisor: ServerResponseError / httpx errors).
    detail = {"status_code": status, "message": "Server error '500 Internal Server Error'"}
    return AirflowRuntimeError(ErrorResponse(error=error, detail=detail))


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, None])
def test_an_api_server_or_database_outage_reaching_the_execution_api_is_retried(status):
    exc = _api_error(ErrorType.API_SERVER_ERROR, status)

    decision = MarketRetryPolicy().evaluate(exc, try_number=1, max_tries=3)

    assert failure_kind(exc) == "transient"
    assert decision.action == RetryAction.RETRY
    assert decision.retry_delay == timedelta(seconds=30)


@pytest.mark.parametrize(
    "error, status",
    [
        (ErrorType.API_SERVER_ERROR, 400),
        (ErrorType.API_SERVER_ERROR, 404),
        (ErrorType.API_SERVER_ERROR, 422),
        (ErrorType.PERMISSION_DENIED, 403),
        (ErrorType.VARIABLE_NOT_FOUND, None),
        (ErrorType.XCOM_NOT_FOUND, None),
    ],
)
def test_a_request_the_execution_api_refuses_is_not_retried(error, status):
    exc = _api_error(error, status)

    assert failure_kind(exc) == "code"
    assert MarketRetryPolicy().evaluate(exc, 1, 3).action == RetryAction.FAIL


# An instance with retries=3 (the DAG's default): Airflow starts it with max_tries=3 and tries
# 1..4; a clear after try 4 sets max_tries = try_number + retries = 7 (airflow.models.
# taskinstance.clear_task_instances) and the next tries are 5..8; a second clear after try 8
# sets max_tries = 11 and the tries are 9..12.
TRIES = [
    # (try_number, max_tries, tries since the last clear)
    (1, 3, 1),
    (2, 3, 2),
    (4, 3, 4),
    (5, 7, 1),
    (6, 7, 2),
    (8, 7, 4),
    (9, 11, 1),
    (10, 11, 2),
]


@pytest.mark.parametrize("try_number, max_tries, since", TRIES)
def test_tries_are_counted_from_the_last_clear(try_number, max_tries, since):
    assert tries_since_clear(try_number, max_tries, retries=3) == since


@pytest.mark.parametrize("try_number, max_tries, since", TRIES)
def test_the_backoff_restarts_after_a_clear(try_number, max_tries, since):
    policy = MarketRetryPolicy(base_delay=timedelta(seconds=30), max_delay=timedelta(hours=1))
    task = EmptyOperator(task_id="task", retries=3)  # the policy reads the task's retries
    exc = ConnectionError("reset by peer")

    decision = policy.evaluate(exc, try_number, max_tries, context={"task": task})

    # 30 s, 60 s, 120 s... from the first try after each clear, not from the absolute try.
    assert decision.retry_delay == timedelta(seconds=30 * 2 ** (since - 1))


def test_a_clear_while_running_or_changed_retries_stay_within_bounds():
    # Retries raised since the last clear: never beyond the absolute try.
    assert tries_since_clear(6, 3, retries=5) == 6
    # Retries lowered since: never below the first try.
    assert tries_since_clear(5, 9, retries=3) == 1
    # Unknown retries: the absolute try (the old behaviour, never worse).
    assert tries_since_clear(6, 7, retries=None) == 6
