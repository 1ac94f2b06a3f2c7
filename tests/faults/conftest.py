"""The fault tier: faults injected into private servers.

``make test-faults`` (``scripts/test.sh tests/faults -m faults``) runs it on its own; it is
part of ``make test`` and ``make test-fast`` too, except ``test_cluster_faults.py`` (the fault
suite against a real ``make up`` deployment, marked ``e2e``: the "cluster" lane of
``make test``, never ``make test-fast``). Each test that stops or freezes a server
starts its own (``tests/support/servers.py``): the shared Postgres and Redis other tests use
are never touched.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

# Imported at collection: Airflow configures logging on first import, which must not
# happen inside a test (it would replace pytest's log capture handler).
from market_airflow import callbacks, hooks  # noqa: F401

from market_pipeline import migrate
from market_pipeline.config import SCHEMA


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory):
    """A private Postgres (migrated ``market`` schema) a test may stop and start."""
    from tests.support.servers import PrivatePostgres

    server = PrivatePostgres(tmp_path_factory.mktemp("pg") / "data")
    conn = psycopg2.connect(server.dsn)
    try:
        migrate.apply(conn, SCHEMA)
    finally:
        conn.close()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def market_db(private_pg, tmp_path, monkeypatch):
    """The callbacks' ``market_db`` is the private Postgres (DLQ emptied); spool under tmp."""
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", private_pg.uri)
    monkeypatch.setenv("MARKET_DLQ_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("MARKET_REPORT_DIR", str(tmp_path / "reports"))
    conn = psycopg2.connect(private_pg.dsn)
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {SCHEMA}.dlq")
    try:
        yield conn
    finally:
        conn.close()  # closed already when the test stopped the server: harmless


@pytest.fixture
def private_redis(tmp_path):
    """A private redis-server (no persistence) a test may restart or freeze."""
    from tests.support.servers import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
