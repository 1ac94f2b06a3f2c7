"""`make up` / `make down`: the persistent local Airflow a user runs for real.

One deployment for the module (api-server, scheduler, dag-processor, triggerer under the
supervisor of ``scripts/local_airflow.py``), on a free port, its own state directory and
its own metadata database, with a two-symbol universe from the environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from tests.support.airflow_cluster import free_port
from tests.support.local_airflow import SCRIPT, LocalAirflow, alive_group

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _admin(pg_dsn: str) -> str:
    from tests.support.airflow_cluster import _admin_dsn

    return _admin_dsn(pg_dsn)


@pytest.fixture(scope="module")
def local(tmp_path_factory, pg_dsn):
    state = tmp_path_factory.mktemp("airflow-up")
    meta_db = f"afup_{uuid.uuid4().hex[:10]}"
    env = dict(
        os.environ,
        MARKET_LOCAL_AIRFLOW_DIR=str(state),
        MARKET_UI_PORT=str(free_port()),
        MARKET_AIRFLOW_META_DB=meta_db,
        MARKET_SCHEMA=f"t_{uuid.uuid4().hex[:10]}",
        MARKET_CACHE_PREFIX=f"test:{uuid.uuid4().hex[:10]}:v1",
        # The environment wins over airflow_settings.yaml's Variables.
        AIRFLOW_VAR_MARKET_UNIVERSE="AAPL,MSFT",
        MARKET_RETRY_BASE_SECONDS="1",
        # A team's own DAG beside market_daily: runs on each verified day (the Asset).
        MARKET_EXTRA_DAGS=str(ROOT / "tests" / "dags" / "consumer"),
    )
    deployment = LocalAirflow(state, int(env["MARKET_UI_PORT"]), env)
    try:
        first = deployment.script("up")
        deployment.first_output = first.stdout
        yield deployment
    finally:
        deployment.script("down", check=False)
        conn = psycopg2.connect(_admin(pg_dsn))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(meta_db))
            )
        conn.close()


def test_up_prints_the_ui_url_and_a_login_that_works(local):
    assert f"http://127.0.0.1:{local.port}" in local.first_output
    assert f"admin / {local.password}" in local.first_output
    assert local.api("GET", "/api/v2/dags/market_daily").json()["is_paused"] is False
    pools = {p["name"]: p["slots"] for p in local.api("GET", "/api/v2/pools").json()["pools"]}
    assert pools["market_source_api"] == 4  # from airflow_settings.yaml
    assert (local.state / "secrets.json").stat().st_mode & 0o077 == 0


def test_up_twice_is_harmless(local):
    supervisor = local.pid("supervisor")

    again = local.script("up")

    assert "already running" in again.stdout
    assert f"admin / {local.password}" in again.stdout
    assert local.pid("supervisor") == supervisor


def test_the_scheduler_runs_the_latest_session_by_itself_with_the_environment_universe(local):
    run = local.wait_for(
        "a scheduled run to succeed",
        lambda: next(
            (r for r in local.runs() if r["run_type"] == "scheduled" and r["state"] == "success"),
            None,
        ),
    )
    tis = local.api(
        "GET", f"/api/v2/dags/market_daily/dagRuns/{run['dag_run_id']}/taskInstances"
    ).json()["task_instances"]
    labels = {t["rendered_map_index"] for t in tis if t["task_id"] == "per_symbol.ingest_bars"}
    assert labels == {"AAPL", "MSFT"}


CONSUMER = "market_scores_consumer"


def _consumer_runs(local) -> list[dict]:
    """The consumer's finished runs, oldest first, each with what its task read from the
    triggering asset events (its XCom)."""
    runs = local.api("GET", f"/api/v2/dags/{CONSUMER}/dagRuns?limit=100&order_by=id").json()
    out = []
    for run in runs.get("dag_runs", []):
        if run["state"] != "success":
            continue
        xcom = local.api(
            "GET",
            f"/api/v2/dags/{CONSUMER}/dagRuns/{run['dag_run_id']}/taskInstances/served_day/"
            "xcomEntries/return_value",
            params={"deserialize": "true"},
        ).json()
        out.append({"run_id": run["dag_run_id"], "read": xcom["value"]})
    return out


def _verify(local, run_id: str, state: str) -> None:
    """Clear ``verify_cache`` alone in ``run_id`` and wait for it to end ``state``."""
    local.clear(run_id, ["verify_cache"], downstream=False)
    path = f"/api/v2/dags/market_daily/dagRuns/{run_id}"
    local.wait_for(
        f"verify_cache to end {state}",
        lambda: (
            local.api("GET", f"{path}/taskInstances/verify_cache").json()["state"] == state
            and local.api("GET", path).json()["state"] in ("success", "failed")
        ),
    )


def test_a_downstream_dag_runs_on_each_verified_day_and_not_after_a_failed_verify(
    local, redis_client
):
    from market_pipeline import cache as serving

    run = local.wait_for(
        "a scheduled run to succeed",
        lambda: next(
            (r for r in local.runs() if r["run_type"] == "scheduled" and r["state"] == "success"),
            None,
        ),
    )
    run_id = run["dag_run_id"]
    verified = local.api(
        "GET",
        f"/api/v2/dags/market_daily/dagRuns/{run_id}/taskInstances/verify_cache/"
        "xcomEntries/return_value",
        params={"deserialize": "true"},
    ).json()["value"]
    day = {"session": verified["trade_date"], "version": verified["version"]}
    # The scheduler ran the consumer on the asset event of that verified publish.
    first = local.wait_for(
        "the consumer to run on the verified day",
        lambda: [r for r in _consumer_runs(local) if day in r["read"]],
    )
    assert len(first) == 1 and first[0]["read"] == [day]
    before = _consumer_runs(local)

    # The served copy changed behind Postgres: verify_cache run again fails and announces
    # nothing. Put back, run again: verified, announced once.
    keys = serving.version_keys(day["version"], local.env["MARKET_CACHE_PREFIX"])
    symbol, original = sorted(redis_client.hgetall(keys.snapshots).items())[0]
    redis_client.hset(keys.snapshots, symbol, original.replace(b'"close":', b'"close":1'))
    try:
        _verify(local, run_id, "failed")
    finally:
        redis_client.hset(keys.snapshots, symbol, original)
    _verify(local, run_id, "success")

    after = local.wait_for(
        "the consumer to run on the day verified again",
        lambda: (runs := _consumer_runs(local))[len(before) :] and runs,
    )
    new = after[len(before) :]
    # One run, triggered by one event (the failed verify queued none), for the same day.
    assert [r["read"] for r in new] == [[day]], new


def test_a_killed_scheduler_comes_back_without_its_orphans_and_the_run_finishes(local):
    resp = local.api(
        "POST",
        "/api/v2/dags/market_daily/dagRuns",
        json={"dag_run_id": "kill-scheduler", "logical_date": "2024-11-29T00:00:00Z"},
    )
    assert resp.status_code in (200, 201), resp.text
    local.wait_for(
        "a task of the run to start",
        lambda: any(
            t["state"] in ("running", "success")
            for t in local.api(
                "GET", "/api/v2/dags/market_daily/dagRuns/kill-scheduler/taskInstances"
            ).json()["task_instances"]
        ),
    )
    old = local.pid("scheduler")

    os.kill(old, signal.SIGKILL)

    local.wait_for(
        "a new scheduler", lambda: local.pid("scheduler") not in (None, old), timeout=120
    )
    local.wait_for("the old scheduler's process group to end", lambda: not alive_group(old))

    def finished() -> str | None:
        run = next(r for r in local.runs() if r["dag_run_id"] == "kill-scheduler")
        return run["state"] if run["state"] in ("success", "failed") else None

    state = local.wait_for("the run to finish", finished)
    assert state == "success"
    assert "scheduler exited with -9" in (local.state / "logs" / "supervisor.log").read_text()


def test_a_red_run_cleared_within_its_publish_deadline_resumes(local):
    """make up turns the publish deadline on (a queued-at Deadline Alert); clearing a red run
    before its deadline passes must work (apache/airflow#70368: Airflow 3.3.2 answers 500;
    market_airflow.airflow_fixes)."""
    run_id = "red-within-deadline"
    # A bad delivery of AAPL: its raw gate stops it, the run turns red.
    resp = local.api(
        "POST",
        "/api/v2/variables",
        json={"key": "market_synthetic_defects", "value": "AAPL:high_below_close"},
    )
    assert resp.status_code in (200, 201), resp.text
    resp = local.api(
        "POST",
        "/api/v2/dags/market_daily/dagRuns",
        json={"dag_run_id": run_id, "logical_date": "2024-11-26T00:00:00Z"},
    )
    assert resp.status_code in (200, 201), resp.text

    def state() -> str | None:
        found = next(r for r in local.runs() if r["dag_run_id"] == run_id)
        return found["state"] if found["state"] in ("success", "failed") else None

    assert local.wait_for("the run to turn red", state) == "failed"
    # The red run's deadline is still pending: the clear must move it (the defect's path).
    deadlines = local.api("GET", f"/ui/dags/market_daily/dagRuns/{run_id}/deadlines")
    assert deadlines.status_code == 200, deadlines.text
    assert [d["missed"] for d in deadlines.json()["deadlines"]] == [False], deadlines.text
    # The delivery is fixed; the operator clears the instance that failed.
    assert local.api("DELETE", "/api/v2/variables/market_synthetic_defects").status_code == 204
    local.clear(run_id, [["per_symbol.validate_bars", 0]])  # 500 without the workaround

    assert local.wait_for("the cleared run to finish", state) == "success"


def test_runs_history_and_login_survive_down_and_up(local):
    before = {r["dag_run_id"] for r in local.runs()}
    password = local.password

    local.script("down")
    assert local.pid("supervisor") is None
    local.script("up")

    assert local.password == password
    assert {r["dag_run_id"] for r in local.runs()} >= before


def test_a_taken_port_is_named_in_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, MARKET_LOCAL_AIRFLOW_DIR=str(tmp_path), MARKET_UI_PORT=str(port))

        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "up"], env=env, capture_output=True, text=True
        )

    assert proc.returncode != 0
    assert f"port {port} is taken" in proc.stderr
    assert "MARKET_UI_PORT" in proc.stderr
