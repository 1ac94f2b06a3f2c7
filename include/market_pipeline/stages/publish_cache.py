"""publish_cache: the day's scores and snapshots to Redis, then one atomic pointer flip."""

from __future__ import annotations

from datetime import date

from market_pipeline import cache
from market_pipeline.stages.rebuild_cache import ensure_served
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.snapshots import day_snapshots


def publish_cache(conn, client, session: date, settings: Settings, *, attempt: Attempt) -> dict:
    """Publish D's snapshots as a new version; ``{"trade_date", "version", "symbol_count",
    "ranked_count", "checksum", "pointer_moved"}``.

    A serving copy lost to a Redis restart (no pointer, or a partial version) is rebuilt from
    Postgres first (:func:`~market_pipeline.stages.rebuild_cache.ensure_served`)."""
    ensure_served(conn, client, settings, skip=[session])
    snaps = day_snapshots(conn, session, settings)
    manifest = cache.publish(
        client,
        trade_date=session,
        run_id=attempt.run_id,
        snapshots=snaps,
        ttl_seconds=settings.cache_ttl_days * 86400,
        prefix=settings.cache_prefix,
    )
    return {
        "trade_date": session.isoformat(),
        "version": manifest.version,
        "symbol_count": manifest.symbol_count,
        "ranked_count": manifest.ranked_count,
        "checksum": manifest.checksum,
        "pointer_moved": manifest.pointer_moved,
    }
