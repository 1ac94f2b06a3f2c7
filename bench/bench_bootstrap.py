"""Time the bulk history bootstrap against a plain COPY of the same rows (issue 9, P5).

    .venv/bin/python bench/bench_bootstrap.py [--symbols 500] [--sessions 2520] [--dsn URI]

Data: ``--symbols`` synthetic random-walk symbols × ``--sessions`` XNYS sessions ending
2024-11-29, generated in numpy (valid OHLCV, no move near the 50 % gate). Both sides start
from the same in-memory frames, in fresh throwaway schemas that are dropped afterwards:

* ``copy`` (the P5 baseline): every row the bootstrap stores — the bars into a bare raw table
  and a bare clean table, the indicator values (computed beforehand, untimed) into a bare
  indicators table — serialised to CSV and COPYed (no keys, no indexes): the floor for
  getting those bytes into Postgres. The ratio against a COPY of the raw rows alone (a third
  of the rows) is printed too;
* ``bootstrap``: :func:`market_pipeline.bootstrap.bootstrap` — raw layer (versioned, hashed,
  unique key), GX raw-bar suite over every row, clean layer, indicators for the whole
  universe (numba), indicator upsert, validation reports.

GX and the numba kernel are warmed first (a worker's steady state; the cold costs are
printed separately). Prints times and the ratio; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
from psycopg2 import sql

from market_pipeline import bootstrap, calendar, indicators, quality
from market_pipeline.store.sql import columns as column_list
from market_pipeline.store.sql import schema as schema_ident
from market_pipeline.store.sql import table

END = date(2024, 11, 29)
TARGET_RATIO = 2.0


def make_history(n_symbols: int, n_sessions: int, seed: int = 11) -> dict[str, pd.DataFrame]:
    """``{symbol: bars}`` of equal length, plausible daily bars."""
    sessions = calendar.previous_sessions(END, n_sessions)
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.01, 0.03, (n_symbols, 1))
    returns = rng.normal(0.0002, 1.0, (n_symbols, n_sessions)) * vol
    close = rng.uniform(20, 300, (n_symbols, 1)) * np.exp(np.cumsum(returns, axis=1))
    open_ = close * np.exp(rng.normal(0, 0.25, close.shape) * vol)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.5, close.shape)) * vol)
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.5, close.shape)) * vol)
    volume = rng.integers(100_000, 5_000_000, close.shape)
    out = {}
    for i in range(n_symbols):
        symbol = f"S{i:04d}"
        out[symbol] = pd.DataFrame(
            {
                "trade_date": sessions,
                "open": np.round(open_[i], 4),
                "high": np.round(high[i], 4),
                "low": np.round(low[i], 4),
                "close": np.round(close[i], 4),
                "volume": volume[i].astype(np.int64),
            }
        )
        frame = out[symbol]
        frame["high"] = frame[["open", "high", "close"]].max(axis=1)
        frame["low"] = frame[["open", "low", "close"]].min(axis=1)
    return out


def plain_copy(conn, schema: str, history: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Serialise the raw rows to CSV and COPY them into a bare table; seconds per step."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE {} (symbol text, trade_date date, open float8, high float8, "
                "low float8, close float8, volume bigint)"
            ).format(table("bare_bars", schema))
        )
    started = time.perf_counter()
    long = pd.concat([f.assign(symbol=s) for s, f in history.items()], ignore_index=True)
    buf = io.StringIO()
    cols = ["symbol", "trade_date", "open", "high", "low", "close", "volume"]
    long.loc[:, cols].to_csv(buf, index=False, header=False)
    serialised = time.perf_counter()
    buf.seek(0)
    with conn, conn.cursor() as cur:
        cur.copy_expert(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                table("bare_bars", schema), column_list(cols)
            ),
            buf,
        )
    done = time.perf_counter()
    return {
        "serialise": serialised - started,
        "copy": done - serialised,
        "total": done - started,
        "rows": len(long),
    }


def _copy_csv(cur, target, frame: pd.DataFrame, cols: list[str]) -> tuple[float, float]:
    """CSV-serialise ``frame[cols]`` and COPY it into ``target``; (serialise s, COPY s)."""
    started = time.perf_counter()
    buf = io.StringIO()
    frame.loc[:, cols].to_csv(buf, index=False, header=False)
    serialised = time.perf_counter()
    buf.seek(0)
    cur.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target, column_list(cols)), buf
    )
    return serialised - started, time.perf_counter() - serialised


def plain_copy_layers(
    conn, schema: str, history: dict[str, pd.DataFrame], computed: pd.DataFrame
) -> dict[str, float]:
    """COPY every row the bootstrap stores into bare tables: raw bars, clean bars, indicators.

    The same rows the bootstrap writes to its three layers (the bars twice, the indicator
    values once), with no keys, no versioning, no validation and no computation: the floor
    for getting those bytes into Postgres. ``computed`` is precomputed, untimed.
    """
    bar_cols = ["symbol", "trade_date", "open", "high", "low", "close", "volume"]
    ind_cols = ["symbol", "trade_date", "close", *indicators.INDICATOR_COLUMNS]
    with conn, conn.cursor() as cur:
        for name in ("layer_raw", "layer_clean"):
            cur.execute(
                sql.SQL(
                    "CREATE TABLE {} (symbol text, trade_date date, open float8, high float8, "
                    "low float8, close float8, volume bigint)"
                ).format(table(name, schema))
            )
        cur.execute(
            sql.SQL("CREATE TABLE {} (symbol text, trade_date date, {})").format(
                table("layer_indicators", schema),
                sql.SQL(", ").join(
                    sql.SQL("{} float8").format(sql.Identifier(c)) for c in ind_cols[2:]
                ),
            )
        )
    started = time.perf_counter()
    long = pd.concat([f.assign(symbol=s) for s, f in history.items()], ignore_index=True)
    serialise = copy = 0.0
    with conn, conn.cursor() as cur:
        for name, frame, cols in (
            ("layer_raw", long, bar_cols),
            ("layer_clean", long, bar_cols),
            ("layer_indicators", computed, ind_cols),
        ):
            s, c = _copy_csv(cur, table(name, schema), frame, cols)
            serialise, copy = serialise + s, copy + c
    done = time.perf_counter()
    return {
        "serialise": serialise,
        "copy": copy,
        "total": done - started,
        "rows": 2 * len(long) + len(computed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=2520)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "AIRFLOW_CONN_MARKET_DB", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args(argv)

    t = time.perf_counter()
    quality.warm_up()
    gx_cold = time.perf_counter() - t
    t = time.perf_counter()
    indicators.warm_jit()
    numba_cold = time.perf_counter() - t
    history = make_history(args.symbols, args.sessions)
    rows = sum(len(f) for f in history.values())
    print(
        f"{args.symbols} symbols x {args.sessions} sessions = {rows:,} rows "
        f"(GX warm-up {gx_cold:.1f}s, numba load {numba_cold:.1f}s, not timed)"
    )

    tag = uuid.uuid4().hex[:8]
    copy_schema, boot_schema = f"bench_copy_{tag}", f"bench_boot_{tag}"
    conn = psycopg2.connect(args.dsn.split("?")[0])
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(schema_ident(copy_schema)))
        copy = plain_copy(conn, copy_schema, history)
        print(
            f"plain COPY of the raw rows: {copy['total']:.2f}s (CSV {copy['serialise']:.2f}s + "
            f"COPY {copy['copy']:.2f}s)"
        )
        long = pd.concat([f.assign(symbol=s) for s, f in history.items()], ignore_index=True)
        computed = indicators.compute_universe(long, engine="numba")  # untimed input
        layers = plain_copy_layers(conn, copy_schema, history, computed)
        print(
            f"plain COPY of every stored row (raw + clean + indicators, {layers['rows']:,} "
            f"rows): {layers['total']:.2f}s (CSV {layers['serialise']:.2f}s + COPY "
            f"{layers['copy']:.2f}s)"
        )

        started = time.perf_counter()
        result = bootstrap.bootstrap(
            conn, None, list(history), END, schema=boot_schema, history=history
        )
        boot_seconds = time.perf_counter() - started
        totals = result.totals()
        assert totals["promoted"] == rows and totals["indicator_rows"] == rows, totals
        print(f"bootstrap:  {boot_seconds:.2f}s  phases {result.timings}")
        ratio = boot_seconds / layers["total"]
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        raw_only = boot_seconds / copy["total"]
        print(
            f"ratio bootstrap / plain COPY of the same rows = {ratio:.2f}x ({verdict} the <= "
            f"{TARGET_RATIO:g}x target); vs a COPY of the raw rows only {raw_only:.2f}x"
        )
    finally:
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in (copy_schema, boot_schema):
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema_ident(name)))
        conn.close()

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    record = {
        "bench": "bootstrap",
        "at": stamp,
        "tag": tag,
        "symbols": args.symbols,
        "sessions": args.sessions,
        "rows": rows,
        "plain_copy_seconds": copy,
        "plain_copy_layers_seconds": layers,
        "bootstrap_seconds": boot_seconds,
        "bootstrap_phases": result.timings,
        "ratio": ratio,
        "ratio_vs_raw_rows_only": raw_only,
        "ratio_vs_copy_statement": boot_seconds / copy["copy"],
        "target_ratio": TARGET_RATIO,
        "cold": {"gx_warm_up": gx_cold, "numba_load": numba_cold},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    path = args.out / f"bootstrap-{stamp}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
