"""market_pipeline.run_report: the per-run page, rendered from a hand-built report."""

from __future__ import annotations

from datetime import date

from market_pipeline import run_report

STAGES = [s for s, _ in run_report.STAGES]


def _report() -> run_report.RunReport:
    passed = dict.fromkeys(STAGES, "passed")
    return run_report.RunReport(
        trade_date=date(2012, 9, 12),
        symbols=["AAPL", "SPY"],
        cells={
            "AAPL": {**passed, "validate_bars": "warned", "score": "#1"},
            "SPY": {
                **dict.fromkeys(STAGES, "—"),
                "ingest_bars": "passed",
                "validate_bars": "not delivered",
                "score": "—",
            },
        },
        notes={"AAPL": {"validate_bars": "max_close_move (acknowledged)"}, "SPY": {}},
        scores=[
            {
                "symbol": "AAPL",
                "rank": 1,
                "score": 1.5,
                "percentile": 100.0,
                "components": {"signal": 0.5, "weights": {"trend": 0.2}},
            }
        ],
        closes={"AAPL": [1.0, 2.0, 1.5], "SPY": []},
        charts={
            "AAPL": {
                "close": [1.0, 2.0, None, 3.0],
                "ema_21": [None, None, 1.5, 2.0],
                "sma_50": [None] * 4,
                "bb_upper": [None] * 4,
                "bb_lower": [None] * 4,
                "dates": ["2012-09-07", "2012-09-10", "2012-09-11", "2012-09-12"],
            }
        },
        dlq=[],
        acknowledged=[
            {
                "symbol": "AAPL",
                "gate": "bars",
                "rule": "max_close_move",
                "trade_date": date(2000, 9, 29),
                "acknowledged_by": "ops",
                "reason": "profit warning <b>",
            }
        ],
    )


def test_the_page_shows_each_symbols_stage_states_scores_chart_and_acknowledgements():
    report = _report()

    page = run_report.render(report)

    assert report.counts() == {"warned": 1, "not delivered": 1}
    assert '<td class="not-delivered">not delivered</td>' in page
    assert 'title="max_close_move (acknowledged)"' in page
    assert "<svg" in page and "#1 AAPL" in page
    assert "signal 0.50" in page and "weights" not in page
    assert "profit warning &lt;b&gt;" in page  # escaped
    assert "No DLQ rows for this session." in page


def test_a_sparkline_needs_two_points_and_colours_by_direction():
    assert run_report.sparkline([1.0]) == ""
    assert "#176f2c" in run_report.sparkline([1.0, 2.0])
    assert "#b00020" in run_report.sparkline([2.0, 1.0])
