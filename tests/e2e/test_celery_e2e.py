"""market_daily on CeleryExecutor: two workers, a red day, a clear through the REST API, green.

The plain-processes deployment of docs/deploy.md on loopback: api-server, scheduler,
dag-processor and two ``airflow celery worker`` processes (``worker-1``, ``worker-2``; each
reports its own hostname, as on machines of their own), the broker in the test Redis (its own
database and key prefix), the result backend in the Postgres metadata database. Four symbols
keep it short; IBM's last bar jumps +80 %, so its raw gate fails on whichever worker runs it.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.airflow_cluster import market_cluster
from tests.support.db import rows as _query

pytestmark = pytest.mark.e2e

SESSION = "2024-11-29"
UNIVERSE = ["AAPL", "IBM", "KO", "MSFT"]
WORKERS = ("worker-1", "worker-2")
GROUP = "per_symbol"
IBM = sorted(UNIVERSE).index("IBM")


@pytest.fixture(scope="module")
def cluster(pg_dsn, redis_url, airflow_cluster_factory):
    with market_cluster(
        airflow_cluster_factory,
        "cel",
        pg_dsn,
        redis_url,
        cache_url=redis_url,
        executor="CeleryExecutor",
        celery_workers=WORKERS,
        worker_concurrency=2,
    ) as cluster:
        cluster.set_variable("market_universe", ",".join(UNIVERSE))
        cluster.set_variable("market_quorum", "0.75")
        yield cluster


def _log_text(cluster, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The task log as the api-server serves it to the UI (read from the shared log folder)."""
    path = (
        f"/api/v2/dags/{cluster.dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
    )
    body = cluster.api("GET", path, params={"map_index": map_index, "full_content": True}).json()
    return "\n".join(
        item if isinstance(item, str) else json.dumps(item) for item in body["content"]
    )


def test_a_red_day_on_two_celery_workers_turns_green_after_a_clear_through_the_rest_api(
    cluster, pg_dsn
):
    for name in WORKERS:  # the preload reached each worker (not silently absent)
        assert "preload (celery worker): loaded " in cluster.logs_tail(name, chars=10**6), name
    cluster.set_variable("market_synthetic_defects", "IBM:spike")
    started = time.perf_counter()

    run_id = cluster.trigger(SESSION, run_id=f"celery__{SESSION}")
    red = cluster.wait_for_run(run_id, timeout=300)

    tis = {(t["task_id"], t["map_index"]): t for t in cluster.task_instances(run_id)}
    gate = tis[(f"{GROUP}.validate_bars", IBM)]
    assert red == "failed", {k: t["state"] for k, t in tis.items()}
    assert gate["state"] == "failed"
    assert tis[("run_health", -1)]["state"] == "failed"
    assert tis[("publish_cache", -1)]["state"] == "success"
    hosts = {t["hostname"] for t in tis.values() if t["state"] in ("success", "failed")}
    assert hosts == set(WORKERS), f"expected tasks on both workers, found hostnames {hosts}"
    # The DLQ row comes from the gate's own failure callback, in its task process on a worker
    # (run_health's reconciliation rows carry error_class TaskInstanceState instead).
    dlq = _query(
        pg_dsn,
        f"SELECT symbol, stage, kind, error_class, try_number FROM {cluster.schema}.dlq "
        "WHERE run_id = %s AND resolved_at IS NULL",
        run_id,
    )
    assert dlq == [("IBM", "validate_bars", "data_quality", "DataQualityError", 1)]
    assert gate["hostname"] in WORKERS
    gate_log = _log_text(cluster, run_id, f"{GROUP}.validate_bars", IBM, 1)
    assert "DLQ: recorded" in gate_log and "cpu: " in gate_log, gate_log[-3000:]

    cluster.set_variable("market_synthetic_defects", "")
    # Clear the instance that failed: the raw gate asks the source again before it judges.
    cleared = cluster.clear(
        run_id, [(f"{GROUP}.validate_bars", IBM)], only_failed=False, include_downstream=True
    )
    green = cluster.wait_for_run(run_id, timeout=300)

    assert {(t["task_id"], t["map_index"]) for t in cleared} >= {
        (f"{GROUP}.validate_bars", IBM),
        ("run_health", -1),
    }
    tis = cluster.task_instances(run_id)
    assert green == "success", {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    assert {t["hostname"] for t in tis} <= set(WORKERS)
    open_rows = _query(pg_dsn, f"SELECT symbol FROM {cluster.schema}.dlq WHERE resolved_at IS NULL")
    assert open_rows == []
    scored = _query(
        pg_dsn, f"SELECT symbol FROM {cluster.schema}.scores WHERE trade_date = %s", SESSION
    )
    assert sorted(s for (s,) in scored) == UNIVERSE
    print(f"\ncelery e2e: red day + clear + green in {time.perf_counter() - started:.1f} s")
