"""The universe: ``symbols`` (active flag; never deleted)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from psycopg2 import sql

from market_pipeline.config import SCHEMA, SYMBOL_PATTERN
from market_pipeline.errors import ConfigurationError
from market_pipeline.store.sql import table


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
    t = table("symbols", schema)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """INSERT INTO {} (symbol, active) SELECT unnest(%s::text[]), true
                   ON CONFLICT (symbol) DO UPDATE SET active = true"""
            ).format(t),
            (symbols,),
        )
        cur.execute(
            sql.SQL("UPDATE {} SET active = false WHERE active AND NOT symbol = ANY(%s)").format(t),
            (symbols,),
        )
    return symbols


def ensure_symbols(conn, symbols: Sequence[str], schema: str = SCHEMA) -> None:
    """Add ``symbols`` to the universe (active), leaving every other symbol as it is."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """INSERT INTO {} (symbol, active) SELECT unnest(%s::text[]), true
                   ON CONFLICT (symbol) DO NOTHING"""
            ).format(table("symbols", schema)),
            (list(symbols),),
        )


def active_symbols(conn, schema: str = SCHEMA) -> list[str]:
    """The active universe, sorted (map indexes follow this order)."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT symbol FROM {} WHERE active ORDER BY symbol").format(
                table("symbols", schema)
            )
        )
        return [r[0] for r in cur.fetchall()]
