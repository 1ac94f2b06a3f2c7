"""Each symbol's state at each stage of the per-symbol chain, for the tail's verdicts."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from market_pipeline import store
from market_pipeline.stages import GROUP_ID, SYMBOL_TASKS

#: ``{(task_id, map_index): state}`` of the chain's task instances (task ids without the
#: group prefix; ``None`` for an instance not yet run).
TaskStates = Mapping[tuple[str, int], "str | None"]


def flatten(chunks: Sequence[Sequence[str]]) -> list[str]:
    """Every symbol of the run, in chunk order (sorted)."""
    return [s for chunk in chunks for s in chunk]


def open_symbol_rows(conn, run_id: str, *, schema: str) -> list[dict]:
    """The run's open DLQ rows of the per-symbol chain that name a symbol.

    DLQ writes a callback spooled while the database was down are applied first: a success
    whose resolve was spooled must not read as a symbol that failed.
    """
    from market_pipeline import dlq_spool

    dlq_spool.drain(conn, schema=schema)
    rows = store.dlq_open(conn, run_id=run_id, schema=schema).to_dict("records")
    return [r for r in rows if str(r["task_id"]).startswith(f"{GROUP_ID}.") and r["symbol"]]


def symbol_states(
    conn, chunks: Sequence[Sequence[str]], task_states: TaskStates, run_id: str, *, schema: str
) -> dict[str, dict[str, str]]:
    """``{symbol: {stage: state}}`` for this run.

    A symbol takes its chunk's task-instance states; a symbol dropped inside a chunk that
    went on (an open DLQ row of this run) is "failed" at that stage and "upstream_failed"
    after it.
    """
    out: dict[str, dict[str, str]] = {s: {} for s in flatten(chunks)}
    for (task_id, index), state in task_states.items():
        if task_id not in SYMBOL_TASKS or not 0 <= index < len(chunks):
            continue
        for symbol in chunks[index]:
            out[symbol][task_id] = str(state) if state else "none"
    for row in open_symbol_rows(conn, run_id, schema=schema):
        symbol, stage = row["symbol"], row["stage"]
        if symbol not in out or stage not in SYMBOL_TASKS:
            continue
        if out[symbol].get(stage) != "success":
            continue  # the task itself failed: its state says so already
        out[symbol][stage] = "failed"
        for later in SYMBOL_TASKS[SYMBOL_TASKS.index(stage) + 1 :]:
            out[symbol][later] = "upstream_failed"
    return out


#: The table whose row for the session shows a stage passed (the gates: their verdict).
_EVIDENCE = {
    "ingest_bars": "raw_bars",
    "wait_for_bars": "raw_bars",
    "validate_bars": "clean_bars",
    "compute_indicators": "indicators",
    "generate_signals": "signals",
}
#: Gate task (stage) → the ``gate`` column of ``validation_reports``.
GATES = {"validate_bars": "bars", "validate_indicators": "indicators"}


def state_from_tables(
    symbol: str,
    stage: str,
    present: Mapping[str, set],
    verdicts: Mapping[tuple[str, str], Mapping],
    open_dlq: Collection[tuple[str, str]],
) -> str | None:
    """A symbol's state at ``stage`` read from what the session left in Postgres, for when no
    task-instance state is at hand: "stopped" (an open DLQ row, or a failed verdict),
    "passed" (a passed verdict, or the stage's rows), None when nothing shows it ran.

    ``present``: ``{table: symbols with a row for the session}``; ``verdicts``:
    ``{(gate, symbol): stored verdict}``; ``open_dlq``: ``(symbol, stage)`` of open rows.
    """
    if (symbol, stage) in open_dlq:
        return "stopped"
    verdict = verdicts.get((GATES[stage], symbol)) if stage in GATES else None
    if verdict is not None:
        return "passed" if verdict["success"] else "stopped"
    table = _EVIDENCE.get(stage)
    return "passed" if table and symbol in present[table] else None
