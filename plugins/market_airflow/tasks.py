"""The market_daily tasks: each turns its context into a use case's arguments, calls it once
and returns its outcome as XCom. The flows live in ``market_pipeline.stages`` (one module per
task id); ``runtime`` holds what every task shares. The DAG imports this module inside each
task, never at parse time.
"""

from __future__ import annotations

from contextlib import closing

from market_airflow import runtime
from market_airflow.hooks import MarketCacheHook
from market_airflow.runtime import SymbolTask, accounted
from market_pipeline.stages import TAIL_TASKS


@accounted
def universe(context) -> list[list[str]]:
    from market_pipeline.stages.universe import universe

    settings = runtime.load_settings()
    with closing(runtime.connect()) as conn:
        session = runtime.session(context, settings)
        return universe(
            conn,
            session,
            settings,
            attempt=runtime.attempt(context),
            max_chunks=runtime.max_map_length(),
        )


@accounted
def ingest_bars(symbols: list[str], context) -> dict:
    from market_pipeline.stages.ingest_bars import ingest_bars

    with SymbolTask(context, symbols) as t:
        return t.run(ingest_bars, source=runtime.make_source(), attempt=t.attempt)


@accounted
def wait_for_bars(symbols: list[str], ingested: dict, context) -> dict | None:
    """``None`` while D is not delivered (the sensor pokes again), else the XCom."""
    from market_pipeline.stages.wait_for_bars import wait_for_bars

    with SymbolTask(context, symbols) as t:
        return t.run(
            wait_for_bars,
            ingested,
            windows=t.raw_windows(ingested, runtime.make_source),
            late_grace_over=lambda: runtime.late_grace_over(context, t.settings),
            where=runtime.delivery_location,
            label=t.label,
        )


@accounted
def validate_bars(symbols: list[str], delivered: dict, context) -> dict:
    from market_pipeline import store
    from market_pipeline.stages.validate_bars import validate_bars

    with SymbolTask(context, symbols) as t:
        gated = delivered["symbols"]
        # Run again (a retry, or a clear: Airflow counts a try either way), or a failed
        # verdict is stored (`airflow tasks test` keeps the try): ask the source again.
        if t.attempt.try_number > 1:
            again = set(gated)
        else:
            again = store.failed_verdicts(
                t.conn, "bars", gated, t.session, schema=t.settings.schema
            )
        return t.run(
            validate_bars,
            delivered,
            windows=t.raw_windows(delivered, runtime.make_source),
            reports=t.gate_reports(),
            ask_again=again,
            label=t.label,
        )


@accounted
def compute_indicators(symbols: list[str], validated: dict, context) -> dict:
    from market_pipeline.stages.compute_indicators import compute_indicators

    with SymbolTask(context, symbols) as t:
        return t.run(compute_indicators, validated, starts=runtime.window_starts(validated))


@accounted
def validate_indicators(symbols: list[str], computed: dict, context) -> dict:
    from market_pipeline.stages.validate_indicators import validate_indicators

    with SymbolTask(context, symbols) as t:
        starts = runtime.window_starts(computed)
        return t.run(
            validate_indicators,
            computed,
            starts=starts,
            attempt=t.attempt,
            reports=t.gate_reports(),
        )


@accounted
def generate_signals(symbols: list[str], checked: dict, context) -> dict:
    from market_pipeline.stages.generate_signals import generate_signals

    with SymbolTask(context, symbols) as t:
        return t.run(generate_signals, checked)


@accounted
def quorum_gate(chunks: list[list[str]], context) -> dict:
    from market_pipeline.stages.quorum_gate import quorum_gate

    settings = runtime.load_settings()
    with closing(runtime.connect()) as conn:
        return quorum_gate(
            conn,
            chunks,
            runtime.session(context, settings),
            settings,
            task_states=runtime.chain_states(context),
            attempt=runtime.attempt(context),
        )


@accounted
def score_universe(quorum: dict, context) -> dict:
    from market_pipeline.stages.score_universe import score_universe

    settings = runtime.load_settings()
    session = runtime.session(context, settings)
    with closing(runtime.connect()) as conn:
        return score_universe(conn, quorum["passed"], session, settings)


@accounted
def publish_cache(scored: dict, context) -> dict:
    from market_pipeline.stages.publish_cache import publish_cache

    settings = runtime.load_settings()
    session = runtime.session(context, settings)
    with closing(runtime.connect()) as conn, closing(MarketCacheHook().get_conn()) as client:
        return publish_cache(conn, client, session, settings, attempt=runtime.attempt(context))


@accounted
def verify_cache(published: dict, context) -> dict:
    from market_pipeline.stages.verify_cache import verify_cache

    settings = runtime.load_settings()
    session = runtime.session(context, settings)
    with closing(runtime.connect()) as conn, closing(MarketCacheHook().get_conn()) as client:
        return verify_cache(conn, client, session, settings)


@accounted
def run_health(chunks: list[list[str]], context) -> dict:
    from market_pipeline.stages.run_health import run_health

    settings = runtime.load_settings()
    session = runtime.session(context, settings)
    with closing(runtime.connect()) as conn:
        return run_health(
            conn,
            chunks,
            session,
            settings,
            task_states=runtime.chain_states(context),
            tail_states={t: s for (t, _), s in runtime.task_states(context, TAIL_TASKS).items()},
            attempt=runtime.attempt(context),
        )
