"""universe: apply pending migrations, sync the universe into ``symbols``, cut it in chunks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from market_pipeline import migrate, store
from market_pipeline.chunks import chunk_symbols, per_task_for
from market_pipeline.config import SAMPLE_UNIVERSE, SYMBOL_PATTERN
from market_pipeline.errors import MarketPipelineError
from market_pipeline.stages.settings import Attempt, Settings

log = logging.getLogger(__name__)

#: The task id (and stage) of the DLQ rows of rejected universe entries.
TASK_ID = "universe"
#: What a valid entry looks like, for the rejection messages.
EXPECTED = (
    f"an upper-case ticker matching {SYMBOL_PATTERN.pattern} (a letter, then up to 9 "
    "letters, digits, '.' or '-'; no spaces)"
)


class UniverseEntryError(MarketPipelineError):
    """An entry of the configured universe is not a ticker (data the operator supplied)."""

    kind = "source"


@dataclass(frozen=True)
class Entry:
    """One entry of the configured universe and where it was read."""

    value: str
    where: str

    @property
    def label(self) -> str:
        """The DLQ ``symbol`` of a rejected entry: the entry as written, ``(empty)`` if blank."""
        return self.value or "(empty)"


def universe(
    conn,
    session: date,
    settings: Settings,
    *,
    attempt: Attempt | None = None,
    max_chunks: int | None = None,
) -> list[list[str]]:
    """The sorted active symbols cut into chunks of ``settings.symbols_per_task``: one map
    index of the per-symbol chain per chunk (``auto`` by default: ``chunks.per_task_for``).

    Migrations come first: a rejected universe must still find the DLQ table to land in.
    An entry that is not a ticker is rejected on its own: one DLQ row (kind ``source``,
    task ``universe``, the entry as its symbol) naming where it was read and what was
    expected; the valid symbols run, ``quorum_gate`` counts the rejected entries as failed and
    ``run_health`` turns the run red. Rows of entries no longer rejected are resolved. With
    no valid entry at all, :class:`UniverseEntryError` (nothing to run, the universe is left
    as it was). ``max_chunks`` is the orchestrator's limit on map indexes (Airflow's
    max_map_length).
    """
    applied = migrate.apply(conn, settings.schema)
    if applied:
        log.info("applied migrations %s", applied)
    entries = read_entries(settings.universe)
    valid = [e.value for e in entries if SYMBOL_PATTERN.match(e.value)]
    rejected = [e for e in entries if not SYMBOL_PATTERN.match(e.value)]
    if attempt is not None:
        _record_rejections(conn, rejected, session, settings, attempt)
    for e in rejected:
        log.error("%s", _rejection_message(e))
    if not valid:
        raise UniverseEntryError(
            f"expected at least one valid symbol in market_universe ({EXPECTED}), found "
            f"{len(rejected)} invalid entr{'y' if len(rejected) == 1 else 'ies'}: "
            + ", ".join(repr(e.value) for e in rejected[:20]),
            session=session,
        )
    symbols = store.validate_symbols(valid)
    store.sync_symbols(conn, symbols, schema=settings.schema)
    active = store.active_symbols(conn, schema=settings.schema)
    per_task = per_task_for(len(active), settings.symbols_per_task, max_chunks=max_chunks)
    chunks = chunk_symbols(active, per_task, max_chunks=max_chunks)
    log.info(
        "universe for %s: %d symbols in %d map indexes (%d per task); %d entries rejected",
        session,
        len(active),
        len(chunks),
        per_task,
        len(rejected),
    )
    return chunks


def _rejection_message(entry: Entry) -> str:
    return (
        f"universe entry {entry.value!r} ({entry.where}) rejected: expected {EXPECTED}, "
        f"found {entry.value!r}; the other symbols run without it"
    )


def _record_rejections(
    conn, rejected: list[Entry], session: date, settings: Settings, attempt: Attempt
) -> None:
    """One open DLQ row per rejected entry; resolve the rows of entries fixed since."""
    schema = settings.schema
    labels = {e.label for e in rejected}
    stale = sorted(
        {r["symbol"] for r in rejected_rows(conn, attempt.run_id, session, schema=schema)} - labels
    )
    if stale:
        store.dlq_resolve_symbols(
            conn,
            dag_id=attempt.dag_id,
            run_id=attempt.run_id,
            task_id=TASK_ID,
            trade_date=session,
            symbols=stale,
            try_number=attempt.try_number,
            schema=schema,
        )
    for entry in {e.label: e for e in rejected}.values():
        store.dlq_record(
            conn,
            attempt.dlq_entry(
                session,
                TASK_ID,
                -1,
                entry.label,
                kind=UniverseEntryError.kind,
                error_class=UniverseEntryError.__name__,
                error_message=_rejection_message(entry),
            ),
            schema=schema,
        )


def rejected_rows(conn, run_id: str, session: date | None = None, *, schema: str) -> list[dict]:
    """Open DLQ rows of rejected universe entries: this run's, and (with ``session``) those
    an earlier run of the session left open."""
    rows = store.dlq_open(conn, schema=schema).to_dict("records")
    return [
        r
        for r in rows
        if r["task_id"] == TASK_ID
        and isinstance(r["symbol"], str)  # the task's own row has none (NaN in the frame)
        and r["symbol"]
        and (r["run_id"] == run_id or (session is not None and r["trade_date"] == session))
    ]


def rejected_entries(conn, run_id: str, *, schema: str) -> list[str]:
    """The entries (DLQ ``symbol`` labels) the run's universe task rejected, sorted."""
    return sorted({r["symbol"] for r in rejected_rows(conn, run_id, schema=schema)})


def read_entries(setting: str) -> list[Entry]:
    """The entries a ``market_universe`` setting names, with where each was read: empty →
    the sample universe; a path to a file (one symbol per line, ``#`` comments, blank lines
    skipped); else a comma-separated list (a single trailing comma is allowed)."""
    raw = setting.strip()
    if not raw:
        return [Entry(s, "the sample universe") for s in SAMPLE_UNIVERSE]
    if "," not in raw and ("/" in raw or raw.endswith((".txt", ".csv"))):
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"market_universe names a file that does not exist: {raw}")
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            value = line.split("#", 1)[0].strip()
            if value:
                entries.append(Entry(value, f"market_universe file {path}, line {number}"))
        return entries
    parts = raw.split(",")
    if len(parts) > 1 and not parts[-1].strip():
        parts = parts[:-1]
    return [
        Entry(p.strip(), f"market_universe Variable, entry {i} of {len(parts)}")
        for i, p in enumerate(parts, start=1)
    ]


def read_universe(setting: str) -> list[str]:
    """The symbols a ``market_universe`` setting names (see :func:`read_entries`)."""
    return [e.value for e in read_entries(setting)]
