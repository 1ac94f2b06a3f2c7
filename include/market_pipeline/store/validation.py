"""Gate verdicts: ``validation_reports``, the latest verdict per (gate, symbol, session).

A verdict stores the hash of the input it judged (``input_hash``); :func:`stored_verdicts`
reads them back so a gate can reuse a verdict whose input and suite version are unchanged
(``market_pipeline.quality.gates``), and :func:`verdict_lookup` binds that read to a
connection for the gates' ``reuse`` argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import date

from psycopg2 import sql
from psycopg2.extras import execute_values

from market_pipeline.config import SCHEMA
from market_pipeline.store.rows import result_json
from market_pipeline.store.sql import records, table
from market_pipeline.verdicts import Verdict


@dataclass(frozen=True)
class ValidationRecord(Verdict):
    """One gate verdict, as stored in ``validation_reports``."""

    acknowledged: Sequence[str]
    result: dict
    run_id: str
    try_number: int
    #: Hash of what the gate judged (rows, acknowledgements, parameters); None: unknown.
    input_hash: str | None = None
    #: The verdict was carried over from the stored one (same input), not computed by GX.
    reused: bool = False

    @classmethod
    def stamped(cls, result, *, run_id: str, try_number: int) -> ValidationRecord:
        """A gate's result (a ``quality.GateResult``) as stored, written by ``run_id``'s try
        ``try_number``: its verdict fields, acknowledgements, details, input hash and reuse."""
        return cls(
            **{f.name: getattr(result, f.name) for f in fields(Verdict)},
            acknowledged=result.acknowledged,
            result=result.result,
            run_id=run_id,
            try_number=try_number,
            input_hash=result.input_hash,
            reused=result.reused,
        )


_TEMPLATE = "(" + ", ".join(["%s"] * 15) + ", now())"  # verdict_row's 15, then created_at


def verdict_row(rec: ValidationRecord) -> tuple:
    """The 15 values of one verdict, in the order of :func:`upsert_statement`'s columns."""
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
        rec.input_hash,
        rec.reused,
    )


