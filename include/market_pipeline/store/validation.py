"""Gate verdicts: ``validation_reports``, the latest verdict per (gate, symbol, session)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from psycopg2 import sql
from psycopg2.extras import execute_values

from market_pipeline.config import SCHEMA
from market_pipeline.store.rows import result_json
from market_pipeline.store.sql import table


@dataclass(frozen=True)
class ValidationRecord:
    """One gate verdict, as stored in ``validation_reports``."""

    gate: str
    symbol: str
    trade_date: date
    suite_name: str
    suite_version: str
    success: bool
    critical_failures: Sequence[str]
    warnings: Sequence[str]
    acknowledged: Sequence[str]
    result: dict
    run_id: str
    try_number: int


_TEMPLATE = "(" + ", ".join(["%s"] * 13) + ", now())"  # verdict_row's 13, then created_at


def verdict_row(rec: ValidationRecord) -> tuple:
    """The 13 values of one verdict, in the order of :func:`upsert_statement`'s columns."""
    return (
        rec.gate,
        rec.symbol,
        rec.trade_date,
        rec.suite_name,
        rec.suite_version,
        rec.success,
        len(rec.critical_failures),
        len(rec.warnings),
        list(rec.critical_failures) + list(rec.warnings),
        list(rec.acknowledged),
        result_json(rec.result),
        rec.run_id,
        rec.try_number,
    )


def upsert_statement(schema: str = SCHEMA) -> sql.Composed:
    """``INSERT … VALUES %s ON CONFLICT … DO UPDATE``: the one verdict write (execute_values)."""
    return sql.SQL(
        """INSERT INTO {} (gate, symbol, trade_date, suite_name, suite_version, success,
                           critical_failures, warning_failures, failed_rules, acknowledged,
                           result, run_id, try_number, created_at)
           VALUES %s
           ON CONFLICT (gate, symbol, trade_date) DO UPDATE SET
             suite_name = EXCLUDED.suite_name, suite_version = EXCLUDED.suite_version,
             success = EXCLUDED.success, critical_failures = EXCLUDED.critical_failures,
             warning_failures = EXCLUDED.warning_failures,
             failed_rules = EXCLUDED.failed_rules, acknowledged = EXCLUDED.acknowledged,
             result = EXCLUDED.result, run_id = EXCLUDED.run_id,
             try_number = EXCLUDED.try_number, created_at = now()"""
    ).format(table("validation_reports", schema))


def write_verdicts(cur, recs: Sequence[ValidationRecord], schema: str = SCHEMA) -> None:
    """Upsert verdicts (distinct (gate, symbol, session)) on ``cur``, in the caller's
    transaction: a promotion writes its verdict in the transaction that moves the bars."""
    recs = list(recs)
    if not recs:
        return
    keys = [(r.gate, r.symbol, r.trade_date) for r in recs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"expected one verdict per (gate, symbol, session), found {keys}")
    execute_values(
        cur,
        upsert_statement(schema),
        [verdict_row(r) for r in recs],
        template=_TEMPLATE,
        page_size=len(recs),
    )


def record_validation(conn, rec: ValidationRecord, schema: str = SCHEMA) -> None:
    """Store a gate verdict on its own (a failed gate)."""
    with conn, conn.cursor() as cur:
        write_verdicts(cur, [rec], schema)


def record_validations(conn, recs: Sequence[ValidationRecord], schema: str = SCHEMA) -> None:
    """Store many gate verdicts (one gate, one session, distinct symbols) in one statement
    and one transaction: the indicator gate's verdicts for a chunk."""
    recs = list(recs)
    keys = [(r.gate, r.symbol, r.trade_date) for r in recs]
    if len(set(keys)) != len(keys):  # checked before the transaction opens
        raise ValueError(f"expected one verdict per (gate, symbol, session), found {keys}")
    if not recs:
        return
    with conn, conn.cursor() as cur:
        write_verdicts(cur, recs, schema)


def failed_verdicts(
    conn, gate: str, symbols: Sequence[str], trade_date: date, schema: str = SCHEMA
) -> set[str]:
    """The ``symbols`` whose stored ``gate`` verdict for ``trade_date`` is a failure."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT symbol FROM {} WHERE gate = %s AND trade_date = %s "
                "AND symbol = ANY(%s) AND NOT success"
            ).format(table("validation_reports", schema)),
            (gate, trade_date, list(symbols)),
        )
        return {row[0] for row in cur.fetchall()}
