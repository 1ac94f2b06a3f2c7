"""Connections and whole-table reads: row counts, how far each symbol has got in a layer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from psycopg2 import sql

from market_pipeline.config import SCHEMA, TABLES
from market_pipeline.store.sql import fetch, table

#: Tables keyed on (symbol, trade_date): the layers :func:`last_sessions` can read.
LAYERS = ("raw_bars", "clean_bars", "indicators")


def connect(dsn: str):
    """A psycopg2 connection (autocommit off: callers own their transactions)."""
    import psycopg2

    return psycopg2.connect(dsn)


def table_counts(conn, schema: str = SCHEMA) -> dict[str, int]:
    """Row count of every pipeline table (the demo prints it; tests compare it)."""
    out = {}
    with conn.cursor() as cur:
        for name in TABLES:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table(name, schema)))
            out[name] = cur.fetchone()[0]
    return out


def last_sessions(
    conn, layer: str, symbols: Sequence[str], through: date, schema: str = SCHEMA
) -> dict[str, date | None]:
    """``{symbol: newest session <= through in layer}`` (None: no row), one index probe each.

    What a resumable writer reads to find where each symbol stands in a layer.
    """
    if layer not in LAYERS:
        raise ValueError(f"expected a layer in {LAYERS}, found {layer!r}")
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """SELECT w.symbol, (SELECT max(x.trade_date) FROM {} x
                                     WHERE x.symbol = w.symbol AND x.trade_date <= %s)
                   FROM unnest(%s::text[]) AS w(symbol)"""
            ).format(table(layer, schema)),
            (through, list(symbols)),
        )
        return dict(cur.fetchall())


def symbols_on(conn, name: str, trade_date: date, schema: str = SCHEMA) -> set[str]:
    """The symbols with a row for ``trade_date`` in table ``name`` (a layer, ``scores``)."""
    statement = sql.SQL("SELECT DISTINCT symbol FROM {} WHERE trade_date = %s")
    return {r[0] for r in fetch(conn, statement.format(table(name, schema)), (trade_date,))}
