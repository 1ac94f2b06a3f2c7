"""market_daily with no-op quality gates: the baseline of the gate-cost benchmark (issue 5).

The project's DAG file is built under the id ``market_daily_nogates`` and only the two gate
callables are swapped; everything else (ingest, indicators, signals, tail, callbacks, retry
policy, pools, the ``wait_for_bars`` sensor) is the real DAG's. The no-op gates still do the
data movement the pipeline needs (``validate_bars`` promotes the raw window to
``clean_bars``, with a stub verdict in the same transaction, as the real gate does), but no
GX, no context bars, no acknowledgements lookup and no HTML report.
"""

from __future__ import annotations

from bench.dags._loader import load_market_daily

DAG_ID = "market_daily_nogates"


def _stub_verdict(gate: str, symbol: str, t):
    """A passed verdict with no checks behind it (the served set needs one per gate)."""
    from market_pipeline import store

    return store.ValidationRecord(
        gate=gate,
        symbol=symbol,
        trade_date=t.session,
        suite_name="noop",
        suite_version="0",
        success=True,
        critical_failures=(),
        warnings=(),
        acknowledged=(),
        result={},
        run_id=t.attempt.run_id,
        try_number=t.attempt.try_number,
    )


def promote_without_checks(symbols: list[str], delivered: dict, **context) -> dict:
    """validate_bars without validation: promote every symbol's raw window as it is, in one
    transaction for the chunk (as the real gate writes its passed symbols)."""
    from datetime import date

    from market_airflow.runtime import SymbolTask

    from market_pipeline import store
    from market_pipeline.stages.outcome import Outcome

    with SymbolTask(context, symbols) as t:
        passed = delivered["symbols"]
        starts = {s: date.fromisoformat(delivered["results"][s]["window_start"]) for s in passed}
        raws = store.latest_raw_bars_many(t.conn, {s: (starts[s], t.session) for s in passed})
        promoted = store.promote_clean_bars_many(
            t.conn, {s: (raws[s], _stub_verdict("bars", s, t)) for s in passed}
        )
        out = Outcome(
            ok={
                s: {
                    "window_start": starts[s].isoformat(),
                    "promoted": promoted[s],
                    "warnings": [],
                    "report": None,
                }
                for s in passed
            }
        )
        return t.finish(out, delivered)


def pass_without_checks(symbols: list[str], computed: dict, **context) -> dict:
    """validate_indicators without validation: a stub passed verdict per symbol, in one
    statement (the served set is the symbols with both gates' passed verdicts)."""
    from market_airflow.runtime import SymbolTask

    from market_pipeline import store

    with SymbolTask(context, symbols) as t:
        passed = computed["symbols"]
        store.record_validations(t.conn, [_stub_verdict("indicators", s, t) for s in passed])
    results = {s: {"not_ready": {}, "report": None} for s in passed}
    return {**computed, "results": results}


market_daily_nogates = load_market_daily(DAG_ID, module_name="market_daily_nogates_src")
market_daily_nogates.get_task("per_symbol.validate_bars").python_callable = promote_without_checks
market_daily_nogates.get_task(
    "per_symbol.validate_indicators"
).python_callable = pass_without_checks
