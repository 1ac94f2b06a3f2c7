"""Bulk history bootstrap: load symbols' whole history in one pass (no daily DAG runs).

    python -m market_pipeline.bootstrap --source file_drop --path DIR --end 2012-09-12 \\
        [--symbols AAPL,IBM] [--start 2000-01-03] [--schema market] [--dsn URI]

The path a new deployment or a long backfill uses. Per call:

1. apply pending migrations; add the symbols to ``symbols`` (never deactivates others);
2. per symbol, fetch (last clean session, end] from any :class:`BarSource` (from ``--start``,
   default the calendar's first session, when the symbol has no clean bars);
3. append to ``raw_bars`` in one COPY + one set-based INSERT (append-only, versioned, hashes
   identical to :func:`store.append_raw_bars`, so a later DAG re-fetch adds nothing);
4. run the raw-bar GX suite on every symbol's whole window in one batch
   (:func:`quality.validate_bars_many`), with the symbol's last few clean bars as context and
   the active acknowledgements per session (:mod:`market_pipeline.acks`);
5. promote to ``clean_bars`` server-side (INSERT … SELECT from the raw layer) **up to the
   session before the symbol's first unacknowledged critical failure** — the DAG's gate
   semantics applied to history: what follows a stop is never clean until the stop is
   fixed or acknowledged; the stop is reported (symbol, session, rules) and recorded in
   ``validation_reports`` on the stop session, so the operator flow is the DAG's one
   (``recovery ack`` → run the bootstrap again, or let the DAG run the session);
6. compute indicators for the whole universe at once (:func:`indicators.compute_universe`,
   numba engine) over each symbol's full clean history and upsert the new sessions' rows;
7. record one ``validation_reports`` row per symbol (gate ``bars``).

Idempotent: a rerun fetches only what is after the last clean session, so it appends,
promotes and upserts nothing. A symbol whose end session is not delivered is validated up to
its last delivered session (status ``partial``); the DAG waits for the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import struct
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from market_pipeline import acks, calendar, migrate, quality, store
from market_pipeline.config import GATE_CONTEXT_SESSIONS, SCHEMA
from market_pipeline.sources.base import BAR_COLUMNS, BarSource

log = logging.getLogger(__name__)

_PRICE = ("open", "high", "low", "close")


@dataclass
class SymbolOutcome:
    """What the bootstrap did for one symbol."""

    symbol: str
    status: str  # promoted | partial | stopped | up_to_date | not_delivered
    window_start: date | None = None
    fetched: int = 0
    appended: int = 0
    promoted: int = 0
    promoted_through: date | None = None
    stopped_at: date | None = None
    stopped_rules: tuple[str, ...] = ()
    stop_detail: str = ""
    acknowledged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    indicator_rows: int = 0

    def line(self) -> str:
        """One human line for the CLI."""
        base = (
            f"{self.symbol:<6} {self.status:<13} fetched {self.fetched:>6}  appended "
            f"{self.appended:>6}  promoted {self.promoted:>6}"
        )
        if self.promoted_through:
            base += f" through {self.promoted_through}"
        if self.stopped_at:
            base += f"  STOPPED at {self.stopped_at}: {', '.join(self.stopped_rules)}"
            if self.stop_detail:
                base += f" ({self.stop_detail})"
        if self.acknowledged:
            base += f"  acknowledged: {', '.join(self.acknowledged)}"
        return base


@dataclass
class BootstrapResult:
    """Outcome of one bootstrap call: per symbol, plus phase timings in seconds."""

    run_id: str
    end: date
    outcomes: dict[str, SymbolOutcome]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stopped(self) -> dict[str, SymbolOutcome]:
        return {s: o for s, o in self.outcomes.items() if o.status == "stopped"}

    def totals(self) -> dict[str, int]:
        keys = ("fetched", "appended", "promoted", "indicator_rows")
        return {k: sum(getattr(o, k) for o in self.outcomes.values()) for k in keys}


# --------------------------------------------------------------------------- SQL helpers


def _q(schema: str, table: str) -> str:
    return store._q(schema, table)


def _copy_in(cur, table: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    buf = io.StringIO()
    frame.loc[:, list(columns)].to_csv(buf, index=False, header=False, na_rep="\\N")
    buf.seek(0)
    cur.copy_expert(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf
    )


def _copy_out(cur, sql: str, columns: Sequence[str]) -> pd.DataFrame:
    buf = io.StringIO()
    cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", buf)
    buf.seek(0)
    if not buf.getvalue():
        return pd.DataFrame({c: [] for c in columns})
    return pd.read_csv(buf, header=None, names=list(columns))


_PG_EPOCH_DAY = np.datetime64("2000-01-01", "D")
_PG_EPOCH_US = np.datetime64("2000-01-01T00:00:00", "us")
_BINARY_TYPES = {"date": ">i4", "int4": ">i4", "float8": ">f8", "int8": ">i8", "timestamptz": ">i8"}


def _binary_values(column: pd.Series, kind: str) -> np.ndarray:
    if kind == "date":
        days = np.array(column.tolist(), dtype="datetime64[D]")
        return (days - _PG_EPOCH_DAY).astype(np.int64)
    if kind == "timestamptz":
        stamps = pd.to_datetime(column, utc=True).dt.tz_localize(None).to_numpy("datetime64[us]")
        return (stamps - _PG_EPOCH_US).astype(np.int64)
    return column.to_numpy(dtype=np.float64 if kind == "float8" else np.int64)


def copy_binary(cur, table: str, frame: pd.DataFrame, spec: Sequence[tuple[str, str]]) -> None:
    """COPY ``frame`` into ``table`` in Postgres' binary format, built with numpy.

    ``spec``: (column, kind) with kind ``text``, ``date``, ``float8``, ``int4``, ``int8`` or
    ``timestamptz``; no NULLs (callers send rows with NULLs through CSV). Rows are encoded in
    blocks of equal text lengths, so each block is one fixed-width numpy record array —
    about ten times faster than formatting floats as CSV text, and exact.
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
    cols = ", ".join(c for c, _ in spec)
    cur.copy_expert(
        f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT binary)", io.BytesIO(b"".join(parts))
    )


