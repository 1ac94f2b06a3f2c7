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
    """validate_bars without validation: promote each symbol's raw window as it is."""
    from datetime import date

    from market_airflow.runtime import SymbolTask

    from market_pipeline import store
    from market_pipeline.stages.outcome import run_each

    with SymbolTask(context, symbols) as t:

        def promote(symbol: str) -> dict:
            start = date.fromisoformat(delivered["results"][symbol]["window_start"])
            raw = store.latest_raw_bars(t.conn, symbol, start, t.session)
            record = _stub_verdict("bars", symbol, t)
            promoted = store.promote_clean_bars(t.conn, symbol, raw, record)
            return {
                "window_start": start.isoformat(),
                "promoted": promoted,
                "warnings": [],
                "report": None,
            }

        out = run_each(delivered["symbols"], promote, conn=t.conn, chunk=t.chunk)
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
