"""The body of every market_daily task.

The DAG file only wires these together. Each function takes the task's inputs and the
Airflow context, talks to Postgres/Redis through the hooks, calls the domain package for
the logic, and returns a small dict for XCom. The trade date always comes from the run's
data interval, never from the wall clock.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from datetime import UTC, date, datetime
from pathlib import Path

from market_airflow import chunking
from market_airflow.hooks import MarketCacheHook, MarketDbHook
from market_airflow.retry import failure_kind
from market_airflow.settings import float_var, int_var, var
from market_pipeline import calendar, store
from market_pipeline.config import (
    DAG_ID,
    GATE_CONTEXT_SESSIONS,
    HISTORY_SESSIONS,
    SAMPLE_UNIVERSE,
)
from market_pipeline.errors import MarketPipelineError

log = logging.getLogger(__name__)

GROUP_ID = "per_symbol"
#: Indicator rows the indicator gate and the signal rules read per symbol (SMA200's warm-up
#: plus the longest rule lookback, with room).
INDICATOR_WINDOW = 260
TAIL_TASKS = ("quorum_gate", "score_universe", "publish_cache", "verify_cache")
SYMBOL_TASKS = (
    "ingest_bars",
    "validate_bars",
    "compute_indicators",
    "validate_indicators",
    "generate_signals",
)


class QuorumError(MarketPipelineError):
    """Too few symbols made it through the per-symbol chain to score the day."""

    kind = "upstream"


class RunHealthError(MarketPipelineError):
    """Some symbols failed: the day is red even though the good ones were published."""

    kind = "upstream"
    #: It only restates failures the DLQ already holds; the callback records no row for it.
    restates_dlq = True


# --------------------------------------------------------------------------- helpers


def _accounted(body):
    """Log the body's CPU and wall seconds when it ends: ``cpu: X s CPU in Y s wall``.

    CPU is this process's only (not Postgres's); the gap to wall is waiting — for the
    database, the source, or a core on a busy worker. ``bench/common.py`` reads these lines.
    """

    @functools.wraps(body)
    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return body(*args, **kwargs)
        finally:
            log.info(
                "cpu: %.3f s CPU in %.3f s wall (%s)",
                time.process_time() - cpu,
                time.perf_counter() - wall,
                body.__name__,
            )

    return timed


def trade_date(context) -> date:
    """The session this run stands for (see ``calendar.session_for_interval``)."""
    return calendar.session_for_interval(
        context["data_interval_start"], context["data_interval_end"], var("market_exchange")
    )


def _db():
    return MarketDbHook().get_conn()


def _label(context, symbols: list[str]) -> None:
    """Put the chunk in the task's context: map_index_template and the DLQ callbacks read it."""
    from airflow.sdk import get_current_context

    from market_pipeline.chunks import chunk_label

    label = chunk_label(symbols)
    runtime = get_current_context()
    for ctx in (context, runtime):  # the callable gets a copy; the runtime keeps the original
        ctx["symbol"] = label
        ctx["symbols"] = list(symbols)


def make_source():
    """The bar source named by the ``market_source`` Variable."""
    name = var("market_source")
    if name == "synthetic":
        from market_pipeline.sources.synthetic import SyntheticSource

        return SyntheticSource(
            exchange=var("market_exchange"),
            defects=SyntheticSource.parse_defects(var("market_synthetic_defects")),
        )
    from market_pipeline.sources.registry import make_source as _make
    from market_pipeline.sources.registry import vendor_settings_from_connection

    options = {}
    if name != "file_drop":
        from airflow.sdk import BaseHook

        from market_pipeline.config import SOURCE_CONN_ID

        conn = BaseHook.get_connection(SOURCE_CONN_ID)
        options = vendor_settings_from_connection(
            host=conn.host,
            password=conn.password,
            schema=conn.schema,
            port=conn.port,
            extra=conn.extra_dejson,
        )
    return _make(name, path=var("market_source_path") or None, **options)


def _read_universe_setting() -> list[str]:
    raw = var("market_universe").strip()
    if not raw:
        return list(SAMPLE_UNIVERSE)
    if "," not in raw and ("/" in raw or raw.endswith((".txt", ".csv"))):
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"market_universe names a file that does not exist: {raw}")
        lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
        return [line.strip() for line in lines if line.strip()]
    return [s.strip() for s in raw.split(",")]


