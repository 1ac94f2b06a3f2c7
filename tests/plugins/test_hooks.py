"""The market hooks resolve Airflow connections and build clients with our timeouts."""

from __future__ import annotations

from contextlib import closing

from psycopg2.extensions import parse_dsn


def test_the_db_hook_adds_keepalives_and_a_connect_timeout_unless_the_extra_sets_them(
    monkeypatch,
):
    from market_airflow.hooks import MarketDbHook

    from market_pipeline.connections import PG_TIMEOUTS

    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_TEST_DB",
        '{"conn_type": "postgres", "host": "db", "login": "u", "schema": "market", '
        '"extra": {"keepalives_idle": 15}}',
    )
    dsn = parse_dsn(MarketDbHook("market_test_db").dsn)

    assert (dsn["connect_timeout"], dsn["keepalives"], dsn["keepalives_idle"]) == ("10", "1", "15")
    assert (dsn["keepalives_interval"], dsn["keepalives_count"]) == (
        str(PG_TIMEOUTS["keepalives_interval"]),
        str(PG_TIMEOUTS["keepalives_count"]),
    )


def test_the_db_hook_connects_with_psycopg2_to_the_configured_database(monkeypatch, pg_dsn):
    import psycopg2
    from market_airflow.hooks import MarketDbHook

    from market_pipeline.connections import PG_TIMEOUTS

    monkeypatch.setenv("AIRFLOW_CONN_MARKET_TEST_DB", pg_dsn)
    with closing(MarketDbHook("market_test_db").get_conn()) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        used = conn.get_dsn_parameters()

    assert isinstance(conn, psycopg2.extensions.connection)
    assert (used["keepalives"], used["keepalives_idle"], used["connect_timeout"]) == (
        "1",
        str(PG_TIMEOUTS["keepalives_idle"]),
        str(PG_TIMEOUTS["connect_timeout"]),
    )
