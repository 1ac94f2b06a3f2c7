"""validate_indicators: the indicator gate (present, fresh, no NaN after warm-up, in range)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from market_pipeline import calendar, indicators, quality, store
from market_pipeline.config import GATE_CONTEXT_SESSIONS
from market_pipeline.stages import INDICATOR_WINDOW
from market_pipeline.stages.outcome import Outcome, run_each
from market_pipeline.stages.reports import GateReports, validation_record
from market_pipeline.stages.settings import Attempt, Settings


def validate_indicators(
    conn,
    symbols: Sequence[str],
    session: date,
    settings: Settings,
    *,
    starts: Mapping[str, date | None],
    attempt: Attempt,
    reports: GateReports,
    chunk: bool,
) -> Outcome:
    """Judge each symbol's indicator rows written this run (plus context) in one GX run.

    Every verdict of the chunk is stored in one statement (a failed write fails the whole
    stage, before any symbol is judged); then each symbol's page is written and a failed
    one fails (``DataQualityError``). The result per passed symbol: ``{"not_ready",
    "report"}``.
    """
    schema = settings.schema
    window = indicator_gate_window(starts, session, settings)
    frames = store.indicator_history_many(
        conn, symbols, session, window, indicators.INDICATOR_COLUMNS, schema=schema
    )
    counts = store.clean_session_counts(
        conn, symbols, session, schema=schema, at_most=history_cap(window)
    )
    out = run_each(symbols, lambda s: (frames[s], counts[s]), conn=conn, chunk=chunk)
    results = {}
    if out.ok:
        results = quality.validate_indicators_many(
            {s: frame for s, (frame, _) in out.ok.items()},
            trade_date=session,
            exchange=settings.exchange,
            history_sessions={s: n for s, (_, n) in out.ok.items()},
            reuse=store.verdict_lookup(conn, schema),  # an unchanged input keeps its verdict
        )
    store.record_validations(
        conn, [validation_record(r, attempt) for r in results.values()], schema=schema
    )

    def check(symbol: str) -> dict:
        result = results[symbol]
        report = reports.verdict(result)
        result.raise_for_failure()
        return {"not_ready": dict(result.not_ready), "report": str(report) if report else None}

    checks = run_each(sorted(results), check, conn=conn, chunk=chunk)
    out.absorb(checks)
    out.ok = dict(checks.ok)
    reports.chunk_page(list(results.values()))
    return out


def indicator_gate_window(
    starts: Mapping[str, date | None], session: date, settings: Settings
) -> int:
    """Indicator rows per symbol the gate reads: the sessions written this run (from the
    earliest start of the chunk to D) plus ``GATE_CONTEXT_SESSIONS`` earlier ones;
    ``INDICATOR_WINDOW`` when a start is unknown (an upstream result from an older run)."""
    if not starts or None in starts.values():
        return INDICATOR_WINDOW
    oldest = min(starts.values())
    written = calendar.sessions_apart(oldest, session, settings.exchange) + 1
    return max(1, written) + GATE_CONTEXT_SESSIONS


def history_cap(window: int) -> int:
    """How far the gate counts a symbol's clean history: it needs each row's place in the
    history only to tell warm-up from after it, and counted up to the window plus the
    longest warm-up every row of a longer history is past every warm-up, as with the full
    count (whose cost grows with the history kept)."""
    return window + max(indicators.WARMUP.values()) + 1
