"""Alerts reach the configured channel whatever else is down: the run-failure alert with the
market database unreachable, and the publish-deadline alert as Airflow's triggerer runs it.

Real channels only: the ``log`` channel with ``MARKET_ALERT_LOG``, and SMTP through the smtp
provider's ``SmtpNotifier`` to a loopback SMTP server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import date, datetime, timedelta
from types import SimpleNamespace

import pytest

# Imported at collection: Airflow configures logging on first import, which must not
# happen inside a test (it would replace pytest's log capture handler).
from market_airflow import callbacks, notify

from market_pipeline import cache
from tests.support.smtp_server import LoopbackSmtpServer

RUN = "scheduled__2024-11-27T14:30:00+00:00"
SESSION = date(2024, 11, 27)  # XNYS: open 14:30 UTC, close 21:00 UTC


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on (held bound, so nothing else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def market_db_down(monkeypatch, closed_port):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_DB",
        f"postgres://postgres@127.0.0.1:{closed_port}/market?connect_timeout=5",
    )


@pytest.fixture
def alert_log(tmp_path, monkeypatch):
    path = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("MARKET_ALERT_LOG", str(path))
    return path


@pytest.fixture
def log_channel(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_CHANNEL", "log")


@pytest.fixture
def smtp_channel(monkeypatch):
    with LoopbackSmtpServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_MARKET_SMTP", server.connection_json())
        monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_CHANNEL", "smtp")
        monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_SMTP_CONN", "market_smtp")
        monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_EMAIL_TO", "ops@example.com, desk@example.com")
        yield server


def _alerts(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run_failure_context() -> dict:
    # What Airflow hands a DAG on_failure_callback: the run (and more we do not read).
    return {"dag_run": SimpleNamespace(dag_id="market_daily", run_id=RUN), "reason": "task_failure"}


# --------------------------------------------------------------------------- run failure


def test_a_run_failure_alert_goes_out_on_the_log_channel_when_the_market_database_is_down(
    market_db_down, log_channel, alert_log, caplog
):
    with caplog.at_level(logging.WARNING, logger="market_airflow.notify"):
        callbacks.alert_on_failure(_run_failure_context())

    (alert,) = _alerts(alert_log)
    assert alert["text"].startswith(f"market_daily run {RUN} failed; DLQ unreadable: ")
    assert "OperationalError" in alert["text"] and "127.0.0.1" in alert["text"]
    assert (alert["channel"], alert["delivered"], alert["kind"]) == ("log", True, "run_failed")
    assert any(r.getMessage() == f"market_daily alert: {alert['text']}" for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_a_run_failure_alert_is_mailed_when_the_market_database_is_down(
    market_db_down, smtp_channel, alert_log
):
    callbacks.alert_on_failure(_run_failure_context())

    ((sender, recipients, message),) = smtp_channel.messages
    assert sender == "market-daily@example.com"
    assert recipients == ["ops@example.com", "desk@example.com"]
    assert message["Subject"] == f"[market_daily] run {RUN} failed"
    assert (
        f"market_daily run {RUN} failed; DLQ unreadable: OperationalError"
        in message.get_body(("html",)).get_content()
    )
    (alert,) = _alerts(alert_log)
    assert (alert["channel"], alert["delivered"], alert["error"]) == ("smtp", True, None)


def test_an_smtp_server_that_is_down_still_leaves_the_alert_in_the_log(
    market_db_down, alert_log, monkeypatch, closed_port, caplog
):
    server = LoopbackSmtpServer()
    server.port = closed_port
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_SMTP", server.connection_json())
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_CHANNEL", "smtp")
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_SMTP_CONN", "market_smtp")
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_EMAIL_TO", "ops@example.com")

    with caplog.at_level(logging.WARNING, logger="market_airflow.notify"):
        callbacks.alert_on_failure(_run_failure_context())

    (alert,) = _alerts(alert_log)
    assert (alert["channel"], alert["delivered"]) == ("smtp", False)
    assert "DLQ unreadable" in alert["text"]
    assert any(r.getMessage() == f"market_daily alert: {alert['text']}" for r in caplog.records)


# --------------------------------------------------------------------------- publish deadline


@pytest.fixture
def deadline(monkeypatch, redis_client):
    """The DAG's Deadline Alert as configured by MARKET_PUBLISH_DEADLINE_MINUTES=150, its
    cache prefix pointed at this test's own keys."""
    monkeypatch.setenv(notify.DEADLINE_ENV, "150")
    alert = notify.publish_deadline(run_delay=timedelta(minutes=30))
    alert.callback.kwargs["cache_prefix"] = redis_client.test_prefix
    return alert


