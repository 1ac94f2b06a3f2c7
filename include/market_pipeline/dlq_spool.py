"""DLQ writes that could not reach the market database, kept on disk until they can.

A failure callback runs when things go wrong, often because the database is down: the row it
could not write is spooled as one JSON file under :func:`spool_dir` and applied, in the order
it was spooled, by the next writer that reaches the database — any later DLQ callback, and
``run_health`` before it reconciles the run (``docs/operations.md``, "Database outage").

Each file is claimed by an atomic rename before it is applied, so two drainers never apply
the same file twice; a file whose apply fails is put back for the next drainer. Drainers of a
schema take turns under a Postgres advisory lock, and a writer that must come after every
spooled write (a success resolving its row) writes inside :func:`applied_first`: without it, a
resolve could run while another process still held the spooled failure it resolves, and that
failure would then open a row for an instance that had succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

from market_pipeline.config import SCHEMA
from market_pipeline.errors import failure_kind

log = logging.getLogger(__name__)

_SUFFIX = ".json"


def spool_dir() -> Path:
    """``MARKET_DLQ_SPOOL_DIR``, else ``dlq-spool`` under the report directory.

    Every worker and the ``run_health`` task must see the same directory (the report
    directory is shared storage already in a multi-host deployment).
    """
    configured = os.environ.get("MARKET_DLQ_SPOOL_DIR")
    if configured:
        return Path(configured)
    from market_pipeline.stages.reports import report_dir

    return report_dir() / "dlq-spool"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return {"__type": type(value).__name__, "value": value.isoformat()}
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and value.get("__type") == "datetime":
        return datetime.fromisoformat(value["value"])
    if isinstance(value, dict) and value.get("__type") == "date":
        return date.fromisoformat(value["value"])
    return value


def _write(payload: dict, directory: Path | None) -> Path:
    directory = directory or spool_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # Names sort in spool order: a record and the resolve that followed apply in that order.
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(payload))
    path = directory / f"{name}{_SUFFIX}"
    os.replace(tmp, path)
    return path


def spool_records(entries, *, schema: str = SCHEMA, directory: Path | None = None) -> Path:
    """Keep ``entries`` (:class:`~market_pipeline.store.DlqEntry`) for a later ``dlq_record``."""
    rows = [{k: _jsonable(v) for k, v in asdict(e).items()} for e in entries]
    return _write({"action": "record", "schema": schema, "entries": rows}, directory)


def spool_resolve(*, schema: str = SCHEMA, directory: Path | None = None, **kwargs) -> Path:
    """Keep one ``dlq_resolve(**kwargs)`` for later (a success whose database was down)."""
    args = {k: _jsonable(v) for k, v in kwargs.items()}
    return _write({"action": "resolve", "schema": schema, "kwargs": args}, directory)


def pending(directory: Path | None = None) -> list[Path]:
    """Spooled files not yet applied, oldest first."""
    directory = directory or spool_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(_SUFFIX))


def _apply(conn, payload: dict) -> None:
    from market_pipeline import store

    schema = payload["schema"]
    if payload["action"] == "record":
        for row in payload["entries"]:
            entry = store.DlqEntry(**{k: _restore(v) for k, v in row.items()})
            store.dlq_record(conn, entry, schema=schema)
    elif payload["action"] == "resolve":
        kwargs = {k: _restore(v) for k, v in payload["kwargs"].items()}
        store.dlq_resolve(conn, schema=schema, **kwargs)
    else:
        raise ValueError(f"expected action 'record' or 'resolve', found {payload['action']!r}")


def _set_aside(claimed: Path, path: Path) -> None:
    bad = path.with_name(f"{path.name}.bad")
    os.rename(claimed, bad)
    log.exception("DLQ spool: %s is not a write that can be applied; set aside as %s", path, bad)


#: How long a drainer waits for another one to finish (a few rows; longer means it is stuck).
LOCK_TIMEOUT = "30s"


def _lock_key(schema: str) -> str:
    return f"market_pipeline.dlq_spool:{schema}"


@contextlib.contextmanager
def applied_first(conn, *, schema: str = SCHEMA, directory: Path | None = None):
    """Apply every spooled write of ``schema`` (:func:`drain`), then hold other drainers off
    while the caller writes: what the caller writes comes after every write spooled so far,
    whichever process spooled it or is applying it. The count applied is yielded.

    The lock is a session-level advisory lock on ``conn`` (waited for at most
    :data:`LOCK_TIMEOUT`, then ``psycopg2.errors.LockNotAvailable``, a transient error);
    it goes with the connection if the process dies.
    """
    key = _lock_key(schema)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
        cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
    try:
        yield _drain_locked(conn, schema, directory)
    finally:
        with contextlib.suppress(Exception):  # a dead connection took its lock with it
            conn.rollback()
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def drain(conn, *, schema: str = SCHEMA, directory: Path | None = None) -> int:
    """Apply every spooled write of ``schema`` to the database, oldest first; the count applied.

    Stops at the first write the database refuses (it went away again) and leaves it and the
    rest for the next drainer. Files of other schemas are left alone; a file that cannot be
    read as a spooled write is renamed ``*.bad`` (logged), never retried forever. One drainer
    of a schema at a time (:func:`applied_first`).
    """
    with applied_first(conn, schema=schema, directory=directory) as applied:
        return applied


def _drain_locked(conn, schema: str, directory: Path | None) -> int:
    applied = 0
    for path in pending(directory):
        claimed = path.with_name(f".{path.name}.claimed-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue  # another drainer took it
        try:
            payload = json.loads(claimed.read_text())
        except ValueError:
            _set_aside(claimed, path)
            continue
        if payload.get("schema") != schema:
            os.rename(claimed, path)
            continue
        try:
            _apply(conn, payload)
        except (KeyError, TypeError, ValueError):
            _set_aside(claimed, path)  # not a write this version can apply
            continue
        except Exception as exc:
            if failure_kind(exc) != "transient":  # refused for good: never block the rest
                conn.rollback()
                _set_aside(claimed, path)
                continue
            os.rename(claimed, path)  # the database went away again: the next drainer retries
            raise
        claimed.unlink()
        applied += 1
    if applied:
        log.info("DLQ spool: applied %d spooled write(s) to schema %s", applied, schema)
    return applied
