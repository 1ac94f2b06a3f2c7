"""Shared fixtures: the real Postgres and Redis the suite runs against.

`make test` exports AIRFLOW_CONN_MARKET_DB / AIRFLOW_CONN_MARKET_CACHE, pointing either at
configured servers or at local ones it started (scripts/services.py). Run directly,
pytest falls back to the machine's 127.0.0.1 servers.
"""

from __future__ import annotations

import os
import uuid

import pytest

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_CACHE = "redis://127.0.0.1:6379/1"


def _libpq(uri: str) -> str:
    # Airflow writes postgres://; libpq accepts it, but drop Airflow-only query extras.
    return uri.split("?")[0] if "__extra__" in uri else uri


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """libpq URI of the test Postgres database."""
    return _libpq(os.environ.get("AIRFLOW_CONN_MARKET_DB", DEFAULT_DB))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis database."""
    return os.environ.get("AIRFLOW_CONN_MARKET_CACHE", DEFAULT_CACHE)


@pytest.fixture
def pg_schema(pg_dsn):
    """A fresh, uniquely named Postgres schema, dropped afterwards: (dsn, schema)."""
    import psycopg2

    schema = f"t_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_dsn, schema
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.close()


@pytest.fixture
def redis_client(redis_url):
    """A Redis client on the test database; keys under the test's own prefix are removed."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.ping()
    prefix = f"test:{uuid.uuid4().hex[:10]}"
    client.test_prefix = prefix  # tests namespace their keys under this
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
