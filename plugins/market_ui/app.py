"""The FastAPI app the api-server mounts under ``/market`` (see ``docs/ui.md``).

Routes (all GET, all read-only, all behind the UI's authentication):

- ``/`` — the Market health page (``?run_id=`` picks a run; default the newest);
- ``/report/run?dag_id=&run_id=`` — the per-run report (a tab of every DAG run);
- ``/report/gx?dag_id=&run_id=&task_id=&map_index=`` — the GX report of a gate task instance
  (a tab of every task instance);
- ``/api/scores?n=`` and ``/api/symbols/{symbol}`` — the published day, from Redis;
- ``/api/serving`` — the served version and its age;
- ``/metrics`` — Prometheus exposition.

Authentication: every route depends on Airflow's own ``requires_access_dag`` check for
reading market_daily's runs. It accepts what the UI and the REST API accept — the UI's
``_token`` cookie or an ``Authorization: Bearer`` JWT from ``POST /auth/token`` — and answers
401 without one, 403 for a user the auth manager does not allow. A mounted app inherits none
of the core API's dependencies, so the plugin declares it itself; the interactive docs and
the OpenAPI document are off (Starlette serves them outside any dependency).

Blocking work: the endpoints are plain ``def`` functions, so FastAPI runs them in its thread
pool and the api-server's event loop never waits on Postgres or Redis.
"""

# No ``from __future__ import annotations``: the routes are defined inside create_app() with
# dependencies imported there (Airflow's SessionDep), and FastAPI resolves string annotations
# against module globals only.
import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Annotated

from market_pipeline.config import DAG_ID, SCHEMA, SYMBOL_PATTERN

#: Where the api-server mounts the app (the external views' hrefs are relative to the UI).
URL_PREFIX = "/market"


@contextlib.contextmanager
def _market_db() -> Iterator:
    """A psycopg2 connection to ``market_db`` (read-only transaction), closed afterwards."""
    from market_airflow.hooks import MarketDbHook

    conn = MarketDbHook().get_conn()
    try:
        conn.set_session(readonly=True)
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _market_cache() -> Iterator:
    from market_airflow.hooks import MarketCacheHook

    client = MarketCacheHook().get_conn()
    try:
        yield client
    finally:
        client.close()


