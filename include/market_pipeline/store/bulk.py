"""Bulk writes and reads for loading whole histories (the bootstrap): COPY in, COPY out.

The same layers and the same rules as the daily writers — the raw append, the promotion and
the indicator upsert are the daily statements (:func:`raw.append_statement`,
:func:`clean.promote_statement`, :func:`indicators.upsert_statement`) fed from a temporary
table instead of typed arrays. A symbol's first load skips the version and conflict checks
(nothing to compare with) and is COPYed straight in.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.store.clean import promote_statement
from market_pipeline.store.indicators import upsert_statement
from market_pipeline.store.raw import PRICE_COLUMNS, append_statement, payload_hashes
from market_pipeline.store.sql import columns as column_list
from market_pipeline.store.sql import copy_out, ident, table
from market_pipeline.store.validation import ValidationRecord, write_verdicts

_PG_EPOCH_DAY = np.datetime64("2000-01-01", "D")
_PG_EPOCH_US = np.datetime64("2000-01-01T00:00:00", "us")
_BINARY_TYPES = {"date": ">i4", "int4": ">i4", "float8": ">f8", "int8": ">i8", "timestamptz": ">i8"}


def copy_csv(cur, target: sql.Composable, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """COPY ``frame[columns]`` into ``target`` as CSV (NaN as NULL)."""
    buf = io.StringIO()
    frame.loc[:, list(columns)].to_csv(buf, index=False, header=False, na_rep="\\N")
    buf.seek(0)
    cur.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, NULL '\\N')").format(
            target, column_list(columns)
        ),
        buf,
    )


def _binary_values(column: pd.Series, kind: str) -> np.ndarray:
    if kind == "date":
        days = np.array(column.tolist(), dtype="datetime64[D]")
        return (days - _PG_EPOCH_DAY).astype(np.int64)
    if kind == "timestamptz":
        stamps = pd.to_datetime(column, utc=True).dt.tz_localize(None).to_numpy("datetime64[us]")
        return (stamps - _PG_EPOCH_US).astype(np.int64)
    return column.to_numpy(dtype=np.float64 if kind == "float8" else np.int64)


def copy_binary(
    cur, target: sql.Composable, frame: pd.DataFrame, spec: Sequence[tuple[str, str]]
) -> None:
    """COPY ``frame`` into ``target`` in Postgres' binary format, built with numpy.

    ``spec``: (column, kind) with kind ``text``, ``date``, ``float8``, ``int4``, ``int8`` or
    ``timestamptz``; no NULLs (callers send rows with NULLs through :func:`copy_csv`). Rows
    are encoded in blocks of equal text lengths, so each block is one fixed-width numpy
    record array — about ten times faster than formatting floats as CSV text, and exact.
    """
    if frame.empty:
        return
    frame = frame.reset_index(drop=True)
    texts, sizes = {}, {}
    for c, kind in spec:
        if kind == "text":  # encode each distinct value once
            codes, uniques = pd.factorize(frame[c].astype(str))
            encoded = [u.encode("utf-8") for u in uniques]
            texts[c] = np.array(encoded, dtype=object)[codes]
            sizes[c] = np.array([len(e) for e in encoded], dtype=np.int64)[codes]
    lengths = pd.DataFrame(sizes, index=frame.index)
    groups = lengths.groupby(list(texts)).indices if texts else {(): np.arange(len(frame))}
    parts = [b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)]
    for key, rows in groups.items():
        key = key if isinstance(key, tuple) else (key,)
        width = dict(zip(texts, key, strict=True))
        fields: list[tuple[str, str]] = [("n", ">i2")]
        for i, (c, kind) in enumerate(spec):
            value_type = f"S{width[c]}" if kind == "text" else _BINARY_TYPES[kind]
            fields += [(f"l{i}", ">i4"), (f"v{i}", value_type)]
        block = np.empty(len(rows), dtype=fields)
        block["n"] = len(spec)
        for i, (c, kind) in enumerate(spec):
            if kind == "text":
                block[f"l{i}"] = width[c]
                block[f"v{i}"] = texts[c][rows]
            else:
                block[f"l{i}"] = np.dtype(_BINARY_TYPES[kind]).itemsize
                block[f"v{i}"] = _binary_values(frame[c].iloc[rows], kind)
        parts.append(block.tobytes())
    parts.append(b"\xff\xff")
    cur.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(
            target, column_list(c for c, _ in spec)
        ),
        io.BytesIO(b"".join(parts)),
    )


def _copy_rows(
    cur, target: sql.Composable, frame: pd.DataFrame, spec: Sequence[tuple[str, str]], nullable
) -> None:
    """Binary COPY of the rows without NULLs in ``nullable`` columns, CSV for the rest."""
    whole = frame[list(nullable)].notna().all(axis=1)
    copy_binary(cur, target, frame[whole], spec)
    copy_csv(cur, target, frame[~whole], [c for c, _ in spec])


def _copy_new_symbols(
    conn,
    layer: str,
    frame: pd.DataFrame,
    spec: Sequence[tuple[str, str]],
    nullable: Sequence[str],
    schema: str,
    **constants,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """COPY the rows of the symbols that have no row in ``layer`` yet straight in (with the
    ``constants`` columns set), in one transaction; returns (those rows, the other rows)."""
    fresh = set(frame["symbol"].unique()) - symbols_with_rows(conn, layer, frame["symbol"], schema)
    new = frame["symbol"].isin(fresh)
    copied = frame[new].assign(**constants)
    if fresh:
        with conn, conn.cursor() as cur:
            _copy_rows(cur, table(layer, schema), copied, spec, nullable)
    return copied, frame[~new]


#: The column types a staging table may have (literal SQL, never built from data).
_TYPES = {
    "text": sql.SQL("text"),
    "date": sql.SQL("date"),
    "float8": sql.SQL("float8"),
    "bigint": sql.SQL("bigint"),
}


def _staged(cur, name: str, frame: pd.DataFrame, spec: Sequence[tuple[str, str]]):
    """A temporary table ``name`` (dropped at commit) of ``spec``'s (column, type) pairs,
    holding ``frame``'s rows (COPY as CSV); returns its identifier."""
    staged = ident(name)
    cur.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            staged,
            sql.SQL(", ").join(sql.SQL("{} {}").format(ident(c), _TYPES[t]) for c, t in spec),
        )
    )
    copy_csv(cur, staged, frame, [c for c, _ in spec])
    return staged


