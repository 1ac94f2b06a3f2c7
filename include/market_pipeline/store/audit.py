"""The fetch log: ``fetch_audit``, one row per attempt (grows by design)."""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extras import execute_values

from market_pipeline.config import SCHEMA
from market_pipeline.store.sql import columns as column_list
from market_pipeline.store.sql import table

#: Longest error message stored (``fetch_audit``, ``dlq``).
MESSAGE_LIMIT = 2000


#: The columns of one ``fetch_audit`` row, in :func:`record_fetches`' order.
AUDIT_FIELDS = (
    "symbol",
    "window_start",
    "window_end",
    "source",
    "run_id",
    "try_number",
    "outcome",
    "rows_fetched",
    "rows_appended",
    "latency_ms",
    "error_kind",
    "error_message",
)


def record_fetches(conn, rows: list[dict], schema: str = SCHEMA) -> None:
    """``fetch_audit`` rows (mappings with :data:`AUDIT_FIELDS`; the counts default to 0,
    the rest to NULL) in one statement and one transaction."""
    if not rows:
        return
    defaults = {"rows_fetched": 0, "rows_appended": 0}
    values = []
    for row in rows:
        found = {**defaults, **row}
        message = found.get("error_message") or None
        found["error_message"] = message and message[:MESSAGE_LIMIT]
        values.append(tuple(found.get(f) for f in AUDIT_FIELDS))
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
                table("fetch_audit", schema), column_list(AUDIT_FIELDS)
            ),
            values,
            page_size=len(values),
        )
