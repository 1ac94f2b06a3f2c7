"""Connection settings outside Airflow: the same AIRFLOW_CONN_* values the tasks use."""

from __future__ import annotations

import pytest

from market_pipeline import connections


def test_postgres_uri_becomes_a_libpq_dsn(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", "postgres://u:p%40ss@db.example:5433/market")
    assert connections.db_dsn() == ("host=db.example port=5433 user=u password=p@ss dbname=market")


def test_a_percent_encoded_socket_directory_is_a_host(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", "postgres://postgres@%2Ftmp%2Fpg/market")
    assert connections.db_dsn() == "host=/tmp/pg user=postgres dbname=market"


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

    assert parse_dsn(dsn) == {
        "host": "db",
        "user": "u",
        "dbname": "market",
        "application_name": "market_daily",
        "keepalives_idle": "30",
        "sslmode": "require",
        "target_session_attrs": "read-write",
    }