def payload_hashes(frame: pd.DataFrame) -> list[str]:
    """``store``'s raw-bar payload hash for every row, vectorised (same bytes, same digest)."""
    o, h, lo, c = (frame[col].to_numpy(dtype=np.float64).tolist() for col in _PRICE)
    v = frame["volume"].to_numpy(dtype=np.int64).tolist()
    sha = hashlib.sha256
    return [
        sha(f"{a:.10g}|{b:.10g}|{x:.10g}|{y:.10g}|{n}".encode()).hexdigest()
        for a, b, x, y, n in zip(o, h, lo, c, v, strict=True)
    ]


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

    The same semantics as :func:`store.append_raw_bars` (a row equal to the session's latest
    version adds nothing, a changed one adds version n+1), with one COPY and one INSERT.
    """
    if bars.empty:
        return {}
    frame = bars.loc[:, ["symbol", *BAR_COLUMNS]].copy()
    frame["payload_hash"] = payload_hashes(frame)
    raw = _q(schema, "raw_bars")
    fresh = set(frame["symbol"].unique()) - _symbols_with_rows(conn, raw, frame["symbol"])
    out: dict[str, int] = {}
    if fresh:
        # No rows yet for these symbols: every bar is version 1, COPY straight in.
        mine = frame[frame["symbol"].isin(fresh)].assign(
            version=1, source=source, fetched_at=fetched_at, run_id=run_id
        )
        cols = [
            "symbol",
            "trade_date",
            "version",
            *_PRICE,
            "volume",
            "source",
            "fetched_at",
            "run_id",
            "payload_hash",
        ]
        spec = [
            ("symbol", "text"),
            ("trade_date", "date"),
            ("version", "int4"),
            *((c, "float8") for c in _PRICE),
            ("volume", "int8"),
            ("source", "text"),
            ("fetched_at", "timestamptz"),
            ("run_id", "text"),
            ("payload_hash", "text"),
        ]
        whole = mine[list(_PRICE)].notna().all(axis=1) & mine["volume"].notna()
        with conn, conn.cursor() as cur:
            copy_binary(cur, raw, mine[whole], spec)
            _copy_in(cur, raw, mine[~whole], cols)
        out.update({str(k): int(v) for k, v in mine["symbol"].value_counts().items()})
        frame = frame[~frame["symbol"].isin(fresh)]
        if frame.empty:
            return out
    with conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE incoming_raw (symbol text, trade_date date, open float8, "
            "high float8, low float8, close float8, volume bigint, payload_hash text) "
            "ON COMMIT DROP"
        )
        _copy_in(cur, "incoming_raw", frame, ["symbol", *BAR_COLUMNS, "payload_hash"])
        cur.execute("ANALYZE incoming_raw")
        cur.execute(
            f"""
            WITH latest AS (
                SELECT DISTINCT ON (r.symbol, r.trade_date) r.symbol, r.trade_date, r.version,
                       r.payload_hash
                FROM {raw} r
                WHERE r.symbol IN (SELECT DISTINCT symbol FROM incoming_raw)
                  AND r.trade_date >= (SELECT min(trade_date) FROM incoming_raw)
                ORDER BY r.symbol, r.trade_date, r.version DESC
            ), added AS (
                INSERT INTO {raw} (symbol, trade_date, version, open, high, low, close, volume,
                                   source, fetched_at, run_id, payload_hash)
                SELECT i.symbol, i.trade_date, COALESCE(l.version, 0) + 1, i.open, i.high,
                       i.low, i.close, i.volume, %(source)s, %(fetched_at)s, %(run_id)s,
                       i.payload_hash
                FROM incoming_raw i LEFT JOIN latest l USING (symbol, trade_date)
                WHERE l.payload_hash IS DISTINCT FROM i.payload_hash
                RETURNING symbol
            )
            SELECT symbol, count(*) FROM added GROUP BY symbol
            """,
            {"source": source, "fetched_at": fetched_at, "run_id": run_id},
        )
        out.update(dict(cur.fetchall()))
    return out


def _symbols_with_rows(conn, table: str, symbols: pd.Series) -> set[str]:
    """Which of ``symbols`` already have a row in ``table`` (one index probe each)."""
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT s FROM unnest(%s::text[]) AS s
                WHERE EXISTS (SELECT 1 FROM {table} t WHERE t.symbol = s)""",
            (sorted(set(symbols)),),
        )
        return {r[0] for r in cur.fetchall()}


