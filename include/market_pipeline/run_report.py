"""A one-page HTML report of one session's run: what a person looks at instead of SQL.

    python -m market_pipeline.run_report --trade-date 2012-09-12 [--out DIR] [--schema S]

For one session: every symbol × stage (passed / warned / stopped / waiting / not delivered /
upstream), a close sparkline per symbol, top and bottom scores, a small chart of close with
EMA 21, SMA 50 and the Bollinger band for the top-ranked symbols, the session's DLQ rows and
the acknowledgements the gates applied. Self-contained: charts are inline SVG (no plotting
library, no external files); links to the per-gate GX pages in ``gx/`` next to it when they
exist. ``run_health`` writes it to ``<report dir>/market_daily/<trade_date>/index.html``
with the task states of the run; the CLI derives states from the tables alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from html import escape
from pathlib import Path

from market_pipeline.config import DAG_ID, SCHEMA
from market_pipeline.stages.states import state_from_tables

STAGES = (
    ("ingest_bars", "ingest"),
    ("wait_for_bars", "delivery"),
    ("validate_bars", "raw gate"),
    ("compute_indicators", "indicators"),
    ("validate_indicators", "indicator gate"),
    ("generate_signals", "signals"),
)
#: Stages a symbol without rows is still waiting at (for its delivery); later ones show "—".
_DELIVERY = ("ingest_bars", "wait_for_bars", "validate_bars")
#: Task-instance state → the cell a person reads.
STATE_LABEL = {
    "success": "passed",
    "failed": "stopped",
    "upstream_failed": "upstream",
    "up_for_reschedule": "waiting",
    "up_for_retry": "waiting",
    "running": "waiting",
    "queued": "waiting",
    "scheduled": "waiting",
    "deferred": "waiting",
    "restarting": "waiting",
    "skipped": "skipped",
    "removed": "—",
    "none": "—",
}
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.2rem .45rem;text-align:left;vertical-align:middle}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.passed{background:#e5f5e9;color:#176f2c}.warned{background:#fff3d6;color:#8a5a00}
.stopped{background:#fdecee;color:#b00020;font-weight:600}.waiting{background:#e8f0fe}
.not-delivered{background:#fdecee;color:#8a1c00}.upstream{background:#f4f4f4;color:#777}
small{color:#666}.charts{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0}figcaption{font-size:.9rem;font-weight:600}
"""


@dataclass
class Grid:
    """One session's symbols × stages: a state in each cell, and why where there is a why."""

    trade_date: date
    symbols: list[str]
    cells: dict[str, dict[str, str]]
    notes: dict[str, dict[str, str]]


@dataclass
class RunReport(Grid):
    """Everything the page shows, gathered from Postgres (plus task states when known)."""

    scores: list[dict]
    closes: dict[str, list[float]]
    charts: dict[str, dict[str, list]]
    dlq: list[dict]
    acknowledged: list[dict]
    gx_links: dict[str, dict[str, str]] = field(default_factory=dict)
    run_id: str | None = None

    def counts(self) -> dict[str, int]:
        """How many symbols ended in each state at their last stage that ran."""
        out: dict[str, int] = {}
        for s in self.symbols:
            worst = _overall(self.cells[s])
            out[worst] = out.get(worst, 0) + 1
        return out


def _overall(cells: Mapping[str, str]) -> str:
    values = [cells[stage] for stage, _ in STAGES if stage in cells]
    for state in ("stopped", "not delivered", "upstream", "waiting", "warned"):
        if state in values:
            return state
    return "passed" if values and all(v == "passed" for v in values) else "incomplete"


