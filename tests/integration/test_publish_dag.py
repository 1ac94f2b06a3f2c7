"""The Redis tail under `airflow dags test`: Redis down → retried, then healed by a rerun."""

from __future__ import annotations

import psycopg2
import pytest
import redis

from tests.support.airflow_home import AirflowHome, make_airflow_home
from tests.support.servers import PrivateRedis

UNIVERSE = "AAPL,IBM,MSFT"
DAY = "2024-11-29"


@pytest.fixture
def cache(tmp_path):
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path_factory, cache, pg_dsn, airflow_home_template):
    home = make_airflow_home(tmp_path_factory.mktemp("airflow"), airflow_home_template)
    home.extra_env.update(
        AIRFLOW_CONN_MARKET_CACHE=cache.url,
        MARKET_RETRY_BASE_SECONDS="1",
        AIRFLOW_VAR_MARKET_UNIVERSE=UNIVERSE,
    )
    yield home
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {home.schema} CASCADE")
    conn.close()


def _dlq(pg_dsn, schema):
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT task_id, kind, try_number, error_class, resolved_at IS NOT NULL "
                f"FROM {schema}.dlq ORDER BY id"
            )
            return cur.fetchall()
    finally:
        conn.close()


def test_redis_down_fails_publish_after_retries_and_a_rerun_completes_the_day(
    home: AirflowHome, cache, pg_dsn
):
    down = home.dags_test(DAY)  # nothing listens on the cache port yet

    states = home.task_states()
    assert down.returncode != 0
    assert states[("score_universe", -1)] == "success"
    assert states[("publish_cache", -1)] == "failed"
    assert states[("verify_cache", -1)] == "upstream_failed"
    assert ("publish_cache", "transient", 4, "CacheUnavailableError", False) in _dlq(
        pg_dsn, home.schema
    )  # retried three times, then recorded as transient
    assert home.asset_events() == []  # nothing verified, nothing announced

    cache.start()
    healed = home.dags_test(DAY)

    assert healed.returncode == 0, healed.stdout[-3000:] + healed.stderr[-3000:]
    assert set(home.task_states().values()) == {"success"}
    assert all(resolved for *_, resolved in _dlq(pg_dsn, home.schema))
    from market_pipeline import cache as serving

    client = redis.Redis.from_url(cache.url)
    assert [s for s, _ in serving.latest_scores(client, 3, prefix=home.cache_prefix)] != []
    assert serving.latest_manifest(client, prefix=home.cache_prefix).symbol_count == 3
    first = _served(client, home.cache_prefix)
    served_version = client.get(f"{home.cache_prefix}:latest").decode()
    healed_run, _ = home.run_state()
    assert home.asset_events() == [
        {
            "extra": {"session": DAY, "version": served_version},
            "task_id": "verify_cache",
            "run_id": healed_run,
        }
    ]

    # A verify that fails (the served copy was changed behind Postgres) announces nothing.
    keys = serving.version_keys(served_version, home.cache_prefix)
    symbol, original = sorted(client.hgetall(keys.snapshots).items())[0]
    client.hset(keys.snapshots, symbol, original.replace(b'"close":', b'"close":1'))
    failed = home.airflow("tasks", "test", "market_daily", "verify_cache", healed_run, check=False)
    # (`tasks test` exits 0 whatever the task did; its log names the failure.)
    assert "CacheVerificationError" in failed.stdout + failed.stderr
    assert len(home.asset_events()) == 1
    client.hset(keys.snapshots, symbol, original)

    again = home.dags_test(DAY)  # a new run of the same session (dags test mints a run id)

    assert again.returncode == 0
    second = _served(client, home.cache_prefix)
    assert second["snapshots"] == first["snapshots"]  # byte for byte
    assert second["scores"] == first["scores"]
    assert second["checksum"] == first["checksum"]
    # Each green run announced the day it served: the same bytes, under each run's version id.
    events = [e["extra"] for e in home.asset_events()]
    assert [e["session"] for e in events] == [DAY, DAY]
    assert events[0]["version"] == served_version
    assert events[1]["version"] == client.get(f"{home.cache_prefix}:latest").decode()


def _served(client, prefix: str) -> dict:
    """The served day's bytes: every snapshot, the score set and the manifest checksum."""
    from market_pipeline import cache as serving

    version = client.get(f"{prefix}:latest").decode()
    keys = serving.version_keys(version, prefix)
    return {
        "snapshots": sorted(client.hgetall(keys.snapshots).items()),
        "scores": client.zrange(keys.scores, 0, -1, withscores=True),
        "checksum": serving.latest_manifest(client, prefix=prefix).checksum,
    }
