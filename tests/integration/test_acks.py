"""market_pipeline.acks: the acknowledgements table and its CLI, on real Postgres."""

from __future__ import annotations

import argparse
from datetime import date

import pytest

from market_pipeline import acks
from market_pipeline.errors import ConfigurationError
from tests.support.db import migrated

DROP = date(2000, 9, 29)


@pytest.fixture
def db(pg_schema):
    """(connection, schema, dsn) with the migrations applied."""
    with migrated(*pg_schema) as conn:
        yield conn, pg_schema[1], pg_schema[0]


def test_an_ack_is_stored_with_who_and_why_and_shows_in_the_active_rules(db, monkeypatch):
    conn, schema, _ = db
    monkeypatch.setenv("USER", "alice")

    ack, created = acks.acknowledge(
        conn, "AAPL", DROP, "max_close_move", " profit warning ", schema=schema
    )

    assert created
    assert (ack.symbol, ack.trade_date, ack.rule, ack.reason, ack.acknowledged_by) == (
        "AAPL",
        DROP,
        "max_close_move",
        "profit warning",
        "alice",
    )
    assert acks.active_rules(conn, "AAPL", date(2000, 9, 1), date(2000, 10, 31), schema=schema) == {
        DROP: {"max_close_move"}
    }
    assert acks.active_rules(conn, "IBM", date(2000, 9, 1), date(2000, 10, 31), schema=schema) == {}
    assert (
        acks.active_rules(conn, "AAPL", date(2000, 10, 1), date(2000, 10, 31), schema=schema) == {}
    )


def test_acknowledging_twice_keeps_one_active_row_and_revoke_keeps_the_history(db):
    conn, schema, _ = db
    acks.acknowledge(conn, "AAPL", DROP, "max_close_move", "first", by="a", schema=schema)

    again, created = acks.acknowledge(
        conn, "AAPL", DROP, "max_close_move", "second", by="b", schema=schema
    )
    revoked = acks.revoke(conn, "AAPL", DROP, "max_close_move", by="c", schema=schema)

    assert not created and again.reason == "first"
    assert revoked == 1
    assert acks.list_acks(conn, schema=schema) == []
    history = acks.list_acks(conn, include_revoked=True, schema=schema)
    assert [(a.reason, a.revoked_by, a.active) for a in history] == [("first", "c", False)]
    assert acks.active_rules(conn, "AAPL", DROP, DROP, schema=schema) == {}
    with pytest.raises(LookupError, match="expected an active acknowledgement"):
        acks.revoke(conn, "AAPL", DROP, "max_close_move", schema=schema)


@pytest.mark.parametrize(
    ("symbol", "session", "rule", "reason", "message"),
    [
        ("AAPL", DROP, "max_move_typo", "r", "expected a bars gate rule"),
        ("AAPL", date(2000, 9, 30), "max_close_move", "r", "expected an XNYS session"),
        ("aapl", DROP, "max_close_move", "r", "expected a ticker"),
        ("AAPL", DROP, "max_close_move", "  ", "expected a reason"),
    ],
)
def test_an_ack_naming_no_real_rule_session_symbol_or_reason_is_refused(
    db, symbol, session, rule, reason, message
):
    conn, schema, _ = db

    with pytest.raises(ConfigurationError, match=message):
        acks.acknowledge(conn, symbol, session, rule, reason, schema=schema)


def test_the_subcommands_ack_list_and_revoke_through_a_parent_parser(db, capsys):
    _, schema, dsn = db
    parser = argparse.ArgumentParser(prog="recovery")
    parser.add_argument("--dsn")
    acks.add_subcommands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["--dsn", dsn, *argv])
        return args.func(args)

    assert (
        run(
            "ack",
            "AAPL",
            "2000-09-29",
            "--rule",
            "max_close_move",
            "--reason",
            "profit warning",
            "--by",
            "bob",
            "--schema",
            schema,
        )
        == 0
    )
    assert run("acks", "--schema", schema) == 0
    listed = capsys.readouterr().out
    assert run("revoke", "AAPL", "2000-09-29", "--rule", "max_close_move", "--schema", schema) == 0
    assert run("revoke", "AAPL", "2000-09-29", "--rule", "max_close_move", "--schema", schema) == 1
    assert run("acks", "--all", "--schema", schema) == 0
    history = capsys.readouterr().out

    assert "acknowledged: AAPL" in listed and "by bob" in listed and "profit warning" in listed
    assert "[active]" in listed
    assert "revoked" in history