def collect(
    conn,
    trade_date: date,
    *,
    schema: str = SCHEMA,
    symbols: Sequence[str] | None = None,
    states: Mapping[str, Mapping[str, str]] | None = None,
    run_id: str | None = None,
    chart_top: int = 3,
    chart_sessions: int = 120,
    sparkline_sessions: int = 60,
) -> RunReport:
    """Gather one session's report; ``states`` are ``{symbol: {stage: TI state}}`` if known."""
    from psycopg2 import sql

    from market_pipeline import store
    from market_pipeline.store.sql import records, table

    day = trade_date
    with conn.cursor() as cur:
        if symbols is None:
            symbols = store.active_symbols(conn, schema)
        symbols = list(symbols)
        reports = store.verdicts_on(conn, day, schema)
        dlq = store.dlq_on(conn, day, schema)
        have = {
            t: store.symbols_on(conn, t, day, schema)
            for t in ("raw_bars", "clean_bars", "indicators", "signals")
        }
        scores = store.scores_on(conn, day, schema=schema).to_dict("records")
        closes: dict[str, list[float]] = {s: [] for s in symbols}
        cur.execute(
            sql.SQL(
                # LATERAL + LIMIT: the last sessions of each symbol from its index, not a
                # window over every clean bar (~3 s at 5000 symbols x 620 sessions).
                """SELECT w.symbol, t.close FROM unnest(%s::text[]) AS w(symbol)
                   CROSS JOIN LATERAL (
                       SELECT trade_date, close FROM {} c
                       WHERE c.symbol = w.symbol AND c.trade_date <= %s
                       ORDER BY c.trade_date DESC LIMIT %s) t
                   ORDER BY w.symbol, t.trade_date"""
            ).format(table("clean_bars", schema)),
            (symbols, day, sparkline_sessions),
        )
        for s, close in cur.fetchall():
            closes[s].append(float(close))
        acknowledged = []
        for (gate, s), r in sorted(reports.items()):
            for rule in r["acknowledged"] or []:
                who = records(
                    conn,
                    sql.SQL(
                        """SELECT trade_date, acknowledged_by, acknowledged_at, reason
                           FROM {} WHERE symbol = %s AND rule = %s
                             AND gate = %s AND trade_date <= %s AND revoked_at IS NULL
                           ORDER BY trade_date DESC LIMIT 1"""
                    ).format(table("acknowledgements", schema)),
                    (s, rule, gate, day),
                )
                acknowledged.append(
                    {"symbol": s, "gate": gate, "rule": rule, **(who[0] if who else {})}
                )

    open_dlq = {(r["symbol"], r["stage"]): r for r in dlq if r["resolved_at"] is None}
    cells: dict[str, dict[str, str]] = {}
    notes: dict[str, dict[str, str]] = {}
    ranked = {r["symbol"]: r for r in scores}
    for s in symbols:
        row, note = {}, {}
        st = (states or {}).get(s)
        for stage, _label in STAGES:
            if st is not None:
                value = STATE_LABEL.get(str(st.get(stage, "none")), str(st.get(stage)))
            else:
                value = state_from_tables(s, stage, have, reports, open_dlq) or (
                    "waiting" if stage in _DELIVERY else "—"
                )
            failure = open_dlq.get((s, stage))
            if value == "stopped" and failure and failure["kind"] == "not_delivered":
                value = "not delivered"
            gate = {"validate_bars": "bars", "validate_indicators": "indicators"}.get(stage)
            rep = reports.get((gate, s)) if gate else None
            if value == "passed" and rep and (rep["warning_failures"] or rep["acknowledged"]):
                value = "warned"
                acked = rep["acknowledged"] or []
                note[stage] = ", ".join(
                    f"{rule} (acknowledged)" if rule in acked else rule
                    for rule in rep["failed_rules"]
                )
            elif value == "stopped" and failure:
                note[stage] = f"{failure['kind']}: {_error(failure)[:160]}"
            elif value == "stopped" and rep and not rep["success"]:
                note[stage] = ", ".join(rep["failed_rules"])
            row[stage] = value
        row["score"] = f"#{ranked[s]['rank']}" if s in ranked else "—"
        cells[s], notes[s] = row, note

    from market_pipeline.indicators import INDICATOR_COLUMNS

    charts = {}
    top = [r["symbol"] for r in scores[:chart_top]]
    histories = store.indicator_history_many(
        conn, top, day, chart_sessions, INDICATOR_COLUMNS, schema=schema
    )
    for symbol, frame in histories.items():
        charts[symbol] = {
            c: [None if v != v else float(v) for v in frame[c]]  # NaN -> None
            for c in ("close", "ema_21", "sma_50", "bb_upper", "bb_lower")
        } | {"dates": [d.isoformat() for d in frame["trade_date"]]}
    return RunReport(
        trade_date=day,
        symbols=symbols,
        cells=cells,
        notes=notes,
        scores=scores,
        closes=closes,
        charts=charts,
        dlq=dlq,
        acknowledged=acknowledged,
        run_id=run_id,
    )


# --------------------------------------------------------------------------- SVG


def _path(values: Sequence[float | None], lo: float, hi: float, w: float, h: float) -> str:
    n = len(values)
    span = (hi - lo) or 1.0
    parts, pen = [], "M"
    for i, v in enumerate(values):
        if v is None:
            pen = "M"
            continue
        x = 0 if n == 1 else i * w / (n - 1)
        y = h - (v - lo) / span * h
        parts.append(f"{pen}{x:.1f},{y:.1f}")
        pen = "L"
    return " ".join(parts)


