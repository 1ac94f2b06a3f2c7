"""Connection settings outside Airflow: the same AIRFLOW_CONN_* values the tasks use."""

from __future__ import annotations

import pytest
from psycopg2.extensions import parse_dsn

from market_pipeline import connections

BOUNDS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "options": "-c statement_timeout=600s -c idle_in_transaction_session_timeout=600s",
}


def test_postgres_uri_becomes_a_libpq_dsn(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", "postgres://u:p%40ss@db.example:5433/market")
    assert parse_dsn(connections.db_dsn()) == {
        "host": "db.example",
        "port": "5433",
        "user": "u",
        "password": "p@ss",
        "dbname": "market",
        **BOUNDS,
    }


def test_a_percent_encoded_socket_directory_is_a_host(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", "postgres://postgres@%2Ftmp%2Fpg/market")
    assert parse_dsn(connections.db_dsn()) == {
        "host": "/tmp/pg",
        "user": "postgres",
        "dbname": "market",
        **BOUNDS,
    }


def test_the_timeouts_are_set_in_the_connection_extra_and_zero_sends_no_options(monkeypatch):
    extra = (
        '{"connect_timeout": 3, "statement_timeout": 0, "idle_in_transaction_session_timeout": 0,'
        ' "keepalives_idle": 5}'
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_DB",
        '{"conn_type": "postgres", "host": "db", "schema": "market", "extra": ' + extra + "}",
    )
    parsed = parse_dsn(connections.db_dsn())
    assert parsed["connect_timeout"] == "3"
    assert parsed["keepalives_idle"] == "5"
    assert "options" not in parsed  # a pooler such as PgBouncer refuses startup options


def test_a_timeout_that_is_not_seconds_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_DB",
        '{"conn_type": "postgres", "host": "db", "extra": {"statement_timeout": "soon"}}',
    )
    with pytest.raises(ValueError, match="statement_timeout: expected a number of seconds"):
        connections.db_dsn()


def test_the_statement_timeout_reaches_the_server(pg_dsn, monkeypatch):
    import psycopg2

    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", pg_dsn)
    conn = psycopg2.connect(connections.db_dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("10min",)
            cur.execute("SHOW idle_in_transaction_session_timeout")
            assert cur.fetchone() == ("10min",)
    finally:
        conn.close()


def test_redis_timeouts_come_from_the_connection_extra(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_CACHE",
        '{"conn_type": "redis", "host": "cache", "extra": {"socket_timeout": "2.5"}}',
    )
    assert connections.redis_params()["socket_timeout"] == 2.5


def test_airflow_json_form_is_understood(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_CACHE",
        '{"conn_type": "redis", "host": "cache", "port": 6380, "password": "pw",'
        ' "extra": {"db": 3, "ssl": true, "ssl_ca_certs": "/ca.pem"}}',
    )
    assert connections.redis_params() == {
        "host": "cache",
        "port": 6380,
        "db": 3,
        "username": None,
        "password": "pw",
        "ssl": True,
        "ssl_ca_certs": "/ca.pem",
    }


def test_redis_db_comes_from_the_uri_path(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_CACHE", "redis://127.0.0.1:6379/2")
    assert connections.redis_params()["db"] == 2


def test_a_missing_connection_names_the_variable_to_set(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_MARKET_DB", raising=False)
    with pytest.raises(RuntimeError, match="AIRFLOW_CONN_MARKET_DB"):
        connections.db_dsn()


def test_every_libpq_keyword_of_the_extra_reaches_the_dsn_and_airflows_own_keys_do_not(
    monkeypatch,
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_DB",
        '{"conn_type": "postgres", "host": "db", "login": "u", "schema": "market", "extra": '
        '{"sslmode": "require", "application_name": "market_daily", "keepalives_idle": 30, '
        '"target_session_attrs": "read-write", "cursor": "dictcursor", "iam": false}}',
    )

    dsn = connections.db_dsn()

    from psycopg2.extensions import parse_dsn

    parsed = parse_dsn(dsn)
    assert {k: parsed[k] for k in ("host", "user", "dbname")} == {
        "host": "db",
        "user": "u",
        "dbname": "market",
    }
    assert {k: parsed.get(k) for k in ("application_name", "sslmode", "target_session_attrs")} == {
        "application_name": "market_daily",
        "sslmode": "require",
        "target_session_attrs": "read-write",
    }
    assert parsed["keepalives_idle"] == "30"  # the extra's own value over the default bound
    assert "cursor" not in parsed and "iam" not in parsed  # Airflow's keys, not libpq's
