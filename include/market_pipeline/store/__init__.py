"""Postgres storage: every read and write of the pipeline's tables, in one module.

Functions take a psycopg2 connection and the schema name; they know tables, not RSI.
Writes are upserts keyed on (symbol, trade date[, rule]) so a cleared and rerun task
leaves the same rows — except ``raw_bars``, which only appends (a new version when a
session's values change), and the logs ``fetch_audit`` and ``dlq``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import pandas as pd

from market_pipeline.config import SCHEMA, SYMBOL_PATTERN
from market_pipeline.errors import ConfigurationError
from market_pipeline.sources.base import BAR_COLUMNS

PRICE_COLUMNS = ("open", "high", "low", "close")
MESSAGE_LIMIT = 2000


def connect(dsn: str):
    """A psycopg2 connection (autocommit off: callers own their transactions)."""
    import psycopg2

    return psycopg2.connect(dsn)


def _q(schema: str, table: str) -> str:
    if not schema.replace("_", "").isalnum():
        raise ConfigurationError(f"expected a plain schema name, found {schema!r}")
    return f"{schema}.{table}"


# --------------------------------------------------------------------------- universe


def validate_symbols(symbols: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated symbols; raises naming every invalid one."""
    cleaned = [s.strip() for s in symbols if s and s.strip()]
    bad = sorted({s for s in cleaned if not SYMBOL_PATTERN.match(s)})
    if bad:
        raise ConfigurationError(
            f"invalid symbol(s) {bad}: expected upper-case tickers matching "
            f"{SYMBOL_PATTERN.pattern}"
        )
    return sorted(set(cleaned))


def sync_symbols(conn, symbols: Sequence[str], schema: str = SCHEMA) -> list[str]:
    """Make ``symbols`` the active universe (others are deactivated, never deleted)."""
    symbols = validate_symbols(symbols)
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {_q(schema, "symbols")} (symbol, active)
                SELECT unnest(%s::text[]), true
                ON CONFLICT (symbol) DO UPDATE SET active = true""",
            (symbols,),
        )
        cur.execute(
            f"UPDATE {_q(schema, 'symbols')} SET active = false "
            "WHERE active AND NOT symbol = ANY(%s)",
            (symbols,),
        )
    return symbols


def active_symbols(conn, schema: str = SCHEMA) -> list[str]:
    """The active universe, sorted (map indexes follow this order)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT symbol FROM {_q(schema, 'symbols')} WHERE active ORDER BY symbol")
        return [r[0] for r in cur.fetchall()]


# --------------------------------------------------------------------------- raw layer


def _row_hash(row) -> str:
    payload = "|".join([f"{float(row[c]):.10g}" for c in PRICE_COLUMNS] + [str(int(row["volume"]))])
    return hashlib.sha256(payload.encode()).hexdigest()


def _rows(frame: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> tuple[str, dict]:
    """``frame`` as one set-returning SQL expression ``unnest(...) AS i(col, ...)`` + params.

    Each column travels as one typed array parameter, so a write is a single statement: no
    temporary table (catalog churn on every call) and no extra COPY round trip — a daily run
    writes a few rows per symbol, thousands of times. NaN becomes NULL.
    """
    exprs, params = [], {}
    for name, sqltype in columns:
        values = frame[name].tolist()
        params[f"c_{name}"] = [None if isinstance(v, float) and v != v else v for v in values]
        exprs.append(f"%(c_{name})s::{sqltype}[]")
    names = ", ".join(name for name, _ in columns)
    return f"unnest({', '.join(exprs)}) AS i({names})", params


_BAR_TYPES = (
    ("trade_date", "date"),
    ("open", "float8"),
    ("high", "float8"),
    ("low", "float8"),
    ("close", "float8"),
    ("volume", "bigint"),
)


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

    An identical re-fetch adds nothing; a restatement adds version n+1. Uses COPY into a
    temporary table, then one set-based INSERT.
    """
    if bars.empty:
        return 0
    frame = bars.loc[:, list(BAR_COLUMNS)].copy()
    frame["payload_hash"] = [_row_hash(r) for r in frame.to_dict("records")]
    raw = _q(schema, "raw_bars")
    incoming, rows = _rows(frame, [*_BAR_TYPES, ("payload_hash", "text")])
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""
            WITH incoming_bars AS (SELECT * FROM {incoming}),
            latest AS (
                SELECT DISTINCT ON (trade_date) trade_date, version, payload_hash
                FROM {raw} WHERE symbol = %(symbol)s
                  AND trade_date BETWEEN %(lo)s AND %(hi)s
                ORDER BY trade_date, version DESC
            )
            INSERT INTO {raw} (symbol, trade_date, version, open, high, low, close, volume,
                               source, fetched_at, run_id, payload_hash)
            SELECT %(symbol)s, i.trade_date, COALESCE(l.version, 0) + 1, i.open, i.high,
                   i.low, i.close, i.volume, %(source)s, %(fetched_at)s, %(run_id)s,
                   i.payload_hash
            FROM incoming_bars i LEFT JOIN latest l USING (trade_date)
            WHERE l.payload_hash IS DISTINCT FROM i.payload_hash
            """,
            {
                "symbol": symbol,
                "lo": min(frame["trade_date"]),
                "hi": max(frame["trade_date"]),
                "source": source,
                "fetched_at": fetched_at,
                "run_id": run_id,
                **rows,
            },
        )
        return cur.rowcount