def _miss(alert) -> list[dict]:
    """Run the alert's callback as the triggerer does when the deadline is missed:
    ``CallbackTrigger`` with the context ``Deadline.handle_miss`` puts in its kwargs."""
    from airflow.triggers.callback import CallbackTrigger

    context = {
        "dag_run": {
            "dag_run_id": RUN,
            "dag_id": "market_daily",
            "logical_date": "2024-11-27T14:30:00Z",
            "data_interval_start": "2024-11-27T14:30:00Z",
            "data_interval_end": "2024-11-27T21:00:00Z",
            "queued_at": "2024-11-27T21:30:02Z",
            "state": "running",
        },
        "deadline": {
            "id": "0199d7a4-0000-7000-8000-000000000001",
            "deadline_time": datetime.fromisoformat("2024-11-27T23:30:02+00:00"),
        },
    }
    trigger = CallbackTrigger(
        callback_path=alert.callback.path,
        callback_kwargs={**alert.callback.kwargs, "context": context},
    )

    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def _publish(client, day: date) -> None:
    snapshot = {"symbol": "AAPL", "trade_date": day, "score": 0.5, "rank": 1, "percentile": 1.0}
    cache.publish(
        client, trade_date=day, run_id=f"r-{day}", snapshots=[snapshot], prefix=client.test_prefix
    )


def test_a_missed_deadline_alerts_on_the_log_channel_naming_the_session_and_what_is_served(
    deadline, redis_client, log_channel, alert_log
):
    _publish(redis_client, date(2024, 11, 26))

    events = _miss(deadline)

    assert [e["state"] for e in events] == ["running", "success"]
    (alert,) = _alerts(alert_log)
    assert alert["text"] == (
        f"market_daily run {RUN}: scores for session 2024-11-27 not published by the deadline "
        "2024-11-27 23:30:02+00:00 (150 min after the close); serving 2024-11-26"
    )
    assert events[-1]["body"] == alert["text"]
    assert (alert["kind"], alert["channel"]) == ("publish_deadline", "log")
    assert alert["delivered"] is True
    assert alert["trade_dates"] == ["2024-11-27"]


def test_a_missed_deadline_is_mailed(deadline, smtp_channel, alert_log):
    _miss(deadline)

    ((_, recipients, message),) = smtp_channel.messages
    assert recipients == ["ops@example.com", "desk@example.com"]
    assert message["Subject"] == "[market_daily] scores for session 2024-11-27 not published"
    body = message.get_body(("html",)).get_content()
    assert "not published by the deadline" in body and "serving nothing" in body


def test_no_alert_when_the_session_is_already_served(
    deadline, redis_client, log_channel, alert_log
):
    _publish(redis_client, SESSION)

    events = _miss(deadline)

    assert events[-1] == {"state": "success", "body": None}
    assert _alerts(alert_log) == []


def test_a_missed_deadline_still_alerts_when_the_cache_is_down(
    deadline, log_channel, alert_log, monkeypatch, closed_port
):
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_CACHE", f"redis://127.0.0.1:{closed_port}/0")

    _miss(deadline)

    (alert,) = _alerts(alert_log)
    assert "scores for session 2024-11-27 not published by the deadline" in alert["text"]
    assert "; cache unreadable: " in alert["text"]
    assert alert["delivered"] is True


def test_the_deadline_interval_counts_from_the_queued_run_and_can_be_turned_off(monkeypatch):
    from airflow.sdk import DeadlineReference

    monkeypatch.setenv(notify.DEADLINE_ENV, "150")
    alert = notify.publish_deadline(run_delay=timedelta(minutes=30))
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(minutes=120)

    monkeypatch.setenv(notify.DEADLINE_ENV, "0")
    assert notify.publish_deadline(run_delay=timedelta(minutes=30)) is None

    monkeypatch.setenv(notify.DEADLINE_ENV, "20")
    with pytest.raises(ValueError, match="later than the run's start"):
        notify.publish_deadline(run_delay=timedelta(minutes=30))
    monkeypatch.setenv(notify.DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match="must be a number of minutes, found 'soon'"):
        notify.publish_deadline(run_delay=timedelta(minutes=30))
