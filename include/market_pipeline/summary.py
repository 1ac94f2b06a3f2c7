"""Print what one session's run left behind: symbols per stage, DLQ, top scores from Redis.

    python -m market_pipeline.summary --trade-date 2024-11-29 [--dag-exit N] [--schema S]

Exits non-zero when the DAG run failed (``--dag-exit``), when the DLQ holds open rows for
the session, when the session's universe task failed, or when not every active symbol was
scored and published.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from psycopg2 import sql

from market_pipeline import cache, store
from market_pipeline.config import CACHE_PREFIX, SCHEMA, TABLES
from market_pipeline.store.sql import table

LOG_TABLES = ("fetch_audit", "dlq")
DATA_TABLES = tuple(t for t in TABLES if t not in LOG_TABLES)


_DISTINCT, _ROWS, _ALL = sql.SQL("count(DISTINCT symbol)"), sql.SQL("count(*)"), sql.SQL("")
_PASSED = sql.SQL("AND gate = 'indicators' AND success")
#: ``(name, table, what is counted, extra condition)`` for :func:`stage_counts`.
_STAGES = (
    ("raw_bars", "raw_bars", _DISTINCT, _ALL),
    ("clean_bars", "clean_bars", _ROWS, _ALL),
    ("indicators", "indicators", _ROWS, _ALL),
    ("indicators_gate", "validation_reports", _ROWS, _PASSED),
    ("signals", "signals", _DISTINCT, _ALL),
    ("scores", "scores", _ROWS, _ALL),
    ("dlq_open", "dlq", _ROWS, sql.SQL("AND resolved_at IS NULL")),
)
UNIVERSE_STAGE = "universe"


def session_dlq(conn, day: date, schema: str = SCHEMA) -> list[dict]:
    """The session's open DLQ rows, oldest first; a run-level row has ``symbol`` None."""
    from market_pipeline.recovery import DlqFilter, dlq_rows

    return dlq_rows(conn, DlqFilter(trade_date=day), schema=schema)


def stage_counts(conn, day: date, schema: str = SCHEMA) -> dict[str, int | None]:
    """How many symbols reached each stage for ``day``.

    ``universe`` is the active universe, or None when the session's universe task failed
    (an open run-level DLQ row of that stage): ``symbols`` then still holds an earlier
    run's universe, which is not this session's.
    """
    out: dict[str, int | None] = {}
    with conn.cursor() as cur:
        for name, layer, counted, condition in _STAGES:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE trade_date = %s {}").format(
                    counted, table(layer, schema), condition
                ),
                (day,),
            )
            out[name] = cur.fetchone()[0]
    failed = [
        r
        for r in session_dlq(conn, day, schema)
        if r["stage"] == UNIVERSE_STAGE and r["symbol"] is None
    ]
    out["universe"] = None if failed else len(store.active_symbols(conn, schema))
    return out


def dlq_line(row: dict) -> str:
    """One DLQ row as the summary prints it (a run-level row is labelled ``(run)``)."""
    message = (row.get("error_message") or "").replace("\n", " ")
    return (
        f"  {row.get('symbol') or '(run)':<8} {row.get('stage') or '-':<20} "
        f"{row.get('kind') or '-':<14} {message[:90]}"
    )


def main(argv: list[str] | None = None) -> int:
    from market_pipeline.connections import db_dsn, redis_params

    parser = argparse.ArgumentParser(description="Summarise one session's market_daily run.")
    parser.add_argument("--trade-date", required=True, type=date.fromisoformat)
    parser.add_argument("--dag-exit", type=int, default=0, help="exit code of `dags test`")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--schema", default=SCHEMA, help=f"pipeline schema (default: {SCHEMA})")
    parser.add_argument("--dsn", help="libpq URI (default: from AIRFLOW_CONN_MARKET_DB)")
    parser.add_argument(
        "--cache-prefix", default=CACHE_PREFIX, help=f"Redis key prefix (default: {CACHE_PREFIX})"
    )
    args = parser.parse_args(argv)

    conn = store.connect(args.dsn or db_dsn())
    try:
        counts = stage_counts(conn, args.trade_date, args.schema)
        tables = store.table_counts(conn, args.schema)
        dlq = session_dlq(conn, args.trade_date, args.schema)
    finally:
        conn.close()
    client = cache.client_from_params(**redis_params())
    try:
        manifest = cache.latest_manifest(client, args.cache_prefix)
        top = cache.latest_scores(client, args.top, prefix=args.cache_prefix)
        # A session older than the served one is stored but never moves the pointer (as a
        # backfill): it counts as published when its day key names a version.
        stored = bool(client.exists(cache.day_key(args.trade_date, args.cache_prefix)))
    finally:
        client.close()

    print(f"trade date {args.trade_date}")
    print("symbols through each stage:")
    for name in (
        "universe",
        "raw_bars",
        "clean_bars",
        "indicators",
        "indicators_gate",
        "signals",
        "scores",
    ):
        value = counts[name]
        print(f"  {name:<16} {'?' if value is None else value:>5}")
    if counts["universe"] is None:
        print("  (the universe task failed for this session: its universe is not known)")
    print(f"DLQ open rows for the session: {counts['dlq_open']}")
    for row in dlq:
        print(dlq_line(row))
    print("table rows: " + ", ".join(f"{t}={tables[t]}" for t in DATA_TABLES))
    print("log rows (grow by design): " + ", ".join(f"{t}={tables[t]}" for t in LOG_TABLES))
    if manifest is None:
        print("redis: nothing published")
    else:
        print(
            f"redis: serving {manifest.trade_date} ({manifest.symbol_count} symbols, "
            f"version {manifest.version})"
        )
        for i, (symbol, score) in enumerate(top, 1):
            print(f"  #{i} {symbol:<6} {score:+.4f}")

    problems = []
    if args.dag_exit:
        problems.append(f"the DAG run exited {args.dag_exit}")
    if counts["dlq_open"]:
        problems.append(f"{counts['dlq_open']} open DLQ row(s)")
    if counts["universe"] is None:
        problems.append("the universe task failed")
    elif counts["scores"] < counts["universe"]:
        problems.append(f"only {counts['scores']} of {counts['universe']} symbols scored")
    served = manifest is not None and str(manifest.trade_date) == args.trade_date.isoformat()
    later = manifest is not None and str(manifest.trade_date) > args.trade_date.isoformat()
    if not served and later and stored:
        print(f"redis: {args.trade_date} is stored; the pointer stays on the later session")
    elif not served:
        problems.append("redis does not serve this session")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
