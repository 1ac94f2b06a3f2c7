"""A self-contained HTML page of quality-gate results, one section per symbol.

Pure string building over :class:`~market_pipeline.quality.GateResult` objects (no GX import):
a summary table, then each symbol's expectations with severity, success and observed value.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from market_pipeline.quality import GateResult

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.pass{color:#176f2c;font-weight:600}.fail{color:#b00020;font-weight:600}
.warn{color:#8a5a00;font-weight:600}.ack{color:#555;font-style:italic}
tr.bad td{background:#fdecee}tr.warned td{background:#fff6e0}
small{color:#666}
"""


def _status(result: GateResult) -> tuple[str, str]:
    if not result.success:
        return "FAIL", "fail"
    if result.warnings:
        return "PASS with warnings", "warn"
    return "PASS", "pass"


def _cell(value: object) -> str:
    return f"<td>{escape(str(value))}</td>"


def _summary(results: list[GateResult]) -> str:
    rows = []
    for r in results:
        label, css = _status(r)
        rows.append(
            "<tr>"
            f'<td><a href="#{escape(_anchor(r))}">{escape(r.symbol)}</a></td>'
            + _cell(r.gate)
            + _cell(r.trade_date.isoformat())
            + f'<td class="{css}">{escape(label)}</td>'
            + _cell(", ".join(r.critical_failures) or "—")
            + _cell(", ".join(r.warnings) or "—")
            + _cell(", ".join(r.acknowledged) or "—")
            + "</tr>"
        )
    head = (
        "<tr><th>symbol</th><th>gate</th><th>session</th><th>status</th>"
        "<th>critical failures</th><th>warnings</th><th>acknowledged</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def anchor(gate: str, symbol: str, trade_date: date) -> str:
    """The id of one verdict's section on a page (``bars-IBM-2024-11-29``)."""
    return f"{gate}-{symbol}-{trade_date.isoformat()}"


def _anchor(result: GateResult) -> str:
    return anchor(result.gate, result.symbol, result.trade_date)


def _section(result: GateResult) -> str:
    label, css = _status(result)
    rows = []
    for row in result.result.get("expectations", []):
        ok = bool(row.get("success"))
        acked = bool(row.get("acknowledged"))
        severity = str(row.get("severity", ""))
        if ok:
            tr_class, outcome = "", '<span class="pass">pass</span>'
        elif acked:
            tr_class, outcome = "warned", '<span class="ack">failed (acknowledged)</span>'
        elif severity == "warning":
            tr_class, outcome = "warned", '<span class="warn">warning</span>'
        else:
            tr_class, outcome = "bad", '<span class="fail">FAILED</span>'
        expectation = str(row.get("expectation", ""))
        if row.get("column"):
            expectation += f" ({row['column']})"
        rows.append(
            f'<tr class="{tr_class}">'
            + _cell(row.get("rule", ""))
            + _cell(severity)
            + f"<td>{outcome}</td>"
            + _cell(expectation)
            + _cell(row.get("observed", ""))
            + "</tr>"
        )
    head = (
        "<tr><th>rule</th><th>severity</th><th>success</th>"
        "<th>expectation</th><th>observed</th></tr>"
    )
    not_ready = ""
    if result.not_ready:
        items = "".join(
            f"<li>{escape(col)}: {escape(reason)}</li>" for col, reason in result.not_ready.items()
        )
        not_ready = f"<p>Not ready (warm-up incomplete, not a failure):</p><ul>{items}</ul>"
    return (
        f'<h2 id="{escape(_anchor(result))}">{escape(result.symbol)} — {escape(result.gate)} '
        f'gate, {result.trade_date.isoformat()}: <span class="{css}">{escape(label)}</span></h2>'
        f"<p><small>suite {escape(result.suite_name)} v{escape(result.suite_version)}</small></p>"
        f"{not_ready}<table>{head}{''.join(rows)}</table>"
    )


def render_html(results: Iterable[GateResult], *, title: str) -> str:
    """A complete HTML document showing every result: summary first, then per symbol."""
    items = sorted(results, key=lambda r: (r.gate, r.symbol, r.trade_date))
    failed = sum(1 for r in items if not r.success)
    body = (
        f"<h1>{escape(title)}</h1>"
        f"<p>{len(items)} results, {failed} failed.</p>"
        + _summary(items)
        + "".join(_section(r) for r in items)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