def promote_many(
    conn, ranges: pd.DataFrame, schema: str = SCHEMA, *, fresh: Iterable[str] = ()
) -> dict[str, int]:
    """Promote the latest raw version of every session in each (symbol, lo, hi) range.

    Runs server-side (INSERT … SELECT), an upsert that leaves equal rows untouched;
    returns ``{symbol: sessions in range}``. ``fresh`` symbols had no raw (so no clean) rows
    before this bootstrap: their rows are all version 1 and are inserted without the
    latest-version sort and the conflict check.
    """
    if ranges.empty:
        return {}
    raw, clean = _q(schema, "raw_bars"), _q(schema, "clean_bars")
    ranges = ranges.assign(fresh=ranges["symbol"].isin(set(fresh)))
    with conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE promote_ranges (symbol text, lo date, hi date, fresh boolean) "
            "ON COMMIT DROP"
        )
        _copy_in(cur, "promote_ranges", ranges, ["symbol", "lo", "hi", "fresh"])
        cur.execute(
            f"""
            INSERT INTO {clean} (symbol, trade_date, open, high, low, close, volume,
                                 raw_bar_id, validated_at)
            SELECT r.symbol, r.trade_date, r.open, r.high, r.low, r.close, r.volume, r.id, now()
            FROM {raw} r JOIN promote_ranges p
              ON r.symbol = p.symbol AND r.trade_date BETWEEN p.lo AND p.hi
            WHERE p.fresh
            """
        )
        cur.execute(
            f"""
            WITH latest AS (
                SELECT DISTINCT ON (r.symbol, r.trade_date) r.*
                FROM {raw} r JOIN promote_ranges p
                  ON r.symbol = p.symbol AND r.trade_date BETWEEN p.lo AND p.hi
                WHERE NOT p.fresh
                ORDER BY r.symbol, r.trade_date, r.version DESC
            )
            INSERT INTO {clean} (symbol, trade_date, open, high, low, close, volume,
                                 raw_bar_id, validated_at)
            SELECT symbol, trade_date, open, high, low, close, volume, id, now() FROM latest
            ON CONFLICT (symbol, trade_date) DO UPDATE SET
              open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
              close = EXCLUDED.close, volume = EXCLUDED.volume,
              raw_bar_id = EXCLUDED.raw_bar_id, validated_at = EXCLUDED.validated_at
            WHERE {clean}.raw_bar_id IS DISTINCT FROM EXCLUDED.raw_bar_id
            """
        )
        cur.execute(
            f"""SELECT p.symbol, count(c.trade_date) FROM promote_ranges p
                LEFT JOIN {clean} c ON c.symbol = p.symbol AND c.trade_date BETWEEN p.lo AND p.hi
                GROUP BY p.symbol"""
        )
        return dict(cur.fetchall())


