"""What every gate verdict names: the gate, the symbol and session, the suite, the outcome.

:class:`~market_pipeline.quality.GateResult` (what a gate decided) and
:class:`~market_pipeline.store.ValidationRecord` (that verdict as ``validation_reports`` keeps
it, stamped with the run and try that wrote it) both begin with these fields, so a record is
built from a result in one place (``ValidationRecord.stamped``). No rules and no SQL here:
both the quality and the storage layer import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Verdict:
    """One gate's verdict on one symbol and session."""

    gate: str
    symbol: str
    trade_date: date
    suite_name: str
    suite_version: str
    success: bool
    critical_failures: Sequence[str]
    warnings: Sequence[str]