def symbols_with_rows(conn, layer: str, symbols: Iterable[str], schema: str = SCHEMA) -> set[str]:
    """Which of ``symbols`` already have a row in ``layer`` (one index probe each)."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """SELECT s FROM unnest(%s::text[]) AS s
                   WHERE EXISTS (SELECT 1 FROM {} t WHERE t.symbol = s)"""
            ).format(table(layer, schema)),
            (sorted(set(symbols)),),
        )
        return {r[0] for r in cur.fetchall()}


_RAW_SPEC = (
    ("symbol", "text"),
    ("trade_date", "date"),
    ("version", "int4"),
    *((c, "float8") for c in PRICE_COLUMNS),
    ("volume", "int8"),
    ("source", "text"),
    ("fetched_at", "timestamptz"),
    ("run_id", "text"),
    ("payload_hash", "text"),
)


def append_raw_many(
    conn,
    bars: pd.DataFrame,
    *,
    source: str,
    run_id: str,
    fetched_at: datetime,
    schema: str = SCHEMA,
) -> dict[str, int]:
    """Append many symbols' bars to ``raw_bars`` at once; ``{symbol: rows appended}``.

    The semantics of :func:`raw.append_raw_bars` (a row equal to the session's latest
    version adds nothing, a changed one adds version n+1): symbols without any raw row are
    COPYed in as version 1, the rest go through a temporary table into the daily statement.
    """
    if bars.empty:
        return {}
    frame = bars.loc[:, ["symbol", *BAR_COLUMNS]].copy()
    frame["payload_hash"] = payload_hashes(frame)
    copied, frame = _copy_new_symbols(
        conn,
        "raw_bars",
        frame,
        _RAW_SPEC,
        [*PRICE_COLUMNS, "volume"],
        schema,
        version=1,
        source=source,
        fetched_at=fetched_at,
        run_id=run_id,
    )
    out = {str(k): int(v) for k, v in copied["symbol"].value_counts().items()}
    if frame.empty:
        return out
    spec = [("symbol", "text"), ("trade_date", "date")]
    spec += [(c, "float8") for c in PRICE_COLUMNS] + [("volume", "bigint")]
    with conn, conn.cursor() as cur:
        incoming = _staged(cur, "incoming_raw", frame, [*spec, ("payload_hash", "text")])
        cur.execute(sql.SQL("ANALYZE {}").format(incoming))
        latest = sql.SQL(
            "r.symbol IN (SELECT DISTINCT symbol FROM {t}) "
            "AND r.trade_date >= (SELECT min(trade_date) FROM {t})"
        ).format(t=incoming)
        cur.execute(
            append_statement(incoming, latest, schema),
            {"source": source, "fetched_at": fetched_at, "run_id": run_id},
        )
        out.update(dict(cur.fetchall()))
    return out


def promote_many(
    conn,
    ranges: pd.DataFrame,
    schema: str = SCHEMA,
    *,
    fresh: Iterable[str] = (),
    verdicts: Sequence[ValidationRecord] = (),
) -> dict[str, int]:
    """Promote the latest raw version of every session in each (symbol, lo, hi) range and
    store ``verdicts``, in one transaction; ``{symbol: sessions in range}``.

    The daily promotion (:func:`clean.promote_statement`), server-side; equal rows are left
    untouched. ``fresh`` symbols had no raw (so no clean) rows before this load: their rows
    are all version 1 and are inserted without the latest-version sort and the conflict
    check. A failed verdict of the same gate left on a session now promoted (e.g. a stop
    since acknowledged) is replaced by the symbol's verdict in ``verdicts``: the latest
    verdict per session, so ``clean_bars`` and ``validation_reports`` never disagree.
    """
    verdicts = list(verdicts)
    if ranges.empty and not verdicts:
        return {}
    raw, clean = table("raw_bars", schema), table("clean_bars", schema)
    reports = table("validation_reports", schema)
    ranges = ranges.assign(fresh=ranges["symbol"].isin(set(fresh)))
    p = ident("promote_ranges")
    in_range = sql.SQL(
        "{raw} r JOIN {p} p ON r.symbol = p.symbol AND r.trade_date BETWEEN p.lo AND p.hi"
    ).format(raw=raw, p=p)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (symbol text, lo date, hi date, fresh boolean) ON COMMIT DROP"
            ).format(p)
        )
        copy_csv(cur, p, ranges, ["symbol", "lo", "hi", "fresh"])
        cur.execute(
            promote_statement(sql.SQL("{} WHERE p.fresh").format(in_range), schema, upsert=False)
        )
        latest = sql.SQL(
            """(SELECT DISTINCT ON (r.symbol, r.trade_date) r.* FROM {} WHERE NOT p.fresh
                ORDER BY r.symbol, r.trade_date, r.version DESC) AS r"""
        ).format(in_range)
        cur.execute(promote_statement(latest, schema))
        cur.execute(
            sql.SQL(
                """SELECT p.symbol, count(c.trade_date) FROM {p} p
                   LEFT JOIN {clean} c
                     ON c.symbol = p.symbol AND c.trade_date BETWEEN p.lo AND p.hi
                   GROUP BY p.symbol"""
            ).format(p=p, clean=clean)
        )
        promoted = dict(cur.fetchall())
        write_verdicts(cur, verdicts, schema)
        by_symbol = {(v.gate, v.symbol): v for v in verdicts}
        cur.execute(
            sql.SQL(
                """SELECT v.gate, v.symbol, v.trade_date FROM {reports} v JOIN {p} p
                     ON v.symbol = p.symbol AND v.trade_date BETWEEN p.lo AND p.hi
                   WHERE NOT v.success AND v.gate = ANY(%s)"""
            ).format(reports=reports, p=p),
            (sorted({v.gate for v in verdicts}),),
        )
        superseded = [
            replace(by_symbol[(gate, symbol)], trade_date=day, input_hash=None)
            for gate, symbol, day in cur.fetchall()
            if (gate, symbol) in by_symbol
        ]
        write_verdicts(cur, superseded, schema)
    return promoted


_IND_SPEC_HEAD = (("symbol", "text"), ("trade_date", "date"), ("close", "float8"))


def upsert_indicators_many(
    conn, frame: pd.DataFrame, columns: Sequence[str], schema: str = SCHEMA
) -> int:
    """Upsert indicator rows (symbol, trade_date, close, *columns) for many symbols at once.

    Symbols without any indicator row yet are COPYed straight in (binary, so the stored
    value is the computed one; warm-up rows with NULLs as CSV in their shortest round-trip
    form); the rest go through a temporary table into the daily upsert statement.
    """
    if frame.empty:
        return 0
    cols = ["symbol", "trade_date", "close", *columns]
    spec = [*_IND_SPEC_HEAD, *((c, "float8") for c in columns), ("computed_at", "timestamptz")]
    copied, frame = _copy_new_symbols(
        conn, "indicators", frame, spec, ["close", *columns], schema, computed_at=datetime.now(UTC)
    )
    written = len(copied)
    if frame.empty:
        return written
    with conn, conn.cursor() as cur:
        incoming = _staged(cur, "incoming_ind_many", frame, [(c, t) for c, t in spec if c in cols])
        cur.execute(upsert_statement(incoming, columns, schema))
    return written + len(frame)


def clean_bars_many(
    conn, symbols: Sequence[str], schema: str = SCHEMA, *, last: int | None = None
) -> pd.DataFrame:
    """Clean bars of ``symbols`` (all, or the ``last`` n per symbol), by symbol, oldest first,
    in one COPY; floats exactly as stored."""
    cols = ["symbol", *BAR_COLUMNS]
    if not symbols:
        return pd.DataFrame({c: [] for c in cols})
    clean = table("clean_bars", schema)
    wanted = sql.Literal(sorted(set(symbols)))
    if last is None:
        query = sql.SQL("SELECT {} FROM {} WHERE symbol = ANY({}::text[])").format(
            column_list(cols), clean, wanted
        )
    else:
        query = sql.SQL(
            """SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY symbol
                                   ORDER BY trade_date DESC) AS n
                                   FROM {clean} WHERE symbol = ANY({wanted}::text[])) t
               WHERE n <= {last}"""
        ).format(cols=column_list(cols), clean=clean, wanted=wanted, last=sql.Literal(int(last)))
    with conn.cursor() as cur:
        frame = copy_out(cur, query + sql.SQL(" ORDER BY symbol, trade_date"), cols)
    if not frame.empty:
        frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
        frame["volume"] = frame["volume"].astype("int64")
    return frame
