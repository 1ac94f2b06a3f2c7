"""Small helpers the tests share: a migrated schema, read rows, checksum tables, remove a
namespace."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg2
import redis


@contextlib.contextmanager
def migrated(dsn: str, schema: str) -> Iterator:
    """A connection to ``dsn`` with the market migrations applied to ``schema``; closed after."""
    from market_pipeline import migrate

    conn = psycopg2.connect(dsn)
    try:
        migrate.apply(conn, schema)
        yield conn
    finally:
        conn.close()


def rows(dsn: str, sql: str, *params) -> list[tuple]:
    """All rows of one query, on a connection of its own (holds nothing while a DAG runs)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


@contextlib.contextmanager
def reference_runs(reference, pg_dsn: str, redis_url: str, timeout: float = 900) -> Iterator:
    """Start ``reference`` (a thread running the clean runs a suite compares against, with a
    ``home`` holding its schema and cache prefix); after the block, wait for it and drop its
    namespace."""
    reference.start()
    try:
        yield reference
    finally:
        reference.join(timeout=timeout)
        drop_namespace(pg_dsn, redis_url, reference.home.schema, reference.home.cache_prefix)


def drop_namespace(pg_dsn: str, redis_url: str, schema: str, prefix: str) -> None:
    """Drop a test's market schema and delete its Redis keys."""
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        conn.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# Business columns only: no timestamps, run ids or surrogate ids.
CHECKSUM_SQL = {
    "symbols": "SELECT symbol, active FROM {s}.symbols",
    # The latest version of each bar: a restated (fixed) delivery adds a version by design.
    "raw_bars": "SELECT DISTINCT ON (symbol, trade_date) symbol, trade_date, open, high, low, "
    "close, volume, source, payload_hash FROM {s}.raw_bars "
    "ORDER BY symbol, trade_date, version DESC",
    "clean_bars": "SELECT symbol, trade_date, open, high, low, close, volume FROM {s}.clean_bars",
    "indicators": "SELECT symbol, trade_date, close, ema_9, ema_21, sma_50, sma_200, rsi_14, "
    "macd, macd_signal, macd_hist, atr_14, bb_upper, bb_middle, bb_lower FROM {s}.indicators",
    "signals": "SELECT symbol, trade_date, rule, direction, strength, ready, reasons "
    "FROM {s}.signals",
    "scores": "SELECT trade_date, symbol, score, rank, percentile, components FROM {s}.scores",
    "validation_reports": "SELECT gate, symbol, trade_date, suite_name, suite_version, success, "
    "critical_failures, warning_failures, failed_rules, acknowledged FROM {s}.validation_reports",
}
#: Every row of every table, for "no row more or different": raw versions, acks and DLQ too.
FULL_SQL = {
    **CHECKSUM_SQL,
    "raw_bars": "SELECT symbol, trade_date, version, open, high, low, close, volume, "
    "payload_hash FROM {s}.raw_bars",
    "acknowledgements": "SELECT gate, symbol, trade_date, rule, reason, acknowledged_by, "
    "revoked_at IS NULL FROM {s}.acknowledgements",
    "dlq": "SELECT run_id, task_id, map_index, symbol, stage, kind, resolved_at IS NULL "
    "FROM {s}.dlq",
}


def checksums(dsn: str, schema: str, queries: dict[str, str] = CHECKSUM_SQL) -> dict:
    """``{table: (rows, md5 of the ordered rows)}`` over the given business columns."""
    out = {}
    for table, sql in queries.items():
        inner = sql.format(s=schema)
        out[table] = rows(
            dsn,
            f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f"FROM ({inner}) t",
        )[0]
    return out


def diff(found: dict, expected: dict) -> dict:
    """``{table: (found, expected)}`` for every table whose checksum differs."""
    return {t: (found.get(t), expected.get(t)) for t in expected if found.get(t) != expected[t]}
