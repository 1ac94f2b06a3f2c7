"""The per-symbol chain run in-process, as one chunk's task instances would run it, through
the use cases (``market_pipeline.stages``) — for tests that need a session's data in
Postgres without Airflow."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date

from market_pipeline.stages.compute_indicators import compute_indicators
from market_pipeline.stages.generate_signals import generate_signals
from market_pipeline.stages.ingest_bars import RawWindows, ingest_bars
from market_pipeline.stages.outcome import Outcome
from market_pipeline.stages.reports import GateReports
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.validate_bars import validate_bars
from market_pipeline.stages.validate_indicators import validate_indicators


def _no_link(url: str) -> None:
    return None


def after_raw_gate(
    conn,
    settings: Settings,
    live: Sequence[str],
    starts: Mapping[str, date],
    session: date,
    attempt: Attempt,
    *,
    chunk: bool = True,
    link: Callable[[str], None] = _no_link,
) -> Outcome:
    """Indicators, their gate and signals for the ``live`` symbols; the signals' outcome."""
    computed = compute_indicators(
        conn, sorted(live), session, settings, starts={s: starts[s] for s in live}, chunk=chunk
    )
    checked = validate_indicators(
        conn,
        sorted(computed.ok),
        session,
        settings,
        starts={s: starts[s] for s in computed.ok},
        attempt=attempt,
        reports=GateReports(sorted(live), link=link),
        chunk=chunk,
    )
    return generate_signals(conn, sorted(checked.ok), session, settings, chunk=chunk)


def run_chain(
    conn, settings: Settings, symbols: Sequence[str], session: date, source, attempt: Attempt
) -> list[str]:
    """Ingest, raw gate, indicators, indicator gate and signals for ``symbols`` as one
    chunk; the symbols that passed every stage."""
    ingested = ingest_bars(
        conn, symbols, session, settings, source=source, attempt=attempt, chunk=True
    )
    starts = {s: date.fromisoformat(r["window_start"]) for s, r in ingested.ok.items()}
    gated = validate_bars(
        conn,
        sorted(starts),
        session,
        settings,
        windows=RawWindows(starts, open_source=lambda: source, attempt=attempt),
        reports=GateReports(list(symbols), link=_no_link),
        chunk=True,
    )
    return sorted(after_raw_gate(conn, settings, gated.ok, starts, session, attempt).ok)
