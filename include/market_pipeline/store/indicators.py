"""The indicator layer: ``indicators``, one row per (symbol, session), upserted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pandas as pd
from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.store.rows import unnest
from market_pipeline.store.sql import columns as column_list
from market_pipeline.store.sql import session_counts, table


def upsert_statement(
    source: sql.Composable, columns: Sequence[str], schema: str = SCHEMA
) -> sql.Composed:
    """The one indicator upsert, for the daily and the bulk writer: the rows (symbol,
    trade_date, close, *columns) of the FROM item ``source``, keyed on (symbol, trade_date)."""
    cols = ["symbol", "trade_date", "close", *columns]
    values = ["close", *columns]
    return sql.SQL(
        """INSERT INTO {t} ({cols}, computed_at) SELECT {cols}, now() FROM {source}
           ON CONFLICT (symbol, trade_date) DO UPDATE SET {sets},
             computed_at = EXCLUDED.computed_at"""
    ).format(
        t=table("indicators", schema),
        cols=column_list(cols),
        source=source,
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in values
        ),
    )


def upsert_indicators(
    conn, symbol: str, frame: pd.DataFrame, columns: Sequence[str], schema: str = SCHEMA
) -> int:
    """Upsert indicator rows (trade_date, close, *columns) for ``symbol``; returns the rows."""
    rows = frame.loc[:, ["trade_date", "close", *columns]].assign(symbol=symbol)
    upsert_indicator_frame(conn, rows, columns, schema)
    return len(frame)


def upsert_indicator_frame(
    conn, rows: pd.DataFrame, columns: Sequence[str], schema: str = SCHEMA
) -> None:
    """Upsert ``rows`` (symbol, trade_date, close, *columns; many symbols) in one statement
    and one transaction — a daily chunk's few rows per symbol. (The history bootstrap's many
    rows: ``bulk.upsert_indicators_many``.)"""
    if rows.empty:
        return
    spec = [
        ("symbol", "text"),
        ("trade_date", "date"),
        *((c, "float8") for c in ["close", *columns]),
    ]
    source, params = unnest(rows, spec)
    with conn, conn.cursor() as cur:
        cur.execute(upsert_statement(source, columns, schema), params)


def indicator_history(
    conn, symbol: str, end: date, sessions: int, columns: Sequence[str], schema: str = SCHEMA
) -> pd.DataFrame:
    """The last ``sessions`` indicator rows of ``symbol`` up to ``end``, oldest first."""
    return indicator_history_many(conn, [symbol], end, sessions, columns, schema)[symbol]


def indicator_history_many(
    conn,
    symbols: Sequence[str],
    end: date,
    sessions: int,
    columns: Sequence[str],
    schema: str = SCHEMA,
) -> dict[str, pd.DataFrame]:
    """:func:`indicator_history` of many symbols in one round trip (index per symbol)."""
    cols = ["trade_date", "close", *columns]
    symbols = list(dict.fromkeys(symbols))  # each once: a symbol's rows are one slice
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """SELECT w.symbol, {cols}
                   FROM unnest(%s::text[]) WITH ORDINALITY AS w(symbol, n)
                   CROSS JOIN LATERAL (
                       SELECT * FROM {t} i
                       WHERE i.symbol = w.symbol AND i.trade_date <= %s
                       ORDER BY i.trade_date DESC LIMIT %s) t
                   ORDER BY w.n, t.trade_date"""
            ).format(cols=column_list(cols, prefix="t"), t=table("indicators", schema)),
            (symbols, end, sessions),
        )
        rows = cur.fetchall()
    # One frame for the chunk, typed once, then cut per symbol: the rows come grouped by
    # symbol, oldest first, so each symbol's frame is one slice (typing or gathering 157
    # small frames one by one cost ~0.1 s per chunk).
    floats = dict.fromkeys(["close", *columns], "float64")
    every = pd.DataFrame(rows, columns=["symbol", *cols]).astype(floats)
    owners = every.pop("symbol").tolist()
    bounds: dict[str, list[int]] = {}
    for i, symbol in enumerate(owners):
        bounds.setdefault(symbol, [i, i])[1] = i + 1
    return {
        s: every.iloc[bounds[s][0] : bounds[s][1]].reset_index(drop=True)
        if s in bounds
        else every.iloc[:0].copy()
        for s in symbols
    }


def indicator_session_counts(
    conn, symbols: Sequence[str], end: date, schema: str = SCHEMA
) -> dict[str, int]:
    """How many indicator rows each symbol has up to ``end`` (0 for none), one round trip."""
    return session_counts(conn, "indicators", symbols, end, schema)


def indicators_on(
    conn, trade_date: date, columns: Sequence[str], schema: str = SCHEMA
) -> pd.DataFrame:
    """Every symbol's indicator row for ``trade_date``."""
    cols = ["symbol", "close", *columns]
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} WHERE trade_date = %s ORDER BY symbol").format(
                column_list(cols), table("indicators", schema)
            ),
            (trade_date,),
        )
        frame = pd.DataFrame(cur.fetchall(), columns=cols)
    for c in ["close", *columns]:
        frame[c] = frame[c].astype("float64")
    return frame
