"""market_pipeline.report: the self-contained HTML page of gate results."""

from __future__ import annotations

from datetime import date

from market_pipeline.quality import GateResult
from market_pipeline.report import render_html

D = date(2000, 9, 29)


def gate_result(symbol: str, *, critical=(), warnings=(), acknowledged=(), rows=(), **kw):
    return GateResult(
        gate=kw.get("gate", "bars"),
        symbol=symbol,
        trade_date=D,
        suite_name="raw_bars",
        suite_version="1.0.0",
        success=not critical,
        critical_failures=tuple(critical),
        warnings=tuple(warnings),
        acknowledged=tuple(acknowledged),
        not_ready=kw.get("not_ready", {}),
        result={"expectations": list(rows)},
    )


def row(rule, *, success, severity="critical", observed="0 unexpected", acknowledged=False):
    return {
        "rule": rule,
        "severity": severity,
        "success": success,
        "observed": observed,
        "acknowledged": acknowledged,
        "expectation": "expect_column_values_to_be_between",
        "column": "unexplained_move",
    }


def test_the_page_is_a_complete_html_document_with_the_title():
    html = render_html([gate_result("IBM")], title="Gates 2000-09-29")

    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<title>Gates 2000-09-29</title>" in html


def test_a_failed_symbol_shows_its_rule_severity_and_observed_value():
    failed = gate_result(
        "AAPL",
        critical=["max_close_move"],
        rows=[
            row("max_close_move", success=False, observed="1 unexpected rows: 2000-09-29: -0.52")
        ],
    )

    html = render_html([failed], title="t")

    assert "FAIL" in html and "max_close_move" in html and "critical" in html
    assert "2000-09-29: -0.52" in html


def test_a_passing_symbol_is_marked_pass():
    html = render_html([gate_result("IBM", rows=[row("not_null", success=True)])], title="t")

    assert ">PASS<" in html and "FAIL" not in html


def test_warnings_and_acknowledgements_are_labelled_as_such():
    warned = gate_result(
        "SPY",
        warnings=["stale_repeats", "max_close_move"],
        acknowledged=["max_close_move"],
        rows=[
            row("stale_repeats", success=False, severity="warning"),
            row("max_close_move", success=False, acknowledged=True),
        ],
    )

    html = render_html([warned], title="t")

    assert "PASS with warnings" in html
    assert "failed (acknowledged)" in html and ">warning<" in html


def test_not_ready_indicators_are_listed():
    young = gate_result("NEW", gate="indicators", not_ready={"sma_200": "needs 200 sessions"})

    html = render_html([young], title="t")

    assert "sma_200: needs 200 sessions" in html


def test_text_from_the_data_is_escaped():
    hostile = gate_result("<b>X</b>", rows=[row("schema", success=False, observed="<script>")])

    html = render_html([hostile], title="a & b")

    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>X</b>" not in html and "a &amp; b" in html


def test_every_symbol_gets_its_own_section_in_symbol_order():
    html = render_html([gate_result("MSFT"), gate_result("AAPL")], title="t")

    assert html.index('id="bars-AAPL-2000-09-29"') < html.index('id="bars-MSFT-2000-09-29"')
