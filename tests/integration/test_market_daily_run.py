"""market_daily end to end with `airflow dags test`: real Postgres, Redis and GX.

Each test runs the whole DAG (20 sample symbols) in a throwaway Airflow home, writing to
its own Postgres schema and Redis key prefix.
"""

from __future__ import annotations

import pytest
import redis

from tests.support.airflow_home import AirflowHome, make_airflow_home
from tests.support.db import FULL_SQL, checksums, diff, drop_namespace
from tests.support.db import rows as _rows

GROUP = "per_symbol"
SYMBOL_TASKS = (
    "ingest_bars",
    "wait_for_bars",
    "validate_bars",
    "compute_indicators",
    "validate_indicators",
    "generate_signals",
)


@pytest.fixture(scope="module")
def airflow_path(tmp_path_factory, airflow_home_template):
    return make_airflow_home(tmp_path_factory.mktemp("airflow"), airflow_home_template).path


@pytest.fixture
def home(airflow_path, pg_dsn, redis_url):
    """An Airflow home with a fresh market schema and Redis prefix, cleaned up afterwards."""
    home = AirflowHome(airflow_path)
    yield home
    drop_namespace(pg_dsn, redis_url, home.schema, home.cache_prefix)


def _manifest(redis_url, prefix):
    from market_pipeline import cache

    client = redis.Redis.from_url(redis_url)
    try:
        return cache.latest_manifest(client, prefix=prefix), cache.latest_scores(
            client, 20, prefix=prefix
        )
    finally:
        client.close()


def _explain(proc) -> str:
    return proc.stdout[-6000:] + proc.stderr[-6000:]


def test_a_clean_run_scores_and_publishes_every_symbol_and_a_rerun_changes_no_rows(
    home, pg_dsn, redis_url
):
    first = home.dags_test("2024-11-29")

    states = home.task_states()
    assert first.returncode == 0, _explain(first)
    assert set(states.values()) == {"success"}, states
    assert sum(1 for (task, _), _s in states.items() if task == f"{GROUP}.ingest_bars") == 20
    scores = _rows(
        pg_dsn,
        f"SELECT symbol, rank FROM {home.schema}.scores "
        "WHERE trade_date='2024-11-29' ORDER BY rank",
    )
    assert len(scores) == 20
    assert [r[1] for r in scores] == list(range(1, 21))
    manifest, top = _manifest(redis_url, home.cache_prefix)
    assert str(manifest.trade_date) == "2024-11-29"
    assert manifest.symbol_count == 20
    assert [s for s, _ in top] == [r[0] for r in scores]
    assert _rows(pg_dsn, f"SELECT count(*) FROM {home.schema}.dlq")[0][0] == 0
    reports = _rows(
        pg_dsn,
        f"SELECT gate, success, result FROM {home.schema}."
        "validation_reports WHERE trade_date='2024-11-29'",
    )
    assert len(reports) == 40
    assert {(gate, ok) for gate, ok, _ in reports} == {("bars", True), ("indicators", True)}
    assert all(result for _, _, result in reports)  # the full GX result, not a summary
    before = checksums(pg_dsn, home.schema, FULL_SQL)

    second = home.dags_test("2024-11-29")

    assert second.returncode == 0, _explain(second)
    # Not one row more or different in any table (business columns, every raw version).
    assert diff(checksums(pg_dsn, home.schema, FULL_SQL), before) == {}


def test_one_symbol_failing_ingestion_stops_only_its_chain_and_turns_the_run_red(
    home, pg_dsn, redis_url
):
    proc = home.dags_test("2024-11-27", market_synthetic_defects="XOM:unknown_symbol")

    states = home.task_states()
    _, run_state = home.run_state()
    symbols = [
        r[0] for r in _rows(pg_dsn, f"SELECT symbol FROM {home.schema}.symbols ORDER BY symbol")
    ]
    xom = symbols.index("XOM")
    assert run_state == "failed"
    assert proc.returncode != 0
    assert states[(f"{GROUP}.ingest_bars", xom)] == "failed"
    for task in SYMBOL_TASKS[1:]:
        assert states[(f"{GROUP}.{task}", xom)] == "upstream_failed"
    for index, symbol in enumerate(symbols):
        if symbol != "XOM":
            assert states[(f"{GROUP}.generate_signals", index)] == "success", symbol
    for task in ("quorum_gate", "score_universe", "publish_cache", "verify_cache"):
        assert states[(task, -1)] == "success", task
    assert states[("run_health", -1)] == "failed"
    scored = {
        r[0]
        for r in _rows(
            pg_dsn, f"SELECT symbol FROM {home.schema}.scores WHERE trade_date='2024-11-27'"
        )
    }
    assert scored == set(symbols) - {"XOM"}
    manifest, top = _manifest(redis_url, home.cache_prefix)
    assert manifest.symbol_count == 19
    assert "XOM" not in {s for s, _ in top}
    dlq = _rows(
        pg_dsn,
        f"SELECT symbol, stage, try_number, kind, error_class, error_message, "
        f"map_index FROM {home.schema}.dlq WHERE resolved_at IS NULL",
    )
    assert len(dlq) == 1
    symbol, stage, try_number, kind, error_class, message, map_index = dlq[0]
    assert (symbol, stage, kind, error_class, map_index) == (
        "XOM",
        "ingest_bars",
        "source",
        "PermanentSourceError",
        xom,
    )
    assert try_number == 1  # a permanent source error is not retried
    assert "unknown_symbol" in message and "XOM" in message
    audit = _rows(
        pg_dsn, f"SELECT outcome, error_kind FROM {home.schema}.fetch_audit WHERE symbol='XOM'"
    )
    assert audit == [("error", "source")]
