"""verify_cache: read the day back through the pointer; count and checksum match Postgres."""

from __future__ import annotations

from datetime import date

from market_pipeline import cache
from market_pipeline.stages.rebuild_cache import ensure_served
from market_pipeline.stages.settings import Settings
from market_pipeline.stages.snapshots import day_snapshots


def verify_cache(conn, client, session: date, settings: Settings) -> dict:
    """``{"trade_date", "version", "verified", "ranked"}``; ``cache.verify`` raises on a
    mismatch.

    A serving copy lost since the publish (Redis restarted without its data) is rebuilt from
    Postgres first; a copy that is there but disagrees is a mismatch, never repaired here."""
    ensure_served(conn, client, settings)
    snaps = day_snapshots(conn, session, settings)
    manifest = cache.verify(
        client,
        expected_count=len(snaps),
        expected_ranked=sum(1 for s in snaps if s["rank"] is not None),
        expected_checksum=cache.checksum(snaps),
        trade_date=session,
        prefix=settings.cache_prefix,
    )
    return {
        "trade_date": session.isoformat(),
        "version": manifest.version,
        "verified": len(snaps),
        "ranked": manifest.ranked_count,
    }