# --------------------------------------------------------------------------- head


@_accounted
def universe(context) -> list[list[str]]:
    """Apply pending migrations, sync the universe setting into ``symbols``; return its chunks.

    The sorted active symbols cut into chunks of ``market_symbols_per_task`` (one symbol per
    chunk by default): one map index of the per-symbol chain per chunk.
    """
    from market_pipeline import migrate
    from market_pipeline.chunks import chunk_symbols

    conn = _db()
    try:
        # Migrations first: a rejected universe must still find the DLQ table to land in.
        applied = migrate.apply(conn)
        if applied:
            log.info("applied migrations %s", applied)
        symbols = store.validate_symbols(_read_universe_setting())
        store.sync_symbols(conn, symbols)
        active = store.active_symbols(conn)
    finally:
        conn.close()
    per_task = int_var("market_symbols_per_task")
    chunks = chunk_symbols(active, per_task, max_chunks=_max_map_length())
    log.info(
        "universe for %s: %d symbols in %d map indexes (%d per task)",
        trade_date(context),
        len(active),
        len(chunks),
        per_task,
    )
    return chunks


def _max_map_length() -> int | None:
    try:
        from airflow.sdk.configuration import conf

        return conf.getint("core", "max_map_length")
    except Exception:  # pragma: no cover - outside Airflow: no limit to check
        return None


# --------------------------------------------------------------------------- per symbol


def _fetch_window(last: date | None, day: date, exchange: str) -> tuple[date, date]:
    """(session after the last clean one, D]; a symbol with no clean bar gets its history."""
    if last is None:
        history = int_var("market_history_sessions") or HISTORY_SESSIONS
        return calendar.previous_sessions(day, history, exchange)[0], day
    return calendar.next_session(last, exchange), day


def _check_one_bar_per_session(bars, symbol: str, day: date) -> None:
    """A payload with two bars for one session cannot be versioned: reject it as the source's."""
    from market_pipeline.errors import PermanentSourceError

    duplicated = bars["trade_date"].duplicated(keep=False)
    if duplicated.any():
        dates = sorted({d.isoformat() for d in bars.loc[duplicated, "trade_date"]})
        raise PermanentSourceError(
            f"expected one bar per session from the source, found duplicates for "
            f"{', '.join(dates[:5])}",
            symbol=symbol,
            session=day,
            cause="duplicate bars",
        )


def fetch_and_append(
    conn, symbol: str, day: date, context, source, last_clean: date | None
) -> dict:
    """Fetch (``last_clean``, D] from the source, append to raw, audit the attempt.

    ``last_clean`` is the symbol's last clean session before D (a chunk reads all of its
    symbols' in one query: ``store.last_clean_sessions``).
    """
    exchange = var("market_exchange")
    start, end = _fetch_window(last_clean, day, exchange)
    ti = context["ti"]
    started = time.perf_counter()
    try:
        bars = source.fetch(symbol, start, end)
        _check_one_bar_per_session(bars, symbol, day)
    except Exception as exc:
        if conn.closed:
            raise
        conn.rollback()
        store.record_fetch(
            conn,
            symbol=symbol,
            window_start=start,
            window_end=end,
            source=source.name,
            run_id=ti.run_id,
            try_number=ti.try_number,
            outcome="error",
            latency_ms=(time.perf_counter() - started) * 1000,
            error_kind=failure_kind(exc),
            error_message=str(exc),
        )
        raise
    latency = (time.perf_counter() - started) * 1000
    appended = store.append_raw_bars(
        conn,
        symbol,
        bars,
        source=source.name,
        run_id=ti.run_id,
        fetched_at=datetime.now(UTC),
    )
    delivered = bool(len(bars)) and (bars["trade_date"] == day).any()
    store.record_fetch(
        conn,
        symbol=symbol,
        window_start=start,
        window_end=end,
        source=source.name,
        run_id=ti.run_id,
        try_number=ti.try_number,
        outcome="ok" if delivered else "not_delivered",
        rows_fetched=len(bars),
        rows_appended=appended,
        latency_ms=latency,
    )
    return {
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "fetched": len(bars),
        "appended": appended,
        "delivered": bool(delivered),
    }


