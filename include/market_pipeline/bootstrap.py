"""Bulk history bootstrap: load symbols' whole history in one pass (no daily DAG runs).

    python -m market_pipeline.bootstrap --source file_drop --path DIR --end 2012-09-12 \\
        [--symbols AAPL,IBM] [--start 2000-01-03] [--schema market] [--dsn URI]

The path a new deployment or a long backfill uses. Per call:

1. apply pending migrations; add the symbols to ``symbols`` (never deactivates others);
2. per symbol, fetch (last clean session, end] from any :class:`BarSource` (from ``--start``,
   default the calendar's first session, when the symbol has no clean bars);
3. append to ``raw_bars`` in one COPY + one set-based INSERT (append-only, versioned, hashes
   identical to :func:`store.append_raw_bars`, so a later DAG re-fetch adds nothing);
4. run the raw-bar GX suite on every symbol's whole window in one batch
   (:func:`quality.validate_bars_many`), with the symbol's last few clean bars as context and
   the active acknowledgements per session (:mod:`market_pipeline.acks`);
5. promote to ``clean_bars`` server-side (INSERT … SELECT from the raw layer) **up to the
   session before the symbol's first unacknowledged critical failure** — the DAG's gate
   semantics applied to history: what follows a stop is never clean until the stop is
   fixed or acknowledged; the stop is reported (symbol, session, rules) and recorded in
   ``validation_reports`` on the stop session, so the operator flow is the DAG's one
   (``recovery ack`` → run the bootstrap again, or let the DAG run the session); one
   ``validation_reports`` row per symbol (gate ``bars``) commits with its bars;
6. compute indicators for the whole universe at once (:func:`indicators.compute_universe`,
   numba engine) over each symbol's full clean history and upsert the rows after each
   symbol's last indicator row.

Idempotent and resumable: every phase commits per symbol and a rerun reads from the tables
how far each symbol got — the raw append adds only versions not there yet, the window starts
after the last clean session (bars and their verdicts commit together), and indicators are
computed for every symbol whose ``indicators`` end before its ``clean_bars`` do, from the
first missing session. A call killed between phases and run again leaves the rows an
uninterrupted call leaves. A symbol whose end session is not delivered is validated up to
its last delivered session (status ``partial``); the DAG waits for the rest.

The writes are the store's (:mod:`market_pipeline.store.bulk`): the daily layers' statements
fed by COPY, so the bootstrap and the DAG store the same rows the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import pandas as pd

from market_pipeline import acks, calendar, migrate, quality, store
from market_pipeline.config import GATE_CONTEXT_SESSIONS, SCHEMA
from market_pipeline.sources.base import BAR_COLUMNS, BarSource

log = logging.getLogger(__name__)

#: Test hook: name a phase (``raw``, ``promote``, ``indicators``) and the bootstrap stops
#: right after committing it, prints :data:`PAUSE_MARKER` + the phase on stdout and waits
#: for stdin to close — so a test can kill it at an exact point between phases.
PAUSE_ENV = "MARKET_BOOTSTRAP_PAUSE_AFTER"
PAUSE_MARKER = "bootstrap paused after "


@dataclass
class SymbolOutcome:
    """What the bootstrap did for one symbol."""

    symbol: str
    status: str  # promoted | partial | stopped | up_to_date | not_delivered
    window_start: date | None = None
    fetched: int = 0
    appended: int = 0
    promoted: int = 0
    promoted_through: date | None = None
    stopped_at: date | None = None
    stopped_rules: tuple[str, ...] = ()
    stop_detail: str = ""
    acknowledged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    indicator_rows: int = 0

    def line(self) -> str:
        """One human line for the CLI."""
        base = (
            f"{self.symbol:<6} {self.status:<13} fetched {self.fetched:>6}  appended "
            f"{self.appended:>6}  promoted {self.promoted:>6}"
        )
        if self.promoted_through:
            base += f" through {self.promoted_through}"
        if self.indicator_rows:
            base += f"  indicators {self.indicator_rows}"
        if self.stopped_at:
            base += f"  STOPPED at {self.stopped_at}: {', '.join(self.stopped_rules)}"
            if self.stop_detail:
                base += f" ({self.stop_detail})"
        if self.acknowledged:
            base += f"  acknowledged: {', '.join(self.acknowledged)}"
        return base


@dataclass
class BootstrapResult:
    """Outcome of one bootstrap call: per symbol, plus phase timings in seconds."""

    run_id: str
    end: date
    outcomes: dict[str, SymbolOutcome]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stopped(self) -> dict[str, SymbolOutcome]:
        return {s: o for s, o in self.outcomes.items() if o.status == "stopped"}

    def totals(self) -> dict[str, int]:
        keys = ("fetched", "appended", "promoted", "indicator_rows")
        return {k: sum(getattr(o, k) for o in self.outcomes.values()) for k in keys}


# --------------------------------------------------------------------------- the bootstrap


def _stop_session(result: quality.GateResult) -> tuple[date | None, str]:
    """The first session no acknowledgement covers, of any critical rule (None: table-level)."""
    sessions = result.result.get("critical_sessions") or {}
    found = [s for rule in result.critical_failures for s in sessions.get(rule) or []]
    found = [s for s in found if s and s != "unparseable"]
    return (date.fromisoformat(min(found)) if found else None), "; ".join(
        f"{r}: {result.result.get('details', {}).get(r, '')}" for r in result.critical_failures
    )


def _pause_point(phase: str) -> None:
    """The test hook of :data:`PAUSE_ENV`: a no-op unless it names ``phase``."""
    if os.environ.get(PAUSE_ENV) != phase:
        return
    print(PAUSE_MARKER + phase, flush=True)
    sys.stdin.read()  # returns only when stdin closes: the test kills the process first
    raise SystemExit(f"bootstrap: the pause after {phase} was released, not killed")


def bootstrap(
    conn,
    source: BarSource,
    symbols: Iterable[str],
    end: date,
    *,
    start: date | None = None,
    exchange: str = "XNYS",
    max_move: float = quality.DEFAULT_MAX_MOVE,
    schema: str = SCHEMA,
    engine: str | None = "numba",
    run_id: str | None = None,
    history: dict[str, pd.DataFrame] | None = None,
) -> BootstrapResult:
    """Load, validate, promote and compute indicators for ``symbols`` up to ``end``.

    ``history`` (optional) supplies the bars per symbol instead of ``source.fetch`` (the
    benchmark passes generated arrays); it is cut to the same window.
    """
    timings: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 3)
        tick = now

    symbols = store.validate_symbols(symbols)
    end = calendar.session_on_or_before(end, exchange)
    first = start or date.fromisoformat(calendar.CALENDAR_START)
    run_id = run_id or f"bootstrap__{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
    migrate.apply(conn, schema)
    store.ensure_symbols(conn, symbols, schema)
    # Where each symbol stands, from the tables: what a rerun after a crash resumes from.
    last_clean = {
        s: d for s, d in store.last_sessions(conn, "clean_bars", symbols, end, schema).items() if d
    }
    last_indicator = store.last_sessions(conn, "indicators", symbols, end, schema)
    outcomes = {s: SymbolOutcome(s, "up_to_date") for s in symbols}
    lap("prepare")

    # 1. fetch (last clean, end]
    frames: dict[str, pd.DataFrame] = {}
    for s in symbols:
        lo = calendar.next_session(last_clean[s], exchange) if s in last_clean else first
        outcomes[s].window_start = lo
        if lo > end:
            continue
        if history is not None:
            bars = history.get(s, pd.DataFrame(columns=list(BAR_COLUMNS)))
            bars = bars[(bars["trade_date"] >= lo) & (bars["trade_date"] <= end)]
        else:
            bars = source.fetch(s, lo, end)
        outcomes[s].fetched = len(bars)
        if bars.empty:
            outcomes[s].status = "not_delivered"
            continue
        frames[s] = bars.reset_index(drop=True)
    lap("fetch")

    # 2. raw layer (append-only: a rerun appends only what is not there yet)
    fresh_raw: set[str] = set()
    if frames:
        long = pd.concat([f.assign(symbol=s) for s, f in frames.items()], ignore_index=True)
        fresh_raw = set(frames) - store.symbols_with_rows(conn, "raw_bars", frames, schema)
        appended = store.append_raw_many(
            conn,
            long,
            source=getattr(source, "name", "bootstrap"),
            run_id=run_id,
            fetched_at=datetime.now(UTC),
            schema=schema,
        )
        for s, n in appended.items():
            outcomes[s].appended = int(n)
    lap("raw")
    _pause_point("raw")

    # 3. GX over each symbol's window (+ clean context), grouped by the last delivered session
    context = store.clean_bars_many(conn, list(frames), schema, last=GATE_CONTEXT_SESSIONS)
    acked = acks.active_rules_many(conn, list(frames), gate="bars", schema=schema)
    by_last: dict[date, dict[str, pd.DataFrame]] = {}
    for s, f in frames.items():
        mine = context[context["symbol"] == s].drop(columns="symbol")
        checked = f if mine.empty else pd.concat([mine, f], ignore_index=True)
        by_last.setdefault(max(f["trade_date"]), {})[s] = checked.loc[:, list(BAR_COLUMNS)]
    results: dict[str, quality.GateResult] = {}
    for day, group in by_last.items():
        results.update(
            quality.validate_bars_many(
                group,
                trade_date=day,
                exchange=exchange,
                max_move=max_move,
                acknowledged={s: acked.get(s, {}) for s in group},
            )
        )
    lap("validate")

    # 4. promote up to the session before the first unacknowledged critical failure; the
    # bars and the verdicts commit together, so the last clean session is the resume point.
    ranges, records = [], []
    for s, f in frames.items():
        res, out = results[s], outcomes[s]
        lo, hi = out.window_start, max(f["trade_date"])
        out.acknowledged, out.warnings = res.acknowledged, res.warnings
        report_day = hi
        if not res.success:
            stop, detail = _stop_session(res)
            out.status, out.stop_detail = "stopped", detail
            out.stopped_rules = res.critical_failures
            out.stopped_at = stop or lo
            report_day = out.stopped_at
            hi = calendar.previous_session(out.stopped_at, exchange) if stop else None
        else:
            out.status = "promoted" if hi == end else "partial"
        if hi is not None and hi >= lo:
            ranges.append({"symbol": s, "lo": lo, "hi": hi})
            out.promoted_through = hi
        records.append(_record(res, s, report_day, run_id, lo, out))
    promoted = store.promote_many(
        conn,
        pd.DataFrame(ranges, columns=["symbol", "lo", "hi"]),
        schema,
        fresh=fresh_raw,
        verdicts=records,
    )
    for s, n in promoted.items():
        outcomes[s].promoted = int(n)
    lap("promote")
    _pause_point("promote")

    # 5. indicators over each symbol's full clean history, upserted after its last indicator
    # row: the sessions promoted now, and any a crashed call promoted but did not reach.
    through = {r["symbol"]: r["hi"] for r in ranges}
    behind = [
        s
        for s, last in last_clean.items()
        if last_indicator.get(s) is None or last_indicator[s] < last
    ]
    todo = sorted(set(through) | set(behind))
    rows = 0
    if todo:
        from market_pipeline import indicators

        fresh = [s for s in todo if s not in last_clean]  # all of their bars are in `frames`
        known = [s for s in todo if s in last_clean]
        parts = [frames[s][frames[s]["trade_date"] <= through[s]].assign(symbol=s) for s in fresh]
        if known:
            parts.append(store.clean_bars_many(conn, known, schema))
        clean = pd.concat(parts, ignore_index=True)
        lap("indicators_read")
        computed = indicators.compute_universe(clean, engine=engine)
        lap("indicators_compute")
        after = computed["symbol"].map(lambda s: last_indicator.get(s) or date.min)
        new = computed[computed["trade_date"] > after]
        rows = store.upsert_indicators_many(conn, new, indicators.INDICATOR_COLUMNS, schema)
        for s, n in new["symbol"].value_counts().items():
            outcomes[s].indicator_rows = int(n)
        lap("indicators_upsert")
    _pause_point("indicators")
    log.info("bootstrap %s: %s in %s", run_id, {"indicator_rows": rows}, timings)
    return BootstrapResult(run_id=run_id, end=end, outcomes=outcomes, timings=timings)


def _record(
    res: quality.GateResult, symbol: str, day: date, run_id: str, lo: date, out: SymbolOutcome
) -> store.ValidationRecord:
    result = dict(res.result)
    result["bootstrap"] = {
        "run_id": run_id,
        "window_start": lo.isoformat(),
        "validated_through": res.trade_date.isoformat(),
        "promoted_through": out.promoted_through.isoformat() if out.promoted_through else None,
        "stopped_at": out.stopped_at.isoformat() if out.stopped_at else None,
    }
    # Stored under the session it stands for, with the window it judged; without an input
    # hash (a gate reuses only a verdict whose stored hash equals its input's).
    return replace(
        store.ValidationRecord.stamped(res, run_id=run_id, try_number=1),
        symbol=symbol,
        trade_date=day,
        result=result,
        input_hash=None,
        reused=False,
    )


# --------------------------------------------------------------------------- CLI


def _symbols_in_drop(path: str) -> list[str]:
    from pathlib import Path

    from market_pipeline.config import SYMBOL_PATTERN

    names = {p.stem for p in Path(path).glob("*") if p.suffix in (".csv", ".parquet")}
    return sorted(n for n in names if SYMBOL_PATTERN.match(n))


def main(argv: list[str] | None = None) -> int:
    from market_pipeline.connections import db_dsn
    from market_pipeline.sources.registry import make_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="file_drop", help="file_drop or synthetic")
    parser.add_argument("--path", help="drop folder (file_drop)")
    parser.add_argument("--symbols", help="comma list (default: every file in --path)")
    parser.add_argument("--end", required=True, type=date.fromisoformat)
    parser.add_argument("--start", type=date.fromisoformat, default=None)
    parser.add_argument("--exchange", default="XNYS")
    parser.add_argument("--max-move", type=float, default=quality.DEFAULT_MAX_MOVE)
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--dsn", help="libpq URI (default: from AIRFLOW_CONN_MARKET_DB)")
    args = parser.parse_args(argv)

    if args.symbols:
        symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    elif args.source == "file_drop" and args.path:
        symbols = _symbols_in_drop(args.path)
    else:
        parser.error("--symbols is required unless --source file_drop --path DIR")
    source = make_source(args.source, path=args.path)
    conn = store.connect(args.dsn or db_dsn())
    try:
        result = bootstrap(
            conn,
            source,
            symbols,
            args.end,
            start=args.start,
            exchange=args.exchange,
            max_move=args.max_move,
            schema=args.schema,
        )
    finally:
        conn.close()
    for outcome in result.outcomes.values():
        print(outcome.line())
    print(f"run {result.run_id}: {result.totals()} timings {result.timings}")
    for s, o in result.stopped.items():
        print(
            f"\n{s} stopped at {o.stopped_at} ({', '.join(o.stopped_rules)}). If it is a true "
            f"event: recovery ack {s} {o.stopped_at} --rule {o.stopped_rules[0]} --reason '...'"
            " and run the bootstrap again; else fix the source file.",
            file=sys.stderr,
        )
    return 1 if result.stopped else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