def latest_raw_bars(
    conn, symbol: str, start: date, end: date, schema: str = SCHEMA
) -> pd.DataFrame:
    """The latest version of each raw bar in [start, end], with ``raw_bar_id`` and ``version``."""
    return latest_raw_bars_many(conn, {symbol: (start, end)}, schema)[symbol]


RAW_WINDOW_COLUMNS = (*BAR_COLUMNS, "raw_bar_id", "version")


def latest_raw_bars_many(
    conn, windows: Mapping[str, tuple[date, date]], schema: str = SCHEMA
) -> dict[str, pd.DataFrame]:
    """:func:`latest_raw_bars` for many ``{symbol: (start, end)}`` in one round trip."""
    symbols = list(windows)
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT DISTINCT ON (r.symbol, r.trade_date) r.symbol, r.trade_date, r.open,
                       r.high, r.low, r.close, r.volume, r.id AS raw_bar_id, r.version
                FROM unnest(%s::text[], %s::date[], %s::date[]) AS w(symbol, lo, hi)
                JOIN {_q(schema, "raw_bars")} r
                  ON r.symbol = w.symbol AND r.trade_date BETWEEN w.lo AND w.hi
                ORDER BY r.symbol, r.trade_date, r.version DESC""",
            (symbols, [windows[s][0] for s in symbols], [windows[s][1] for s in symbols]),
        )
        rows = cur.fetchall()
    return _split(rows, symbols, RAW_WINDOW_COLUMNS)


def _split(
    rows: list[tuple], symbols: Sequence[str], columns: Sequence[str], *, reverse: bool = False
) -> dict[str, pd.DataFrame]:
    """Rows ``(symbol, *columns)`` grouped by symbol, in row order (reversed if asked).

    Every symbol gets a frame, empty (with the columns) when it has no row; each frame is
    built on its own, so its dtypes are those of a one-symbol query.
    """
    grouped: dict[str, list[tuple]] = {s: [] for s in symbols}
    for row in rows:
        grouped[row[0]].append(row[1:])
    return {
        s: pd.DataFrame(part[::-1] if reverse else part, columns=list(columns))
        for s, part in grouped.items()
    }


def raw_bar_count(conn, symbol: str | None = None, schema: str = SCHEMA) -> int:
    with conn.cursor() as cur:
        if symbol:
            cur.execute(f"SELECT count(*) FROM {_q(schema, 'raw_bars')} WHERE symbol=%s", (symbol,))
        else:
            cur.execute(f"SELECT count(*) FROM {_q(schema, 'raw_bars')}")
        return cur.fetchone()[0]


# --------------------------------------------------------------------------- clean layer


def last_clean_session(conn, symbol: str, before: date, schema: str = SCHEMA) -> date | None:
    """The newest clean session of ``symbol`` strictly before ``before``."""
    return last_clean_sessions(conn, [symbol], before, schema)[symbol]


def last_clean_sessions(
    conn, symbols: Sequence[str], before: date, schema: str = SCHEMA
) -> dict[str, date | None]:
    """:func:`last_clean_session` of many symbols in one round trip."""
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT w.symbol, (SELECT max(trade_date) FROM {_q(schema, "clean_bars")} c
                                  WHERE c.symbol = w.symbol AND c.trade_date < %s)
                FROM unnest(%s::text[]) AS w(symbol)""",
            (before, list(symbols)),
        )
        return dict(cur.fetchall())


