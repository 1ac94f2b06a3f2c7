"""market_pipeline.bootstrap on twelve years of real bars: real Postgres, GX and numba."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

from market_pipeline import acks, bootstrap, store
from market_pipeline.sources.file_drop import FileDropSource
from tests.support.db import FULL_SQL, checksums, diff

REAL_EOD = Path(__file__).resolve().parents[1] / "data" / "real-eod"
SYMBOLS = ("AAPL", "GLD", "GOOG", "IBM", "SPY")
END = date(2012, 9, 12)
AAPL_DROP = date(2000, 9, 29)
TABLES = ("raw_bars", "clean_bars", "indicators", "validation_reports", "acknowledgements")


def talib_reference(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """TA-Lib's values for the indicator set (the contract of market_pipeline.indicators)."""
    import talib

    high, low, close = (bars[c].to_numpy(dtype=np.float64) for c in ("high", "low", "close"))
    ref = {
        "ema_9": talib.EMA(close, 9),
        "ema_21": talib.EMA(close, 21),
        "sma_50": talib.SMA(close, 50),
        "sma_200": talib.SMA(close, 200),
        "rsi_14": talib.RSI(close, 14),
        "atr_14": talib.ATR(high, low, close, 14),
    }
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = talib.MACD(close, 12, 26, 9)
    ref["bb_upper"], ref["bb_middle"], ref["bb_lower"] = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    return ref


def assert_indicators_equal_talib(conn, schema: str, symbol: str) -> int:
    """Stored indicators of ``symbol`` equal TA-Lib on its stored clean closes; returns rows."""
    from market_pipeline.indicators import INDICATOR_COLUMNS

    clean = store.clean_history(conn, symbol, END, 100_000, schema=schema)
    stored = store.indicator_history(conn, symbol, END, 100_000, INDICATOR_COLUMNS, schema=schema)
    assert list(stored["trade_date"]) == list(clean["trade_date"]), symbol
    ref = talib_reference(clean)
    for col in INDICATOR_COLUMNS:
        np.testing.assert_allclose(
            stored[col].to_numpy(),
            ref[col],
            rtol=1e-9,
            atol=1e-9,
            equal_nan=True,
            err_msg=f"{symbol}.{col}",
        )
    return len(stored)


def contents(dsn: str, schema: str) -> dict[str, tuple[int, str]]:
    """Row count and checksum of the business columns of every table the bootstrap writes."""
    return checksums(dsn, schema, {t: FULL_SQL[t] for t in TABLES})


@pytest.fixture
def db(pg_schema):
    """(connection, schema, dsn) on a fresh schema."""
    dsn, schema = pg_schema
    connection = psycopg2.connect(dsn)
    yield connection, schema, dsn
    connection.close()


def test_real_history_stops_aapl_before_its_drop_then_an_ack_lets_it_through_idempotently(db):
    conn, schema, dsn = db
    source = FileDropSource(REAL_EOD)
    files = {s: source.fetch(s, date(1999, 1, 1), END) for s in SYMBOLS}

    first = bootstrap.bootstrap(conn, source, SYMBOLS, END, schema=schema)

    aapl = first.outcomes["AAPL"]
    assert (aapl.status, aapl.stopped_at, aapl.stopped_rules) == (
        "stopped",
        AAPL_DROP,
        ("max_close_move",),
    )
    assert aapl.promoted_through == date(2000, 9, 28)
    assert "-51.9%" in aapl.stop_detail
    assert {s: o.status for s, o in first.outcomes.items()} == {
        "AAPL": "stopped",
        "GLD": "promoted",
        "GOOG": "promoted",
        "IBM": "promoted",
        "SPY": "partial",  # its file ends on 2012-09-11
    }
    assert first.outcomes["SPY"].promoted_through == date(2012, 9, 11)
    for s in SYMBOLS:
        assert store.raw_bar_count(conn, s, schema=schema) == len(files[s])
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, max(trade_date), count(*) FROM {schema}.clean_bars GROUP BY symbol"
        )
        clean = {s: (last, n) for s, last, n in cur.fetchall()}
        cur.execute(
            f"SELECT symbol, trade_date, success, failed_rules FROM {schema}.validation_reports "
            "WHERE NOT success"
        )
        failed = cur.fetchall()
    assert clean["AAPL"] == (date(2000, 9, 28), 168)
    assert clean["IBM"] == (END, len(files["IBM"]))
    assert failed == [("AAPL", AAPL_DROP, False, ["max_close_move"])]
    # The bulk path hashes rows exactly as the DAG's append does: a re-fetch adds nothing.
    added = store.append_raw_bars(
        conn,
        "IBM",
        files["IBM"].tail(30),
        source="file_drop",
        run_id="check",
        fetched_at=datetime.now(UTC),
        schema=schema,
    )
    assert added == 0
    before = contents(dsn, schema)

    again = bootstrap.bootstrap(conn, source, SYMBOLS, END, schema=schema)

    assert diff(contents(dsn, schema), before) == {}
    assert again.totals()["appended"] == again.totals()["promoted"] == 0
    assert again.outcomes["AAPL"].status == "stopped"

    acks.acknowledge(
        conn, "AAPL", AAPL_DROP, "max_close_move", "profit warning", by="ops", schema=schema
    )
    healed = bootstrap.bootstrap(conn, source, SYMBOLS, END, schema=schema)
    after_ack = contents(dsn, schema)
    third = bootstrap.bootstrap(conn, source, SYMBOLS, END, schema=schema)

    assert healed.outcomes["AAPL"].status == "promoted"
    assert healed.outcomes["AAPL"].acknowledged == ("max_close_move",)
    assert healed.outcomes["AAPL"].appended == 0
    assert store.clean_session_count(conn, "AAPL", END, schema=schema) == len(files["AAPL"])
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT success, acknowledged FROM {schema}.validation_reports "
            "WHERE gate='bars' AND symbol='AAPL' AND trade_date=%s",
            (AAPL_DROP,),
        )
        assert cur.fetchall() == [(True, ["max_close_move"])]
    assert third.totals() == {"fetched": 0, "appended": 0, "promoted": 0, "indicator_rows": 0}
    assert diff(contents(dsn, schema), after_ack) == {}
    for s in SYMBOLS:
        assert assert_indicators_equal_talib(conn, schema, s) == len(files[s])


def test_the_cli_names_the_stop_and_the_ack_command_and_exits_non_zero(db, capsys):
    _, schema, dsn = db
    argv = [
        "--source",
        "file_drop",
        "--path",
        str(REAL_EOD),
        "--symbols",
        "AAPL",
        "--end",
        "2000-10-31",
        "--schema",
        schema,
        "--dsn",
        dsn,
    ]

    code = bootstrap.main(argv)

    out = capsys.readouterr()
    assert code == 1
    assert "STOPPED at 2000-09-29: max_close_move" in out.out
    assert "recovery ack AAPL 2000-09-29 --rule max_close_move" in out.err
