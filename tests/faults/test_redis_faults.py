"""Redis frozen during a publish, and Redis restarted (its data lost) between two sessions.

Each test runs its own redis-server (no persistence, as the issue's local server had) on a
free port; Postgres is the shared test server, in a schema of the module's own.
"""

from __future__ import annotations

import json
import uuid
from datetime import date

import psutil
import psycopg2
import pytest
import redis

from market_pipeline import cache, migrate, recovery, store
from market_pipeline.errors import failure_kind
from market_pipeline.sources.synthetic import SyntheticSource
from market_pipeline.stages.publish_cache import publish_cache
from market_pipeline.stages.score_universe import score_universe
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.verify_cache import verify_cache
from tests.support.chain import run_chain

D1, D2 = date(2024, 11, 27), date(2024, 11, 29)
SYMBOLS = ["AAA", "BBB", "CCC"]
PREFIX = "market:v1"


def _snapshots(day: date, n: int = 20) -> list[dict]:
    return [
        {"symbol": f"S{i:03d}", "trade_date": day.isoformat(), "score": i / n, "close": 10.0 + i}
        for i in range(n)
    ]


def _connections_to(port: int) -> set[tuple]:
    """This machine's TCP connections to ``port`` from the client side (closed ones included
    while the frozen server holds them: it never answers the FIN)."""
    return {
        (c.laddr, c.raddr)
        for c in psutil.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }


# --------------------------------------------------------------------------- frozen Redis


def test_a_frozen_redis_fails_the_publish_after_one_read_timeout_with_a_transient_error(
    private_redis,
):
    client = cache.client_from_params("127.0.0.1", private_redis.port, socket_timeout=1)
    cache.publish(client, trade_date=D1, run_id="r1", snapshots=_snapshots(D1), prefix=PREFIX)
    opened_before = _connections_to(private_redis.port)
    private_redis.freeze()
    try:
        with pytest.raises(cache.CacheUnavailableError) as info:
            cache.publish(
                client, trade_date=D2, run_id="r2", snapshots=_snapshots(D2), prefix=PREFIX
            )
        opened = _connections_to(private_redis.port) - opened_before
    finally:
        private_redis.thaw()

    assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError), info.value
    assert failure_kind(info.value) == "transient"  # the retry policy retries it, later
    # A timeout is not retried by reconnecting: redis-py nests its retries (each command's
    # reconnect runs its own), which made a frozen server cost 16 read timeouts per call.
    assert opened == set(), f"reconnected {len(opened)} time(s) to a frozen server"
    client.close()


def test_the_client_bounds_are_the_documented_seconds():
    client = cache.client_from_params("127.0.0.1", 1)
    kwargs = client.connection_pool.connection_kwargs

    assert kwargs["socket_timeout"] == cache.REDIS_TIMEOUTS["socket_timeout"] == 10
    assert kwargs["socket_connect_timeout"] == cache.REDIS_TIMEOUTS["socket_connect_timeout"] == 5
    assert kwargs["socket_keepalive"] is True


# --------------------------------------------------------------------------- Redis restart


@pytest.fixture(scope="module")
def scored(pg_dsn, tmp_path_factory):
    """Two sessions run through the stages up to scoring in a schema of their own:
    (dsn, schema). Nothing is published yet. Gate pages go to a tmp dir, for this module only
    (the environment is restored after it: later tests' Airflow homes keep their own)."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    env = pytest.MonkeyPatch()
    env.setenv("MARKET_REPORT_DIR", str(tmp_path_factory.mktemp("reports")))
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    conn.autocommit = False
    try:
        migrate.apply(conn, schema)
        settings = Settings(schema=schema, exchange="XNYS", history_sessions=60)
        store.sync_symbols(conn, SYMBOLS, schema=schema)
        for day in (D1, D2):
            _score(conn, settings, day)
        yield pg_dsn, schema
    finally:
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.close()
        env.undo()


def _score(conn, settings: Settings, day: date) -> None:
    attempt = Attempt(run_id=f"scheduled__{day.isoformat()}")
    passed = run_chain(conn, settings, SYMBOLS, day, SyntheticSource(), attempt)
    assert passed == SYMBOLS
    score_universe(conn, SYMBOLS, day, settings)


@pytest.fixture
def serving(scored, private_redis):
    """(conn, client, settings): the scored sessions and a private Redis, keys under a prefix
    of the test's own."""
    dsn, schema = scored
    conn = psycopg2.connect(dsn)
    client = cache.client_from_params("127.0.0.1", private_redis.port)
    settings = Settings(schema=schema, cache_prefix=f"test:{uuid.uuid4().hex[:8]}")
    try:
        yield conn, client, settings
    finally:
        client.close()
        conn.close()


