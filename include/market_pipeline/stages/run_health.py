"""run_health: record what no callback saw, write the run's page, fail a day with failures."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date

from market_pipeline import store
from market_pipeline.errors import MarketPipelineError
from market_pipeline.stages import GROUP_ID, SYMBOL_TASKS
from market_pipeline.stages.reports import run_dir
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.states import TaskStates, flatten, open_symbol_rows, symbol_states
from market_pipeline.stages.universe import rejected_entries

log = logging.getLogger(__name__)


class RunHealthError(MarketPipelineError):
    """Some symbols failed: the day is red even though the good ones were published."""

    kind = "upstream"
    #: It only restates failures the DLQ already holds; the callback records no row for it.
    restates_dlq = True


def run_health(
    conn,
    chunks: Sequence[Sequence[str]] | None,
    session: date,
    settings: Settings,
    *,
    task_states: TaskStates,
    tail_states: Mapping[str, str | None],
    attempt: Attempt,
) -> dict:
    """Reconcile the DLQ with the chain's states, write the per-run page, judge the day.

    DLQ writes spooled by callbacks that could not reach the database are applied first
    (``market_pipeline.dlq_spool``). A symbol whose first unsuccessful stage still has no open
    DLQ row (no callback ran: an upstream_failed or killed instance) gets one ("upstream" /
    "killed"). The per-run page
    (symbols × stages, scores, charts, DLQ) goes next to the GX pages; it never turns the day
    red on its own. :class:`RunHealthError` when any symbol failed, the universe rejected an
    entry or did not complete (``chunks`` None), or a tail task
    (``tail_states``: ``{task_id: state}``) did not complete; else ``{"trade_date",
    "symbols", "failed", "report"}``.
    """
    schema = settings.schema
    # DLQ rows a callback could not write (the database was down) come first: they name
    # the real error and try, which the reconciliation below can only guess.
    from market_pipeline import dlq_spool

    dlq_spool.drain(conn, schema=schema)
    universe_failed = chunks is None  # the universe task did not complete: nothing was mapped
    chunks = chunks or []
    rejected = rejected_entries(conn, attempt.run_id, schema=schema)
    symbols = flatten(chunks)
    index_of = {s: i for i, chunk in enumerate(chunks) for s in chunk}
    failed: dict[str, str] = {}
    states = symbol_states(conn, chunks, task_states, attempt.run_id, schema=schema)
    recorded = {r["symbol"] for r in open_symbol_rows(conn, attempt.run_id, schema=schema)}
    for symbol in symbols:
        # The first stage that did not succeed is the symbol's root cause.
        stage, state = next(
            (
                (st, states[symbol].get(st))
                for st in SYMBOL_TASKS
                if states[symbol].get(st) in ("failed", "upstream_failed")
            ),
            (None, None),
        )
        if stage is None:
            continue
        failed[symbol] = stage
        if symbol in recorded:
            continue  # its failure callback (or its chunk) already wrote the row
        task_id = f"{GROUP_ID}.{stage}"
        kind = "upstream" if state == "upstream_failed" else "killed"
        store.dlq_record(
            conn,
            attempt.dlq_entry(
                session,
                task_id,
                index_of[symbol],
                symbol,
                try_number=0,
                kind=kind,
                error_class="TaskInstanceState",
                error_message=f"{task_id}[{symbol}] ended {state} without a failure "
                "callback (reconciled by run_health)",
            ),
            schema=schema,
        )
    report = None
    try:
        from market_pipeline import run_report

        report = run_report.write(
            conn,
            session,
            run_dir(session),
            schema=schema,
            symbols=symbols,
            states=states,
            run_id=attempt.run_id,
            chunks=chunks,
        )
        log.info("run report for %s: %s", session, report)
    except Exception:  # a report must never turn the day red on its own
        log.exception("could not write the run report for %s", session)
    # The tail's own failures (their callbacks wrote the DLQ rows): a day whose publish
    # failed is red even when every symbol passed.
    broken_tail = sorted(
        t for t, st in tail_states.items() if str(st) in ("failed", "upstream_failed")
    )
    if failed or broken_tail or rejected or universe_failed:
        problems = []
        if universe_failed:
            problems.append("the universe task did not complete (see its DLQ row)")
        if rejected:
            problems.append(
                f"{len(rejected)} universe entr{'y' if len(rejected) == 1 else 'ies'} "
                f"rejected: {', '.join(repr(r) for r in rejected)}"
            )
        if failed:
            problems.append(
                f"{len(failed)} of {len(symbols)} symbols failed: "
                + ", ".join(f"{s} at {st}" for s, st in sorted(failed.items()))
            )
        if broken_tail:
            problems.append(f"tail did not complete: {', '.join(broken_tail)}")
        raise RunHealthError("; ".join(problems), session=session)
    return {
        "trade_date": session.isoformat(),
        "symbols": len(symbols),
        "failed": 0,
        "report": str(report) if report else None,
    }
