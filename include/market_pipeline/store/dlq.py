"""The dead-letter queue: ``dlq``, one open row per failed (instance, symbol), resolved in place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import pandas as pd
from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.store.audit import MESSAGE_LIMIT
from market_pipeline.store.sql import records, table


@dataclass(frozen=True)
class DlqEntry:
    """A failed task instance, as the DLQ records it."""

    dag_id: str
    run_id: str
    logical_date: datetime | None
    trade_date: date | None
    task_id: str
    map_index: int
    symbol: str | None
    stage: str
    try_number: int
    kind: str
    error_class: str
    error_message: str


def clipped(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` cut to ``limit`` characters, keeping its ending next action whole."""
    from market_pipeline.errors import NEXT

    if len(message) <= limit:
        return message
    head, sep, action = message.rpartition(NEXT)
    if not sep or len(sep + action) > limit // 2:
        return message[:limit]
    return head[: limit - len(sep + action) - 1] + "…" + sep + action


def dlq_record(conn, entry: DlqEntry, schema: str = SCHEMA) -> None:
    """Open a DLQ row for the instance's symbol, or update its open row (never a duplicate)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """INSERT INTO {t}
                     (dag_id, run_id, logical_date, trade_date, task_id, map_index, symbol,
                      stage, try_number, kind, error_class, error_message)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (dag_id, run_id, task_id, map_index, (COALESCE(symbol, '')))
                     WHERE resolved_at IS NULL
                   DO UPDATE SET try_number = EXCLUDED.try_number, kind = EXCLUDED.kind,
                     error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
                     failures = {t}.failures + 1, updated_at = now()"""
            ).format(t=table("dlq", schema)),
            (
                entry.dag_id,
                entry.run_id,
                entry.logical_date,
                entry.trade_date,
                entry.task_id,
                entry.map_index,
                entry.symbol,
                entry.stage,
                entry.try_number,
                entry.kind,
                entry.error_class,
                clipped(entry.error_message),
            ),
        )


def dlq_resolve(
    conn,
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    try_number: int,
    trade_date: date | None = None,
    symbol: str | None = None,
    schema: str = SCHEMA,
) -> int:
    """Resolve open DLQ rows that a task instance's success makes moot.

    That is the instance's own row (a retry or a clear succeeded; an unmapped instance
    without a symbol resolves only rows without one, so the ``universe`` task's success
    leaves the rows of the entries it rejected open) and, when
    ``trade_date`` is given, rows of the same task for the same session and symbol left
    open by an earlier run (a later run of that session healed it).
    """
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """UPDATE {} SET resolved_at = now(), updated_at = now(),
                     resolved_by_run_id = %(run_id)s, resolved_by_try = %(try_number)s
                   WHERE dag_id = %(dag_id)s AND task_id = %(task_id)s AND resolved_at IS NULL
                     AND ((run_id = %(run_id)s AND map_index = %(map_index)s
                           AND (%(symbol)s::text IS NOT NULL OR %(map_index)s >= 0
                                OR symbol IS NULL))
                          OR (%(trade_date)s::date IS NOT NULL AND trade_date = %(trade_date)s
                              AND symbol IS NOT DISTINCT FROM %(symbol)s))"""
            ).format(table("dlq", schema)),
            {
                "run_id": run_id,
                "try_number": try_number,
                "dag_id": dag_id,
                "task_id": task_id,
                "map_index": map_index,
                "trade_date": trade_date,
                "symbol": symbol,
            },
        )
        return cur.rowcount


def dlq_resolve_symbols(
    conn,
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    trade_date: date,
    symbols: Sequence[str],
    try_number: int,
    schema: str = SCHEMA,
) -> int:
    """Resolve the open rows of ``task_id`` for ``symbols`` that passed it on ``trade_date``.

    The batched form of :func:`dlq_resolve` for a task instance that carries several symbols
    (``market_symbols_per_task`` > 1): only the named symbols' rows are resolved, those of
    this run and those an earlier run of the same session left open.
    """
    if not symbols:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """UPDATE {} SET resolved_at = now(), updated_at = now(),
                     resolved_by_run_id = %(run_id)s, resolved_by_try = %(try_number)s
                   WHERE dag_id = %(dag_id)s AND task_id = %(task_id)s AND resolved_at IS NULL
                     AND symbol = ANY(%(symbols)s)
                     AND (run_id = %(run_id)s OR trade_date = %(trade_date)s)"""
            ).format(table("dlq", schema)),
            {
                "run_id": run_id,
                "try_number": try_number,
                "dag_id": dag_id,
                "task_id": task_id,
                "trade_date": trade_date,
                "symbols": list(symbols),
            },
        )
        return cur.rowcount


def dlq_open(conn, *, run_id: str | None = None, schema: str = SCHEMA) -> pd.DataFrame:
    """Open DLQ rows (optionally of one run), oldest first."""
    query = sql.SQL(
        "SELECT id, dag_id, run_id, trade_date, task_id, map_index, symbol, stage, try_number, "
        "kind, error_class, error_message, failures, created_at FROM {} "
        "WHERE resolved_at IS NULL"
    ).format(table("dlq", schema))
    params: list = []
    if run_id:
        query += sql.SQL(" AND run_id = %s")
        params.append(run_id)
    with conn.cursor() as cur:
        cur.execute(query + sql.SQL(" ORDER BY created_at, id"), params)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def dlq_on(conn, trade_date: date, schema: str = SCHEMA) -> list[dict]:
    """Every DLQ row of one session, open and resolved, oldest first (as dicts)."""
    return records(
        conn,
        sql.SQL(
            """SELECT id, dag_id, run_id, trade_date, task_id, map_index, symbol, stage,
                      try_number, kind, error_class, error_message, failures, created_at,
                      updated_at, resolved_at, resolved_by_run_id
               FROM {} WHERE trade_date = %s ORDER BY created_at, id"""
        ).format(table("dlq", schema)),
        (trade_date,),
    )
