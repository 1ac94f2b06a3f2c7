"""The clean layer: ``clean_bars``, the validated latest raw version of each session."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import pandas as pd
from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.store.rows import group_by_symbol
from market_pipeline.store.sql import columns as column_list
from market_pipeline.store.sql import copy_out, fetch, session_counts, table
from market_pipeline.store.validation import ValidationRecord, write_verdicts


def promote_statement(source: sql.Composable, schema: str = SCHEMA, *, upsert: bool = True):
    """The one promotion, for the daily and the bulk writer: ``INSERT INTO clean_bars`` the
    raw rows ``r`` of the FROM item ``source``, keeping each row's ``raw_bar_id``.

    With ``upsert`` a session already clean is updated only when another raw version is
    promoted (equal rows are left untouched, ``validated_at`` included); without it the
    caller knows the sessions are new (a symbol's first bulk load).
    """
    clean = table("clean_bars", schema)
    insert = sql.SQL(
        """INSERT INTO {clean} (symbol, trade_date, open, high, low, close, volume,
                                raw_bar_id, validated_at)
           SELECT r.symbol, r.trade_date, r.open, r.high, r.low, r.close, r.volume, r.id,
                  now()
           FROM {source}"""
    ).format(clean=clean, source=source)
    if not upsert:
        return insert
    return sql.SQL(
        """{insert}
           ON CONFLICT (symbol, trade_date) DO UPDATE SET
             open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
             close = EXCLUDED.close, volume = EXCLUDED.volume,
             raw_bar_id = EXCLUDED.raw_bar_id, validated_at = EXCLUDED.validated_at
           WHERE {clean}.raw_bar_id IS DISTINCT FROM EXCLUDED.raw_bar_id"""
    ).format(insert=insert, clean=clean)


def promote_clean_bars(
    conn, symbol: str, bars: pd.DataFrame, rec: ValidationRecord, schema: str = SCHEMA
) -> int:
    """Promote the validated raw versions (``bars.raw_bar_id``, as read by
    :func:`latest_raw_bars`) to ``clean_bars`` and record the verdict, in one transaction.
    Returns the sessions in ``bars``."""
    return promote_clean_bars_many(conn, {symbol: (bars, rec)}, schema)[symbol]


def promote_clean_bars_many(
    conn, passed: Mapping[str, tuple[pd.DataFrame, ValidationRecord]], schema: str = SCHEMA
) -> dict[str, int]:
    """:func:`promote_clean_bars` of every symbol of ``passed`` (``{symbol: (bars, verdict)}``)
    in one transaction: the verdicts in one statement, the promotion in another. Returns the
    sessions promoted per symbol."""
    ids = {symbol: (bars["raw_bar_id"].tolist(), rec) for symbol, (bars, rec) in passed.items()}
    return promote_raw_ids_many(conn, ids, schema)


def promote_raw_ids_many(
    conn, passed: Mapping[str, tuple[Sequence[int], ValidationRecord]], schema: str = SCHEMA
) -> dict[str, int]:
    """:func:`promote_clean_bars_many` given each symbol's raw bar ids
    (``{symbol: (raw_bar_ids, verdict)}``)."""
    ids = {symbol: [int(i) for i in found] for symbol, (found, _) in passed.items()}
    every = [i for found in ids.values() for i in found]
    with conn, conn.cursor() as cur:
        write_verdicts(cur, [rec for _, rec in passed.values()], schema)
        if every:
            source = sql.SQL("{} r WHERE r.id = ANY(%(ids)s)").format(table("raw_bars", schema))
            cur.execute(promote_statement(source, schema), {"ids": every})
    return {symbol: len(found) for symbol, found in ids.items()}


def last_clean_session(conn, symbol: str, before: date, schema: str = SCHEMA) -> date | None:
    """The newest clean session of ``symbol`` strictly before ``before``."""
    return last_clean_sessions(conn, [symbol], before, schema)[symbol]


def last_clean_sessions(
    conn, symbols: Sequence[str], before: date, schema: str = SCHEMA
) -> dict[str, date | None]:
    """:func:`last_clean_session` of many symbols in one round trip."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """SELECT w.symbol, (SELECT max(trade_date) FROM {} c
                                     WHERE c.symbol = w.symbol AND c.trade_date < %s)
                   FROM unnest(%s::text[]) AS w(symbol)"""
            ).format(table("clean_bars", schema)),
            (before, list(symbols)),
        )
        return dict(cur.fetchall())


def clean_history(
    conn, symbol: str, end: date, sessions: int, schema: str = SCHEMA
) -> pd.DataFrame:
    """The last ``sessions`` clean bars of ``symbol`` up to ``end``, oldest first."""
    return clean_history_many(conn, {symbol: end}, sessions, schema)[symbol]


def _history_query(columns: Sequence[str], schema: str) -> sql.Composed:
    """``(symbol, *columns)`` of each symbol's last ``%(sessions)s`` clean bars up to its end
    (``%(symbols)s``, ``%(ends)s``), symbols in the given order, each one's bars oldest first."""
    return sql.SQL(
        """SELECT w.symbol, {outer}
           FROM unnest(%(symbols)s::text[], %(ends)s::date[]) WITH ORDINALITY AS w(symbol, hi, n)
           CROSS JOIN LATERAL (
               SELECT {inner} FROM {clean} c
               WHERE c.symbol = w.symbol AND c.trade_date <= w.hi
               ORDER BY c.trade_date DESC LIMIT %(sessions)s) t
           ORDER BY w.n, t.trade_date"""
    ).format(
        outer=column_list(columns, "t"),
        inner=column_list(columns),
        clean=table("clean_bars", schema),
    )


def _history_params(ends: Mapping[str, date], sessions: int) -> dict:
    symbols = list(ends)
    return {"symbols": symbols, "ends": [ends[s] for s in symbols], "sessions": sessions}


def clean_history_many(
    conn, ends: Mapping[str, date], sessions: int, schema: str = SCHEMA
) -> dict[str, pd.DataFrame]:
    """:func:`clean_history` for many ``{symbol: end}`` in one round trip (index per symbol)."""
    rows = clean_history_rows_many(conn, ends, sessions, schema)
    return {s: pd.DataFrame(part, columns=list(BAR_COLUMNS)) for s, part in rows.items()}


def clean_history_rows_many(
    conn, ends: Mapping[str, date], sessions: int, schema: str = SCHEMA
) -> dict[str, list[tuple]]:
    """:func:`clean_history_many` as rows (``BAR_COLUMNS``) per symbol, oldest first."""
    rows = fetch(conn, _history_query(BAR_COLUMNS, schema), _history_params(ends, sessions))
    return group_by_symbol(rows, list(ends))


#: What the indicators are computed from (``market_pipeline.indicators.compute_universe``).
HISTORY_FRAME_COLUMNS = ("symbol", "trade_date", "high", "low", "close")


def clean_history_frame(
    conn, ends: Mapping[str, date], sessions: int, schema: str = SCHEMA
) -> pd.DataFrame:
    """Each symbol's last ``sessions`` clean bars up to its end as one long frame
    (:data:`HISTORY_FRAME_COLUMNS`; ``trade_date`` as ``datetime64``), symbols in ``ends``'
    order, each symbol's bars oldest first: no frame per symbol, no Python object per value
    (one COPY, parsed by pandas), floats exactly as stored."""
    columns = list(HISTORY_FRAME_COLUMNS)
    query = _history_query(columns[1:], schema)
    with conn.cursor() as cur:
        frame = copy_out(cur, query, columns, _history_params(ends, sessions))
    frame["symbol"] = frame["symbol"].astype(object)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"], format="%Y-%m-%d")
    return frame.astype({c: "float64" for c in columns[2:]})


def clean_closes_on(conn, trade_date: date, schema: str = SCHEMA) -> dict[str, float]:
    """``{symbol: close}`` of every clean bar on ``trade_date``."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT symbol, close FROM {} WHERE trade_date = %s").format(
                table("clean_bars", schema)
            ),
            (trade_date,),
        )
        return {symbol: float(close) for symbol, close in cur.fetchall()}


def clean_session_count(conn, symbol: str, end: date, schema: str = SCHEMA) -> int:
    """How many clean sessions ``symbol`` has up to ``end``."""
    return clean_session_counts(conn, [symbol], end, schema)[symbol]


def clean_session_counts(
    conn, symbols: Sequence[str], end: date, schema: str = SCHEMA, *, at_most: int | None = None
) -> dict[str, int]:
    """How many clean sessions each symbol has up to ``end`` (0 for none), one round trip;
    counted no further than ``at_most`` when given."""
    return session_counts(conn, "clean_bars", symbols, end, schema, at_most=at_most)
