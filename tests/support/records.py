"""Values the storage layer takes, built with a test's defaults."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from market_pipeline import store

SUITES = {"bars": "raw_bars", "indicators": "indicators"}


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