def clean_history(
    conn, symbol: str, end: date, sessions: int, schema: str = SCHEMA
) -> pd.DataFrame:
    """The last ``sessions`` clean bars of ``symbol`` up to ``end``, oldest first."""
    return clean_history_many(conn, {symbol: end}, sessions, schema)[symbol]


def clean_history_many(
    conn, ends: Mapping[str, date], sessions: int, schema: str = SCHEMA
) -> dict[str, pd.DataFrame]:
    """:func:`clean_history` for many ``{symbol: end}`` in one round trip (index per symbol)."""
    symbols = list(ends)
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT w.symbol, t.trade_date, t.open, t.high, t.low, t.close, t.volume
                FROM unnest(%s::text[], %s::date[]) WITH ORDINALITY AS w(symbol, hi, n)
                CROSS JOIN LATERAL (
                    SELECT trade_date, open, high, low, close, volume
                    FROM {_q(schema, "clean_bars")} c
                    WHERE c.symbol = w.symbol AND c.trade_date <= w.hi
                    ORDER BY c.trade_date DESC LIMIT %s) t
                ORDER BY w.n, t.trade_date DESC""",
            (symbols, [ends[s] for s in symbols], sessions),
        )
        rows = cur.fetchall()
    return _split(rows, symbols, BAR_COLUMNS, reverse=True)


def clean_closes_on(conn, trade_date: date, schema: str = SCHEMA) -> dict[str, float]:
    """``{symbol: close}`` of every clean bar on ``trade_date``."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, close FROM {_q(schema, 'clean_bars')} WHERE trade_date = %s",
            (trade_date,),
        )
        return {symbol: float(close) for symbol, close in cur.fetchall()}


def clean_session_count(conn, symbol: str, end: date, schema: str = SCHEMA) -> int:
    return clean_session_counts(conn, [symbol], end, schema)[symbol]


def clean_session_counts(
    conn, symbols: Sequence[str], end: date, schema: str = SCHEMA
) -> dict[str, int]:
    """How many clean sessions each symbol has up to ``end`` (0 for none), one round trip."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, count(*) FROM {_q(schema, 'clean_bars')} "
            "WHERE symbol = ANY(%s) AND trade_date <= %s GROUP BY symbol",
            (list(symbols), end),
        )
        found = dict(cur.fetchall())
    return {s: int(found.get(s, 0)) for s in symbols}


@dataclass(frozen=True)
class ValidationRecord:
    """One gate verdict, as stored in ``validation_reports``."""

    gate: str
    symbol: str
    trade_date: date
    suite_name: str
    suite_version: str
    success: bool
    critical_failures: Sequence[str]
    warnings: Sequence[str]
    acknowledged: Sequence[str]
    result: dict
    run_id: str
    try_number: int


_REPORT_COLUMNS = (
    "gate, symbol, trade_date, suite_name, suite_version, success, critical_failures, "
    "warning_failures, failed_rules, acknowledged, result, run_id, try_number, created_at"
)
_REPORT_VALUES = "(" + ", ".join(["%s"] * 13) + ", now())"  # _report_row's 13, then created_at
_REPORT_UPSERT = """ON CONFLICT (gate, symbol, trade_date) DO UPDATE SET
              suite_name = EXCLUDED.suite_name, suite_version = EXCLUDED.suite_version,
              success = EXCLUDED.success, critical_failures = EXCLUDED.critical_failures,
              warning_failures = EXCLUDED.warning_failures,
              failed_rules = EXCLUDED.failed_rules, acknowledged = EXCLUDED.acknowledged,
              result = EXCLUDED.result, run_id = EXCLUDED.run_id,
              try_number = EXCLUDED.try_number, created_at = now()"""


def _report_row(rec: ValidationRecord) -> tuple:
    return (
        rec.gate,
        rec.symbol,
        rec.trade_date,
        rec.suite_name,
        rec.suite_version,
        rec.success,
        len(rec.critical_failures),
        len(rec.warnings),
        list(rec.critical_failures) + list(rec.warnings),
        list(rec.acknowledged),
        _result_json(rec.result),
        rec.run_id,
        rec.try_number,
    )


def _result_json(result: dict) -> str:
    """The verdict as JSON for the ``jsonb`` column. A gate's result is strict JSON already
    (``quality`` builds it so), and serialising it as it is costs a fraction of walking it;
    anything else (NaN, dates, numpy scalars) goes through :func:`json_safe`."""
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(json_safe(result))


def _upsert_report(cur, rec: ValidationRecord, schema: str) -> None:
    cur.execute(
        f"""INSERT INTO {_q(schema, "validation_reports")} ({_REPORT_COLUMNS})
            VALUES {_REPORT_VALUES} {_REPORT_UPSERT}""",
        _report_row(rec),
    )


def record_validation(conn, rec: ValidationRecord, schema: str = SCHEMA) -> None:
    """Store a gate verdict on its own (a failed gate)."""
    with conn, conn.cursor() as cur:
        _upsert_report(cur, rec, schema)


def record_validations(conn, recs: Sequence[ValidationRecord], schema: str = SCHEMA) -> None:
    """Store many gate verdicts (one gate, one session, distinct symbols) in one statement
    and one transaction: the indicator gate's verdicts for a chunk."""
    recs = list(recs)
    if not recs:
        return
    keys = [(r.gate, r.symbol, r.trade_date) for r in recs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"expected one verdict per (gate, symbol, session), found {keys}")
    from psycopg2.extras import execute_values

    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            f"""INSERT INTO {_q(schema, "validation_reports")} ({_REPORT_COLUMNS})
                VALUES %s {_REPORT_UPSERT}""",
            [_report_row(r) for r in recs],
            template=_REPORT_VALUES,
            page_size=len(recs),
        )


