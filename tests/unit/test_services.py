"""scripts/services.py never prints a configured connection's password, whether its checks
pass or fail (it runs in every `make test` / `make demo`, so its output lands in CI logs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.py"


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _up(db: str, cache: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "AIRFLOW_CONN_MARKET_DB": db,
        "AIRFLOW_CONN_MARKET_CACHE": cache,
        "MARKET_SERVICES_WAIT_SECONDS": "0",  # one attempt: nothing is starting up here
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=120
    )


def test_an_unreachable_database_is_named_with_its_password_masked(closed_port, redis_url):
    result = _up(f"postgres://market:pg-s3cret@127.0.0.1:{closed_port}/market", redis_url)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "pg-s3cret" not in output
    assert (
        f"market database not reachable at postgres://market:***@127.0.0.1:{closed_port}/market"
        in result.stderr
    )
    assert "OperationalError" in result.stderr


def test_an_unreachable_cache_is_named_with_its_password_masked(closed_port, pg_dsn):
    result = _up(pg_dsn, f"redis://:r3dis-s3cret@127.0.0.1:{closed_port}/0")

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "r3dis-s3cret" not in output
    assert f"market cache not usable at redis://:***@127.0.0.1:{closed_port}/0" in result.stderr


def test_a_json_connection_is_masked_too(closed_port, redis_url):
    db = json.dumps(
        {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": closed_port,
            "login": "market",
            "password": "json-s3cret",
            "schema": "market",
        }
    )

    result = _up(db, redis_url)

    assert result.returncode != 0
    assert "json-s3cret" not in result.stdout + result.stderr
    assert '"password": "***"' in result.stderr


def test_configured_connections_that_work_are_not_echoed(pg_dsn, redis_url):
    # The test server trusts loopback, so a password in the URI is accepted and ignored.
    with_password = pg_dsn.replace("postgres@", "postgres:pg-s3cret@", 1)
    assert "pg-s3cret" in with_password

    result = _up(with_password, redis_url)

    assert result.returncode == 0, result.stderr
    assert "pg-s3cret" not in result.stdout + result.stderr
    assert result.stdout == ""  # nothing to export: both were configured
