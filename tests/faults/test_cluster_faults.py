"""The fault suite against a real deployment: the faults of issue #21, injected into `make up`.

One supervised deployment for the module (``scripts/local_airflow.py up``: api-server,
scheduler, dag-processor, triggerer, LocalExecutor), three symbols, three past sessions
triggered through the REST API (``MARKET_SCHEDULED_RUNS=0``: the scheduler creates no run of
its own). Every server it uses is private to the module and may be stopped or frozen:

* ``meta``: the Airflow metadata database's Postgres (``MARKET_AIRFLOW_META_CONN``);
* ``market``: the market database's Postgres (``AIRFLOW_CONN_MARKET_DB``);
* ``redis``: the serving copy (no persistence, so a restart loses it, as in the issue).

Metadata and market data on separate servers is the deployment docs/deploy.md recommends; the
shared-server outage is modelled by stopping both servers at once (docs/decisions.md).

The faults, combined into as few runs as do not interfere (each run's fixture records what
it saw; the tests assert on that record):

* run 1 (session 2024-11-25): ``score_universe`` pauses inside its scores write (the test-only
  pause point of ``market_pipeline.pause_points``) and is SIGKILLed there; Redis is frozen
  meanwhile, so ``publish_cache`` fails each try on a bounded timeout and the run goes red;
  between two of those tries the scheduler is SIGKILLed; Redis thawed, ``publish_cache`` is
  cleared (with downstream) and the run goes green;
* run 2 (2024-11-26): the market database is stopped while the per-symbol tasks run (the
  metadata server stays up) until a try has failed on it; the run finishes green;
* Redis is restarted (its data lost) between runs 2 and 3;
* run 3 (2024-11-27): both Postgres servers are stopped until the scheduler exits; the
  supervisor restarts what exited; the run finishes green and the served copy is back;
* run 3 again: one symbol's ``ingest_bars`` is cleared with downstream and fails (the source
  refuses it): the served day keeps all three symbols.

At the end every market table equals a clean reference (the same sessions with
``airflow dags test`` in a schema of its own, built while the deployment works): 0 rows lost,
duplicated or different.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from tests.support.airflow_home import AirflowHome, make_airflow_home
from tests.support.db import FULL_SQL, checksums, diff, reference_runs, rows
from tests.support.local_airflow import LocalAirflow, alive_group
from tests.support.servers import PrivatePostgres, PrivateRedis, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UNIVERSE = ("AAPL", "KO", "MSFT")
S1, S2, S3 = "2024-11-25", "2024-11-26", "2024-11-27"
RUN1, RUN2, RUN3 = "faults-1", "faults-2", "faults-3"
CLEARED = "KO"
#: The same Variables for the deployment (environment) and the reference.
VARIABLES = {"market_universe": ",".join(UNIVERSE), "market_quorum": "0.5"}
#: Backoff of 4 s, 8 s, 16 s: short, yet long enough to act between two tries.
RETRY_BASE_SECONDS = 4
#: Every table, raw versions and acknowledgements included; the DLQ is compared on its own
#: (the faults add rows by design).
TABLES = {k: v for k, v in FULL_SQL.items() if k != "dlq"}


# --------------------------------------------------------------------------- the deployment


class Reference(threading.Thread):
    """The same sessions without faults, `airflow dags test`, in a schema of their own."""

    def __init__(self, path: Path, template: Path, pg_dsn: str) -> None:
        super().__init__(daemon=True)
        self.home = AirflowHome(path)
        self.template, self.pg_dsn = template, pg_dsn
        self.tables: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            make_airflow_home(self.home.path, self.template)
            for session in (S1, S2, S3):
                proc = self.home.dags_test(session, **VARIABLES)
                _run_id, state = self.home.run_state()
                if proc.returncode != 0 or state != "success":
                    raise AssertionError(
                        f"reference run {session}: {state} (exit {proc.returncode}):\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                    )
            self.tables = checksums(self.pg_dsn, self.home.schema, TABLES)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self) -> dict:
        self.join(timeout=900)
        if self.error is not None:
            raise AssertionError(f"the reference runs failed: {self.error}") from self.error
        assert self.tables is not None, "the reference did not finish"
        return self.tables


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def servers():
    # Not under pytest's basetemp: any pytest starting on the machine makes its root 0700
    # again, and Postgres runs as the `pgserver` user, which must reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="market-cluster-faults-"))
    base.chmod(0o755)
    meta = PrivatePostgres(base / "meta", database="meta")
    market = PrivatePostgres(base / "market")
    cache_server = PrivateRedis(base / "redis")
    cache_server.start()
    try:
        yield SimpleNamespace(meta=meta, market=market, redis=cache_server)
    finally:
        cache_server.stop()
        market.close()
        meta.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, airflow_home_template, pg_dsn, redis_url):
    """The clean runs, started at once (they run while the deployment works)."""
    path = tmp_path_factory.mktemp("reference")
    with reference_runs(Reference(path, airflow_home_template, pg_dsn), pg_dsn, redis_url) as ref:
        yield ref


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, servers, reference):
    state = tmp_path_factory.mktemp("airflow-up")
    env = {k: v for k, v in os.environ.items() if k != "MARKET_EXTRA_DAGS"}
    env.update(
        MARKET_LOCAL_AIRFLOW_DIR=str(state),
        MARKET_UI_PORT=str(free_port()),
        AIRFLOW_CONN_MARKET_DB=servers.market.uri,
        AIRFLOW_CONN_MARKET_CACHE=servers.redis.url,
        MARKET_AIRFLOW_META_CONN=servers.meta.uri,
        MARKET_AIRFLOW_META_DB="market_airflow",
        MARKET_SCHEDULED_RUNS="0",
        MARKET_SCHEMA=f"t_{uuid.uuid4().hex[:10]}",
        MARKET_CACHE_PREFIX=f"test:{uuid.uuid4().hex[:10]}:v1",
        MARKET_RETRY_BASE_SECONDS=str(RETRY_BASE_SECONDS),
        MARKET_DLQ_SPOOL_DIR=str(state / "dlq-spool"),
        MARKET_REPORT_DIR=str(state / "reports"),
        MARKET_ALERT_LOG=str(state / "alerts.jsonl"),
        # No publish deadline: with one pending, Airflow 3.3.2 answers 500 to a clear
        # (docs/decisions.md, "The fault suite").
        MARKET_PUBLISH_DEADLINE_MINUTES="0",
        # The first score_universe pauses inside its write, for the test to kill it there.
        MARKET_TEST_PAUSE_AT="scores",
        MARKET_TEST_PAUSE_DIR=str(state / "pause"),
        **{f"AIRFLOW_VAR_{k.upper()}": v for k, v in VARIABLES.items()},
    )
    deployment = LocalAirflow(state, int(env["MARKET_UI_PORT"]), env)
    deployment.schema = env["MARKET_SCHEMA"]
    deployment.prefix = env["MARKET_CACHE_PREFIX"]
    deployment.market_dsn = servers.market.dsn
    try:
        deployment.script("up")
        yield deployment
    finally:
        deployment.script("down", check=False)


def _dlq(cluster, run_id: str) -> list[dict]:
    found = rows(
        cluster.market_dsn,
        f"SELECT task_id, symbol, kind, failures, resolved_at IS NOT NULL, error_class "
        f"FROM {cluster.schema}.dlq WHERE run_id = %s ORDER BY id",
        run_id,
    )
    keys = ("task_id", "symbol", "kind", "failures", "resolved", "error_class")
    return [dict(zip(keys, row, strict=True)) for row in found]


def _served(cluster, servers) -> dict:
    """The served day as readers see it, and the version of each session's day key."""
    from market_pipeline import cache

    client = redis.Redis.from_url(servers.redis.url)
    try:
        manifest = cache.latest_manifest(client, cluster.prefix)
        days = {}
        for session in (S1, S2, S3):
            version = client.get(cache.day_key(date.fromisoformat(session), cluster.prefix))
            raw = version and client.get(cache.version_keys(version.decode(), cluster.prefix)[0])
            days[session] = json.loads(raw)["symbol_count"] if raw else None
        return {
            "session": manifest and manifest.trade_date.isoformat(),
            "symbol_count": manifest and manifest.symbol_count,
            "version": manifest and manifest.version,
            "scores": dict(cache.latest_scores(client, n=10, prefix=cluster.prefix)),
            "days": days,
        }
    finally:
        client.close()