def sparkline(values: Sequence[float], width: int = 120, height: int = 24) -> str:
    """An inline SVG sparkline of ``values`` (green if up over the span, red if down)."""
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    colour = "#176f2c" if values[-1] >= values[0] else "#b00020"
    d = _path(values, lo, hi, width, height - 2)
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 -1 {width} {height}" '
        f'role="img"><path d="{d}" fill="none" stroke="{colour}" stroke-width="1.2"/></svg>'
    )


def chart(series: Mapping[str, list], width: int = 480, height: int = 170) -> str:
    """Close with EMA 21, SMA 50 and the Bollinger band, as an inline SVG."""
    lines = {
        "bb_upper": ("#9bb7e0", "2,2"),
        "bb_lower": ("#9bb7e0", "2,2"),
        "sma_50": ("#e08a00", ""),
        "ema_21": ("#7a3fb0", ""),
        "close": ("#222", ""),
    }
    values = [v for c in lines for v in series.get(c, []) if v is not None]
    if len(series.get("close", [])) < 2 or not values:
        return "<p><small>not enough history to chart</small></p>"
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    plot_h = height - 30
    paths = "".join(
        f'<path d="{_path(series[c], lo, hi, width, plot_h)}" fill="none" stroke="{colour}" '
        f'stroke-width="{1.6 if c == "close" else 1}"'
        + (f' stroke-dasharray="{dash}"' if dash else "")
        + "/>"
        for c, (colour, dash) in lines.items()
        if c in series
    )
    dates = series.get("dates") or []
    legend = "close · EMA 21 · SMA 50 · Bollinger 20/2"
    axis = (
        f'<text x="0" y="{height - 4}" font-size="10" fill="#666">{escape(dates[0])}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="10" fill="#666" text-anchor="end">'
        f"{escape(dates[-1])}</text>"
        f'<text x="{width / 2}" y="{height - 4}" font-size="10" fill="#666" '
        f'text-anchor="middle">{legend}</text>'
        f'<text x="2" y="10" font-size="10" fill="#666">{hi:.2f}</text>'
        f'<text x="2" y="{plot_h - 2}" font-size="10" fill="#666">{lo:.2f}</text>'
        if dates
        else ""
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<rect width="{width}" height="{plot_h}" fill="#fafafa"/>{paths}{axis}</svg>'
    )


# --------------------------------------------------------------------------- HTML


def _error(row: Mapping) -> str:
    from market_pipeline.recovery import error_text

    return error_text(row.get("error_class"), row.get("error_message"))


def _td(value: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(value))}</td>"


