"""One statement writes a symbol's signals for a session: upserts its rules, drops the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import psycopg2
import psycopg2.errors
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


def test_many_symbols_are_written_in_one_transaction_each_to_exactly_its_rules(db):
    conn, schema = db
    store.upsert_signals(conn, "AAA", D, [_Signal("old", "long")], schema=schema)

    counts = store.upsert_signals_many(
        conn,
        D,
        {"AAA": [_Signal("a", "long")], "BBB": [_Signal("a", "short"), _Signal("b", "flat")]},
        schema=schema,
    )

    assert counts == {"AAA": 1, "BBB": 2}
    assert _rows(conn, schema, "AAA") == [("a", "long", 0.5)]  # its old rule is gone
    assert _rows(conn, schema, "BBB") == [("a", "short", 0.5), ("b", "flat", 0.5)]


def test_a_write_that_one_symbol_breaks_writes_nothing_at_all(db):
    conn, schema = db
    bad = _Signal("a", "sideways")  # not a direction the table accepts

    with pytest.raises(psycopg2.errors.CheckViolation):
        store.upsert_signals_many(
            conn, D, {"AAA": [_Signal("a", "long")], "BBB": [bad]}, schema=schema
        )

    assert _rows(conn, schema, "AAA") == _rows(conn, schema, "BBB") == []


def test_in_a_chunk_only_the_symbol_whose_own_write_fails_fails(db):
    from market_pipeline.stages.outcome import Outcome, write_passed

    conn, schema = db
    found = {"AAA": [_Signal("a", "long")], "BBB": [_Signal("a", "sideways")]}

    def write(rules: dict) -> None:
        store.upsert_signals_many(conn, D, rules, schema=schema)

    out = write_passed(Outcome(ok=dict(found)), write, conn=conn, chunk=True)

    assert sorted(out.ok) == ["AAA"]
    assert isinstance(out.failed["BBB"], psycopg2.errors.CheckViolation)
    assert _rows(conn, schema, "AAA") == [("a", "long", 0.5)]
    # Alone (no chunk), the batch's error is the task's.
    with pytest.raises(psycopg2.errors.CheckViolation):
        write_passed(Outcome(ok={"BBB": found["BBB"]}), write, conn=conn, chunk=False)


def test_the_days_signals_read_without_reasons_are_the_same_rows_less_that_column(db):
    conn, schema = db
    reasons = {"why": ["close > sma_50"], "close": 101.5}
    store.upsert_signals_many(
        conn,
        D,
        {"AAA": [_Signal("a", "long", reasons=reasons)], "BBB": [_Signal("b", "flat")]},
        schema=schema,
    )

    full = store.signals_on(conn, D, ["AAA", "BBB"], schema=schema)
    lean = store.signals_on(conn, D, ["AAA", "BBB"], schema=schema, reasons=False)

    assert full.loc[0, "reasons"] == reasons
    assert list(lean.columns) == ["symbol", "rule", "direction", "strength", "ready"]
    assert lean.equals(full.drop(columns=["reasons"]))