def upsert_indicators_many(
    conn, frame: pd.DataFrame, columns: Sequence[str], schema: str = SCHEMA
) -> int:
    """Upsert indicator rows (symbol, trade_date, close, *columns) for many symbols at once.

    Symbols without any indicator row yet are COPYed straight in (pandas writes floats in
    their shortest round-trip form, so the stored value is the computed one); the rest go
    through a temp table and one INSERT … ON CONFLICT.
    """
    if frame.empty:
        return 0
    cols = ["symbol", "trade_date", "close", *columns]
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in ["close", *columns])
    table = _q(schema, "indicators")
    fresh = set(frame["symbol"].unique()) - _symbols_with_rows(conn, table, frame["symbol"])
    written = 0
    if fresh:
        mine = frame[frame["symbol"].isin(fresh)].assign(computed_at=datetime.now(UTC))
        spec = [
            ("symbol", "text"),
            ("trade_date", "date"),
            ("close", "float8"),
            *((c, "float8") for c in columns),
            ("computed_at", "timestamptz"),
        ]
        whole = mine[["close", *columns]].notna().all(axis=1)  # warm-up rows hold NULLs
        with conn, conn.cursor() as cur:
            copy_binary(cur, table, mine[whole], spec)
            _copy_in(cur, table, mine[~whole], [*cols, "computed_at"])
        written += len(mine)
        frame = frame[~frame["symbol"].isin(fresh)]
        if frame.empty:
            return written
    with conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE incoming_ind_many (symbol text, trade_date date, close float8, "
            + ", ".join(f"{c} float8" for c in columns)
            + ") ON COMMIT DROP"
        )
        _copy_in(cur, "incoming_ind_many", frame, cols)
        cur.execute(
            f"""INSERT INTO {table} ({", ".join(cols)}, computed_at)
                SELECT {", ".join(cols)}, now() FROM incoming_ind_many
                ON CONFLICT (symbol, trade_date) DO UPDATE SET {sets},
                  computed_at = EXCLUDED.computed_at"""
        )
    return written + len(frame)