def _spooled(cluster) -> list[Path]:
    spool = cluster.state / "dlq-spool"
    return [p for p in spool.rglob("*") if p.is_file()] if spool.is_dir() else []


@pytest.fixture(scope="module")
def run1(cluster, servers):
    """Task SIGKILL inside the scores write; Redis frozen during publish; scheduler SIGKILL
    between two publish tries; thaw and clear ``publish_cache``."""
    marker = cluster.state / "pause" / "scores.pid"
    cluster.trigger(RUN1, S1)
    cluster.wait_for(
        "score_universe to pause inside its scores write",
        lambda: marker.is_file() and marker.read_text().strip(),
    )
    paused = int(marker.read_text())
    servers.redis.freeze()
    try:
        os.kill(paused, signal.SIGKILL)

        def publish_between_tries():
            ti = cluster.ti(RUN1, "publish_cache")
            return ti["state"] == "up_for_retry" and ti["try_number"] >= 2

        cluster.wait_for("publish_cache to wait for its third try", publish_between_tries)
        old = cluster.pid("scheduler")
        os.kill(old, signal.SIGKILL)
        cluster.wait_for("a new scheduler", lambda: cluster.pid("scheduler") not in (None, old))
        cluster.wait_for("the old scheduler's group to end", lambda: not alive_group(old))
        red = {
            "state": cluster.finished(RUN1),
            "tis": cluster.states(RUN1),
            "publish": cluster.ti(RUN1, "publish_cache"),
            "dlq": _dlq(cluster, RUN1),
        }
    finally:
        servers.redis.thaw()
    cluster.clear(RUN1, ["publish_cache"])
    return SimpleNamespace(
        red=red,
        killed_pid=paused,
        old_scheduler=old,
        state=cluster.finished(RUN1),
        tis=cluster.states(RUN1),
        dlq=_dlq(cluster, RUN1),
        served=_served(cluster, servers),
        supervisor=cluster.supervisor_log(),
        scores=rows(
            cluster.market_dsn,
            f"SELECT symbol FROM {cluster.schema}.scores WHERE trade_date = %s ORDER BY 1",
            S1,
        ),
    )


