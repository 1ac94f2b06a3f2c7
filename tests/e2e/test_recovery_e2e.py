"""Recovery under a real scheduler: DLQ, alert, replay, clear-to-resume and backfill.

One Airflow deployment (api-server, scheduler, dag-processor, LocalExecutor, Postgres
metadata DB) serves the whole module; its runs write to their own market schema and Redis
prefix. A clean reference of the same sessions is built meanwhile with ``airflow dags test``
in a second schema, and the tables are compared by checksums of their business columns.

Each scenario's actions run in a module-scoped fixture that records what they left behind,
and the test asserts on that record; a scenario's fixture requests the fixtures of the
scenarios it builds on, so every test runs alone too (``-k test_3`` runs 1, 2 and 3's actions,
then asserts 3's):
1. session 2024-11-29 with XOM unknown to the source and a +80 % spike in IBM → run failed,
   18 symbols scored and published, two open DLQ rows (source, data_quality), an alert;
2. the defects are removed and ``market-recovery replay`` clears the two symbols → the run is
   green, the DLQ rows are resolved, the tables equal the clean reference;
3. a backfill of 2024-12-24..2024-12-27 (Christmas is no session), run newest first, over a
   5-symbol universe → the three sessions' rows equal the reference's forward runs;
4. a whole run (the backfill's middle session, 2024-12-26, so newer rows exist) is cleared
   twice → not one row more or different anywhere. A 5-symbol run keeps this under a
   minute; clearing the 20-symbol run twice costs ~5 minutes on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support.airflow_cluster import market_cluster
from tests.support.airflow_home import AirflowHome, make_airflow_home
from tests.support.db import FULL_SQL, checksums, reference_runs
from tests.support.db import diff as _diff
from tests.support.db import rows as _query

pytestmark = pytest.mark.e2e

SESSION = "2024-11-29"
BACKFILL_FROM, BACKFILL_TO = "2024-12-24", "2024-12-27"
BACKFILL_SESSIONS = ("2024-12-24", "2024-12-26", "2024-12-27")
SMALL_UNIVERSE = "AAPL,IBM,KO,MSFT,XOM"
DEFECTS = "XOM:unknown_symbol,IBM:spike"
GROUP = "per_symbol"
TAIL = ("quorum_gate", "score_universe", "publish_cache", "verify_cache", "run_health")
VARIABLES = {"market_quorum": "0.9"}

TIMINGS: dict[str, float] = {}
ROOT = Path(__file__).resolve().parents[2]


def indicator_differences(dsn: str, schema: str, reference_schema: str) -> list[tuple]:
    """Indicator rows that differ from the reference by more than 1e-12 (relative).

    A run recomputes indicators over the symbol's last 600 clean sessions and upserts every
    session it promoted; the rolling sums (SMA, Bollinger) then round differently in the
    last bit depending on where that window starts, i.e. on which run computed the row.
    Rows, keys and NaN positions must match exactly; values to 1e-12.
    """
    from market_pipeline.indicators import INDICATOR_COLUMNS

    cols = ("close", *INDICATOR_COLUMNS)
    far = " OR ".join(
        f"(a.{c} IS DISTINCT FROM b.{c} AND "
        f"coalesce(NOT abs(a.{c} - b.{c}) <= 1e-12 * greatest(abs(b.{c}), 1), true))"
        for c in cols
    )
    return _query(
        dsn,
        f"SELECT coalesce(a.symbol, b.symbol), coalesce(a.trade_date, b.trade_date) "
        f"FROM {schema}.indicators a FULL JOIN {reference_schema}.indicators b "
        f"USING (symbol, trade_date) WHERE a.symbol IS NULL OR b.symbol IS NULL OR {far} "
        "ORDER BY 1, 2 LIMIT 20",
    )


# --------------------------------------------------------------------------- fixtures


class Reference(threading.Thread):
    """Clean runs of the same sessions with `airflow dags test`, in a schema of their own."""

    def __init__(self, path: Path, pg_dsn: str, template: Path) -> None:
        super().__init__(daemon=True)
        self.home = AirflowHome(path)
        self.template = template
        self.pg_dsn = pg_dsn
        self.after_session: dict | None = None
        self.after_backfill: dict | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        started = time.perf_counter()
        try:
            make_airflow_home(self.home.path, self.template)
            self._dags_test(SESSION)
            self.after_session = checksums(self.pg_dsn, self.home.schema)
            for session in BACKFILL_SESSIONS:
                self._dags_test(session, market_universe=SMALL_UNIVERSE)
            self.after_backfill = checksums(self.pg_dsn, self.home.schema)
        except BaseException as exc:  # reported by result()
            self.error = exc
        self.seconds = time.perf_counter() - started

    def _dags_test(self, session: str, **variables: str) -> None:
        proc = self.home.dags_test(session, **VARIABLES, **variables)
        _run_id, state = self.home.run_state()
        if proc.returncode != 0 or state != "success":
            raise AssertionError(
                f"reference run {session}: expected success, found {state} "
                f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )

    def result(self, name: str) -> dict:
        self.join(timeout=900)
        if self.error is not None:
            raise AssertionError(f"the reference runs failed: {self.error}") from self.error
        value = getattr(self, name)
        assert value is not None, f"reference {name} not computed (thread alive: {self.is_alive()})"
        return value


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pg_dsn, redis_url, airflow_home_template):
    ref = Reference(tmp_path_factory.mktemp("reference_airflow"), pg_dsn, airflow_home_template)
    with reference_runs(ref, pg_dsn, redis_url):
        yield ref


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_dsn, redis_url, reference, airflow_cluster_factory):
    alert_log = tmp_path_factory.mktemp("alerts") / "alerts.jsonl"
    env = {"MARKET_ALERT_LOG": str(alert_log)}
    dags = tmp_path_factory.mktemp("dags")
    (dags / "market_daily.py").symlink_to(ROOT / "dags" / "market_daily.py")
    started = time.perf_counter()
    try:
        with market_cluster(
            airflow_cluster_factory, "e2e", pg_dsn, redis_url, env, dags_folder=dags
        ) as cluster:
            TIMINGS["cluster start"] = time.perf_counter() - started
            cluster.alert_log = alert_log
            for key, value in VARIABLES.items():
                cluster.set_variable(key, value)
            yield cluster
    finally:
        TIMINGS["reference (dags test, background)"] = reference.seconds
        print("\ne2e timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in TIMINGS.items()))


@contextlib.contextmanager
def timed(name: str):
    started = time.perf_counter()
    yield
    TIMINGS[name] = time.perf_counter() - started


def _index(symbol: str, universe: list[str]) -> int:
    return sorted(universe).index(symbol)


def _recovery(cluster, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        MARKET_SCHEMA=cluster.schema,
        MARKET_API_URL=cluster.url,
        MARKET_API_USER=cluster.user,
        MARKET_API_PASSWORD=cluster.password,
        AIRFLOW_CONN_MARKET_DB=cluster.pg_dsn,
        PYTHONPATH=os.pathsep.join(["include", env.get("PYTHONPATH", "")]),
    )
    env.pop("MARKET_API_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "market_pipeline.recovery", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"recovery {args} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _open_dlq(pg_dsn: str, schema: str, run_id: str | None = None) -> list[tuple]:
    sql = (
        f"SELECT symbol, stage, kind, task_id, map_index FROM {schema}.dlq "
        "WHERE resolved_at IS NULL"
    )
    if run_id:
        return sorted(_query(pg_dsn, sql + " AND run_id = %s", run_id))
    return sorted(_query(pg_dsn, sql))


def _alerts(path: Path, run_id: str, timeout: float = 90) -> list[dict]:
    """Alert records of the run (DAG callbacks run in the dag-processor, a little later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
            mine = [r for r in records if r["run_id"] == run_id]
            if mine:
                return mine
        time.sleep(1)
    return []


# --------------------------------------------------------------------------- scenarios


@pytest.fixture(scope="module")
def failed_run(cluster, pg_dsn, redis_url) -> dict:
    """Scenario 1's actions: session SESSION with DEFECTS; what the run left behind."""
    from market_pipeline import cache

    with timed("scenario 1"):
        cluster.set_variable("market_synthetic_defects", DEFECTS)
        run_id = cluster.trigger(SESSION, run_id=f"e2e__{SESSION}")
        state = cluster.wait_for_run(run_id, timeout=600)
        client = redis.Redis.from_url(redis_url)
        try:
            manifest = cache.latest_manifest(client, prefix=cluster.prefix)
        finally:
            client.close()
        scored = _query(
            pg_dsn, f"SELECT symbol FROM {cluster.schema}.scores WHERE trade_date=%s", SESSION
        )
        return {
            "run_id": run_id,
            "state": state,
            "states": cluster.task_states(run_id),
            "scored": sorted(s for (s,) in scored),
            "manifest": manifest,
            "open_dlq": _open_dlq(pg_dsn, cluster.schema, run_id),
            "alerts": _alerts(cluster.alert_log, run_id),
        }


@pytest.fixture(scope="module")
def replayed_run(cluster, pg_dsn, failed_run) -> dict:
    """Scenario 2's actions: defects removed, `market-recovery list`, a dry run, the replay."""
    run_id = failed_run["run_id"]
    with timed("scenario 2"):
        cluster.set_variable("market_synthetic_defects", "")
        out = {"run_id": run_id}
        out["listed"] = _recovery(cluster, "list", "--trade-date", SESSION).stdout
        out["dry"] = _recovery(cluster, "replay", "--trade-date", SESSION, "--dry-run").stdout
        out["state_after_dry"] = cluster.run(run_id)["state"]
        out["open_after_dry"] = _open_dlq(pg_dsn, cluster.schema, run_id)
        out["replayed"] = _recovery(cluster, "replay", "--trade-date", SESSION).stdout
        out["state"] = cluster.wait_for_run(run_id, timeout=300)
        out["states"] = cluster.task_states(run_id)
        out["open_dlq"] = _open_dlq(pg_dsn, cluster.schema)
        out["resolved"] = _query(
            pg_dsn, f"SELECT symbol, resolved_by_run_id FROM {cluster.schema}.dlq ORDER BY symbol"
        )
        out["checksums"] = checksums(pg_dsn, cluster.schema)
        out["asset_events"] = cluster.api(
            "GET", "/api/v2/assets/events", params={"source_dag_id": "market_daily"}
        ).json()["asset_events"]
        return out


@pytest.fixture(scope="module")
def backfill(cluster, pg_dsn, reference, replayed_run) -> dict:
    """Scenario 3's actions: the backfill over the small universe, after scenario 2's green
    session (the reference's tables hold that session too)."""
    with timed("scenario 3"):
        cluster.set_variable("market_universe", SMALL_UNIVERSE)
        backfill_id = cluster.backfill(BACKFILL_FROM, BACKFILL_TO, run_backwards=True)
        states = cluster.wait_for_backfill(backfill_id, timeout=600)
        runs = cluster.runs(run_type="backfill")
        return {
            "states": states,
            "runs": runs,
            "run_ids": {r["logical_date"][:10]: r["dag_run_id"] for r in runs},
            "open_dlq": _open_dlq(pg_dsn, cluster.schema),
            "checksums": checksums(pg_dsn, cluster.schema),
            "indicator_differences": indicator_differences(
                pg_dsn, cluster.schema, reference.home.schema
            ),
        }


def test_1_a_permanent_source_failure_and_a_raw_gate_failure_turn_the_run_red_after_publishing_18_symbols(  # noqa: E501
    failed_run,
):
    from market_pipeline.config import SAMPLE_UNIVERSE

    universe = list(SAMPLE_UNIVERSE)
    run_id, states = failed_run["run_id"], failed_run["states"]
    xom, ibm = _index("XOM", universe), _index("IBM", universe)
    assert failed_run["state"] == "failed", states
    assert states[(f"{GROUP}.ingest_bars", xom)] == "failed"
    assert states[(f"{GROUP}.validate_bars", ibm)] == "failed"
    assert states[("run_health", -1)] == "failed"
    assert all(states[(t, -1)] == "success" for t in TAIL[:-1]), states
    assert failed_run["scored"] == sorted(set(universe) - {"XOM", "IBM"})
    manifest = failed_run["manifest"]
    assert (str(manifest.trade_date), manifest.symbol_count) == (SESSION, 18)
    assert failed_run["open_dlq"] == [
        ("IBM", "validate_bars", "data_quality", f"{GROUP}.validate_bars", ibm),
        ("XOM", "ingest_bars", "source", f"{GROUP}.ingest_bars", xom),
    ]
    alerts = failed_run["alerts"]
    assert len(alerts) == 1, alerts
    assert alerts[0]["run_id"] == run_id
    assert alerts[0]["summary"] == {
        "ingest_bars": {"source": 1},
        "validate_bars": {"data_quality": 1},
    }
    assert (alerts[0]["channel"], alerts[0]["delivered"]) == ("log", True)
    assert alerts[0]["symbols"] == ["IBM", "XOM"]


def test_2_replay_after_fixing_the_inputs_turns_the_run_green_and_leaves_the_tables_of_a_clean_run(
    replayed_run, reference
):
    run_id, listed, dry = replayed_run["run_id"], replayed_run["listed"], replayed_run["dry"]
    assert "XOM" in listed and "IBM" in listed and "data_quality" in listed, listed

    print(dry)
    assert replayed_run["state_after_dry"] == "failed", "a dry run must not clear anything"
    assert len(replayed_run["open_after_dry"]) == 2
    assert f"run {run_id}: would clear" in dry, dry
    for stage in ("ingest_bars", "validate_bars", "compute_indicators", "generate_signals"):
        assert f"{GROUP}.{stage}[" in dry, dry
    assert all(f"  {t}  (was" in dry for t in TAIL), dry
    # The failed instances are cleared where they failed: XOM's ingest, IBM's raw gate (which
    # asks the source again before it judges).
    assert dry.count(f"{GROUP}.ingest_bars[") == 1, dry  # XOM only
    assert dry.count(f"{GROUP}.validate_bars[") == 2, dry  # IBM's, and XOM's downstream

    assert f"run {run_id}: cleared" in replayed_run["replayed"], replayed_run["replayed"]
    # Each cleared instance names the state it was in, not the state after the clear.
    assert "(was None)" not in replayed_run["replayed"], replayed_run["replayed"]
    assert f"{GROUP}.validate_bars[" in replayed_run["replayed"]
    assert "(was failed)" in replayed_run["replayed"], replayed_run["replayed"]
    assert replayed_run["state"] == "success", replayed_run["states"]
    assert replayed_run["open_dlq"] == []
    assert replayed_run["resolved"] == [("IBM", run_id), ("XOM", run_id)]
    assert _diff(replayed_run["checksums"], reference.result("after_session")) == {}
    # Each verified publish of the session (the red run's 18 symbols, then the replay's 20)
    # announced the served day. (A consumer DAG run by the scheduler on these events:
    # tests/e2e/test_local_airflow.py, whose scheduler creates runs by itself.)
    events = replayed_run["asset_events"]
    assert [e["extra"]["session"] for e in events] == [SESSION, SESSION], events
    assert {e["source_task_id"] for e in events} == {"verify_cache"}


def test_3_a_backfill_across_a_holiday_run_newest_first_writes_the_rows_of_scheduled_runs(
    backfill, reference
):
    assert sorted(backfill["run_ids"]) == list(BACKFILL_SESSIONS), backfill["runs"]
    assert set(backfill["states"].values()) == {"success"}, backfill["states"]
    assert backfill["open_dlq"] == []
    expected = reference.result("after_backfill")
    found = backfill["checksums"]
    # Exact for every table but indicators: see indicator_differences().
    assert _diff(found, expected).keys() <= {"indicators"}, _diff(found, expected)
    assert backfill["indicator_differences"] == []


def test_4_clearing_a_whole_run_twice_duplicates_no_row_anywhere(cluster, pg_dsn, backfill):
    # The middle session of the backfill: later sessions exist, so this also shows that
    # rerunning an older day leaves the newer days' rows alone.
    run_id = backfill["run_ids"].get("2024-12-26")
    assert run_id and cluster.run(run_id)["state"] == "success", "the backfill left no green run"
    before = checksums(pg_dsn, cluster.schema, FULL_SQL)

    with timed("scenario 4"):
        for _ in range(2):
            cleared = cluster.clear(run_id, None, only_failed=False)
            # universe + the tail (6), and six per-symbol tasks per symbol
            assert len(cleared) == 6 + 6 * len(SMALL_UNIVERSE.split(","))
            assert cluster.wait_for_run(run_id, timeout=400) == "success"

    assert _diff(checksums(pg_dsn, cluster.schema, FULL_SQL), before) == {}
    assert _open_dlq(pg_dsn, cluster.schema) == []