def create_app():
    """Build the plugin's FastAPI app (called once, in the api-server)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from market_airflow import airflow_fixes

    from market_pipeline import health as hv
    from market_pipeline.cache import CacheUnavailableError

    from . import airflow_state as af
    from . import metrics, pages

    # The UI's and the REST API's clears run in this process (apache/airflow#70368).
    airflow_fixes.apply()
    app = FastAPI(
        title="market_daily UI plugin",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, DAG_ID))],
    )

    @app.exception_handler(CacheUnavailableError)
    def _redis_down(request: Request, exc: CacheUnavailableError):
        return JSONResponse({"detail": f"serving cache unavailable: {exc}"}, status_code=503)

    def html(text: str) -> HTMLResponse:
        return HTMLResponse(text, headers={"Cache-Control": "no-store"})

    def run_row(run: af.Run, exchange: str, now: datetime) -> dict:
        day = trade_date(run, exchange)
        return {
            "run_id": run.run_id,
            "state": run.state,
            "run_type": run.run_type,
            "start_date": run.start_date,
            "duration": run.duration_seconds(now),
            "trade_date": day.isoformat() if day else None,
            "day": day,
        }

    def trade_date(run: af.Run, exchange: str) -> date | None:
        return hv.trade_date_of_run(
            run.data_interval_start,
            run.data_interval_end,
            run.logical_date,
            run.run_after,
            exchange,
        )

    def session_of(session, conn, run: af.Run, exchange: str) -> hv.SessionHealth | None:
        day = trade_date(run, exchange)
        if day is None:
            return None
        chunks = af.universe_chunks(session, run.dag_id, run.run_id)
        states = af.stage_states(session, run.dag_id, run.run_id) if chunks else None
        return hv.session_health(
            conn, day, schema=SCHEMA, chunks=chunks, ti_states=states, run_id=run.run_id
        )

    def serving_status(session, client, exchange: str, now: datetime):
        served = hv.serving(client, exchange=exchange, now=now)
        published = af.published_at(session, DAG_ID, served.run_id) if served else None
        return served, published

    @app.get("/", response_class=HTMLResponse)
    def health_page(session: SessionDep, run_id: str | None = None):
        now = datetime.now(UTC)
        exchange = af.exchange()
        runs = af.recent_runs(session, DAG_ID, limit=20)
        rows = [run_row(r, exchange, now) for r in runs]
        chosen = None
        if run_id is not None:
            chosen = af.get_run(session, DAG_ID, run_id)
            if chosen is None:
                raise HTTPException(404, f"{DAG_ID} has no run {run_id!r}")
        elif runs:
            chosen = runs[0]
        with _market_db() as conn:
            opened = hv.open_dlq_by_session(
                conn, [r["day"] for r in rows if r["day"]], schema=SCHEMA
            )
            for r in rows:
                r["open_dlq"] = opened.get(r["day"], 0) if r["day"] else 0
            health = session_of(session, conn, chosen, exchange) if chosen else None
        with _market_cache() as client:
            served, published = serving_status(session, client, exchange, now)
        return html(
            pages.health_page(
                dag_id=DAG_ID,
                runs=rows,
                health=health,
                run=run_row(chosen, exchange, now) if chosen else None,
                serving=served,
                published_at=published,
                now=now,
            )
        )

    @app.get("/report/run", response_class=HTMLResponse)
    def run_report_page(session: SessionDep, dag_id: str, run_id: str):
        from market_pipeline import run_report

        if dag_id != DAG_ID:
            return html(pages.message_page("Market run report", f"{dag_id} is not {DAG_ID}."))
        run = af.get_run(session, dag_id, run_id)
        if run is None:
            raise HTTPException(404, f"{dag_id} has no run {run_id!r}")
        day = trade_date(run, af.exchange())
        chunks = af.universe_chunks(session, dag_id, run_id)
        with _market_db() as conn:
            states = None
            if chunks:
                open_rows = hv.open_dlq(conn, run_id=run_id, schema=SCHEMA)
                states = hv.symbol_states(
                    chunks, af.stage_states(session, dag_id, run_id), open_rows
                )
            report = run_report.collect(
                conn,
                day,
                schema=SCHEMA,
                symbols=[s for c in chunks for s in c] if chunks else None,
                states=states,
                run_id=run_id,
            )
        index = hv.map_indexes(chunks or [])
        for symbol in report.symbols:
            if symbol not in index:
                continue
            for stage in hv.GATES:
                if report.cells[symbol].get(stage) not in ("—", "upstream", "waiting"):
                    link = pages.gx_report_url(dag_id, run_id, stage, index[symbol])
                    report.gx_links.setdefault(symbol, {})[stage] = link.removeprefix("report/")
        return html(run_report.render(report))

    @app.get("/report/gx", response_class=HTMLResponse)
    def gx_report_page(
        session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: str = "-1"
    ):
        from market_pipeline.report import render_html

        title = "GX report"
        stage = task_id.removeprefix(f"{hv.GROUP_ID}.")
        if dag_id != DAG_ID or stage not in hv.GATES or not task_id.startswith(hv.GROUP_ID):
            gates = ", ".join(f"{hv.GROUP_ID}.{s}" for s in hv.GATES)
            return html(
                pages.message_page(
                    title,
                    f"{dag_id}.{task_id} is not a quality gate; GX reports exist for "
                    f"{DAG_ID}'s {gates}.",
                )
            )
        # A mapped instance's index; the UI leaves {MAP_INDEX} as is for unmapped ones.
        index = int(map_index) if map_index.lstrip("-").isdigit() else -1
        run = af.get_run(session, dag_id, run_id)
        chunks = af.universe_chunks(session, dag_id, run_id) if run else None
        if run is None or not chunks or not 0 <= index < len(chunks):
            raise HTTPException(404, f"{dag_id} run {run_id!r} has no {task_id}[{map_index}]")
        day = trade_date(run, af.exchange())
        symbols = chunks[index]
        with _market_db() as conn:
            found = hv.gate_results(conn, hv.GATES[stage], symbols, day, schema=SCHEMA)
        label = symbols[0] if len(symbols) == 1 else f"{symbols[0]}..{symbols[-1]}"
        title = f"{hv.GATES[stage]} gate · {label} · {day.isoformat()}"
        if not found:
            return html(
                pages.message_page(
                    title,
                    f"No verdict stored yet for {', '.join(symbols)} on {day}: the gate "
                    "has not judged this data (it may be waiting for the delivery).",
                )
            )
        page = render_html([r for r, _ in found], title=title)
        origin = "; ".join(
            f"{r.symbol}: run {meta['run_id']} try {meta['try_number']} at "
            f"{meta['created_at']:%Y-%m-%d %H:%M:%S}"
            for r, meta in found
        )
        note = f"<p><small>Stored verdicts (latest per session) — {origin}</small></p>"
        return html(page.replace("</h1>", "</h1>" + note, 1))

    @app.get("/api/scores")
    def api_scores(n: Annotated[int, Query(ge=1, le=hv.MAX_TOP_N)] = 10):
        with _market_cache() as client:
            served = hv.serving(client)
            scores = hv.top_scores(client, n)
        if served is None:
            raise HTTPException(404, "nothing is published yet: no served version in Redis")
        return {
            "trade_date": served.trade_date.isoformat(),
            "version": served.version,
            "scores": scores,
        }

    @app.get("/api/symbols/{symbol}")
    def api_symbol(
        symbol: Annotated[str, Path(pattern=SYMBOL_PATTERN.pattern, max_length=10)],
    ):
        with _market_cache() as client:
            served = hv.serving(client)
            snap = hv.snapshot(client, symbol)
        if served is None:
            raise HTTPException(404, "nothing is published yet: no served version in Redis")
        if snap is None:
            raise HTTPException(
                404,
                f"symbol {symbol!r} is not in the served day {served.trade_date.isoformat()} "
                f"(version {served.version}, {served.symbol_count} symbols)",
            )
        return {"version": served.version, "snapshot": snap}

    @app.get("/api/serving")
    def api_serving(session: SessionDep):
        now = datetime.now(UTC)
        with _market_cache() as client:
            served, published = serving_status(session, client, af.exchange(), now)
        if served is None:
            raise HTTPException(404, "nothing is published yet: no served version in Redis")
        return {
            "version": served.version,
            "trade_date": served.trade_date.isoformat(),
            "run_id": served.run_id,
            "symbol_count": served.symbol_count,
            "published_at": published.isoformat() if published else None,
            "session_close": served.session_close.isoformat(),
            "session_age_seconds": served.session_age_seconds,
        }

    @app.get("/metrics")
    def prometheus(session: SessionDep):
        now = datetime.now(UTC)
        exchange = af.exchange()
        runs = af.recent_runs(session, DAG_ID, limit=1)
        latest = runs[0] if runs else None
        with _market_db() as conn:
            health = session_of(session, conn, latest, exchange) if latest else None
            by_kind = hv.open_dlq_by_kind(conn, schema=SCHEMA)
            tries = hv.failed_tries_by_kind(conn, schema=SCHEMA)
            failures = (
                hv.gate_failures_by_rule(conn, health.trade_date, schema=SCHEMA) if health else {}
            )
        with _market_cache() as client:
            served, published = serving_status(session, client, exchange, now)
        body, content_type = metrics.render(
            health=health,
            run_id=latest.run_id if latest else None,
            run_state=latest.state if latest else None,
            run_duration=latest.duration_seconds(now) if latest else None,
            dlq_by_kind=by_kind,
            failed_tries=tries,
            gate_failures=failures,
            serving=served,
            published_at=published,
            now=now,
        )
        return Response(body, media_type=content_type)

    return app
