"""Small helpers the DAG-level tests share: read rows, and remove a test's namespace."""

from __future__ import annotations

import psycopg2
import redis


def rows(dsn: str, sql: str, *params) -> list[tuple]:
    """All rows of one query, on a connection of its own (holds nothing while a DAG runs)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


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
