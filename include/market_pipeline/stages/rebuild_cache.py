"""Rebuild the Redis serving copy from Postgres, the truth: after a Redis restart that lost it.

``publish_cache`` and ``verify_cache`` call :func:`ensure_served` first: when the pointer is
missing or names an incomplete version, every scored session of the last
``market_cache_ttl_days`` is published again from Postgres (oldest first, so the pointer ends
on the latest scored session and never moves back). ``market-recovery rebuild-cache`` does
the same on demand (``docs/operations.md``, "Redis restart").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, timedelta

from market_pipeline import cache
from market_pipeline.stages.settings import Settings
from market_pipeline.stages.snapshots import day_snapshots

log = logging.getLogger(__name__)

#: The run id a rebuilt version is published under (its version id names it): rebuilding the
#: same content twice writes the same keys.
REBUILD_RUN_ID = "cache-rebuild"


def served_sessions(conn, *, schema: str, ttl_days: int, until: date | None = None) -> list[date]:
    """Sessions with stored signals (the last per-symbol layer: a servable symbol has them,
    ranked or not) within ``ttl_days`` calendar days of the latest one (on or before ``until``
    when given), oldest first: what the serving copy should hold."""
    from psycopg2 import sql

    from market_pipeline.store.sql import table

    query = sql.SQL(
        "SELECT DISTINCT trade_date FROM {} WHERE (%s::date IS NULL OR trade_date <= %s)"
    )
    with conn.cursor() as cur:
        cur.execute(query.format(table("signals", schema)), (until, until))
        days = sorted(row[0] for row in cur.fetchall())
    conn.commit()  # no transaction left open on the caller's connection
    if not days:
        return []
    first = days[-1] - timedelta(days=max(ttl_days, 0))
    return [d for d in days if d >= first]


def rebuild_cache(
    conn,
    client,
    settings: Settings,
    *,
    sessions: Iterable[date] | None = None,
    skip: Iterable[date] = (),
) -> list[cache.Manifest]:
    """Publish ``sessions`` (default: :func:`served_sessions`) from Postgres, oldest first;
    their manifests. Sessions in ``skip`` (the caller publishes them itself) are left out.

    A session without servable symbols is skipped with a warning: there is nothing to serve.
    """
    if sessions is None:
        sessions = served_sessions(conn, schema=settings.schema, ttl_days=settings.cache_ttl_days)
    skipped = set(skip)
    manifests = []
    for session in sorted(set(sessions) - skipped):
        snaps = day_snapshots(conn, session, settings)
        if not snaps:
            log.warning("cache rebuild: no servable symbols for %s in Postgres; skipped", session)
            continue
        manifest = cache.publish(
            client,
            trade_date=session,
            run_id=REBUILD_RUN_ID,
            snapshots=snaps,
            ttl_seconds=settings.cache_ttl_days * 86400,
            prefix=settings.cache_prefix,
        )
        log.info(
            "cache rebuild: %s published as %s (%d symbols, pointer moved: %s)",
            session,
            manifest.version,
            manifest.symbol_count,
            manifest.pointer_moved,
        )
        manifests.append(manifest)
    return manifests


def ensure_served(
    conn, client, settings: Settings, *, skip: Iterable[date] = ()
) -> list[cache.Manifest]:
    """Rebuild the serving copy when :func:`cache.served_problem` finds it lost or partial;
    the rebuilt manifests (none when the copy is fine). Days in ``skip`` (the caller publishes
    them next) are left out, unless the broken served version is one of theirs."""
    problem = cache.served_problem(client, settings.cache_prefix)
    if problem is None:
        return []
    sessions = served_sessions(conn, schema=settings.schema, ttl_days=settings.cache_ttl_days)
    skipped = set(skip)
    served = client.get(cache.pointer_key(settings.cache_prefix))
    if served is not None:
        # The broken version is a skipped day's: a publish of the same content would find it
        # "already served" and write nothing, so that day is rebuilt here too.
        skipped.discard(date.fromisoformat(served.decode()[:10]))
    others = sorted(set(sessions) - skipped)
    if not others:  # a first publish: nothing was ever served
        log.info("nothing to rebuild (%s; no other scored session in Postgres)", problem)
        return []
    log.warning(
        "serving copy lost or partial (%s): rebuilding %s from Postgres",
        problem,
        ", ".join(d.isoformat() for d in others),
    )
    return rebuild_cache(conn, client, settings, sessions=others)