@_accounted
def ingest_bars(symbols: list[str], context) -> dict:
    """Fetch each symbol's missing sessions and append them to the raw layer."""
    _label(context, symbols)
    day = trade_date(context)
    chunk = chunking.is_chunk(symbols)
    conn = _db()
    try:
        source = make_source()
        last_clean = store.last_clean_sessions(conn, symbols, day)
        out = chunking.run_each(
            symbols,
            lambda s: fetch_and_append(conn, s, day, context, source, last_clean[s]),
            conn=conn,
            chunk=chunk,
        )
        chunking.settle(out, symbols, context, conn, day=day)
    finally:
        conn.close()
    return chunking.output(day, out)


def _late_grace_over(context) -> bool:
    """True once a chunk's raw gate has waited the grace period for its late symbols."""
    ti = context["ti"]
    first = ti.get_first_reschedule_date(context)
    if first is None:
        return False
    timeout = getattr(context["task"], "timeout", None)
    timeout = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout
    grace = float_var("market_late_grace_seconds")
    if timeout:
        grace = min(grace, 0.8 * float(timeout))
    waited = (datetime.now(UTC) - first).total_seconds()
    return waited >= grace


@_accounted
def validate_bars(symbols: list[str], ingested: dict, context):
    """Gate the raw bars: wait for D (re-fetching), fail on critical rules, else promote.

    Returns ``None`` while D is not delivered (the sensor pokes again), else the XCom dict.
    A chunk waits for its late symbols up to ``market_late_grace_seconds``, then records them
    "not_delivered" and gates the rest; one GX run validates the whole chunk.
    """
    from market_pipeline import acks, quality
    from market_pipeline.errors import NotDeliveredError

    _label(context, symbols)
    day = trade_date(context)
    exchange = var("market_exchange")
    ti = context["ti"]
    chunk = chunking.is_chunk(symbols)
    live = list(ingested["symbols"])
    starts = {s: date.fromisoformat(ingested["results"][s]["window_start"]) for s in live}
    conn = _db()
    try:
        source = None
        # One query per chunk for every read below; the writes stay one symbol at a time.
        windows = store.latest_raw_bars_many(conn, {s: (starts[s], day) for s in live})

        def raw_with_bar(symbol: str):
            nonlocal source
            raw = windows[symbol]
            if not quality.has_bar(raw, day):
                source = source or make_source()
                last_clean = store.last_clean_session(conn, symbol, day)
                fetched = fetch_and_append(conn, symbol, day, context, source, last_clean)
                raw = store.latest_raw_bars(conn, symbol, starts[symbol], day)
                if not quality.has_bar(raw, day):
                    log.info("%s: bar for %s not delivered yet (%s)", symbol, day, fetched)
            return raw

        out = chunking.run_each(live, raw_with_bar, conn=conn, chunk=chunk)
        late = sorted(s for s, raw in out.ok.items() if not quality.has_bar(raw, day))
        if late:
            if not chunk or not _late_grace_over(context):
                log.info(
                    "waiting for %d symbol(s) not delivered for %s: %s",
                    len(late),
                    day,
                    ", ".join(late[:20]),
                )
                return None
            for s in late:
                out.fail(
                    s,
                    NotDeliveredError(
                        f"expected the bar for {day} within the late grace period, found none",
                        symbol=s,
                        session=day,
                    ),
                )
        raws = dict(out.ok)
        befores = {s: calendar.previous_session(starts[s], exchange) for s in sorted(raws)}
        contexts = store.clean_history_many(conn, befores, GATE_CONTEXT_SESSIONS)
        # Operator acknowledgements (market_pipeline.acks) for the sessions checked here.
        acked = acks.active_rules_many(conn, sorted(raws), None, day)  # cut per symbol below

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

        inputs = chunking.run_each(sorted(raws), gate_input, conn=conn, chunk=chunk)
        out.absorb(inputs)
        results = {}
        if inputs.ok:
            results = quality.validate_bars_many(
                {s: checked for s, (checked, _) in inputs.ok.items()},
                trade_date=day,
                exchange=exchange,
                max_move=float_var("market_max_move"),
                acknowledged={s: ack for s, (_, ack) in inputs.ok.items()},
            )

        def promote(symbol: str) -> dict:
            result = results[symbol]
            record = _record(result, ti)
            report = write_gate_report(result, None if chunk else context)
            if not result.success:
                store.record_validation(conn, record)
                result.raise_for_failure()
            promoted = store.promote_clean_bars(conn, symbol, raws[symbol], record)
            return {
                "window_start": starts[symbol].isoformat(),
                "promoted": promoted,
                "warnings": list(result.warnings),
                "report": str(report) if report else None,
            }

        promoted = chunking.run_each(sorted(results), promote, conn=conn, chunk=chunk)
        out.absorb(promoted)
        out.ok = dict(promoted.ok)
        if chunk and results:
            write_chunk_report(list(results.values()), symbols, context)
        chunking.settle(out, symbols, context, conn, day=day)
    finally:
        conn.close()
    return chunking.output(day, out, ingested.get("failed"))