def _clean_state(conn, symbols: Sequence[str], end: date, schema: str) -> dict[str, date]:
    """``{symbol: last clean session <= end}`` for symbols that have clean bars."""
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT symbol, max(trade_date) FROM {_q(schema, "clean_bars")}
                WHERE symbol = ANY(%s) AND trade_date <= %s GROUP BY symbol""",
            (list(symbols), end),
        )
        return dict(cur.fetchall())


def _clean_bars_many(
    conn, symbols: Sequence[str], schema: str, *, last: int | None = None
) -> pd.DataFrame:
    """Clean bars of ``symbols`` (all, or the ``last`` n per symbol), oldest first."""
    cols = ["symbol", *BAR_COLUMNS]
    if not symbols:
        return pd.DataFrame({c: [] for c in cols})
    names = ", ".join("'" + s.replace("'", "''") + "'" for s in symbols)
    inner = f"SELECT {', '.join(cols)} FROM {_q(schema, 'clean_bars')} WHERE symbol IN ({names})"
    if last is not None:
        inner = (
            f"SELECT {', '.join(cols)} FROM (SELECT *, row_number() OVER (PARTITION BY symbol "
            f"ORDER BY trade_date DESC) AS n FROM {_q(schema, 'clean_bars')} "
            f"WHERE symbol IN ({names})) t WHERE n <= {int(last)}"
        )
    with conn.cursor() as cur:
        frame = _copy_out(cur, inner + " ORDER BY symbol, trade_date", cols)
    if not frame.empty:
        frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
        frame["volume"] = frame["volume"].astype("int64")
    return frame


def _ensure_symbols(conn, symbols: Sequence[str], schema: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {_q(schema, "symbols")} (symbol, active)
                SELECT unnest(%s::text[]), true ON CONFLICT (symbol) DO NOTHING""",
            (list(symbols),),
        )


# --------------------------------------------------------------------------- the bootstrap


def _stop_session(result: quality.GateResult) -> tuple[date | None, str]:
    """The first session no acknowledgement covers, of any critical rule (None: table-level)."""
    sessions = result.result.get("critical_sessions") or {}
    found = [s for rule in result.critical_failures for s in sessions.get(rule) or []]
    found = [s for s in found if s and s != "unparseable"]
    return (date.fromisoformat(min(found)) if found else None), "; ".join(
        f"{r}: {result.result.get('details', {}).get(r, '')}" for r in result.critical_failures
    )


