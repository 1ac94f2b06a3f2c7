"""universe: apply pending migrations, sync the universe into ``symbols``, cut it in chunks."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from market_pipeline import migrate, store
from market_pipeline.chunks import chunk_symbols, per_task_for
from market_pipeline.config import SAMPLE_UNIVERSE
from market_pipeline.stages.settings import Settings

log = logging.getLogger(__name__)


def universe(
    conn, session: date, settings: Settings, *, max_chunks: int | None = None
) -> list[list[str]]:
    """The sorted active symbols cut into chunks of ``settings.symbols_per_task``: one map
    index of the per-symbol chain per chunk (``auto`` by default: ``chunks.per_task_for``).

    Migrations come first: a rejected universe must still find the DLQ table to land in.
    ``max_chunks`` is the orchestrator's limit on map indexes (Airflow's max_map_length).
    """
    applied = migrate.apply(conn, settings.schema)
    if applied:
        log.info("applied migrations %s", applied)
    symbols = store.validate_symbols(read_universe(settings.universe))
    store.sync_symbols(conn, symbols, schema=settings.schema)
    active = store.active_symbols(conn, schema=settings.schema)
    per_task = per_task_for(len(active), settings.symbols_per_task, max_chunks=max_chunks)
    chunks = chunk_symbols(active, per_task, max_chunks=max_chunks)
    log.info(
        "universe for %s: %d symbols in %d map indexes (%d per task)",
        session,
        len(active),
        len(chunks),
        per_task,
    )
    return chunks


def read_universe(setting: str) -> list[str]:
    """The symbols a ``market_universe`` setting names: empty → the sample universe; a path
    to a file (one symbol per line, ``#`` comments); else a comma-separated list."""
    raw = setting.strip()
    if not raw:
        return list(SAMPLE_UNIVERSE)
    if "," not in raw and ("/" in raw or raw.endswith((".txt", ".csv"))):
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"market_universe names a file that does not exist: {raw}")
        lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
        return [line.strip() for line in lines if line.strip()]
    return [s.strip() for s in raw.split(",")]
