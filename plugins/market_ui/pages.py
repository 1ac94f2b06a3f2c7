"""HTML of the Market health page (plain strings; every value escaped, every URL relative).

The page is shown in an iframe of the Airflow UI. Links to the plugin's own pages are
relative to ``<prefix>/``; links into Airflow's UI (a run, a task instance to clear) go one
level up and open in the top window (``target="_top"``), so they work behind a proxy prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from market_pipeline.health import GATES, GROUP_ID, STAGE_IDS, Serving, SessionHealth
from market_pipeline.run_report import STAGES

_CSS = """
body{font-family:system-ui,sans-serif;margin:1rem 1.5rem;color:#222}
table{border-collapse:collapse;margin:.4rem 0 1.2rem}
th,td{border:1px solid #ccc;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.passed,.success{background:#e5f5e9;color:#176f2c}.warned{background:#fff3d6;color:#8a5a00}
.stopped,.failed{background:#fdecee;color:#b00020;font-weight:600}
.waiting,.running,.queued{background:#e8f0fe}.not-delivered{background:#fdecee;color:#8a1c00}
.upstream,.not-run{background:#f4f4f4;color:#777}
code{background:#f6f6f6;padding:0 .2rem;font-size:.85rem}small{color:#666}
nav a{margin-right:1rem}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def airflow_run_url(dag_id: str, run_id: str) -> str:
    """The run's page in Airflow's UI, relative to the plugin's prefix."""
    return f"../dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def airflow_ti_url(dag_id: str, run_id: str, stage: str, map_index: int) -> str:
    """A mapped per-symbol task instance in Airflow's UI (where it is cleared)."""
    task = quote(f"{GROUP_ID}.{stage}", safe="")
    return f"{airflow_run_url(dag_id, run_id)}/tasks/{task}/mapped/{map_index}"


def gx_report_url(dag_id: str, run_id: str, stage: str, map_index: int) -> str:
    """The plugin's GX report of one gate task instance (relative to the prefix)."""
    query = urlencode(
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": f"{GROUP_ID}.{stage}",
            "map_index": map_index,
        }
    )
    return f"report/gx?{query}"


def health_page(
    *,
    dag_id: str,
    runs: Sequence[dict],
    health: SessionHealth | None,
    run: dict | None,
    serving: Serving | None,
    published_at: datetime | None,
    now: datetime,
) -> str:
    """The Market health page: serving version, recent sessions, then one session in full."""
    parts = ["<h1>Market health</h1>"]
    parts.append("<h2>Served from Redis</h2>")
    if serving is None:
        parts.append("<p>Nothing is published yet (no <code>latest</code> pointer).</p>")
    else:
        since = (now - published_at).total_seconds() if published_at else None
        parts.append(
            "<table><tr><th>version</th><th>session</th><th>symbols</th><th>published</th>"
            "<th>age since publish</th><th>age since session close</th><th>run</th></tr>"
            f"<tr><td><code>{escape(serving.version)}</code></td>"
            f"<td>{serving.trade_date.isoformat()}</td>"
            f'<td class="num">{serving.symbol_count}</td><td>{_ts(published_at)}</td>'
            f'<td id="served-age">{_age(since)}</td><td>{_age(serving.session_age_seconds)}</td>'
            f"<td><code>{escape(serving.run_id)}</code></td></tr></table>"
        )
    parts.append("<h2>Recent sessions</h2>")
    if not runs:
        parts.append(f"<p>No runs of {escape(dag_id)} yet.</p>")
    else:
        rows = []
        for r in runs:
            selected = " (shown below)" if run and r["run_id"] == run["run_id"] else ""
            rows.append(
                "<tr>"
                f"<td>{escape(r['trade_date'] or '—')}</td>"
                f'<td><a href="?{urlencode({"run_id": r["run_id"]})}">'
                f"{escape(r['run_id'])}</a>{selected}</td>"
                f'<td class="{escape(r["state"] or "")}">{escape(r["state"] or "—")}</td>'
                f"<td>{escape(r['run_type'])}</td><td>{_ts(r['start_date'])}</td>"
                f'<td class="num">{_age(r["duration"])}</td>'
                f'<td class="num">{r["open_dlq"]}</td>'
                f'<td><a href="{escape(airflow_run_url(dag_id, r["run_id"]))}" target="_top">'
                "open in Airflow</a></td></tr>"
            )
        parts.append(
            "<table><tr><th>session</th><th>run</th><th>state</th><th>type</th><th>started</th>"
            "<th>duration</th><th>open DLQ rows (session)</th><th></th></tr>"
            + "".join(rows)
            + "</table>"
        )
    if health is not None and run is not None:
        parts.append(_session(dag_id, run, health))
    parts.append(f"<p><small>read {_ts(now)} · read-only</small></p>")
    return _page("Market health", "".join(parts))


def _session(dag_id: str, run: dict, h: SessionHealth) -> str:
    day = h.trade_date.isoformat()
    run_id = run["run_id"]
    report = "report/run?" + urlencode({"dag_id": dag_id, "run_id": run_id})
    source = (
        "task-instance states of this run"
        if h.from_task_states
        else "the tables (Airflow has no task states for this run yet)"
    )
    failed = h.failed_symbols()
    out = [
        f'<h2 id="session">Session {day} · run <code>{escape(run_id)}</code> · '
        f'<span class="{escape(run["state"] or "")}">{escape(run["state"] or "—")}</span></h2>',
        f'<p><a href="{escape(report)}">run report</a> · '
        f'<a href="{escape(airflow_run_url(dag_id, run_id))}" target="_top">open the run in '
        f"Airflow</a> · {len(h.symbols)} symbols, {h.scored} scored, "
        f"{len(failed)} stopped{': ' + escape(', '.join(failed)) if failed else ''}.</p>",
        f"<p><small>Cells from {source}. The map index is what Airflow shows for an instance "
        "that never ran and in the Clear dialog.</small></p>",
    ]
    head = "".join(f"<th>{escape(label)}</th>" for _, label in STAGES)
    rows = []
    for symbol in h.symbols:
        index = h.map_index.get(symbol)
        cells = []
        for stage in STAGE_IDS:
            value = h.cells[symbol][stage]
            note = h.notes[symbol].get(stage, "")
            links = ""
            if index is not None and stage in GATES and value not in ("not run", "upstream"):
                links += f' <a href="{escape(gx_report_url(dag_id, run_id, stage, index))}">GX</a>'
            if index is not None and value in ("stopped", "not delivered"):
                ti = airflow_ti_url(dag_id, run_id, stage, index)
                links += f' <a href="{escape(ti)}" target="_top">clear…</a>'
            title = f' title="{escape(note)}"' if note else ""
            cells.append(
                f'<td class="{escape(value.replace(" ", "-"))}"{title}>{escape(value)}{links}</td>'
            )
        shown_index = "—" if index is None else str(index)
        rows.append(
            f'<tr data-symbol="{escape(symbol)}"><th>{escape(symbol)}</th>'
            f'<td class="num">{shown_index}</td>{"".join(cells)}</tr>'
        )
    out.append(
        f'<table id="grid"><tr><th>symbol</th><th>map index</th>{head}</tr>{"".join(rows)}</table>'
    )
    open_rows = "".join(
        _dlq_row(
            r,
            f'<td class="num">{r["map_index"]}</td>',
            "<td>"
            + "<br>".join(f"<code>{escape(c)}</code>" for c in h.commands.get(r["id"], []))
            + "</td>",
        )
        for r in h.open_dlq
    )
    out.append(
        _section(
            "Open DLQ rows",
            open_rows,
            table='<table id="dlq-open"><tr><th>symbol</th><th>stage</th><th>map index</th>'
            "<th>kind</th><th>failures</th><th>message</th><th>next action</th></tr>",
            after="<p><small>Fix the cause, then clear the instance in Airflow (the "
            "<em>clear…</em> link, with downstream) or run the replay command; acknowledge a "
            "true event instead of clearing bad data.</small></p>",
            empty='<p id="dlq-open">None for this session.</p>',
        )
    )
    if h.resolved_dlq:
        body = "".join(_dlq_row(r, "", f"<td>{_ts(r['resolved_at'])}</td>") for r in h.resolved_dlq)
        out.append(
            "<h3>Resolved DLQ rows</h3><p><small>Failures that a retry, a clear or a later run "
            "cured: each row counts the failed tries of its task instance.</small></p>"
            '<table id="dlq-resolved"><tr><th>symbol</th>'
            "<th>stage</th><th>kind</th><th>failures</th><th>last error</th><th>resolved</th>"
            f"</tr>{body}</table>"
        )
    acks = "".join(
        f"<tr><td>{escape(a['symbol'])}</td><td>{escape(a['gate'])}/{escape(a['rule'])}</td>"
        f"<td>{escape(str(a.get('trade_date', '—')))}</td>"
        f"<td>{escape(str(a.get('acknowledged_by', '—')))}</td>"
        f"<td>{escape(str(a.get('reason', '—')))}</td></tr>"
        for a in h.acknowledged
    )
    out.append(
        _section(
            "Acknowledgements applied",
            acks,
            table="<table><tr><th>symbol</th><th>rule</th><th>session acknowledged</th>"
            "<th>by</th><th>reason</th></tr>",
            empty="<p>None.</p>",
        )
    )
    return "".join(out)


def message_page(title: str, message: str) -> str:
    """A small page for a tab that has nothing to show (another DAG, a non-gate task)."""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>")


def _section(heading: str, rows: str, *, table: str, empty: str, after: str = "") -> str:
    """A health-page section: ``<h3>heading</h3>``, then ``table`` (its opening and header
    row) with ``rows`` and ``after`` it — or ``empty`` when there are no rows."""
    if not rows:
        return f"<h3>{heading}</h3>{empty}"
    return f"<h3>{heading}</h3>{table}{rows}</table>{after}"


def _dlq_row(r: dict, before_kind: str, after_message: str) -> str:
    """A DLQ row of the health page: symbol, stage, ``before_kind``, kind, failures, message
    (its first 400 characters), ``after_message``."""
    return (
        f'<tr data-symbol="{escape(r["symbol"] or "")}">'
        f"<td>{escape(r['symbol'] or '—')}</td><td>{escape(r['stage'])}</td>{before_kind}"
        f'<td>{escape(r["kind"])}</td><td class="num">{r["failures"]}</td>'
        f"<td>{escape((r['error_message'] or '')[:400])}</td>{after_message}</tr>"
    )
