"""market_daily on twelve years of real bars (issue 10), through `airflow dags test`.

One scenario, in the order an operator lives it (each step is a DAG run of a real session):

1. bootstrap AAPL, IBM, SPY up to 2000-09-27 (the bulk path), then run 2000-09-28;
2. 2000-09-29: the raw gate stops AAPL (-51.9 %, a real profit warning) → DLQ row, red run;
3. ``ack`` the rule for AAPL on that session, rerun the session (with ``dags test`` a rerun
   of the date *is* the clear: it clears every task instance of the date and runs them
   again) → AAPL passes with the acknowledgement recorded, DLQ row resolved;
4. 2000-10-02 and 2000-10-03 run green;
5. bootstrap all five symbols up to 2012-09-07 (AAPL/IBM/SPY continue from 2000-10-03,
   GOOG/GLD start in 2004), run 2012-09-10 and 2012-09-11;
6. 2012-09-12: SPY's file ends a session early → its gate waits (reschedules), times out,
   SPY is DLQ'd as not delivered, the tail runs on the quorum (4/5 = 0.8);
7. the bar arrives (appended to the drop file) and a rerun heals SPY.

Then: the only critical gate failure was AAPL on 2000-09-29; every DLQ row is resolved; the
stored indicators of all five real series equal TA-Lib's; the per-run page exists.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import psycopg2
import pytest

from market_pipeline import acks, bootstrap
from market_pipeline.sources.file_drop import FileDropSource
from tests.integration.test_bootstrap import assert_indicators_equal_talib
from tests.support.airflow_home import make_airflow_home
from tests.support.db import drop_namespace

REAL_EOD = Path(__file__).resolve().parents[1] / "data" / "real-eod"
GROUP = "per_symbol"
AAPL_DROP = date(2000, 9, 29)
# SPY's real 2012-09-12 bar (Yahoo Finance daily, as published in the public repository
# Collumbus/-Machine_Learning_for_Trading-Udacity, data/SPY.csv; its 2012-09-11 row equals
# the sample's). adj_close rescaled to the sample's adjustment basis (119.965004 / 143.910004).
SPY_2012_09_12 = "2012-09-12,144.389999,144.550003,143.899994,144.389999,87640900,120.364999\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory, pg_dsn, redis_url, airflow_home_template):
    home = make_airflow_home(tmp_path_factory.mktemp("airflow_real"), airflow_home_template)
    yield home
    drop_namespace(pg_dsn, redis_url, home.schema, home.cache_prefix)


def _rows(conn, sql, *params):
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.rollback()  # hold no snapshot or lock while the DAG runs


def _explain(proc) -> str:
    return proc.stdout[-5000:] + proc.stderr[-5000:]


def _symbol_states(home, symbols, task):
    states = home.task_states()
    return {s: states.get((f"{GROUP}.{task}", i)) for i, s in enumerate(symbols)}


def test_real_sessions_stop_only_aapl_ack_heals_it_late_spy_waits_then_heals(
    home, pg_dsn, tmp_path
):
    drop = tmp_path / "drop"
    shutil.copytree(REAL_EOD, drop)
    spy_file = drop / "SPY.csv"
    spy_file.chmod(0o644)
    assert "2012-09-12" not in spy_file.read_text()  # the sample really lacks it
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = False
    schema = home.schema
    old = ["AAPL", "IBM", "SPY"]
    five = ["AAPL", "GLD", "GOOG", "IBM", "SPY"]
    v2000 = dict(
        market_source="file_drop",
        market_source_path=str(drop),
        market_universe=",".join(old),
        market_quorum="0.6",
    )
    v2012 = dict(v2000, market_universe=",".join(five), market_quorum="0.8")
    reports = home.path / "reports" / "market_daily"
    try:
        # 1. history, then the first real session
        boot = bootstrap.bootstrap(
            conn, FileDropSource(drop), old, date(2000, 9, 27), schema=schema
        )
        assert {o.status for o in boot.outcomes.values()} == {"promoted"}
        r = home.dags_test("2000-09-28", **v2000)
        assert r.returncode == 0, _explain(r)

        # 2. the gate stops AAPL on its real -51.9 % day, and only AAPL
        r = home.dags_test("2000-09-29", **v2000)
        assert r.returncode != 0
        assert _symbol_states(home, old, "validate_bars") == {
            "AAPL": "failed",
            "IBM": "success",
            "SPY": "success",
        }
        assert home.task_states()[("score_universe", -1)] == "success"
        dlq = _rows(
            conn,
            f"SELECT symbol, stage, kind, error_message FROM {schema}.dlq "
            "WHERE resolved_at IS NULL",
        )
        assert [(s, st, k) for s, st, k, _ in dlq] == [("AAPL", "validate_bars", "data_quality")]
        assert "max_close_move (|move| -51.9% > 50% on 2000-09-29)" in dlq[0][3]
        page = (reports / "2000-09-29" / "index.html").read_text()
        assert "stopped" in page and "AAPL" in page

        # 3. acknowledge, rerun the session: AAPL passes, the acknowledgement is on record
        acks.acknowledge(
            conn,
            "AAPL",
            AAPL_DROP,
            "max_close_move",
            "profit warning 2000-09-28 after the close; -51.9 % on 25x volume",
            by="ops-oncall",
            schema=schema,
        )
        r = home.dags_test("2000-09-29", **v2000)
        assert r.returncode == 0, _explain(r)
        assert set(home.task_states().values()) == {"success"}
        assert _rows(
            conn,
            f"SELECT success, failed_rules, acknowledged FROM {schema}."
            "validation_reports WHERE gate='bars' AND symbol='AAPL' "
            "AND trade_date=%s",
            AAPL_DROP,
        ) == [(True, ["max_close_move"], ["max_close_move"])]
        assert _rows(conn, f"SELECT count(*) FROM {schema}.dlq WHERE resolved_at IS NULL") == [(0,)]
        assert (
            _rows(
                conn,
                f"SELECT count(*) FROM {schema}.signals WHERE symbol='AAPL' AND trade_date=%s",
                AAPL_DROP,
            )[0][0]
            > 0
        )
        page = (reports / "2000-09-29" / "index.html").read_text()
        assert "profit warning" in page and "ops-oncall" in page

        # 4. indicators and signals carry on
        for day in ("2000-10-02", "2000-10-03"):
            r = home.dags_test(day, **v2000)
            assert r.returncode == 0, _explain(r)

        # 5. a long backfill by the bulk path, then real 2012 sessions
        boot = bootstrap.bootstrap(
            conn, FileDropSource(drop), five, date(2012, 9, 7), schema=schema
        )
        assert {s: o.status for s, o in boot.outcomes.items()} == dict.fromkeys(five, "promoted")
        assert boot.outcomes["AAPL"].window_start == date(2000, 10, 4)
        for day in ("2012-09-10", "2012-09-11"):
            r = home.dags_test(day, **v2012)
            assert r.returncode == 0, _explain(r)

        # 6. SPY is late: the sensor waits, times out, the tail runs on the quorum
        r = home.dags_test("2012-09-12", **v2012)
        assert r.returncode != 0
        assert _symbol_states(home, five, "wait_for_bars") == {
            "AAPL": "success",
            "GLD": "success",
            "GOOG": "success",
            "IBM": "success",
            "SPY": "failed",
        }
        assert _symbol_states(home, five, "validate_bars")["SPY"] == "upstream_failed"
        states = home.task_states()
        assert states[("publish_cache", -1)] == "success"
        assert states[("run_health", -1)] == "failed"
        polls = _rows(
            conn,
            f"SELECT outcome FROM {schema}.fetch_audit WHERE symbol='SPY' "
            "AND window_end='2012-09-12'",
        )
        assert len(polls) >= 2 and {o for (o,) in polls} == {"not_delivered"}  # it re-fetched
        assert _rows(
            conn, f"SELECT symbol, stage, kind FROM {schema}.dlq WHERE resolved_at IS NULL"
        ) == [("SPY", "wait_for_bars", "not_delivered")]
        assert sorted(
            s
            for (s,) in _rows(
                conn, f"SELECT symbol FROM {schema}.scores WHERE trade_date='2012-09-12'"
            )
        ) == ["AAPL", "GLD", "GOOG", "IBM"]
        page = (reports / "2012-09-12" / "index.html").read_text()
        assert "not delivered" in page

        # 7. the bar arrives; a rerun of the session heals SPY
        with spy_file.open("a") as f:
            f.write(SPY_2012_09_12)
        r = home.dags_test("2012-09-12", **v2012)
        assert r.returncode == 0, _explain(r)
        assert _rows(
            conn, f"SELECT count(*) FROM {schema}.scores WHERE trade_date='2012-09-12'"
        ) == [(5,)]

        # Across every run: one critical gate failure (AAPL, 2000-09-29), now acknowledged;
        # one late delivery; nothing left open.
        everything = _rows(
            conn,
            f"SELECT symbol, trade_date, stage, kind, resolved_at IS NULL "
            f"FROM {schema}.dlq ORDER BY trade_date",
        )
        assert everything == [
            ("AAPL", AAPL_DROP, "validate_bars", "data_quality", False),
            ("SPY", date(2012, 9, 12), "wait_for_bars", "not_delivered", False),
        ]
        assert _rows(
            conn, f"SELECT count(*) FROM {schema}.validation_reports WHERE NOT success"
        ) == [(0,)]
        for symbol in five:
            assert_indicators_equal_talib(conn, schema, symbol)
        page = (reports / "2012-09-12" / "index.html").read_text()
        assert "not delivered" not in page and "<svg" in page
    finally:
        conn.close()
