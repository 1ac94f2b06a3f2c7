"""validate_bars: the raw-bar gate — judge each symbol's raw window, promote what passes.

The wait for D's bar is ``wait_for_bars`` (the sensor before it). When the gate runs again
(a retry or a clear; see ``ask_again``) it first asks the source for the window again, so a
corrected delivery becomes a new raw version (a restatement) and is what it judges; an
unchanged delivery appends nothing and is judged as before. Clearing the failed gate
instance is therefore enough to pick up a fix.

The walk through the gate, step by step, is this module's :func:`validate_bars`; it calls
down only into storage (``market_pipeline.store``, ``acks``), the rules
(``market_pipeline.quality``) and the ``calendar``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import date

import pandas as pd

from market_pipeline import acks, calendar, quality, store
from market_pipeline.config import GATE_CONTEXT_SESSIONS
from market_pipeline.errors import next_action
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.stages import task_id
from market_pipeline.stages.ingest_bars import RawWindows, ingest_bars
from market_pipeline.stages.outcome import Outcome, run_each, write_passed
from market_pipeline.stages.reports import GateReports, validation_record
from market_pipeline.stages.settings import Settings

log = logging.getLogger(__name__)


def validate_bars(
    conn,
    symbols: Sequence[str],
    session: date,
    settings: Settings,
    *,
    windows: RawWindows,
    reports: GateReports,
    chunk: bool,
    ask_again: Collection[str] = (),
    label: str | None = None,
) -> Outcome:
    """Gate each symbol's raw window (``windows.starts[symbol]`` to D); promote what passes.

    1. ``ask_again`` (the symbols of a gate that runs again after a failure or a clear):
       fetch their windows from the source (``windows.open_source()``) and append them to
       raw in one pass, as ingest does — a changed bar becomes version n+1, an unchanged one
       adds nothing; a symbol whose fetch fails fails.
    2. Read every symbol's latest raw window (one query).
    3. Judge each window with a few clean sessions before it as context and the operator's
       acknowledgements, in one GX run for the chunk.
    4. Write each verdict's page; a failed symbol's verdict is stored and it fails
       (``DataQualityError``, ending with the next action: fix the delivery and clear this
       instance, or the exact ``market-recovery ack`` command for a true market event); a
       passed one is promoted to ``clean_bars`` with its verdict in the same transaction (one
       transaction for every passed symbol of a chunk). With a chunk, one page with every
       verdict.

    The result per passed symbol: ``{"window_start", "promoted", "warnings", "report"}``.
    """
    exchange, schema = settings.exchange, settings.schema
    starts, attempt = windows.starts, windows.attempt
    out = Outcome()
    again = [s for s in symbols if s in set(ask_again)]
    if again:
        # One fetch pass for the symbols asked again, as ingest does: their bars appended
        # and their attempts audited in one statement each (a failed fetch fails its symbol).
        fetched = ingest_bars(
            conn,
            again,
            session,
            settings,
            source=windows.open_source(),
            attempt=attempt,
            chunk=chunk,
            windows={s: (starts[s], session) for s in again},
        )
        for symbol, got in fetched.ok.items():
            log.info(
                "%s: asked the source again for %s..%s: %d bar(s), %d new raw version(s)",
                symbol,
                got["window_start"],
                got["window_end"],
                got["fetched"],
                got["appended"],
            )
        out.absorb(fetched)
    asked = [s for s in symbols if s not in out.failed]
    # Rows, not frames: each symbol's checked frame is built once, from its clean context
    # and its raw window together; promotion needs only the raw bar ids.
    latest = store.latest_raw_rows_many(
        conn, {s: (starts[s], session) for s in asked}, schema=schema
    )
    raws = {s: latest[s] for s in sorted(asked)}
    befores = {s: calendar.previous_session(starts[s], exchange) for s in sorted(raws)}
    contexts = store.clean_history_rows_many(conn, befores, GATE_CONTEXT_SESSIONS, schema=schema)
    # Operator acknowledgements (market_pipeline.acks) for the sessions checked here.
    acked = acks.active_rules_many(conn, sorted(raws), None, session, schema=schema)
    n_bar = len(BAR_COLUMNS)  # a raw row is the bar, then raw_bar_id and version

    def gate_input(symbol: str):
        rows = contexts[symbol] + [r[:n_bar] for r in raws[symbol]]
        checked = pd.DataFrame(rows, columns=list(BAR_COLUMNS))
        lo = min(r[0] for r in rows)
        acknowledged = {d: r for d, r in acked.get(symbol, {}).items() if d >= lo}
        if acknowledged:
            log.info(
                "%s: acknowledged %s",
                symbol,
                {d.isoformat(): sorted(r) for d, r in acknowledged.items()},
            )
        return checked, acknowledged

    inputs = run_each(sorted(raws), gate_input, conn=conn, chunk=chunk)
    out.absorb(inputs)
    results = {}
    if inputs.ok:
        results = quality.validate_bars_many(
            {s: checked for s, (checked, _) in inputs.ok.items()},
            trade_date=session,
            exchange=exchange,
            max_move=settings.max_move,
            acknowledged={s: ack for s, (_, ack) in inputs.ok.items()},
            reuse=store.verdict_lookup(conn, schema),  # an unchanged input keeps its verdict
        )

    def judged(symbol: str) -> tuple:
        """The verdict's record and page; a failed one is stored and raised."""
        result = results[symbol]
        record = validation_record(result, attempt)
        report = reports.verdict(result)
        if not result.success:
            store.record_validation(conn, record, schema=schema)
            result.raise_for_failure(
                next_action(
                    "data_quality",
                    task_id=task_id("validate_bars"),
                    label=label,
                    symbol=symbol,
                    session=session,
                    event_sessions=result.event_sessions(),
                )
            )
        return record, report

    passed = run_each(sorted(results), judged, conn=conn, chunk=chunk)

    # Every passed symbol's verdict and promotion, in one transaction for the chunk.
    def promote(ok: dict) -> None:
        store.promote_raw_ids_many(
            conn,
            {s: ([r[n_bar] for r in raws[s]], record) for s, (record, _) in ok.items()},
            schema=schema,
        )

    write_passed(passed, promote, conn=conn, chunk=chunk)
    out.absorb(passed)
    out.ok = {
        s: {
            "window_start": starts[s].isoformat(),
            "promoted": len(raws[s]),
            "warnings": list(results[s].warnings),
            "report": str(report) if report else None,
        }
        for s, (_, report) in passed.ok.items()
    }
    reports.chunk_page(list(results.values()))
    return out