def render(report: RunReport) -> str:
    """The page as one HTML string."""
    day = report.trade_date.isoformat()
    head = "".join(f"<th>{escape(label)}</th>" for _, label in STAGES)
    rows = []
    for s in report.symbols:
        cells = []
        for stage, _ in STAGES:
            value = report.cells[s][stage]
            note = report.notes[s].get(stage, "")
            link = report.gx_links.get(s, {}).get(stage)
            text = escape(value) + (f' <a href="{escape(link)}">GX</a>' if link else "")
            title = f' title="{escape(note)}"' if note else ""
            cls = value.replace(" ", "-")
            cells.append(f'<td class="{cls}"{title}>{text}</td>')
        rows.append(
            f"<tr><th>{escape(s)}</th>{''.join(cells)}{_td(report.cells[s]['score'])}"
            f"<td>{sparkline(report.closes.get(s, []))}</td></tr>"
        )
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts().items()))

    def score_rows(rows: list[dict]) -> str:
        out = []
        for r in rows:
            comps = r["components"] if isinstance(r["components"], dict) else {}
            detail = ", ".join(
                f"{k} {v:.2f}" for k, v in comps.items() if isinstance(v, int | float)
            )
            score = f"{float(r['score']):.3f}"
            pct = f"{float(r['percentile']):.0f}"
            out.append(
                f"<tr>{_td(r['rank'], 'num')}{_td(r['symbol'])}{_td(score, 'num')}"
                f"{_td(pct, 'num')}{_td(detail)}</tr>"
            )
        return "".join(out)

    n = len(report.scores)
    top = report.scores[: min(5, n)]
    bottom = report.scores[max(len(top), n - 5) :]
    scores_html = (
        "<table><tr><th>rank</th><th>symbol</th><th>score</th><th>percentile</th>"
        "<th>components</th></tr>"
        + score_rows(top)
        + (
            '<tr><td colspan="5"><small>bottom</small></td></tr>' + score_rows(bottom)
            if bottom
            else ""
        )
        + "</table>"
        if report.scores
        else "<p>No scores for this session (the tail did not run or nothing passed).</p>"
    )
    charts = "".join(
        f"<figure><figcaption>#{i + 1} {escape(s)}</figcaption>{chart(series)}</figure>"
        for i, (s, series) in enumerate(report.charts.items())
    )
    dlq_rows = "".join(
        "<tr>"
        + _td(r["symbol"] or "—")
        + _td(r["stage"])
        + _td(r["kind"])
        + _td(r["failures"], "num")
        + _td("open" if r["resolved_at"] is None else f"resolved {r['resolved_at']:%H:%M:%S}")
        + _td(_error(r)[:300])
        + "</tr>"
        for r in report.dlq
    )
    dlq_html = (
        "<table><tr><th>symbol</th><th>stage</th><th>kind</th><th>failures</th><th>state</th>"
        f"<th>message</th></tr>{dlq_rows}</table>"
        if report.dlq
        else "<p>No DLQ rows for this session.</p>"
    )
    ack_rows = "".join(
        "<tr>"
        + _td(a["symbol"])
        + _td(f"{a['gate']}/{a['rule']}")
        + _td(a.get("trade_date", "—"))
        + _td(a.get("acknowledged_by", "—"))
        + _td(a.get("reason", "—"))
        + "</tr>"
        for a in report.acknowledged
    )
    ack_html = (
        "<table><tr><th>symbol</th><th>rule</th><th>session acknowledged</th><th>by</th>"
        f"<th>reason</th></tr>{ack_rows}</table>"
        if report.acknowledged
        else "<p>None applied.</p>"
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    run = f" · run <code>{escape(report.run_id)}</code>" if report.run_id else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{DAG_ID} {day}</title>
<style>{_CSS}</style></head><body>
<h1>{DAG_ID} · session {day}</h1>
<p><small>generated {generated}{run}</small></p>
<p>{len(report.symbols)} symbols: {escape(counts) or "none"}.</p>
<h2>Symbols × stages</h2>
<table><tr><th>symbol</th>{head}<th>score</th><th>close, last 60</th></tr>{"".join(rows)}</table>
<h2>Scores</h2>{scores_html}
<h2>Top-ranked: close and indicators</h2><div class="charts">{charts or "<p>—</p>"}</div>
<h2>Dead-letter queue</h2>{dlq_html}
<h2>Acknowledgements applied</h2>{ack_html}
</body></html>
"""


def write(
    conn,
    trade_date: date,
    out_dir: Path,
    *,
    schema: str = SCHEMA,
    symbols: Sequence[str] | None = None,
    states: Mapping[str, Mapping[str, str]] | None = None,
    run_id: str | None = None,
    chunks: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` (atomically) and return its path.

    Each gate cell links the symbol's own GX page in ``out_dir/gx``, else its section of its
    chunk's page (``chunks``: the run's map indexes' symbols).
    """
    from market_pipeline.chunks import chunk_label
    from market_pipeline.report import anchor

    report = collect(conn, trade_date, schema=schema, symbols=symbols, states=states, run_id=run_id)
    gx = out_dir / "gx"
    pages = {p.name for p in gx.iterdir()} if gx.is_dir() else set()  # one listing, no stats
    label = {s: chunk_label(c) for c in chunks or () if len(c) > 1 for s in c}
    for s in report.symbols:
        for stage, gate in (("validate_bars", "bars"), ("validate_indicators", "indicators")):
            if f"{gate}_{s}.html" in pages:
                report.gx_links.setdefault(s, {})[stage] = f"gx/{gate}_{s}.html"
            elif s in label and f"{gate}_{label[s]}.html" in pages:
                page = f"gx/{gate}_{label[s]}.html#{anchor(gate, s, trade_date)}"
                report.gx_links.setdefault(s, {})[stage] = page
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(report), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    from market_pipeline import store
    from market_pipeline.connections import db_dsn

    parser = argparse.ArgumentParser(description="Write one session's run report (HTML).")
    parser.add_argument("--trade-date", required=True, type=date.fromisoformat)
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default: ./reports/market_daily/<date>)"
    )
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--json", action="store_true", help="print the cells as JSON too")
    args = parser.parse_args(argv)
    out = args.out or Path("reports") / DAG_ID / args.trade_date.isoformat()
    conn = store.connect(args.dsn or db_dsn())
    try:
        path = write(conn, args.trade_date, out, schema=args.schema)
        if args.json:
            print(json.dumps(collect(conn, args.trade_date, schema=args.schema).cells, indent=1))
    finally:
        conn.close()
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