def report_dir() -> Path:
    """Where gate reports go: ``MARKET_REPORT_DIR``, else ``$AIRFLOW_HOME/reports``."""
    configured = os.environ.get("MARKET_REPORT_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "reports"


def report_url(path: Path) -> str:
    """The report's URL: under ``MARKET_REPORT_BASE_URL`` when set, else a file:// URI."""
    base = os.environ.get("MARKET_REPORT_BASE_URL")
    if base:
        return f"{base.rstrip('/')}/{path.relative_to(report_dir()).as_posix()}"
    return path.resolve().as_uri()


def write_gate_report(result, context=None) -> Path | None:
    """Write one gate verdict as a self-contained HTML page, log where it is and link it.

    ``<report_dir>/market_daily/<trade_date>/gx/<gate>_<symbol>.html``; a rerun replaces
    it. With a task ``context`` its URL is pushed as the XCom the task's "GX report" extra
    link shows. A report that cannot be written is logged, never raised: the verdict stands.
    """
    return _write_report([result], result.symbol, context)


def write_chunk_report(results: list, symbols: list[str], context) -> Path | None:
    """One page with every verdict of a chunk's gate (``<gate>_FIRST..LAST.html``), linked."""
    from market_pipeline.chunks import chunk_label

    return _write_report(results, chunk_label(symbols), context)


def _write_report(results: list, label: str, context) -> Path | None:
    from market_pipeline.report import render_html

    first = results[0]
    path = (
        report_dir() / DAG_ID / first.trade_date.isoformat() / "gx" / f"{first.gate}_{label}.html"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{first.gate} gate: {label} on {first.trade_date.isoformat()}"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(render_html(results, title=title), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        log.exception("could not write the %s gate report to %s", first.gate, path)
        return None
    failed = sum(not r.success for r in results)
    verdict = ("FAIL" if failed else "pass") if len(results) == 1 else f"{failed} failed"
    log.info("GX report (%s gate, %s, %s): %s", first.gate, label, verdict, path)
    if context is not None:
        from market_airflow.links import GX_REPORT_XCOM_KEY

        context["ti"].xcom_push(key=GX_REPORT_XCOM_KEY, value=report_url(path))
    return path


def _concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)


def _record(result, ti) -> store.ValidationRecord:
    return store.ValidationRecord(
        gate=result.gate,
        symbol=result.symbol,
        trade_date=result.trade_date,
        suite_name=result.suite_name,
        suite_version=result.suite_version,
        success=result.success,
        critical_failures=result.critical_failures,
        warnings=result.warnings,
        acknowledged=result.acknowledged,
        result=result.result,
        run_id=ti.run_id,
        try_number=ti.try_number,
    )


@_accounted
def compute_indicators(symbols: list[str], validated: dict, context) -> dict:
    """Recompute indicators over the trailing window; upsert the sessions promoted this run."""
    from market_pipeline import indicators

    _label(context, symbols)
    day = trade_date(context)
    chunk = chunking.is_chunk(symbols)
    conn = _db()

    def compute(symbol: str) -> dict:
        history = histories[symbol]
        if history.empty or history["trade_date"].iloc[-1] != day:
            raise MarketPipelineError(
                f"expected a clean bar for {day} before computing indicators, found "
                f"{'none' if history.empty else history['trade_date'].iloc[-1]}",
                symbol=symbol,
                session=day,
            )
        frame = indicators.compute_frame(history)
        start = date.fromisoformat(validated["results"][symbol]["window_start"])
        rows = store.upsert_indicators(
            conn, symbol, frame[frame["trade_date"] >= start], indicators.INDICATOR_COLUMNS
        )
        return {"rows": rows, "window_start": start.isoformat()}

    try:
        live = validated["symbols"]
        histories = store.clean_history_many(conn, dict.fromkeys(live, day), HISTORY_SESSIONS)
        out = chunking.run_each(live, compute, conn=conn, chunk=chunk)
        chunking.settle(out, symbols, context, conn, day=day)
    finally:
        conn.close()
    return chunking.output(day, out, validated.get("failed"))


def indicator_gate_window(computed: dict, day: date) -> int:
    """Indicator rows per symbol the indicator gate reads: the sessions written this run
    (from the earliest ``window_start`` of the chunk to D) plus ``GATE_CONTEXT_SESSIONS``
    earlier ones; ``INDICATOR_WINDOW`` when the upstream XCom does not say (an older run)."""
    starts = [r.get("window_start") for r in computed.get("results", {}).values()]
    if not starts or None in starts:
        return INDICATOR_WINDOW
    oldest = min(date.fromisoformat(s) for s in starts)
    written = calendar.sessions_apart(oldest, day, var("market_exchange")) + 1
    return max(1, written) + GATE_CONTEXT_SESSIONS


@_accounted
def validate_indicators(symbols: list[str], computed: dict, context) -> dict:
    """Gate the day's indicators (present, fresh, no NaN after warm-up, in range)."""
    from market_pipeline import indicators, quality

    _label(context, symbols)
    day = trade_date(context)
    chunk = chunking.is_chunk(symbols)
    conn = _db()
    try:
        live = computed["symbols"]
        frames = store.indicator_history_many(
            conn, live, day, indicator_gate_window(computed, day), indicators.INDICATOR_COLUMNS
        )
        counts = store.clean_session_counts(conn, live, day)
        out = chunking.run_each(live, lambda s: (frames[s], counts[s]), conn=conn, chunk=chunk)
        results = {}
        if out.ok:
            results = quality.validate_indicators_many(
                {s: frame for s, (frame, _) in out.ok.items()},
                trade_date=day,
                exchange=var("market_exchange"),
                history_sessions={s: n for s, (_, n) in out.ok.items()},
            )

        # Every verdict of the chunk in one statement; a failed write fails (and retries)
        # the task, before any symbol is settled.
        store.record_validations(conn, [_record(r, context["ti"]) for r in results.values()])

        def check(symbol: str) -> dict:
            result = results[symbol]
            report = write_gate_report(result, None if chunk else context)
            result.raise_for_failure()
            return {"not_ready": dict(result.not_ready), "report": str(report) if report else None}

        checks = chunking.run_each(sorted(results), check, conn=conn, chunk=chunk)
        out.absorb(checks)
        out.ok = dict(checks.ok)
        if chunk and results:
            write_chunk_report(list(results.values()), symbols, context)
        chunking.settle(out, symbols, context, conn, day=day)
    finally:
        conn.close()
    return chunking.output(day, out, computed.get("failed"))


@_accounted
def generate_signals(symbols: list[str], checked: dict, context) -> dict:
    """Evaluate every signal rule on each symbol's indicators for D."""
    from market_pipeline import indicators, signals

    _label(context, symbols)
    day = trade_date(context)
    chunk = chunking.is_chunk(symbols)
    conn = _db()

    def evaluate(symbol: str) -> dict:
        results = signals.evaluate(frames[symbol], day)
        store.upsert_signals(conn, symbol, day, results)
        return {"signals": {r.rule: r.direction for r in results}}

    try:
        live = checked["symbols"]
        frames = store.indicator_history_many(
            conn, live, day, INDICATOR_WINDOW, indicators.INDICATOR_COLUMNS
        )
        out = chunking.run_each(live, evaluate, conn=conn, chunk=chunk)
        chunking.settle(out, symbols, context, conn, day=day)
    finally:
        conn.close()
    return chunking.output(day, out, checked.get("failed"))


# --------------------------------------------------------------------------- tail


def flatten(chunks: list[list[str]]) -> list[str]:
    """Every symbol of the run, in chunk order (sorted)."""
    return [s for chunk in chunks for s in chunk]


def symbol_states(chunks: list[list[str]], context, conn) -> dict[str, dict[str, str]]:
    """``{symbol: {stage: state}}`` for this run.

    A symbol takes its chunk's task-instance states; a symbol dropped inside a chunk that
    went on (an open DLQ row of this run) is "failed" at that stage and "upstream_failed"
    after it.
    """
    ti = context["ti"]
    states = ti.get_task_states(
        dag_id=ti.dag_id,
        run_ids=[ti.run_id],
        task_ids=[f"{GROUP_ID}.{t}" for t in SYMBOL_TASKS],
    ).get(ti.run_id, {})
    out: dict[str, dict[str, str]] = {s: {} for s in flatten(chunks)}
    for key, state in states.items():
        task_id, _, index = key.rpartition("_")
        if not index.isdigit() or int(index) >= len(chunks):
            continue
        for symbol in chunks[int(index)]:
            out[symbol][task_id.rsplit(".", 1)[-1]] = str(state) if state else "none"
    for row in _open_symbol_rows(conn, ti.run_id):
        symbol, stage = row["symbol"], row["stage"]
        if symbol not in out or stage not in SYMBOL_TASKS:
            continue
        if out[symbol].get(stage) != "success":
            continue  # the task itself failed: its state says so already
        out[symbol][stage] = "failed"
        for later in SYMBOL_TASKS[SYMBOL_TASKS.index(stage) + 1 :]:
            out[symbol][later] = "upstream_failed"
    return out


def _open_symbol_rows(conn, run_id: str) -> list[dict]:
    rows = store.dlq_open(conn, run_id=run_id).to_dict("records")
    return [r for r in rows if str(r["task_id"]).startswith(f"{GROUP_ID}.") and r["symbol"]]


@_accounted
def quorum_gate(chunks: list[list[str]], context) -> dict:
    """Let the tail go on when enough of the universe passed every stage; else fail fast."""
    symbols = flatten(chunks)
    conn = _db()
    try:
        states = symbol_states(chunks, context, conn)
    finally:
        conn.close()
    passed = sorted(s for s, st in states.items() if st.get("generate_signals") == "success")
    failed = sorted(set(symbols) - set(passed))
    quorum = float_var("market_quorum")
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
            session=trade_date(context),
        )
    return {"trade_date": trade_date(context).isoformat(), "passed": passed, "failed": failed}


