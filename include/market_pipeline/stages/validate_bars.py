"""validate_bars: the raw-bar gate — wait for D (asking the source again), judge, promote.

The walk through the gate, step by step, is this module's :func:`validate_bars`; it calls
down only into storage (``market_pipeline.store``, ``acks``), the rules
(``market_pipeline.quality``) and the ``calendar``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING

from market_pipeline import acks, calendar, quality, store
from market_pipeline.config import GATE_CONTEXT_SESSIONS
from market_pipeline.errors import NotDeliveredError
from market_pipeline.stages.ingest_bars import fetch_and_append
from market_pipeline.stages.outcome import Outcome, run_each
from market_pipeline.stages.reports import GateReports, validation_record
from market_pipeline.stages.settings import Attempt, Settings

if TYPE_CHECKING:
    from market_pipeline.sources.base import BarSource

log = logging.getLogger(__name__)


def validate_bars(
    conn,
    symbols: Sequence[str],
    session: date,
    settings: Settings,
    *,
    starts: Mapping[str, date],
    attempt: Attempt,
    reports: GateReports,
    chunk: bool,
    open_source: Callable[[], BarSource],
    late_grace_over: Callable[[], bool],
) -> Outcome | None:
    """Gate the raw window ``[starts[symbol], session]`` of each symbol; promote what passes.

    1. Read every symbol's latest raw window (one query). A symbol without D's bar is asked
       from the source again (``open_source()``, opened on first need).
    2. Still without D: return ``None`` (the sensor pokes again) — unless this is a chunk
       whose ``late_grace_over()``, then the late symbols fail ``not_delivered`` and the
       rest go on.
    3. Judge each window with a few clean sessions before it as context and the operator's
       acknowledgements, in one GX run for the chunk.
    4. Write each verdict's page; a failed symbol's verdict is stored and it fails
       (``DataQualityError``); a passed one is promoted to ``clean_bars`` with its verdict
       in the same transaction. With a chunk, one page with every verdict.

    The result per passed symbol: ``{"window_start", "promoted", "warnings", "report"}``.
    """
    exchange, schema = settings.exchange, settings.schema
    source = None
    windows = store.latest_raw_bars_many(
        conn, {s: (starts[s], session) for s in symbols}, schema=schema
    )

    def raw_with_bar(symbol: str):
        nonlocal source
        raw = windows[symbol]
        if not quality.has_bar(raw, session):
            source = source or open_source()
            last_clean = store.last_clean_session(conn, symbol, session, schema=schema)
            fetched = fetch_and_append(
                conn,
                symbol,
                session,
                settings,
                source=source,
                last_clean=last_clean,
                attempt=attempt,
            )
            raw = store.latest_raw_bars(conn, symbol, starts[symbol], session, schema=schema)
            if not quality.has_bar(raw, session):
                log.info("%s: bar for %s not delivered yet (%s)", symbol, session, fetched)
        return raw

    out = run_each(symbols, raw_with_bar, conn=conn, chunk=chunk)
    late = sorted(s for s, raw in out.ok.items() if not quality.has_bar(raw, session))
    if late:
        if not chunk or not late_grace_over():
            log.info(
                "waiting for %d symbol(s) not delivered for %s: %s",
                len(late),
                session,
                ", ".join(late[:20]),
            )
            return None
        for s in late:
            out.fail(
                s,
                NotDeliveredError(
                    f"expected the bar for {session} within the late grace period, found none",
                    symbol=s,
                    session=session,
                ),
            )
    raws = dict(out.ok)
    befores = {s: calendar.previous_session(starts[s], exchange) for s in sorted(raws)}
    contexts = store.clean_history_many(conn, befores, GATE_CONTEXT_SESSIONS, schema=schema)
    # Operator acknowledgements (market_pipeline.acks) for the sessions checked here.
    acked = acks.active_rules_many(conn, sorted(raws), None, session, schema=schema)

    def gate_input(symbol: str):
        context_bars = contexts[symbol]
        window = raws[symbol].drop(columns=["raw_bar_id", "version"])
        checked = window if context_bars.empty else _concat(context_bars, window)
        lo = min(checked["trade_date"])
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

    def promote(symbol: str) -> dict:
        result = results[symbol]
        record = validation_record(result, attempt)
        report = reports.verdict(result)
        if not result.success:
            store.record_validation(conn, record, schema=schema)
            result.raise_for_failure()
        promoted = store.promote_clean_bars(conn, symbol, raws[symbol], record, schema=schema)
        return {
            "window_start": starts[symbol].isoformat(),
            "promoted": promoted,
            "warnings": list(result.warnings),
            "report": str(report) if report else None,
        }

    promoted = run_each(sorted(results), promote, conn=conn, chunk=chunk)
    out.absorb(promoted)
    out.ok = dict(promoted.ok)
    reports.chunk_page(list(results.values()))
    return out


def _concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)
