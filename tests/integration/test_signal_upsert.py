"""One statement writes a symbol's signals for a session: upserts its rules, drops the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import psycopg2
import pytest

from market_pipeline import migrate, store

D = date(2024, 11, 29)


@dataclass
class _Signal:
    rule: str
    direction: str
    strength: float = 0.5
    ready: bool = True
    reasons: dict = field(default_factory=dict)


@pytest.fixture
def db(pg_schema):
    dsn, schema = pg_schema
    conn = psycopg2.connect(dsn)
    migrate.apply(conn, schema)
    store.ensure_symbols(conn, ["AAA", "BBB"], schema=schema)
    yield conn, schema
    conn.close()


def _rows(conn, schema, symbol):
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT rule, direction, strength FROM {schema}.signals "
            "WHERE symbol = %s AND trade_date = %s ORDER BY rule",
            (symbol, D),
        )
        return cur.fetchall()


def test_a_rerun_updates_its_rules_and_drops_a_rule_it_no_longer_has(db):
    conn, schema = db
    three = [_Signal("a", "long"), _Signal("b", "flat"), _Signal("c", "short")]
    assert store.upsert_signals(conn, "AAA", D, three, schema=schema) == 3
    assert store.upsert_signals(conn, "BBB", D, three, schema=schema) == 3

    again = [_Signal("a", "short", 0.9), _Signal("b", "flat")]
    assert store.upsert_signals(conn, "AAA", D, again, schema=schema) == 2

    assert _rows(conn, schema, "AAA") == [("a", "short", 0.9), ("b", "flat", 0.5)]
    assert len(_rows(conn, schema, "BBB")) == 3  # another symbol's rules stay


def test_no_rule_at_all_leaves_no_row_of_the_session(db):
    conn, schema = db
    store.upsert_signals(conn, "AAA", D, [_Signal("a", "long")], schema=schema)

    assert store.upsert_signals(conn, "AAA", D, [], schema=schema) == 0
    assert _rows(conn, schema, "AAA") == []
