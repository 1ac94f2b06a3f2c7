"""The raw layer: ``raw_bars``, append-only, one version per distinct value of a session."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, datetime

import numpy as np
import pandas as pd
from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.store.rows import group_by_symbol, unnest
from market_pipeline.store.sql import table

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_TYPES = (
    ("trade_date", "date"),
    ("open", "float8"),
    ("high", "float8"),
    ("low", "float8"),
    ("close", "float8"),
    ("volume", "bigint"),
)
RAW_WINDOW_COLUMNS = (*BAR_COLUMNS, "raw_bar_id", "version")


def row_hash(row) -> str:
    """The payload hash of one bar (a mapping with OHLCV): what makes a version distinct."""
    payload = "|".join([f"{float(row[c]):.10g}" for c in PRICE_COLUMNS] + [str(int(row["volume"]))])
    return hashlib.sha256(payload.encode()).hexdigest()


def payload_hashes(frame: pd.DataFrame) -> list[str]:
    """:func:`row_hash` of every row, vectorised (same bytes, same digest)."""
    o, h, lo, c = (frame[col].to_numpy(dtype=np.float64).tolist() for col in PRICE_COLUMNS)
    v = frame["volume"].to_numpy(dtype=np.int64).tolist()
    sha = hashlib.sha256
    return [
        sha(f"{a:.10g}|{b:.10g}|{x:.10g}|{y:.10g}|{n}".encode()).hexdigest()
        for a, b, x, y, n in zip(o, h, lo, c, v, strict=True)
    ]


def append_statement(
    incoming: sql.Composable, latest_filter: sql.Composable, schema: str = SCHEMA
) -> sql.Composed:
    """The one raw append, for the daily and the bulk writer.

    ``incoming`` is a FROM item with (symbol, trade_date, open, high, low, close, volume,
    payload_hash); ``latest_filter`` bounds the raw rows ``r`` compared against. A row whose
    hash equals its session's latest version adds nothing; a changed one adds version n+1.
    Parameters ``source``, ``fetched_at``, ``run_id``; returns rows ``(symbol, appended)``.
    """
    return sql.SQL(
        """
        WITH incoming AS (SELECT * FROM {incoming}),
        latest AS (
            SELECT DISTINCT ON (r.symbol, r.trade_date) r.symbol, r.trade_date, r.version,
                   r.payload_hash
            FROM {raw} r WHERE {latest_filter}
            ORDER BY r.symbol, r.trade_date, r.version DESC
        ), added AS (
            INSERT INTO {raw} (symbol, trade_date, version, open, high, low, close, volume,
                               source, fetched_at, run_id, payload_hash)
            SELECT i.symbol, i.trade_date, COALESCE(l.version, 0) + 1, i.open, i.high,
                   i.low, i.close, i.volume, %(source)s, %(fetched_at)s, %(run_id)s,
                   i.payload_hash
            FROM incoming i LEFT JOIN latest l USING (symbol, trade_date)
            WHERE l.payload_hash IS DISTINCT FROM i.payload_hash
            RETURNING symbol
        )
        SELECT symbol, count(*) FROM added GROUP BY symbol
        """
    ).format(incoming=incoming, raw=table("raw_bars", schema), latest_filter=latest_filter)


def append_raw_bars(
    conn,
    symbol: str,
    bars: pd.DataFrame,
    *,
    source: str,
    run_id: str,
    fetched_at: datetime,
    schema: str = SCHEMA,
) -> int:
    """Append bars whose values differ from the session's latest version; return rows added.

    An identical re-fetch adds nothing; a restatement adds version n+1. One statement: the
    bars travel as typed arrays into :func:`append_statement`.
    """
    return append_raw_bars_many(
        conn, {symbol: bars}, source=source, run_id=run_id, fetched_at=fetched_at, schema=schema
    )[symbol]


def append_raw_bars_many(
    conn,
    bars: Mapping[str, pd.DataFrame],
    *,
    source: str,
    run_id: str,
    fetched_at: datetime,
    schema: str = SCHEMA,
) -> dict[str, int]:
    """:func:`append_raw_bars` of every symbol of ``bars`` in one statement and one
    transaction (a daily chunk's few bars per symbol); returns the rows added per symbol."""
    counts = dict.fromkeys(bars, 0)
    given = {symbol: frame for symbol, frame in bars.items() if not frame.empty}
    if not given:
        return counts
    # One concatenation, one column selection and one symbol column for the chunk (a
    # selection and an assign per symbol cost ~1.5 ms each).
    frame = pd.concat(list(given.values()), ignore_index=True).loc[:, list(BAR_COLUMNS)]
    frame["symbol"] = np.repeat(
        np.array(list(given), dtype=object), [len(f) for f in given.values()]
    )
    frame["payload_hash"] = payload_hashes(frame)
    rows, params = unnest(frame, [("symbol", "text"), *BAR_TYPES, ("payload_hash", "text")])
    # The latest versions of exactly the incoming (symbol, session) pairs.
    latest = sql.SQL(
        "EXISTS (SELECT 1 FROM incoming x WHERE x.symbol = r.symbol "
        "AND x.trade_date = r.trade_date)"
    )
    with conn, conn.cursor() as cur:
        cur.execute(
            append_statement(rows, latest, schema),
            {"source": source, "fetched_at": fetched_at, "run_id": run_id, **params},
        )
        counts.update((symbol, n) for symbol, n in cur.fetchall())
    return counts


def latest_raw_bars(
    conn, symbol: str, start: date, end: date, schema: str = SCHEMA
) -> pd.DataFrame:
    """The latest version of each raw bar in [start, end], with ``raw_bar_id`` and ``version``."""
    return latest_raw_bars_many(conn, {symbol: (start, end)}, schema)[symbol]


def latest_raw_bars_many(
    conn, windows: Mapping[str, tuple[date, date]], schema: str = SCHEMA
) -> dict[str, pd.DataFrame]:
    """:func:`latest_raw_bars` for many ``{symbol: (start, end)}`` in one round trip."""
    rows = latest_raw_rows_many(conn, windows, schema)
    return {s: pd.DataFrame(part, columns=list(RAW_WINDOW_COLUMNS)) for s, part in rows.items()}


def latest_raw_rows_many(
    conn, windows: Mapping[str, tuple[date, date]], schema: str = SCHEMA
) -> dict[str, list[tuple]]:
    """:func:`latest_raw_bars_many` as rows (:data:`RAW_WINDOW_COLUMNS`) per symbol, oldest
    first: for a caller that builds its own frames."""
    symbols = list(windows)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                # LATERAL: one index range scan per symbol. A plain join of the unnest
                # (which the planner cannot size) scanned the whole table: ~0.7 s per
                # 157-symbol chunk at 5000 symbols x 620 sessions (pg_stat_statements).
                """SELECT w.symbol, t.trade_date, t.open, t.high, t.low, t.close, t.volume,
                          t.id AS raw_bar_id, t.version
                   FROM unnest(%s::text[], %s::date[], %s::date[]) AS w(symbol, lo, hi)
                   CROSS JOIN LATERAL (
                       SELECT DISTINCT ON (r.trade_date) r.trade_date, r.open, r.high, r.low,
                              r.close, r.volume, r.id, r.version
                       FROM {} r
                       WHERE r.symbol = w.symbol AND r.trade_date BETWEEN w.lo AND w.hi
                       ORDER BY r.trade_date, r.version DESC) t
                   ORDER BY w.symbol, t.trade_date"""
            ).format(table("raw_bars", schema)),
            (symbols, [windows[s][0] for s in symbols], [windows[s][1] for s in symbols]),
        )
        rows = cur.fetchall()
    return group_by_symbol(rows, symbols)


def raw_bar_count(conn, symbol: str | None = None, schema: str = SCHEMA) -> int:
    """Rows in ``raw_bars`` (of ``symbol``, or all)."""
    raw = table("raw_bars", schema)
    with conn.cursor() as cur:
        if symbol:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE symbol = %s").format(raw), (symbol,))
        else:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(raw))
        return cur.fetchone()[0]
