"""The fate of a task instance that carries several symbols: DLQ rows, retry, XCom.

With ``market_symbols_per_task`` = 1 (the default) a task instance works on one symbol and
everything here steps aside: the symbol's error fails the task, Airflow's retry policy and
the DLQ callbacks handle it exactly as for any task.

With k > 1 a stage's use case runs its work once per symbol of the chunk
(``market_pipeline.stages.outcome.run_each``). A symbol's error is caught, and
:func:`settle` records it in the DLQ under that symbol (kind from :func:`failure_kind`); the
symbol is dropped from what the stage hands on, so its chunk-mates go on. Then :func:`settle`
decides the task instance's fate:

* a *transient* failure with tries left → the task raises :class:`ChunkFailure` (kind
  "transient"), Airflow retries it, and the retry re-runs the chunk (every write is an
  upsert, so the symbols that had passed are rewritten identically);
* every symbol failed → the task fails (its downstream is ``upstream_failed``, as for k = 1);
* otherwise the task succeeds and its XCom lists the symbols that passed and the ones that
  failed (``{"symbols": [...], "failed": {symbol: kind}, "results": {...}}``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import date

from market_pipeline import dlq_spool, store
from market_pipeline.chunks import chunk_label
from market_pipeline.errors import (
    MarketPipelineError,
    failure_kind,
    next_action,
    with_next_action,
)
from market_pipeline.stages.outcome import Outcome, is_chunk

log = logging.getLogger(__name__)


class ChunkFailure(MarketPipelineError):
    """Symbols of a chunk failed; their DLQ rows are written already (one per symbol)."""

    #: The failure callback must not add a row for the chunk: the symbols' rows say it all.
    restates_dlq = True

    def __init__(self, message: str, *, kind: str, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.kind = kind
        self.retry_after = retry_after


def settle(out: Outcome, symbols: Sequence[str], context, conn, *, day: date) -> None:
    """Record the chunk's failed symbols, resolve the passed ones; fail or retry if due."""
    if not is_chunk(symbols):
        return
    ti = context["ti"]
    stage = ti.task_id.rsplit(".", 1)[-1]
    label = chunk_label(symbols)
    # After the failures an earlier try of the chunk spooled (the database was down then).
    with dlq_spool.applied_first(conn):
        for symbol, exc in sorted(out.failed.items()):
            kind = failure_kind(exc)
            action = next_action(kind, task_id=ti.task_id, label=label, symbol=symbol, session=day)
            store.dlq_record(
                conn,
                dlq_entry(
                    context,
                    day,
                    symbol,
                    kind,
                    type(exc).__name__,
                    with_next_action(str(exc), action),
                ),
            )
        resolved = store.dlq_resolve_symbols(
            conn,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            trade_date=day,
            symbols=sorted(out.ok),
            try_number=ti.try_number,
        )
    if resolved:
        log.info("DLQ: resolved %s open row(s) of symbols that passed %s", resolved, stage)
    if not out.failed:
        return
    kinds = {s: failure_kind(e) for s, e in out.failed.items()}
    summary = ", ".join(f"{s} ({k})" for s, k in sorted(kinds.items())[:20])
    transient = [s for s, k in kinds.items() if k == "transient"]
    if transient and ti.try_number <= (ti.max_tries or 0):
        after = [getattr(out.failed[s], "retry_after", None) for s in transient]
        raise ChunkFailure(
            f"{len(transient)} of {len(symbols)} symbols failed with a transient error; the "
            f"chunk is retried: {summary}",
            kind="transient",
            retry_after=max((a for a in after if a), default=None),
            session=day,
        )
    if not out.ok:
        kind = Counter(kinds.values()).most_common(1)[0][0]
        raise ChunkFailure(
            f"expected at least one symbol of the chunk to pass {stage}, found none: {summary}",
            kind="transient" if kind == "transient" else kind,
            session=day,
            action=next_action(kind, task_id=ti.task_id, label=label),
        )
    log.warning(
        "%d of %d symbols failed %s and were dropped from the chunk: %s — next: %s",
        len(out.failed),
        len(symbols),
        stage,
        summary,
        "see each symbol's DLQ row (market-recovery list --run-id "
        f"{ti.run_id} --stage {stage}); then clear {ti.task_id}[{label}] with downstream",
    )


def output(day: date, out: Outcome, upstream_failed: dict[str, str] | None = None) -> dict:
    """The stage's XCom: passed symbols, their results, and every symbol dropped so far."""
    failed = dict(upstream_failed or {})
    failed.update({s: failure_kind(e) for s, e in out.failed.items()})
    return {
        "trade_date": day.isoformat(),
        "symbols": sorted(out.ok),
        "results": {s: out.ok[s] for s in sorted(out.ok)},
        "failed": dict(sorted(failed.items())),
    }


def dlq_entry(
    context, day: date | None, symbol: str | None, kind: str, error_class: str, message: str
) -> store.DlqEntry:
    """The DLQ row of this task instance's try for ``symbol`` (the instance's own fields from
    the context: run, task, map index, try)."""
    ti = context["ti"]
    return store.DlqEntry(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        logical_date=getattr(context.get("dag_run"), "logical_date", None),
        trade_date=day,
        task_id=ti.task_id,
        map_index=ti.map_index if ti.map_index is not None else -1,
        symbol=symbol,
        stage=ti.task_id.rsplit(".", 1)[-1],
        try_number=ti.try_number,
        kind=kind,
        error_class=error_class,
        error_message=message,
    )