def upsert_statement(schema: str = SCHEMA) -> sql.Composed:
    """``INSERT … VALUES %s ON CONFLICT … DO UPDATE``: the one verdict write (execute_values)."""
    return sql.SQL(
        """INSERT INTO {} (gate, symbol, trade_date, suite_name, suite_version, success,
                           critical_failures, warning_failures, failed_rules, acknowledged,
                           result, run_id, try_number, input_hash, reused, created_at)
           VALUES %s
           ON CONFLICT (gate, symbol, trade_date) DO UPDATE SET
             suite_name = EXCLUDED.suite_name, suite_version = EXCLUDED.suite_version,
             success = EXCLUDED.success, critical_failures = EXCLUDED.critical_failures,
             warning_failures = EXCLUDED.warning_failures,
             failed_rules = EXCLUDED.failed_rules, acknowledged = EXCLUDED.acknowledged,
             result = EXCLUDED.result, run_id = EXCLUDED.run_id,
             try_number = EXCLUDED.try_number, input_hash = EXCLUDED.input_hash,
             reused = EXCLUDED.reused, created_at = now()"""
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


@dataclass(frozen=True)
class StoredVerdict:
    """A stored verdict as a gate needs it to decide whether to reuse it."""

    symbol: str
    input_hash: str | None
    suite_name: str
    suite_version: str
    success: bool
    critical_failures: tuple[str, ...]
    warnings: tuple[str, ...]
    acknowledged: tuple[str, ...]
    result: dict
    run_id: str


def stored_verdicts(
    conn, gate: str, trade_date: date, symbols: Sequence[str], schema: str = SCHEMA
) -> dict[str, StoredVerdict]:
    """The stored verdicts of ``gate`` on ``trade_date`` for ``symbols`` (one query), keyed
    by symbol; symbols without one are absent."""
    if not symbols:
        return {}
    query = sql.SQL(
        """SELECT symbol, input_hash, suite_name, suite_version, success, critical_failures,
                  failed_rules, acknowledged, result, run_id
             FROM {}
            WHERE gate = %s AND trade_date = %s AND symbol = ANY(%s)"""
    ).format(table("validation_reports", schema))
    with conn, conn.cursor() as cur:
        cur.execute(query, (gate, trade_date, list(symbols)))
        rows = cur.fetchall()
    out = {}
    for symbol, digest, name, version, success, n_critical, failed, acked, result, run in rows:
        failed = tuple(failed or ())
        out[symbol] = StoredVerdict(
            symbol=symbol,
            input_hash=digest,
            suite_name=name,
            suite_version=version,
            success=success,
            critical_failures=failed[:n_critical],
            warnings=failed[n_critical:],
            acknowledged=tuple(acked or ()),
            result=result,
            run_id=run,
        )
    return out


def verdict_lookup(
    conn, schema: str = SCHEMA
) -> Callable[[str, date, Sequence[str]], dict[str, StoredVerdict]]:
    """``lookup(gate, trade_date, symbols)``: :func:`stored_verdicts` on this connection, the
    ``reuse`` argument of ``quality.validate_bars_many`` / ``validate_indicators_many``."""

    def lookup(gate: str, trade_date: date, symbols: Sequence[str]) -> dict[str, StoredVerdict]:
        return stored_verdicts(conn, gate, trade_date, symbols, schema)

    return lookup


def servable_on(conn, trade_date: date, symbols: Sequence[str], schema: str = SCHEMA) -> list[dict]:
    """The ``symbols`` whose results for ``trade_date`` are valid in Postgres, whatever run
    or attempt wrote them: a clean bar and an indicator row for the session, a passed raw-bar
    verdict, a passed indicator verdict no older than it (the indicators were judged after
    the bars they were computed from) and signals for the session.

    One dict per symbol, sorted: ``symbol``, ``bars_warnings`` / ``indicators_warnings``
    (the rules each verdict warned on), ``bars_details`` / ``indicators_details`` (the
    verdicts' per-rule details) and ``not_ready`` (indicator → why its warm-up is not over).
    """
    query = sql.SQL(
        """SELECT c.symbol, vb.failed_rules, vb.result -> 'details',
                  vi.failed_rules, vi.result -> 'details', vi.result -> 'not_ready'
           FROM {clean} c
           JOIN {ind} i ON i.symbol = c.symbol AND i.trade_date = c.trade_date
           JOIN {val} vb ON vb.gate = 'bars' AND vb.symbol = c.symbol
                AND vb.trade_date = c.trade_date AND vb.success
           JOIN {val} vi ON vi.gate = 'indicators' AND vi.symbol = c.symbol
                AND vi.trade_date = c.trade_date AND vi.success
                AND vi.created_at >= vb.created_at
           WHERE c.trade_date = %s
             AND EXISTS (SELECT 1 FROM {sig} s
                         WHERE s.symbol = c.symbol AND s.trade_date = c.trade_date)
           ORDER BY c.symbol"""
    ).format(
        clean=table("clean_bars", schema),
        ind=table("indicators", schema),
        val=table("validation_reports", schema),
        sig=table("signals", schema),
    )
    # The symbols are picked here, not with `symbol = ANY(...)`: the planner put that array
    # into every index probe of the join, 2.4 s at 5000 symbols against 0.3 s for the
    # session's rows (EXPLAIN ANALYZE, 5000 symbols x 620 sessions).
    wanted = set(symbols)
    with conn.cursor() as cur:
        cur.execute(query, (trade_date,))
        rows = [row for row in cur.fetchall() if row[0] in wanted]
    return [
        {
            "symbol": symbol,
            "bars_warnings": list(bars_rules or []),
            "bars_details": dict(bars_details or {}),
            "indicators_warnings": list(ind_rules or []),
            "indicators_details": dict(ind_details or {}),
            "not_ready": dict(not_ready or {}),
        }
        for symbol, bars_rules, bars_details, ind_rules, ind_details, not_ready in rows
    ]


def failed_verdicts(
    conn, gate: str, symbols: Sequence[str], trade_date: date, schema: str = SCHEMA
) -> set[str]:
    """The ``symbols`` whose stored ``gate`` verdict for ``trade_date`` is a failure."""
    stored = stored_verdicts(conn, gate, trade_date, symbols, schema)
    return {symbol for symbol, verdict in stored.items() if not verdict.success}


def verdicts_on(conn, trade_date: date, schema: str = SCHEMA) -> dict[tuple[str, str], dict]:
    """``{(gate, symbol): verdict row}`` of one session, as the health page and the run report
    read them: outcome, rules (``failed_rules`` holds the critical ones first), the
    acknowledged ones, the GX ``details``, and the run and try that wrote it."""
    rows = records(
        conn,
        sql.SQL(
            """SELECT gate, symbol, success, critical_failures, warning_failures, failed_rules,
                      acknowledged, result->'details' AS details, run_id, try_number, created_at
               FROM {} WHERE trade_date = %s"""
        ).format(table("validation_reports", schema)),
        (trade_date,),
    )
    return {(r["gate"], r["symbol"]): r for r in rows}
