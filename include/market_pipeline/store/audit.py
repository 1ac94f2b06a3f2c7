"""The fetch log: ``fetch_audit``, one row per attempt (grows by design)."""

from __future__ import annotations

from datetime import date

from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.store.sql import table

#: Longest error message stored (``fetch_audit``, ``dlq``).
MESSAGE_LIMIT = 2000


def record_fetch(
    conn,
    *,
    symbol: str,
    window_start: date,
    window_end: date,
    source: str,
    run_id: str,
    try_number: int,
    outcome: str,
    rows_fetched: int = 0,
    rows_appended: int = 0,
    latency_ms: float | None = None,
    error_kind: str | None = None,
    error_message: str | None = None,
    schema: str = SCHEMA,
) -> None:
    """One ``fetch_audit`` row per attempt."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """INSERT INTO {}
                     (symbol, window_start, window_end, source, run_id, try_number, outcome,
                      rows_fetched, rows_appended, latency_ms, error_kind, error_message)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""
            ).format(table("fetch_audit", schema)),
            (
                symbol,
                window_start,
                window_end,
                source,
                run_id,
                try_number,
                outcome,
                rows_fetched,
                rows_appended,
                latency_ms,
                error_kind,
                (error_message or None) and error_message[:MESSAGE_LIMIT],
            ),
        )