@pytest.fixture(scope="module")
def run2(run1, cluster, servers):
    """The market database (its own server) stopped while the per-symbol tasks run, until a
    try failed on it and its DLQ row was spooled."""
    cluster.trigger(RUN2, S2)
    cluster.wait_for(
        "universe to succeed", lambda: cluster.ti(RUN2, "universe")["state"] == "success"
    )
    servers.market.stop()
    try:
        failed_try = cluster.wait_for(
            "a task to fail a try on the stopped database, its DLQ row spooled",
            lambda: (
                _spooled(cluster) and [t for t in cluster.tis(RUN2) if t["state"] == "up_for_retry"]
            ),
        )
    finally:
        servers.market.start()
    return SimpleNamespace(
        failed_try=failed_try,
        state=cluster.finished(RUN2),
        tis=cluster.states(RUN2),
        dlq=_dlq(cluster, RUN2),
        spooled_after=_spooled(cluster),
    )


@pytest.fixture(scope="module")
def run3(run2, cluster, servers):
    """Redis restarted (data lost); then both Postgres servers stopped until the scheduler
    exits, started again; the supervisor restarts what exited."""
    served_before = _served(cluster, servers)
    servers.redis.restart()
    lost = _served(cluster, servers)
    log_before = len(cluster.supervisor_log())
    cluster.trigger(RUN3, S3)
    servers.meta.stop()
    servers.market.stop()
    try:
        cluster.wait_for(
            "the scheduler to exit on the database outage",
            lambda: "scheduler exited" in cluster.supervisor_log()[log_before:],
            timeout=240,
        )
    finally:
        servers.meta.start()
        servers.market.start()
    state = cluster.finished(RUN3, timeout=600)
    return SimpleNamespace(
        served_before=served_before,
        lost=lost,
        state=state,
        tis=cluster.states(RUN3),
        dlq=_dlq(cluster, RUN3),
        served=_served(cluster, servers),
        supervisor=cluster.supervisor_log()[log_before:],
    )


@pytest.fixture(scope="module")
def clear_one(run3, cluster, servers):
    """``ingest_bars`` of one symbol cleared with downstream, the source refusing it; then
    the defect removed and the same clear again."""
    index = cluster.map_index(RUN3, "per_symbol.ingest_bars", CLEARED)
    served_before = _served(cluster, servers)
    resp = cluster.api(
        "POST",
        "/api/v2/variables",
        json={"key": "market_synthetic_defects", "value": f"{CLEARED}:unknown_symbol"},
    )
    assert resp.status_code in (200, 201), resp.text
    cluster.clear(RUN3, [["per_symbol.ingest_bars", index]])
    failed = SimpleNamespace(
        state=cluster.finished(RUN3),
        tis=cluster.states(RUN3),
        dlq=_dlq(cluster, RUN3),
        served=_served(cluster, servers),
        scores=rows(
            cluster.market_dsn,
            f"SELECT symbol FROM {cluster.schema}.scores WHERE trade_date = %s ORDER BY 1",
            S3,
        ),
    )
    resp = cluster.api("DELETE", "/api/v2/variables/market_synthetic_defects")
    assert resp.status_code == 204, resp.text
    cluster.clear(RUN3, [["per_symbol.ingest_bars", index]])
    return SimpleNamespace(
        served_before=served_before,
        failed=failed,
        state=cluster.finished(RUN3),
        dlq=_dlq(cluster, RUN3),
        served=_served(cluster, servers),
    )


# --------------------------------------------------------------------------- the faults