def bootstrap(
    conn,
    source: BarSource,
    symbols: Iterable[str],
    end: date,
    *,
    start: date | None = None,
    exchange: str = "XNYS",
    max_move: float = quality.DEFAULT_MAX_MOVE,
    schema: str = SCHEMA,
    engine: str | None = "numba",
    run_id: str | None = None,
    history: dict[str, pd.DataFrame] | None = None,
) -> BootstrapResult:
    """Load, validate, promote and compute indicators for ``symbols`` up to ``end``.

    ``history`` (optional) supplies the bars per symbol instead of ``source.fetch`` (the
    benchmark passes generated arrays); it is cut to the same window.
    """
    timings: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 3)
        tick = now

    symbols = store.validate_symbols(symbols)
    end = calendar.session_on_or_before(end, exchange)
    first = start or date.fromisoformat(calendar.CALENDAR_START)
    run_id = run_id or f"bootstrap__{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
    migrate.apply(conn, schema)
    _ensure_symbols(conn, symbols, schema)
    last_clean = _clean_state(conn, symbols, end, schema)
    outcomes = {s: SymbolOutcome(s, "up_to_date") for s in symbols}
    lap("prepare")

    # 1. fetch (last clean, end]
    frames: dict[str, pd.DataFrame] = {}
    for s in symbols:
        lo = calendar.next_session(last_clean[s], exchange) if s in last_clean else first
        outcomes[s].window_start = lo
        if lo > end:
            continue
        if history is not None:
            bars = history.get(s, pd.DataFrame(columns=list(BAR_COLUMNS)))
            bars = bars[(bars["trade_date"] >= lo) & (bars["trade_date"] <= end)]
        else:
            bars = source.fetch(s, lo, end)
        outcomes[s].fetched = len(bars)
        if bars.empty:
            outcomes[s].status = "not_delivered"
            continue
        frames[s] = bars.reset_index(drop=True)
    lap("fetch")

    # 2. raw layer
    fresh_raw: set[str] = set()
    if frames:
        long = pd.concat([f.assign(symbol=s) for s, f in frames.items()], ignore_index=True)
        fresh_raw = set(frames) - _symbols_with_rows(conn, _q(schema, "raw_bars"), long["symbol"])
        appended = append_raw_many(
            conn,
            long,
            source=getattr(source, "name", "bootstrap"),
            run_id=run_id,
            fetched_at=datetime.now(UTC),
            schema=schema,
        )
        for s, n in appended.items():
            outcomes[s].appended = int(n)
    lap("raw")

    # 3. GX over each symbol's window (+ clean context), grouped by the last delivered session
    context = _clean_bars_many(conn, list(frames), schema, last=GATE_CONTEXT_SESSIONS)
    acked = acks.active_rules_many(conn, list(frames), gate="bars", schema=schema)
    by_last: dict[date, dict[str, pd.DataFrame]] = {}
    for s, f in frames.items():
        mine = context[context["symbol"] == s].drop(columns="symbol")
        checked = f if mine.empty else pd.concat([mine, f], ignore_index=True)
        by_last.setdefault(max(f["trade_date"]), {})[s] = checked.loc[:, list(BAR_COLUMNS)]
    results: dict[str, quality.GateResult] = {}
    for day, group in by_last.items():
        results.update(
            quality.validate_bars_many(
                group,
                trade_date=day,
                exchange=exchange,
                max_move=max_move,
                acknowledged={s: acked.get(s, {}) for s in group},
            )
        )
    lap("validate")

    # 4. promote up to the session before the first unacknowledged critical failure
    ranges, records = [], []
    for s, f in frames.items():
        res, out = results[s], outcomes[s]
        lo, hi = out.window_start, max(f["trade_date"])
        out.acknowledged, out.warnings = res.acknowledged, res.warnings
        report_day = hi
        if not res.success:
            stop, detail = _stop_session(res)
            out.status, out.stop_detail = "stopped", detail
            out.stopped_rules = res.critical_failures
            out.stopped_at = stop or lo
            report_day = out.stopped_at
            hi = calendar.previous_session(out.stopped_at, exchange) if stop else None
        else:
            out.status = "promoted" if hi == end else "partial"
        if hi is not None and hi >= lo:
            ranges.append({"symbol": s, "lo": lo, "hi": hi})
            out.promoted_through = hi
        records.append(_record(res, s, report_day, run_id, lo, out))
    promoted = promote_many(
        conn, pd.DataFrame(ranges, columns=["symbol", "lo", "hi"]), schema, fresh=fresh_raw
    )
    for s, n in promoted.items():
        outcomes[s].promoted = int(n)
    with conn, conn.cursor() as cur:
        for rec in records:
            store._upsert_report(cur, rec, schema)
        # A failed verdict left on a session this call promoted (e.g. the stop session, now
        # acknowledged) is replaced by this call's verdict: the latest verdict per session.
        for r in ranges:
            cur.execute(
                f"""SELECT trade_date FROM {_q(schema, "validation_reports")} WHERE gate='bars'
                    AND symbol=%s AND NOT success AND trade_date BETWEEN %s AND %s""",
                (r["symbol"], r["lo"], r["hi"]),
            )
            for (day,) in cur.fetchall():
                rec = next(x for x in records if x.symbol == r["symbol"])
                store._upsert_report(cur, replace(rec, trade_date=day), schema)
    lap("promote")

    # 5. indicators over each symbol's full clean history; upsert the new sessions
    grown = [r["symbol"] for r in ranges]
    rows = 0
    if grown:
        from market_pipeline import indicators

        fresh = [s for s in grown if s not in last_clean]
        known = [s for s in grown if s in last_clean]
        parts = []
        if fresh:
            cut = {r["symbol"]: r["hi"] for r in ranges}
            parts += [frames[s][frames[s]["trade_date"] <= cut[s]].assign(symbol=s) for s in fresh]
        if known:
            parts.append(_clean_bars_many(conn, known, schema))
        clean = pd.concat(parts, ignore_index=True)
        lap("indicators_read")
        computed = indicators.compute_universe(clean, engine=engine)
        lap("indicators_compute")
        starts = computed["symbol"].map({r["symbol"]: r["lo"] for r in ranges})
        new = computed[computed["trade_date"] >= starts]
        rows = upsert_indicators_many(conn, new, indicators.INDICATOR_COLUMNS, schema)
        for s, n in new["symbol"].value_counts().items():
            outcomes[s].indicator_rows = int(n)
        lap("indicators_upsert")
    log.info("bootstrap %s: %s in %s", run_id, {"indicator_rows": rows}, timings)
    return BootstrapResult(run_id=run_id, end=end, outcomes=outcomes, timings=timings)