def promote_clean_bars(
    conn, symbol: str, bars: pd.DataFrame, rec: ValidationRecord, schema: str = SCHEMA
) -> int:
    """Upsert validated bars into ``clean_bars`` and record the verdict, in one transaction."""
    frame = bars.loc[:, [*BAR_COLUMNS, "raw_bar_id"]].copy()
    with conn, conn.cursor() as cur:
        _upsert_report(cur, rec, schema)
        if frame.empty:
            return 0
        incoming, rows = _rows(frame, [*_BAR_TYPES, ("raw_bar_id", "bigint")])
        cur.execute(
            f"""INSERT INTO {_q(schema, "clean_bars")}
                  (symbol, trade_date, open, high, low, close, volume, raw_bar_id, validated_at)
                SELECT %(symbol)s, trade_date, open, high, low, close, volume, raw_bar_id, now()
                FROM {incoming}
                ON CONFLICT (symbol, trade_date) DO UPDATE SET
                  open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
                  close = EXCLUDED.close, volume = EXCLUDED.volume,
                  raw_bar_id = EXCLUDED.raw_bar_id, validated_at = EXCLUDED.validated_at
                WHERE {_q(schema, "clean_bars")}.raw_bar_id IS DISTINCT FROM EXCLUDED.raw_bar_id""",
            {"symbol": symbol, **rows},
        )
        return len(frame)


# --------------------------------------------------------------------------- indicators


def upsert_indicators(
    conn, symbol: str, frame: pd.DataFrame, columns: Sequence[str], schema: str = SCHEMA
) -> int:
    """Upsert indicator rows (trade_date, close, *columns) for ``symbol``."""
    if frame.empty:
        return 0
    cols = ["trade_date", "close", *columns]
    data = frame.loc[:, cols].copy()
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in ["close", *columns])
    incoming, rows = _rows(
        data, [("trade_date", "date"), *((c, "float8") for c in ["close", *columns])]
    )
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {_q(schema, "indicators")} (symbol, {", ".join(cols)}, computed_at)
                SELECT %(symbol)s, {", ".join(cols)}, now() FROM {incoming}
                ON CONFLICT (symbol, trade_date) DO UPDATE SET {sets},
                  computed_at = EXCLUDED.computed_at""",
            {"symbol": symbol, **rows},
        )
        return len(data)


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
    symbols = list(symbols)
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT w.symbol, {", ".join(f"t.{c}" for c in cols)}
                FROM unnest(%s::text[]) WITH ORDINALITY AS w(symbol, n)
                CROSS JOIN LATERAL (
                    SELECT * FROM {_q(schema, "indicators")} i
                    WHERE i.symbol = w.symbol AND i.trade_date <= %s
                    ORDER BY i.trade_date DESC LIMIT %s) t
                ORDER BY w.n, t.trade_date DESC""",
            (symbols, end, sessions),
        )
        rows = cur.fetchall()
    # One frame for the chunk, typed once, then cut per symbol (oldest row first): typing
    # 25 small frames column by column cost ~0.1 s per chunk.
    floats = dict.fromkeys(["close", *columns], "float64")
    every = pd.DataFrame(rows, columns=["symbol", *cols]).astype(floats)
    blocks = every.groupby("symbol", sort=False).indices if rows else {}
    empty = every.iloc[:0].drop(columns="symbol")
    return {
        s: every.iloc[blocks[s][::-1]].drop(columns="symbol").reset_index(drop=True)
        if s in blocks
        else empty.copy()
        for s in symbols
    }