def _served(client, prefix: str, days) -> dict:
    """What readers get for each day: the snapshots, the scores and the manifest's checksum,
    and the day the pointer serves."""
    out = {"pointer_day": (client.get(cache.pointer_key(prefix)) or b"")[:10].decode()}
    for day in days:
        version = client.get(cache.day_key(day, prefix))
        if version is None:
            out[day] = None
            continue
        keys = cache.version_keys(version.decode(), prefix)
        manifest = client.get(keys.manifest)
        out[day] = {
            "snapshots": client.hgetall(keys.snapshots),
            "scores": client.zrange(keys.scores, 0, -1, withscores=True),
            "checksum": json.loads(manifest)["checksum"] if manifest else None,
        }
    return out


def _publish_both(conn, client, settings) -> dict:
    for day in (D1, D2):
        publish_cache(conn, client, day, settings, attempt=Attempt(run_id=f"scheduled__{day}"))
    before = _served(client, settings.cache_prefix, (D1, D2))
    assert before["pointer_day"] == D2.isoformat() and before[D1] and before[D2]
    return before


def test_the_rebuild_command_serves_again_what_was_served_before_a_restart(
    serving, private_redis, monkeypatch, capsys
):
    conn, client, settings = serving
    before = _publish_both(conn, client, settings)

    private_redis.restart()  # nothing persisted: every day is gone
    assert _served(client, settings.cache_prefix, (D1, D2)) == {
        "pointer_day": "",
        D1: None,
        D2: None,
    }
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_CACHE", private_redis.url)
    dsn = conn.dsn
    code = recovery.main(
        [
            "--dsn",
            dsn,
            "--schema",
            settings.schema,
            "rebuild-cache",
            "--cache-prefix",
            settings.cache_prefix,
        ]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert f"pointer {cache.pointer_key(settings.cache_prefix)} names no version" in out
    assert f"{D1}  3 symbols" in out and f"{D2}  3 symbols" in out
    assert _served(client, settings.cache_prefix, (D1, D2)) == before
    assert cache.served_problem(client, settings.cache_prefix) is None


def test_the_next_publish_rebuilds_the_days_a_restart_lost(serving, private_redis):
    conn, client, settings = serving
    publish_cache(conn, client, D1, settings, attempt=Attempt(run_id=f"scheduled__{D1}"))
    before = _served(client, settings.cache_prefix, (D1,))

    private_redis.restart()
    publish_cache(conn, client, D2, settings, attempt=Attempt(run_id=f"scheduled__{D2}"))

    after = _served(client, settings.cache_prefix, (D1, D2))
    assert after[D1] == before[D1], "the earlier day is served again, unchanged"
    assert after["pointer_day"] == D2.isoformat()
    assert verify_cache(conn, client, D2, settings)["verified"] == 3


def test_verify_rebuilds_a_serving_copy_lost_after_the_publish(serving, private_redis):
    conn, client, settings = serving
    before = _publish_both(conn, client, settings)

    private_redis.restart()
    verified = verify_cache(conn, client, D2, settings)

    assert verified["verified"] == 3
    assert _served(client, settings.cache_prefix, (D1, D2)) == before


def test_a_partial_served_version_is_rebuilt_by_the_rebuild(serving):
    conn, client, settings = serving
    before = _publish_both(conn, client, settings)
    served = client.get(cache.pointer_key(settings.cache_prefix)).decode()
    client.hdel(cache.version_keys(served, settings.cache_prefix).snapshots, "AAA")

    problem = cache.served_problem(client, settings.cache_prefix)
    rebuilt = publish_cache(conn, client, D1, settings, attempt=Attempt(run_id=f"scheduled__{D1}"))

    assert "incomplete: expected 3 symbols" in problem and problem.endswith(" and 2 snapshots")
    assert rebuilt["pointer_moved"] is False  # D1 is older than the served D2
    after = _served(client, settings.cache_prefix, (D1, D2))
    assert after == before


def test_a_rerun_of_the_day_whose_served_version_lost_keys_serves_it_whole_again(serving):
    conn, client, settings = serving
    before = _publish_both(conn, client, settings)
    served = client.get(cache.pointer_key(settings.cache_prefix)).decode()
    client.delete(cache.version_keys(served, settings.cache_prefix).scores)

    # The same run publishes D2 again (a clear of publish_cache): same content, same version id.
    publish_cache(conn, client, D2, settings, attempt=Attempt(run_id=f"scheduled__{D2}"))

    assert cache.served_problem(client, settings.cache_prefix) is None
    assert _served(client, settings.cache_prefix, (D1, D2)) == before
