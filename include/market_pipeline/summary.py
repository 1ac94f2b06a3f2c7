"""Print what one session's run left behind: symbols per stage, DLQ, top scores from Redis.

    python -m market_pipeline.summary --trade-date 2024-11-29 [--dag-exit N]

Exits non-zero when the DAG run failed (``--dag-exit``), when the DLQ holds open rows for
the session, or when not every active symbol was scored and published.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from market_pipeline import cache, store
from market_pipeline.config import SCHEMA

DATA_TABLES = (
    "symbols",
    "raw_bars",
    "clean_bars",
    "indicators",
    "signals",
    "scores",
    "validation_reports",
    "acknowledgements",
)
LOG_TABLES = ("fetch_audit", "dlq")


def stage_counts(conn, day: date, schema: str = SCHEMA) -> dict[str, int]:
    """How many symbols reached each stage for ``day``."""
    queries = {
        "universe": f"SELECT count(*) FROM {schema}.symbols WHERE active",
        "raw_bars": f"SELECT count(DISTINCT symbol) FROM {schema}.raw_bars WHERE trade_date=%(d)s",
        "clean_bars": f"SELECT count(*) FROM {schema}.clean_bars WHERE trade_date=%(d)s",
        "indicators": f"SELECT count(*) FROM {schema}.indicators WHERE trade_date=%(d)s",
        "indicators_gate": f"SELECT count(*) FROM {schema}.validation_reports "
        "WHERE gate='indicators' AND success AND trade_date=%(d)s",
        "signals": f"SELECT count(DISTINCT symbol) FROM {schema}.signals WHERE trade_date=%(d)s",
        "scores": f"SELECT count(*) FROM {schema}.scores WHERE trade_date=%(d)s",
        "dlq_open": f"SELECT count(*) FROM {schema}.dlq WHERE resolved_at IS NULL "
        "AND trade_date=%(d)s",
    }
    out = {}
    with conn.cursor() as cur:
        for name, sql in queries.items():
            cur.execute(sql, {"d": day})
            out[name] = cur.fetchone()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    from market_pipeline.connections import db_dsn, redis_params

    parser = argparse.ArgumentParser(description="Summarise one session's market_daily run.")
    parser.add_argument("--trade-date", required=True, type=date.fromisoformat)
    parser.add_argument("--dag-exit", type=int, default=0, help="exit code of `dags test`")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)

    conn = store.connect(db_dsn())
    try:
        counts = stage_counts(conn, args.trade_date)
        tables = store.table_counts(conn)
        dlq = store.dlq_open(conn)
    finally:
        conn.close()
    client = cache.client_from_params(**redis_params())
    try:
        manifest = cache.latest_manifest(client)
        top = cache.latest_scores(client, args.top)
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
        print(f"  {name:<16} {counts[name]:>5}")
    print(f"DLQ open rows for the session: {counts['dlq_open']}")
    for row in dlq[dlq["trade_date"] == args.trade_date].to_dict("records"):
        print(
            f"  {row['symbol'] or '-':<8} {row['stage']:<20} {row['kind']:<14} "
            f"{row['error_message'][:90]}"
        )
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
    if counts["scores"] < counts["universe"]:
        problems.append(f"only {counts['scores']} of {counts['universe']} symbols scored")
    if manifest is None or str(manifest.trade_date) != args.trade_date.isoformat():
        problems.append("redis does not serve this session")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