def indicators_on(
    conn, trade_date: date, columns: Sequence[str], schema: str = SCHEMA
) -> pd.DataFrame:
    """Every symbol's indicator row for ``trade_date``."""
    cols = ["symbol", "close", *columns]
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {', '.join(cols)} FROM {_q(schema, 'indicators')} WHERE trade_date = %s "
            "ORDER BY symbol",
            (trade_date,),
        )
        frame = pd.DataFrame(cur.fetchall(), columns=cols)
    for c in ["close", *columns]:
        frame[c] = frame[c].astype("float64")
    return frame


# --------------------------------------------------------------------------- signals, scores


def json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return value


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
    with conn, conn.cursor() as cur:
        from psycopg2.extras import execute_values

        execute_values(
            cur,
            f"""INSERT INTO {_q(schema, "signals")}
                  (symbol, trade_date, rule, direction, strength, ready, reasons, computed_at)
                VALUES %s
                ON CONFLICT (symbol, trade_date, rule) DO UPDATE SET
                  direction = EXCLUDED.direction, strength = EXCLUDED.strength,
                  ready = EXCLUDED.ready, reasons = EXCLUDED.reasons,
                  computed_at = EXCLUDED.computed_at""",
            rows,
            template="(%s, %s, %s, %s, %s, %s, %s::jsonb, now())",
        )
        # A rule that no longer exists must not linger from an older run of this day.
        cur.execute(
            f"DELETE FROM {_q(schema, 'signals')} WHERE symbol=%s AND trade_date=%s "
            "AND NOT rule = ANY(%s)",
            (symbol, trade_date, [r[2] for r in rows]),
        )
    return len(rows)


def signals_on(
    conn, trade_date: date, symbols: Sequence[str] | None = None, schema: str = SCHEMA
) -> pd.DataFrame:
    """Signal rows for ``trade_date`` (optionally only ``symbols``)."""
    sql = (
        f"SELECT symbol, rule, direction, strength, ready, reasons FROM {_q(schema, 'signals')} "
        "WHERE trade_date = %s"
    )
    params: list = [trade_date]
    if symbols is not None:
        sql += " AND symbol = ANY(%s)"
        params.append(list(symbols))
    with conn.cursor() as cur:
        cur.execute(sql + " ORDER BY symbol, rule", params)
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
    with conn, conn.cursor() as cur:
        from psycopg2.extras import execute_values

        cur.execute(f"DELETE FROM {_q(schema, 'scores')} WHERE trade_date = %s", (trade_date,))
        if rows:
            execute_values(
                cur,
                f"""INSERT INTO {_q(schema, "scores")}
                      (trade_date, symbol, score, rank, percentile, components, computed_at)
                    VALUES %s""",
                rows,
                template="(%s, %s, %s, %s, %s, %s::jsonb, now())",
            )
    return len(rows)


def scores_on(conn, trade_date: date, schema: str = SCHEMA) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, score, rank, percentile, components FROM {_q(schema, 'scores')} "
            "WHERE trade_date = %s ORDER BY rank",
            (trade_date,),
        )
        return pd.DataFrame(
            cur.fetchall(), columns=["symbol", "score", "rank", "percentile", "components"]
        )


