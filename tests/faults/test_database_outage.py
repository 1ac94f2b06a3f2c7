"""The market database stops while a task fails: its DLQ row is not lost.

A private Postgres is stopped, the failure callback runs (as Airflow runs it after a try whose
report to the api-server failed), the server starts again, and ``run_health`` — or the next
DLQ callback — writes the row the callback could not: with the real error, kind and try, not
the guess ("killed") the state-based reconciliation would make.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import UTC, date, datetime
from types import SimpleNamespace

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
from airflow.sdk.execution_time.comms import ErrorResponse
from market_airflow import callbacks

from market_pipeline import dlq_spool, health, store
from market_pipeline.config import SCHEMA
from market_pipeline.errors import TransientSourceError
from market_pipeline.stages import SYMBOL_TASKS, TAIL_TASKS
from market_pipeline.stages.run_health import RunHealthError, run_health
from market_pipeline.stages.settings import Attempt, Settings

RUN = "scheduled__2024-11-29T14:30:00+00:00"
DAY = date(2024, 11, 29)
CHUNKS = [["AAPL"], ["IBM"], ["KO"]]


def _context(exception, *, try_number: int = 1, symbol: str = "IBM", index: int = 1) -> dict:
    # The subset of a task instance's context the callbacks read.
    return {
        "ti": SimpleNamespace(
            dag_id="market_daily",
            run_id=RUN,
            task_id="per_symbol.ingest_bars",
            map_index=index,
            try_number=try_number,
            rendered_map_index=symbol,
        ),
        "exception": exception,
        "dag_run": SimpleNamespace(logical_date=datetime(2024, 11, 29, 14, 30, tzinfo=UTC)),
        "data_interval_start": datetime(2024, 11, 29, 14, 30, tzinfo=UTC),
        "data_interval_end": datetime(2024, 11, 29, 18, 0, tzinfo=UTC),
        "symbol": symbol,
    }


def _api_outage() -> AirflowRuntimeError:
    # What the task process got when the api-server answered 500 (its database was down).
    return AirflowRuntimeError(
        ErrorResponse(
            error=ErrorType.API_SERVER_ERROR,
            detail={"status_code": 500, "message": "Internal Server Error (OperationalError)"},
        )
    )


def _dlq(dsn: str) -> list[dict]:
    conn = psycopg2.connect(dsn)  # a connection of its own: the server may have restarted
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT symbol, task_id, map_index, try_number, kind, error_class, failures, "
                f"resolved_at IS NOT NULL AS resolved FROM {SCHEMA}.dlq ORDER BY id"
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()


def test_a_callback_with_the_database_stopped_leaves_its_row_for_run_health(
    private_pg, market_db, caplog
):
    private_pg.stop()
    try:
        with caplog.at_level(logging.WARNING):
            # The last try failed on the Execution API: the callback must not raise.
            callbacks.record_failure(_context(_api_outage(), try_number=4))
        spooled = dlq_spool.pending()
    finally:
        private_pg.start()
    assert len(spooled) == 1, "the row the callback could not write is kept"
    assert any("kept in" in r.getMessage() for r in caplog.records)

    conn = psycopg2.connect(private_pg.dsn)
    states = {(t, i): "success" for t in SYMBOL_TASKS for i in range(len(CHUNKS))}
    states.update({(t, 1): "upstream_failed" for t in SYMBOL_TASKS})
    states[("ingest_bars", 1)] = "failed"
    try:
        with pytest.raises(RunHealthError, match="IBM at ingest_bars"):
            run_health(
                conn,
                CHUNKS,
                DAY,
                Settings(schema=SCHEMA),
                task_states=states,
                tail_states=dict.fromkeys(TAIL_TASKS, "success"),
                attempt=Attempt(run_id=RUN, try_number=1),
            )
    finally:
        conn.close()
    rows = _dlq(private_pg.dsn)

    assert rows == [
        {
            "symbol": "IBM",
            "task_id": "per_symbol.ingest_bars",
            "map_index": 1,
            "try_number": 4,
            "kind": "transient",
            "error_class": "AirflowRuntimeError",
            "failures": 1,
            "resolved": False,
        }
    ]
    assert dlq_spool.pending() == []


def test_a_failed_try_whose_row_was_spooled_is_recorded_and_resolved_by_the_retry(
    private_pg, market_db
):
    private_pg.stop()
    try:
        # Try 1 fails while the database is down; Airflow runs the retry callback.
        callbacks.record_failure(_context(TransientSourceError("vendor timed out"), try_number=1))
    finally:
        private_pg.start()

    # Try 2 succeeds: its callback writes the spooled row first, then resolves it.
    callbacks.resolve_success(_context(None, try_number=2))

    assert _dlq(private_pg.dsn) == [
        {
            "symbol": "IBM",
            "task_id": "per_symbol.ingest_bars",
            "map_index": 1,
            "try_number": 1,
            "kind": "transient",
            "error_class": "TransientSourceError",
            "failures": 1,
            "resolved": True,
        }
    ]


def test_a_failure_cured_by_a_retry_stays_visible_on_the_health_page_and_in_metrics(market_db):
    from market_ui import metrics, pages

    # Tries 1 and 2 fail (the retry callback records each), try 3 succeeds.
    callbacks.record_failure(_context(TransientSourceError("vendor timed out"), try_number=1))
    callbacks.record_failure(_context(TransientSourceError("vendor timed out"), try_number=2))
    callbacks.resolve_success(_context(None, try_number=3))

    page = health.session_health(market_db, DAY, schema=SCHEMA)
    tries = health.failed_tries_by_kind(market_db, schema=SCHEMA)
    body, _ = metrics.render(
        health=None,
        run_id=None,
        run_state=None,
        run_duration=None,
        dlq_by_kind=health.open_dlq_by_kind(market_db, schema=SCHEMA),
        gate_failures={},
        serving=None,
        published_at=None,
        now=datetime.now(UTC),
        failed_tries=tries,
    )

    assert page.open_dlq == []
    assert [(r["symbol"], r["kind"], r["failures"]) for r in page.resolved_dlq] == [
        ("IBM", "transient", 2)
    ]
    html = pages.health_page(
        dag_id="market_daily",
        runs=[],
        health=page,
        run={"run_id": RUN, "state": "success"},
        serving=None,
        published_at=None,
        now=datetime.now(UTC),
    )
    resolved = html[html.index('id="dlq-resolved"') :]
    assert "IBM" in resolved and "vendor timed out" in resolved
    assert tries == {("transient", "ingest_bars", "resolved"): 2}
    assert (
        'market_dlq_failed_tries{kind="transient",stage="ingest_bars",status="resolved"} 2.0'
        in body.decode()
    )


def test_a_try_killed_without_an_exception_is_recorded_as_killed(market_db):
    # A try whose heartbeat stopped: the dag-processor runs the retry callback, no exception.
    callbacks.record_failure(_context(None, try_number=1))

    rows = store.dlq_open(market_db, run_id=RUN, schema=SCHEMA)
    assert rows[["symbol", "kind", "try_number"]].to_dict("records") == [
        {"symbol": "IBM", "kind": "killed", "try_number": 1}
    ]


def test_a_spool_file_that_is_not_a_write_is_set_aside_and_the_rest_applied(market_db):
    directory = dlq_spool.spool_dir()
    directory.mkdir(parents=True)
    (directory / "00000000000000000001-broken.json").write_text("{not json")
    entry = callbacks._failure_entries(_context(TransientSourceError("vendor timed out")))
    dlq_spool.spool_records(entry)

    applied = dlq_spool.drain(market_db, schema=SCHEMA)

    assert applied == 1
    assert dlq_spool.pending() == []
    assert [p.name for p in directory.glob("*.bad")] == ["00000000000000000001-broken.json.bad"]
    rows = store.dlq_open(market_db, run_id=RUN, schema=SCHEMA)
    assert rows[["symbol", "kind"]].to_dict("records") == [{"symbol": "IBM", "kind": "transient"}]


def test_a_success_whose_resolve_was_spooled_does_not_read_as_a_failed_symbol(
    private_pg, market_db
):
    from market_pipeline.stages.states import symbol_states

    callbacks.record_failure(_context(TransientSourceError("vendor timed out"), try_number=1))
    private_pg.stop()
    try:
        callbacks.resolve_success(_context(None, try_number=2))  # the database is down
    finally:
        private_pg.start()

    conn = psycopg2.connect(private_pg.dsn)
    try:
        # The tail reads the chain's states: ingest_bars[1] succeeded on its retry.
        states = {(t, i): "success" for t in SYMBOL_TASKS for i in range(len(CHUNKS))}
        found = symbol_states(conn, CHUNKS, states, RUN, schema=SCHEMA)
    finally:
        conn.close()

    assert found["IBM"] == dict.fromkeys(SYMBOL_TASKS, "success")
    assert [r["resolved"] for r in _dlq(private_pg.dsn)] == [True]


def test_a_resolve_comes_after_the_failure_another_process_is_applying(private_pg, market_db):
    """A retry's success must resolve the failure its first try spooled, even when another
    process's callback has claimed that spooled failure and is still writing it."""
    private_pg.stop()
    try:
        callbacks.record_failure(_context(TransientSourceError("vendor timed out"), try_number=1))
    finally:
        private_pg.start()
    claimed, go = threading.Event(), threading.Event()
    apply = dlq_spool._apply

    def held_apply(conn, payload):  # the other drainer, stopped inside its write
        if threading.current_thread().name == "other-drainer":
            claimed.set()
            assert go.wait(timeout=60), "the test never let the other drainer go on"
        apply(conn, payload)

    errors: list[BaseException] = []

    def run(name, fn):
        def body():
            try:
                fn()
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        return thread

    def other_drainer():
        conn = psycopg2.connect(private_pg.dsn)
        try:
            dlq_spool.drain(conn, schema=SCHEMA)
        finally:
            conn.close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dlq_spool, "_apply", held_apply)
        other = run("other-drainer", other_drainer)
        assert claimed.wait(timeout=60), "the other drainer never claimed the spooled failure"
        # Try 2 succeeds meanwhile: its callback either waits for the other drainer (its
        # lock is seen waiting in pg_locks) or, without the ordering, resolves at once.
        success = run("success", lambda: callbacks.resolve_success(_context(None, try_number=2)))
        watcher = psycopg2.connect(private_pg.dsn)
        try:
            while success.is_alive() and not _advisory_lock_awaited(watcher):
                success.join(timeout=0.05)
        finally:
            watcher.close()
        go.set()
        other.join(timeout=60)
        success.join(timeout=60)
    assert not errors, errors

    assert [(r["try_number"], r["failures"], r["resolved"]) for r in _dlq(private_pg.dsn)] == [
        (1, 1, True)
    ]
    assert dlq_spool.pending() == []


def _advisory_lock_awaited(conn) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return cur.fetchone()[0] > 0


def test_a_spooled_write_the_database_refuses_for_good_is_set_aside_not_blocking(market_db):
    (broken,) = callbacks._failure_entries(_context(TransientSourceError("vendor timed out")))
    dlq_spool.spool_records([dataclasses.replace(broken, stage=None)])  # NOT NULL refuses it
    later = callbacks._failure_entries(
        _context(TransientSourceError("again"), symbol="KO", index=2)
    )
    dlq_spool.spool_records(later)

    applied = dlq_spool.drain(market_db, schema=SCHEMA)

    assert applied == 1
    assert dlq_spool.pending() == []
    assert len(list(dlq_spool.spool_dir().glob("*.bad"))) == 1
    rows = store.dlq_open(market_db, run_id=RUN, schema=SCHEMA)
    assert rows[["symbol", "kind"]].to_dict("records") == [{"symbol": "KO", "kind": "transient"}]