@_accounted
def score_universe(quorum: dict, context) -> dict:
    """Score and rank the symbols that passed, cross-sectionally."""
    from market_pipeline import indicators, scoring

    day = trade_date(context)
    passed = quorum["passed"]
    conn = _db()
    try:
        latest = store.indicators_on(conn, day, indicators.INDICATOR_COLUMNS)
        latest = latest[latest["symbol"].isin(passed)].reset_index(drop=True)
        then = calendar.previous_sessions(
            day, scoring.MOMENTUM_SESSIONS + 1, var("market_exchange")
        )[0]
        latest["close_20"] = latest["symbol"].map(store.clean_closes_on(conn, then))
        sigs = store.signals_on(conn, day, passed)
        scores = scoring.score_universe(latest, sigs)
        count = store.replace_scores(conn, day, scores)
    finally:
        conn.close()
    top = scores.head(5)[["symbol", "score"]].to_dict("records")
    return {"trade_date": day.isoformat(), "scored": count, "top": top}


def _snapshots(conn, day: date) -> list[dict]:
    from market_pipeline import indicators

    scores = store.scores_on(conn, day)
    ind = store.indicators_on(conn, day, indicators.INDICATOR_COLUMNS).set_index("symbol")
    sigs = store.signals_on(conn, day, list(scores["symbol"]))
    by_symbol: dict[str, list[dict]] = {}
    for r in sigs.to_dict("records"):
        by_symbol.setdefault(r["symbol"], []).append(
            {k: r[k] for k in ("rule", "direction", "strength", "ready", "reasons")}
        )
    snaps = []
    for r in scores.to_dict("records"):
        row = ind.loc[r["symbol"]]
        snaps.append(
            {
                "symbol": r["symbol"],
                "trade_date": day.isoformat(),
                "close": float(row["close"]),
                "indicators": {
                    c: store.json_safe(float(row[c])) for c in indicators.INDICATOR_COLUMNS
                },
                "signals": by_symbol.get(r["symbol"], []),
                "score": float(r["score"]),
                "rank": int(r["rank"]),
                "percentile": float(r["percentile"]),
                "components": r["components"],
            }
        )
    return snaps