def test_a_task_killed_inside_its_write_is_retried_and_leaves_a_resolved_record(run1):
    # The killed try (no exception: kind "killed") has its DLQ row, resolved by the retry.
    assert run1.red["tis"]["score_universe"] == "success"
    rows_ = [r for r in run1.red["dlq"] if r["task_id"] == "score_universe"]
    assert [(r["kind"], r["failures"], r["resolved"]) for r in rows_] == [("killed", 1, True)]
    assert run1.scores == [(s,) for s in UNIVERSE]  # one row per symbol: none lost, none twice
    # (every table against the reference: test_no_row_lost_duplicated_or_different)


def test_a_frozen_redis_fails_the_run_with_a_transient_dlq_row_and_a_clear_makes_it_green(run1):
    assert run1.red["state"] == "failed", run1.red["tis"]
    assert run1.red["tis"]["publish_cache"] == "failed"
    assert run1.red["publish"]["try_number"] == 4  # every try ran, each ended by a timeout
    publish = [r for r in run1.red["dlq"] if r["task_id"] == "publish_cache"]
    assert [(r["kind"], r["failures"], r["resolved"], r["error_class"]) for r in publish] == [
        ("transient", 4, False, "CacheUnavailableError")
    ]
    # Thawed and cleared: green, the row resolved, the day served with every symbol.
    assert run1.state == "success", run1.tis
    assert [r["resolved"] for r in run1.dlq] == [True] * len(run1.dlq)
    assert run1.served["session"] == S1 and run1.served["symbol_count"] == len(UNIVERSE)
    assert sorted(run1.served["scores"]) == sorted(UNIVERSE)


def test_a_killed_scheduler_is_restarted_and_the_run_goes_on(run1):
    assert "scheduler exited with -9" in run1.supervisor
    assert not alive_group(run1.old_scheduler)
    # The new scheduler ran the last publish try (the run went red by itself) and the clear.
    assert run1.red["state"] == "failed" and run1.state == "success"


def test_a_market_database_outage_on_its_own_server_is_retried_and_the_run_goes_green(run2):
    assert run2.failed_try, "no try failed during the outage"
    assert run2.state == "success", (
        {t: s for t, s in run2.tis.items() if s != "success"},
        run2.dlq,
    )
    # Each failed try left its row (spooled while the database was down), resolved since.
    assert run2.dlq, "the failed tries left no DLQ row"
    assert {r["kind"] for r in run2.dlq} == {"transient"}, run2.dlq
    assert all(r["resolved"] and r["failures"] >= 1 for r in run2.dlq), run2.dlq
    assert run2.spooled_after == []  # the spool was applied


def test_a_shared_server_outage_restarts_the_components_and_the_run_finishes(run3):
    assert run3.state == "success", (run3.tis, run3.supervisor)
    assert "scheduler exited" in run3.supervisor
    restarted = [line for line in run3.supervisor.splitlines() if "started " in line]
    assert any("started scheduler" in line for line in restarted), run3.supervisor
    assert all(r["resolved"] for r in run3.dlq), run3.dlq


def test_a_redis_restart_loses_the_copy_and_the_next_publish_rebuilds_it(run3):
    assert run3.served_before["session"] == S2
    assert run3.lost["session"] is None  # restarted without persistence: nothing served
    assert run3.served["session"] == S3
    assert sorted(run3.served["scores"]) == sorted(UNIVERSE)
    # The earlier days are back too, rebuilt from Postgres with every symbol.
    assert run3.served["days"] == {S1: 3, S2: 3, S3: 3}


def test_a_cleared_symbol_that_fails_keeps_its_valid_day_served(clear_one):
    failed = clear_one.failed
    assert failed.state == "failed"
    assert failed.tis[f"per_symbol.ingest_bars[{CLEARED}]"] == "failed"
    assert failed.tis["publish_cache"] == "success"
    source = [r for r in failed.dlq if r["symbol"] == CLEARED and not r["resolved"]]
    assert [r["kind"] for r in source] == ["source"], failed.dlq
    # The served day still has every symbol: the same version as before the clear.
    assert failed.scores == [(s,) for s in UNIVERSE]
    assert failed.served["session"] == S3
    assert failed.served["symbol_count"] == len(UNIVERSE)
    assert failed.served["version"] == clear_one.served_before["version"]
    # The defect gone, the same clear makes the run green and resolves the row.
    assert clear_one.state == "success"
    assert all(r["resolved"] for r in clear_one.dlq), clear_one.dlq
    assert clear_one.served["version"] == clear_one.served_before["version"]


def test_no_row_lost_duplicated_or_different_against_the_clean_reference(
    clear_one, cluster, reference
):
    expected = reference.result()

    found = checksums(cluster.market_dsn, cluster.schema, TABLES)

    assert diff(found, expected) == {}
    assert rows(
        cluster.market_dsn, f"SELECT count(*) FROM {cluster.schema}.dlq WHERE resolved_at IS NULL"
    ) == [(0,)]
