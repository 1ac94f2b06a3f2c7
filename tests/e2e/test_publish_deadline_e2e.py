"""The publish deadline end to end: a real scheduler notices a run still waiting for late data
at its deadline, and a real triggerer runs the DAG's callback, which alerts.

One symbol whose bar never comes (synthetic ``late``) keeps the raw gate waiting; the deadline is
MARKET_PUBLISH_DEADLINE_MINUTES=31 after the close, i.e. one minute after the run is queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.airflow_cluster import VENV_BIN, market_cluster

pytestmark = pytest.mark.e2e


def _wait_for_alert(path, cluster, triggerer, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return json.loads(path.read_text().splitlines()[0])
        if triggerer.poll() is not None:
            raise AssertionError(f"the triggerer exited with {triggerer.returncode}")
        time.sleep(1)  # polling another process's output, as wait_for_run does
    raise AssertionError(
        f"no deadline alert within {timeout:.0f} s:\n{cluster.logs_tail('scheduler')}\n"
        + (cluster.home / "proc" / "triggerer.log").read_text()[-4000:]
    )


def test_a_run_still_waiting_at_its_deadline_alerts_through_the_triggerer(
    pg_dsn, redis_url, airflow_cluster_factory, tmp_path
):
    alerts = tmp_path / "alerts.jsonl"
    env = {
        "MARKET_PUBLISH_DEADLINE_MINUTES": "31",
        "MARKET_ALERT_LOG": str(alerts),
        "MARKET_GATE_POKE_SECONDS": "5",
        "MARKET_GATE_TIMEOUT_SECONDS": "3600",
        "AIRFLOW_VAR_MARKET_UNIVERSE": "AAPL",
        "AIRFLOW_VAR_MARKET_SYNTHETIC_DEFECTS": "AAPL:late",
        "AIRFLOW_VAR_MARKET_ALERT_CHANNEL": "log",
    }
    with market_cluster(airflow_cluster_factory, "dl", pg_dsn, redis_url, env) as cluster:
        log = open(cluster.home / "proc" / "triggerer.log", "wb")  # noqa: SIM115
        triggerer = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "triggerer", "--skip-serve-logs"],
            env=cluster.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(cluster.home),
        )
        try:
            run_id = cluster.trigger("2024-11-29")  # no run id: Airflow mints one, as the UI
            assert run_id.startswith("manual__2024-11-29__"), run_id  # it names the session

            alert = _wait_for_alert(alerts, cluster, triggerer)

            assert alert["kind"] == "publish_deadline"
            assert alert["run_id"] == run_id
            assert alert["trade_dates"] == ["2024-11-29"]
            assert alert["text"].startswith(
                f"market_daily run {run_id}: scores for session 2024-11-29 not published by "
                "the deadline "
            )
            assert alert["text"].endswith("(31 min after the close); serving nothing")
            assert (alert["channel"], alert["delivered"]) == ("log", True)
            assert cluster.run(run_id)["state"] == "running"  # still waiting for AAPL's bar
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(triggerer.pid, signal.SIGTERM)
            try:
                triggerer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(triggerer.pid, signal.SIGKILL)
                triggerer.wait(timeout=10)
            log.close()
