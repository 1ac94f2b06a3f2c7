"""The market database frozen (SIGSTOP): a task's statement fails after its reply bound.

A frozen server keeps its connections open and its kernel answers every packet, so libpq
would wait forever. Each test freezes a private Postgres (``tests/support/servers.py``), runs
the call in a thread and joins it: a call that hangs fails the test at the join instead of
hanging the suite.
"""

from __future__ import annotations

import threading

import psycopg2
import pytest
from market_airflow import callbacks
from market_airflow.hooks import MarketDbHook

from market_pipeline import dlq_spool, reply_guard
from market_pipeline.config import SCHEMA
from market_pipeline.connections import PG_REPLY_TIMEOUT, reply_timeout
from market_pipeline.errors import failure_kind
from tests.faults.test_database_outage import _context

#: How long a test waits for a call that must end: far above the 1 s bounds it sets.
JOIN_SECONDS = 120


def _ends(call) -> BaseException | None:
    """Run ``call`` in a thread; what it raised (None: returned). Fails if it does not end."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            raised[0] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN_SECONDS)
    assert not thread.is_alive(), f"the call still waits on a frozen server after {JOIN_SECONDS} s"
    return raised[0]


@pytest.fixture
def frozen_db(private_pg, market_db, monkeypatch):
    """The task's ``market_db`` connection (reply and connect bounds of 1 and 2 s) to a
    private Postgres the test freezes; thawed after the test."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_DB", f"{private_pg.uri}?reply_timeout=1&connect_timeout=2"
    )
    try:
        yield private_pg
    finally:
        private_pg.thaw()


def test_a_statement_to_a_frozen_database_fails_after_the_reply_bound_as_transient(frozen_db):
    conn = MarketDbHook().get_conn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")  # answered: the bound does not end a healthy connection
        assert cur.fetchone() == (1,)
    frozen_db.freeze()

    def count_dlq() -> None:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {SCHEMA}.dlq")

    raised = _ends(count_dlq)

    assert isinstance(raised, psycopg2.OperationalError), raised
    assert "expected a reply from the market database within 1 s" in str(raised)
    assert failure_kind(raised) == "transient"  # the retry policy tries again, later
    assert conn.closed


def test_a_commit_to_a_frozen_database_fails_too(frozen_db):
    conn = MarketDbHook().get_conn()
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {SCHEMA}.dlq")
    frozen_db.freeze()

    raised = _ends(conn.commit)

    assert isinstance(raised, psycopg2.OperationalError), raised
    assert "reply_timeout" in str(raised)


def test_the_failure_callback_spools_its_row_and_the_thawed_database_gets_it(frozen_db, market_db):
    frozen_db.freeze()

    raised = _ends(lambda: callbacks.record_failure(_context(OSError("disk full"))))

    assert raised is None  # a callback never raises: the row waits in the spool
    assert len(dlq_spool.pending()) == 1
    frozen_db.thaw()
    conn = MarketDbHook().get_conn()
    try:
        assert dlq_spool.drain(conn) == 1
        with conn.cursor() as cur:
            cur.execute(f"SELECT task_id, symbol, kind FROM {SCHEMA}.dlq")
            assert cur.fetchall() == [("per_symbol.ingest_bars", "IBM", "code")]
    finally:
        conn.close()


def test_the_reply_bound_is_read_from_the_extra_and_zero_turns_it_off():
    assert reply_timeout(None) == PG_REPLY_TIMEOUT
    assert reply_timeout({"reply_timeout": "30"}) == 30
    assert reply_timeout({"reply_timeout": 0}) == 0
    with pytest.raises(ValueError, match="reply_timeout: expected a number of seconds, found 'x'"):
        reply_timeout({"reply_timeout": "x"})
    with pytest.raises(ValueError, match="expected seconds >= 0, found -1"):
        reply_timeout({"reply_timeout": -1})


def test_an_unbounded_connection_arms_no_watchdog(private_pg):
    conn = reply_guard.connect(private_pg.dsn, 0)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.01)")
        assert id(conn) not in reply_guard._WATCHDOG._armed
        assert not conn.stalled
    finally:
        conn.close()
