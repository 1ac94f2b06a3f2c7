"""Values the storage layer takes, built with a test's defaults."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from types import SimpleNamespace

from market_pipeline import store
from market_pipeline.stages import GROUP_ID, SYMBOL_TASKS

SUITES = {"bars": "raw_bars", "indicators": "indicators"}
SESSION = date(2024, 11, 29)
RUN = "scheduled__2024-11-29T21:30:00+00:00"


def verdict(
    symbol: str,
    trade_date: date,
    *,
    gate: str = "bars",
    critical: Sequence[str] = (),
    warnings: Sequence[str] = (),
    acknowledged: Sequence[str] = (),
    result: dict | None = None,
    run_id: str = "r1",
    try_number: int = 1,
    suite_version: str = "1",
) -> store.ValidationRecord:
    """A gate's verdict on ``symbol`` for ``trade_date``: passed unless ``critical`` names rules."""
    return store.ValidationRecord(
        gate=gate,
        symbol=symbol,
        trade_date=trade_date,
        suite_name=SUITES[gate],
        suite_version=suite_version,
        success=not critical,
        critical_failures=tuple(critical),
        warnings=tuple(warnings),
        acknowledged=tuple(acknowledged),
        result={} if result is None else result,
        run_id=run_id,
        try_number=try_number,
    )


def dlq_entry(
    symbol: str | None,
    stage: str,
    kind: str,
    *,
    map_index: int = -1,
    task_id: str | None = None,
    message: str | None = None,
    error_class: str = "SomeError",
    run_id: str = RUN,
    trade_date: date = SESSION,
    logical_date=None,
    try_number: int = 1,
    dag_id: str = "market_daily",
) -> store.DlqEntry:
    """A DLQ row of ``stage`` (a per-symbol stage's task id is in its group)."""
    if task_id is None:
        task_id = f"{GROUP_ID}.{stage}" if stage in SYMBOL_TASKS else stage
    return store.DlqEntry(
        dag_id=dag_id,
        run_id=run_id,
        logical_date=logical_date,
        trade_date=trade_date,
        task_id=task_id,
        map_index=map_index,
        symbol=symbol,
        stage=stage,
        try_number=try_number,
        kind=kind,
        error_class=error_class,
        error_message=f"{symbol or 'tail'} failed at {stage}" if message is None else message,
    )


def task_instance(**fields) -> SimpleNamespace:
    """A stand-in for the task instance a callback reads (``context["ti"]``)."""
    return SimpleNamespace(**{**TI_DEFAULTS, **fields})


#: The task-instance fields a callback reads, as a test's stand-in has them by default.
TI_DEFAULTS = {
    "dag_id": "market_daily",
    "run_id": RUN,
    "task_id": f"{GROUP_ID}.ingest_bars",
    "map_index": 0,
    "try_number": 1,
}
