"""Shared fixtures: the real Postgres and Redis the suite runs against, and the test tiers.

`make test` exports AIRFLOW_CONN_MARKET_DB / AIRFLOW_CONN_MARKET_CACHE, pointing either at
configured servers or at local ones it started (scripts/services.py). Run directly,
pytest falls back to the machine's 127.0.0.1 servers.

Tiers: every test that starts Airflow processes (a cluster, `airflow dags test`, any Airflow
CLI command) gets the ``airflow`` marker at collection, because it requests one of the
fixtures in :data:`AIRFLOW_FIXTURES` (an Airflow home or a cluster cannot be had otherwise) or
is marked ``e2e``. ``make test-fast`` runs ``-m "not airflow"`` with ``MARKET_TEST_TIER=fast``,
under which any attempt to start an ``airflow`` executable raises: a test that slipped past
the classification fails loudly instead of slowing the fast tier down.

``make test`` runs the whole suite in two lanes at once (``scripts/test.sh --lanes``): the
tests marked ``cluster`` below (whole deployments) one at a time, and the rest beside them.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

#: Requesting any of these (directly or through another fixture) puts a test in the slow tier.
AIRFLOW_FIXTURES = frozenset({"airflow_home_template", "airflow_cluster_factory"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        e2e = item.get_closest_marker("e2e") is not None
        if e2e or AIRFLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.airflow)
        # `make test` runs the tests that start a whole deployment (scheduler + api-server:
        # e2e, the pool run, the bench smoke) in their own lane, one at a time, beside the
        # rest (scripts/test.sh --lanes), so two deployments never compete for the cores.
        if e2e or "airflow_cluster_factory" in item.fixturenames:
            item.add_marker(pytest.mark.cluster)


class _FastTierPopen(subprocess.Popen):
    """``subprocess.Popen`` that refuses to start Airflow (installed in the fast tier only)."""

    def __init__(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        program = os.fsdecode(argv[0]).split()[0] if argv else ""
        if Path(program).name == "airflow":
            raise RuntimeError(
                f"the fast tier (MARKET_TEST_TIER=fast) does not start Airflow, found "
                f"{' '.join(map(os.fsdecode, argv))!r}: build the home or cluster through one "
                f"of the fixtures {sorted(AIRFLOW_FIXTURES)} so the test is marked `airflow`"
            )
        super().__init__(args, *rest, **kwargs)


def pytest_configure(config):
    if os.environ.get("MARKET_TEST_TIER") == "fast":
        subprocess.Popen = _FastTierPopen


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


@pytest.fixture(scope="module")
def gx_context() -> None:
    """One warmed GX context for a module's gate tests (building it costs seconds); a module
    asks for it with ``pytestmark = pytest.mark.usefixtures("gx_context")``."""
    from market_pipeline import quality

    quality.warm_up()


@pytest.fixture(scope="session")
def airflow_home_template(tmp_path_factory) -> Path:
    """A migrated SQLite Airflow metadata DB (with the vendor pool), built once per session.

    ``make_airflow_home(path, template)`` copies it instead of running ``airflow db migrate``
    again for every home.
    """
    from tests.support.airflow_home import migrate_template

    return migrate_template(tmp_path_factory.mktemp("airflow_template"))


@pytest.fixture(scope="session")
def airflow_cluster_factory(pg_dsn):
    """``make(**kwargs) -> AirflowCluster`` (not started) whose metadata DB is a copy of one
    migrated once per session (Postgres ``CREATE DATABASE ... TEMPLATE``)."""
    from tests.support.airflow_cluster import AirflowCluster, MetadataTemplate

    template = MetadataTemplate(pg_dsn)
    try:

        def make(**kwargs) -> AirflowCluster:
            kwargs.setdefault("pg_dsn", pg_dsn)
            # Parsing the DAG takes over 3 min when the shared box is loaded (load ~20).
            kwargs.setdefault("start_timeout", 600.0)
            return AirflowCluster(template=template, **kwargs)

        yield make
    finally:
        template.drop()
