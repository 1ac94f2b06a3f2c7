"""quorum_gate: the tail goes on only when enough of the universe passed every stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date

from market_pipeline.errors import MarketPipelineError
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.states import TaskStates, flatten, symbol_states

log = logging.getLogger(__name__)


class QuorumError(MarketPipelineError):
    """Too few symbols made it through the per-symbol chain to score the day."""

    kind = "upstream"


def quorum_gate(
    conn,
    chunks: Sequence[Sequence[str]],
    session: date,
    settings: Settings,
    *,
    task_states: TaskStates,
    attempt: Attempt,
) -> dict:
    """``{"trade_date", "passed", "failed"}``; :class:`QuorumError` when fewer than
    ``settings.quorum`` of the universe passed ``generate_signals``."""
    symbols = flatten(chunks)
    states = symbol_states(conn, chunks, task_states, attempt.run_id, schema=settings.schema)
    passed = sorted(s for s, st in states.items() if st.get("generate_signals") == "success")
    failed = sorted(set(symbols) - set(passed))
    quorum = settings.quorum
    share = len(passed) / len(symbols) if symbols else 0.0
    log.info(
        "quorum: %d/%d passed (%.1f%%, need %.1f%%); failed: %s",
        len(passed),
        len(symbols),
        share * 100,
        quorum * 100,
        failed,
    )
    if share < quorum:
        raise QuorumError(
            f"expected at least {quorum:.0%} of {len(symbols)} symbols through every stage, "
            f"found {len(passed)} ({share:.1%}); failed: {', '.join(failed[:20])}",
            session=session,
        )
    return {"trade_date": session.isoformat(), "passed": passed, "failed": failed}
