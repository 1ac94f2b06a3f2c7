"""Outputs of a session: ``signals`` (one row per rule) and ``scores`` (replaced as a set)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date

import pandas as pd
from psycopg2 import sql
from psycopg2.extras import execute_values

from market_pipeline.config import SCHEMA
from market_pipeline.pause_points import pause_point
from market_pipeline.store.rows import result_json, unnest
from market_pipeline.store.sql import columns as column_list
from market_pipeline.store.sql import fetch, table


def upsert_signals(
    conn, symbol: str, trade_date: date, results: Iterable, schema: str = SCHEMA
) -> int:
    """Upsert one row per rule (objects with rule, direction, strength, ready, reasons)."""
    return upsert_signals_many(conn, trade_date, {symbol: results}, schema)[symbol]


def upsert_signals_many(
    conn, trade_date: date, results: Mapping[str, Iterable], schema: str = SCHEMA
) -> dict[str, int]:
    """Make each symbol's rules of ``trade_date`` exactly ``results[symbol]``, for every
    symbol at once: one statement upserts the rules and deletes the symbols' other rules of
    the session (a rule that no longer exists must not linger from an older run; no rule at
    all leaves no row), in one transaction. Returns the rows written per symbol."""
    rows = [
        (symbol, r.rule, r.direction, float(r.strength), bool(r.ready), _reasons(r.reasons))
        for symbol, found in results.items()
        for r in found
    ]
    counts = dict.fromkeys(results, 0)
    for row in rows:
        counts[row[0]] += 1
    spec = [
        ("symbol", "text"),
        ("rule", "text"),
        ("direction", "text"),
        ("strength", "float8"),
        ("ready", "bool"),
        ("reasons", "text"),
    ]
    incoming, params = unnest(pd.DataFrame(rows, columns=[c for c, _ in spec]), spec)
    t = table("signals", schema)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """WITH upserted AS (
                     INSERT INTO {t}
                       (symbol, trade_date, rule, direction, strength, ready, reasons,
                        computed_at)
                     SELECT symbol, %(day)s, rule, direction, strength, ready, reasons::jsonb,
                            now()
                       FROM {incoming}
                     ON CONFLICT (symbol, trade_date, rule) DO UPDATE SET
                       direction = EXCLUDED.direction, strength = EXCLUDED.strength,
                       ready = EXCLUDED.ready, reasons = EXCLUDED.reasons,
                       computed_at = EXCLUDED.computed_at
                     RETURNING symbol, rule)
                   DELETE FROM {t} d
                    WHERE d.trade_date = %(day)s AND d.symbol = ANY(%(symbols)s::text[])
                      AND (d.symbol, d.rule) NOT IN (SELECT symbol, rule FROM upserted)"""
            ).format(t=t, incoming=incoming),
            {"day": trade_date, "symbols": list(results), **params},
        )
    return counts


def _reasons(reasons) -> str:
    return result_json(reasons, sort_keys=True)


def signals_on(
    conn,
    trade_date: date,
    symbols: Sequence[str] | None = None,
    schema: str = SCHEMA,
    *,
    reasons: bool = True,
) -> pd.DataFrame:
    """Signal rows for ``trade_date`` (optionally only ``symbols``); without the JSON
    ``reasons`` column when ``reasons`` is false (decoding it is most of the read)."""
    names = ["symbol", "rule", "direction", "strength", "ready"] + (["reasons"] if reasons else [])
    query = sql.SQL("SELECT {} FROM {} WHERE trade_date = %s").format(
        column_list(names), table("signals", schema)
    )
    params: list = [trade_date]
    if symbols is not None:
        query += sql.SQL(" AND symbol = ANY(%s)")
        params.append(list(symbols))
    with conn.cursor() as cur:
        cur.execute(query + sql.SQL(" ORDER BY symbol, rule"), params)
        return pd.DataFrame(cur.fetchall(), columns=names)


def replace_scores(conn, trade_date: date, scores: pd.DataFrame, schema: str = SCHEMA) -> int:
    """Make ``scores`` the day's complete score set (delete + insert in one transaction)."""
    rows = [
        (
            trade_date,
            r["symbol"],
            float(r["score"]),
            int(r["rank"]),
            float(r["percentile"]),
            result_json(r["components"], sort_keys=True),
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