def _record(
    res: quality.GateResult, symbol: str, day: date, run_id: str, lo: date, out: SymbolOutcome
) -> store.ValidationRecord:
    result = dict(res.result)
    result["bootstrap"] = {
        "run_id": run_id,
        "window_start": lo.isoformat(),
        "validated_through": res.trade_date.isoformat(),
        "promoted_through": out.promoted_through.isoformat() if out.promoted_through else None,
        "stopped_at": out.stopped_at.isoformat() if out.stopped_at else None,
    }
    return store.ValidationRecord(
        gate=res.gate,
        symbol=symbol,
        trade_date=day,
        suite_name=res.suite_name,
        suite_version=res.suite_version,
        success=res.success,
        critical_failures=res.critical_failures,
        warnings=res.warnings,
        acknowledged=res.acknowledged,
        result=result,
        run_id=run_id,
        try_number=1,
    )


# --------------------------------------------------------------------------- CLI


def _symbols_in_drop(path: str) -> list[str]:
    from pathlib import Path

    from market_pipeline.config import SYMBOL_PATTERN

    names = {p.stem for p in Path(path).glob("*") if p.suffix in (".csv", ".parquet")}
    return sorted(n for n in names if SYMBOL_PATTERN.match(n))


def main(argv: list[str] | None = None) -> int:
    from market_pipeline.connections import db_dsn
    from market_pipeline.sources.registry import make_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="file_drop", help="file_drop or synthetic")
    parser.add_argument("--path", help="drop folder (file_drop)")
    parser.add_argument("--symbols", help="comma list (default: every file in --path)")
    parser.add_argument("--end", required=True, type=date.fromisoformat)
    parser.add_argument("--start", type=date.fromisoformat, default=None)
    parser.add_argument("--exchange", default="XNYS")
    parser.add_argument("--max-move", type=float, default=quality.DEFAULT_MAX_MOVE)
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--dsn", help="libpq URI (default: from AIRFLOW_CONN_MARKET_DB)")
    args = parser.parse_args(argv)

    if args.symbols:
        symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    elif args.source == "file_drop" and args.path:
        symbols = _symbols_in_drop(args.path)
    else:
        parser.error("--symbols is required unless --source file_drop --path DIR")
    source = make_source(args.source, path=args.path)
    conn = store.connect(args.dsn or db_dsn())
    try:
        result = bootstrap(
            conn,
            source,
            symbols,
            args.end,
            start=args.start,
            exchange=args.exchange,
            max_move=args.max_move,
            schema=args.schema,
        )
    finally:
        conn.close()
    for outcome in result.outcomes.values():
        print(outcome.line())
    print(f"run {result.run_id}: {result.totals()} timings {result.timings}")
    for s, o in result.stopped.items():
        print(
            f"\n{s} stopped at {o.stopped_at} ({', '.join(o.stopped_rules)}). If it is a true "
            f"event: recovery ack {s} {o.stopped_at} --rule {o.stopped_rules[0]} --reason '...'"
            " and run the bootstrap again; else fix the source file.",
            file=sys.stderr,
        )
    return 1 if result.stopped else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
