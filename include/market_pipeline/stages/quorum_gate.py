"""quorum_gate: the tail goes on only when enough of the universe passed every stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date

from market_pipeline.errors import MarketPipelineError
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.states import TaskStates, flatten, symbol_states
from market_pipeline.stages.universe import rejected_entries

log = logging.getLogger(__name__)


class QuorumError(MarketPipelineError):
    """Too few symbols made it through the per-symbol chain to score the day."""

    kind = "upstream"


def quorum_gate(
    conn,
    chunks: Sequence[Sequence[str]] | None,
    session: date,
    settings: Settings,
    *,
    task_states: TaskStates,
    attempt: Attempt,
) -> dict:
    """``{"trade_date", "passed", "failed", "rejected"}``; :class:`QuorumError` when fewer
    than ``settings.quorum`` of the universe as configured passed ``generate_signals``.

    The universe as configured is the run's symbols plus the entries the ``universe`` task
    rejected (``rejected``; each counts as failed). ``chunks`` is None when the universe task
    itself failed: nothing ran, the quorum fails.
    """
    if chunks is None:
        raise QuorumError(
            "expected the universe task's symbols, found none: the universe task did not "
            "complete (see its DLQ row)",
            session=session,
        )
    symbols = flatten(chunks)
    rejected = rejected_entries(conn, attempt.run_id, schema=settings.schema)
    states = symbol_states(conn, chunks, task_states, attempt.run_id, schema=settings.schema)
    passed = sorted(s for s, st in states.items() if st.get("generate_signals") == "success")
    failed = sorted(set(symbols) - set(passed)) + rejected
    configured = len(symbols) + len(rejected)
    quorum = settings.quorum
    share = len(passed) / configured if configured else 0.0
    log.info(
        "quorum: %d/%d passed (%.1f%%, need %.1f%%); failed: %s; rejected entries: %s",
        len(passed),
        configured,
        share * 100,
        quorum * 100,
        failed,
        rejected,
    )
    if share < quorum:
        raise QuorumError(
            f"expected at least {quorum:.0%} of {configured} symbols through every stage, "
            f"found {len(passed)} ({share:.1%}); failed: {', '.join(failed[:20])}",
            session=session,
        )
    return {
        "trade_date": session.isoformat(),
        "passed": passed,
        "failed": failed,
        "rejected": rejected,
    }