# --------------------------------------------------------------------------- audit, DLQ


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
            f"""INSERT INTO {_q(schema, "fetch_audit")}
                  (symbol, window_start, window_end, source, run_id, try_number, outcome,
                   rows_fetched, rows_appended, latency_ms, error_kind, error_message)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
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


@dataclass(frozen=True)
class DlqEntry:
    """A failed task instance, as the DLQ records it."""

    dag_id: str
    run_id: str
    logical_date: datetime | None
    trade_date: date | None
    task_id: str
    map_index: int
    symbol: str | None
    stage: str
    try_number: int
    kind: str
    error_class: str
    error_message: str


def dlq_record(conn, entry: DlqEntry, schema: str = SCHEMA) -> None:
    """Open a DLQ row for the instance's symbol, or update its open row (never a duplicate)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {_q(schema, "dlq")}
                  (dag_id, run_id, logical_date, trade_date, task_id, map_index, symbol, stage,
                   try_number, kind, error_class, error_message)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (dag_id, run_id, task_id, map_index, (COALESCE(symbol, '')))
                  WHERE resolved_at IS NULL
                DO UPDATE SET try_number = EXCLUDED.try_number, kind = EXCLUDED.kind,
                  error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
                  failures = {_q(schema, "dlq")}.failures + 1, updated_at = now()""",
            (
                entry.dag_id,
                entry.run_id,
                entry.logical_date,
                entry.trade_date,
                entry.task_id,
                entry.map_index,
                entry.symbol,
                entry.stage,
                entry.try_number,
                entry.kind,
                entry.error_class,
                entry.error_message[:MESSAGE_LIMIT],
            ),
        )


def dlq_resolve(
    conn,
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    try_number: int,
    trade_date: date | None = None,
    symbol: str | None = None,
    schema: str = SCHEMA,
) -> int:
    """Resolve open DLQ rows that a task instance's success makes moot.

    That is the instance's own row (a retry or a clear succeeded) and, when
    ``trade_date`` is given, rows of the same task for the same session and symbol left
    open by an earlier run (a later run of that session healed it).
    """
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""UPDATE {_q(schema, "dlq")} SET resolved_at = now(), updated_at = now(),
                  resolved_by_run_id = %(run_id)s, resolved_by_try = %(try_number)s
                WHERE dag_id = %(dag_id)s AND task_id = %(task_id)s AND resolved_at IS NULL
                  AND ((run_id = %(run_id)s AND map_index = %(map_index)s)
                       OR (%(trade_date)s::date IS NOT NULL AND trade_date = %(trade_date)s
                           AND symbol IS NOT DISTINCT FROM %(symbol)s))""",
            {
                "run_id": run_id,
                "try_number": try_number,
                "dag_id": dag_id,
                "task_id": task_id,
                "map_index": map_index,
                "trade_date": trade_date,
                "symbol": symbol,
            },
        )
        return cur.rowcount


def dlq_resolve_symbols(
    conn,
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    trade_date: date,
    symbols: Sequence[str],
    try_number: int,
    schema: str = SCHEMA,
) -> int:
    """Resolve the open rows of ``task_id`` for ``symbols`` that passed it on ``trade_date``.

    The batched form of :func:`dlq_resolve` for a task instance that carries several symbols
    (``market_symbols_per_task`` > 1): only the named symbols' rows are resolved, those of
    this run and those an earlier run of the same session left open.
    """
    if not symbols:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""UPDATE {_q(schema, "dlq")} SET resolved_at = now(), updated_at = now(),
                  resolved_by_run_id = %(run_id)s, resolved_by_try = %(try_number)s
                WHERE dag_id = %(dag_id)s AND task_id = %(task_id)s AND resolved_at IS NULL
                  AND symbol = ANY(%(symbols)s)
                  AND (run_id = %(run_id)s OR trade_date = %(trade_date)s)""",
            {
                "run_id": run_id,
                "try_number": try_number,
                "dag_id": dag_id,
                "task_id": task_id,
                "trade_date": trade_date,
                "symbols": list(symbols),
            },
        )
        return cur.rowcount


def dlq_open(conn, *, run_id: str | None = None, schema: str = SCHEMA) -> pd.DataFrame:
    """Open DLQ rows (optionally of one run), oldest first."""
    sql = (
        "SELECT id, dag_id, run_id, trade_date, task_id, map_index, symbol, stage, try_number, "
        f"kind, error_class, error_message, failures, created_at FROM {_q(schema, 'dlq')} "
        "WHERE resolved_at IS NULL"
    )
    params: list = []
    if run_id:
        sql += " AND run_id = %s"
        params.append(run_id)
    with conn.cursor() as cur:
        cur.execute(sql + " ORDER BY created_at, id", params)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def table_counts(conn, schema: str = SCHEMA) -> dict[str, int]:
    """Row count of every pipeline table (the demo prints it; tests compare it)."""
    from market_pipeline.config import TABLES

    out = {}
    with conn.cursor() as cur:
        for table in TABLES:
            cur.execute(f"SELECT count(*) FROM {_q(schema, table)}")
            out[table] = cur.fetchone()[0]
    return out
