"""Outputs of a session: ``signals`` (one row per rule) and ``scores`` (replaced as a set)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date

import pandas as pd
from psycopg2 import sql
from psycopg2.extras import execute_values

from market_pipeline.config import SCHEMA
from market_pipeline.pause_points import pause_point
from market_pipeline.store.rows import json_safe
from market_pipeline.store.sql import fetch, table


def upsert_signals(
    conn, symbol: str, trade_date: date, results: Iterable, schema: str = SCHEMA
) -> int:
    """Upsert one row per rule (objects with rule, direction, strength, ready, reasons)."""
    rows = [
        (
            symbol,
            trade_date,
            r.rule,
            r.direction,
            float(r.strength),
            bool(r.ready),
            json.dumps(json_safe(r.reasons), sort_keys=True),
        )
        for r in results
    ]
    t = table("signals", schema)
    with conn, conn.cursor() as cur:
        if not rows:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE symbol = %s AND trade_date = %s").format(t),
                (symbol, trade_date),
            )
            return 0
        # One statement: the upsert, and the delete of the symbol's other rules of the
        # session (a rule that no longer exists must not linger from an older run of it).
        execute_values(
            cur,
            sql.SQL(
                """WITH upserted AS (
                     INSERT INTO {t}
                       (symbol, trade_date, rule, direction, strength, ready, reasons,
                        computed_at)
                     VALUES %s
                     ON CONFLICT (symbol, trade_date, rule) DO UPDATE SET
                       direction = EXCLUDED.direction, strength = EXCLUDED.strength,
                       ready = EXCLUDED.ready, reasons = EXCLUDED.reasons,
                       computed_at = EXCLUDED.computed_at
                     RETURNING symbol, trade_date, rule)
                   DELETE FROM {t} d
                    WHERE (d.symbol, d.trade_date) IN (SELECT symbol, trade_date FROM upserted)
                      AND d.rule NOT IN (SELECT rule FROM upserted)"""
            ).format(t=t),
            rows,
            template="(%s, %s, %s, %s, %s, %s, %s::jsonb, now())",
            page_size=len(rows),
        )
    return len(rows)


def signals_on(
    conn, trade_date: date, symbols: Sequence[str] | None = None, schema: str = SCHEMA
) -> pd.DataFrame:
    """Signal rows for ``trade_date`` (optionally only ``symbols``)."""
    query = sql.SQL(
        "SELECT symbol, rule, direction, strength, ready, reasons FROM {} WHERE trade_date = %s"
    ).format(table("signals", schema))
    params: list = [trade_date]
    if symbols is not None:
        query += sql.SQL(" AND symbol = ANY(%s)")
        params.append(list(symbols))
    with conn.cursor() as cur:
        cur.execute(query + sql.SQL(" ORDER BY symbol, rule"), params)
        return pd.DataFrame(
            cur.fetchall(), columns=["symbol", "rule", "direction", "strength", "ready", "reasons"]
        )


def replace_scores(conn, trade_date: date, scores: pd.DataFrame, schema: str = SCHEMA) -> int:
    """Make ``scores`` the day's complete score set (delete + insert in one transaction)."""
    rows = [
        (
            trade_date,
            r["symbol"],
            float(r["score"]),
            int(r["rank"]),
            float(r["percentile"]),
            json.dumps(json_safe(r["components"]), sort_keys=True),
        )
        for r in scores.to_dict("records")
    ]
    t = table("scores", schema)
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {} WHERE trade_date = %s").format(t), (trade_date,))
        if rows:
            execute_values(
                cur,
                sql.SQL(
                    """INSERT INTO {}
                         (trade_date, symbol, score, rank, percentile, components, computed_at)
                       VALUES %s"""
                ).format(t),
                rows,
                template="(%s, %s, %s, %s, %s, %s::jsonb, now())",
            )
        # Deleted and inserted, not committed: where the fault suite kills a task.
        pause_point("scores")
    return len(rows)


def scores_on(conn, trade_date: date, schema: str = SCHEMA) -> pd.DataFrame:
    """The day's scores, best rank first."""
    rows = fetch(
        conn,
        sql.SQL(
            "SELECT symbol, score, rank, percentile, components FROM {} "
            "WHERE trade_date = %s ORDER BY rank"
        ).format(table("scores", schema)),
        (trade_date,),
    )
    return pd.DataFrame(rows, columns=["symbol", "score", "rank", "percentile", "components"])