def _day_snapshots(day: date) -> list[dict]:
    """The day's snapshots from Postgres: what publish writes and verify compares against."""
    conn = _db()
    try:
        return _snapshots(conn, day)
    finally:
        conn.close()


@_accounted
def publish_cache(scored: dict, context) -> dict:
    """Publish the day's scores and snapshots to Redis, then flip the pointer atomically."""
    from market_pipeline import cache

    day = trade_date(context)
    snaps = _day_snapshots(day)
    client = MarketCacheHook().get_conn()
    try:
        manifest = cache.publish(
            client,
            trade_date=day,
            run_id=context["ti"].run_id,
            snapshots=snaps,
            ttl_seconds=int_var("market_cache_ttl_days") * 86400,
        )
    finally:
        client.close()
    return {
        "trade_date": day.isoformat(),
        "version": manifest.version,
        "symbol_count": manifest.symbol_count,
        "checksum": manifest.checksum,
        "pointer_moved": manifest.pointer_moved,
    }


@_accounted
def verify_cache(published: dict, context) -> dict:
    """Read back through the pointer and compare count and checksum with Postgres."""
    from market_pipeline import cache

    day = trade_date(context)
    snaps = _day_snapshots(day)
    client = MarketCacheHook().get_conn()
    try:
        manifest = cache.verify(
            client,
            expected_count=len(snaps),
            expected_checksum=cache.checksum(snaps),
            trade_date=day,
        )
    finally:
        client.close()
    return {"trade_date": day.isoformat(), "version": manifest.version, "verified": len(snaps)}


@_accounted
def run_health(chunks: list[list[str]], context) -> dict:
    """Record what no callback saw, and fail the run when any symbol failed."""
    ti = context["ti"]
    day = trade_date(context)
    symbols = flatten(chunks)
    index_of = {s: i for i, chunk in enumerate(chunks) for s in chunk}
    failed: dict[str, str] = {}
    conn = _db()
    try:
        states = symbol_states(chunks, context, conn)
        recorded = {r["symbol"] for r in _open_symbol_rows(conn, ti.run_id)}
        for symbol in symbols:
            # The first stage that did not succeed is the symbol's root cause.
            stage, state = next(
                (
                    (st, states[symbol].get(st))
                    for st in SYMBOL_TASKS
                    if states[symbol].get(st) in ("failed", "upstream_failed")
                ),
                (None, None),
            )
            if stage is None:
                continue
            failed[symbol] = stage
            if symbol in recorded:
                continue  # its failure callback (or its chunk) already wrote the row
            task_id = f"{GROUP_ID}.{stage}"
            kind = "upstream" if state == "upstream_failed" else "killed"
            store.dlq_record(
                conn,
                store.DlqEntry(
                    dag_id=ti.dag_id,
                    run_id=ti.run_id,
                    logical_date=context["dag_run"].logical_date,
                    trade_date=day,
                    task_id=task_id,
                    map_index=index_of[symbol],
                    symbol=symbol,
                    stage=stage,
                    try_number=0,
                    kind=kind,
                    error_class="TaskInstanceState",
                    error_message=f"{task_id}[{symbol}] ended {state} without a failure "
                    "callback (reconciled by run_health)",
                ),
            )
        # The per-run page (symbols × stages, scores, charts, DLQ), next to the GX reports.
        report = None
        try:
            from market_pipeline import run_report

            report = run_report.write(
                conn,
                day,
                report_dir() / DAG_ID / day.isoformat(),
                symbols=symbols,
                states=states,
                run_id=ti.run_id,
            )
            log.info("run report for %s: %s", day, report)
        except Exception:  # a report must never turn the day red on its own
            log.exception("could not write the run report for %s", day)
    finally:
        conn.close()
    # The tail's own failures (their callbacks wrote the DLQ rows): a day whose publish
    # failed is red even when every symbol passed.
    tail = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=list(TAIL_TASKS))
    broken_tail = sorted(
        t for t, st in tail.get(ti.run_id, {}).items() if str(st) in ("failed", "upstream_failed")
    )
    if failed or broken_tail:
        problems = []
        if failed:
            problems.append(
                f"{len(failed)} of {len(symbols)} symbols failed: "
                + ", ".join(f"{s} at {st}" for s, st in sorted(failed.items()))
            )
        if broken_tail:
            problems.append(f"tail did not complete: {', '.join(broken_tail)}")
        raise RunHealthError("; ".join(problems), session=day)
    return {
        "trade_date": day.isoformat(),
        "symbols": len(symbols),
        "failed": 0,
        "report": str(report) if report else None,
    }
