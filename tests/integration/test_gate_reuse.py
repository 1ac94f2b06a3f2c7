"""Gate verdicts reused when nothing changed: real Postgres and GX, counted on the engine.

A gate whose input (hash of the checked rows, acknowledgements, parameters) and suite
version equal its stored verdict's takes that verdict and runs no GX; a changed row, a new
acknowledgement or a new suite version runs GX again.
"""

from __future__ import annotations

import dataclasses
from datetime import date

import psycopg2
import pytest

from market_pipeline import acks, migrate, store
from market_pipeline.errors import DataQualityError
from market_pipeline.quality import engine as gx_engine
from market_pipeline.quality import gates
from market_pipeline.sources.synthetic import SyntheticSource
from market_pipeline.stages.compute_indicators import compute_indicators
from market_pipeline.stages.ingest_bars import RawWindows, ingest_bars
from market_pipeline.stages.reports import GateReports
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.validate_bars import validate_bars
from market_pipeline.stages.validate_indicators import validate_indicators

D = date(2024, 11, 29)
FIRST = Attempt(run_id="scheduled__2024-11-29", try_number=1)
RETRY = Attempt(run_id="scheduled__2024-11-29", try_number=2)
SYMBOLS = ["AAA", "BBB", "CCC"]


@pytest.fixture
def db(pg_schema, tmp_path, monkeypatch):
    dsn, schema = pg_schema
    monkeypatch.setenv("MARKET_REPORT_DIR", str(tmp_path))
    conn = psycopg2.connect(dsn)
    migrate.apply(conn, schema)
    yield conn, Settings(schema=schema, exchange="XNYS", history_sessions=60)
    conn.close()


@pytest.fixture
def source():
    return SyntheticSource(defects={"CCC": "high_below_close"})


def _ingest(conn, settings, source) -> dict[str, date]:
    store.sync_symbols(conn, SYMBOLS, schema=settings.schema)
    out = ingest_bars(conn, SYMBOLS, D, settings, source=source, attempt=FIRST, chunk=True)
    return {s: date.fromisoformat(r["window_start"]) for s, r in out.ok.items()}


def _bars_gate(conn, settings, source, starts, attempt=FIRST):
    return validate_bars(
        conn,
        SYMBOLS,
        D,
        settings,
        windows=RawWindows(starts, open_source=lambda: source, attempt=attempt),
        reports=GateReports(SYMBOLS),
        chunk=True,
    )


def _indicator_gate(conn, settings, starts, attempt=FIRST):
    live = ["AAA", "BBB"]
    return validate_indicators(
        conn,
        live,
        D,
        settings,
        starts={s: starts[s] for s in live},
        attempt=attempt,
        reports=GateReports(live),
        chunk=True,
    )


def _verdicts(conn, schema: str, gate: str) -> dict[str, tuple]:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, success, failed_rules, result, input_hash, reused, try_number "
            f"FROM {schema}.validation_reports WHERE gate = %s AND trade_date = %s",
            (gate, D),
        )
        return {row[0]: row[1:] for row in cur.fetchall()}


def _gx_runs() -> int:
    return gx_engine.default().validations


def _counts(gate: str) -> tuple[int, int]:
    return gates.COUNTS[gate, "validated"], gates.COUNTS[gate, "reused"]


def test_an_unchanged_raw_gate_reuses_every_verdict_without_running_gx(db, source):
    conn, settings = db
    starts = _ingest(conn, settings, source)
    first = _bars_gate(conn, settings, source, starts)
    assert sorted(first.ok) == ["AAA", "BBB"] and list(first.failed) == ["CCC"]
    stored = _verdicts(conn, settings.schema, "bars")
    assert all(v[3] and not v[4] for v in stored.values())  # a hash, computed here
    runs, (validated, reused) = _gx_runs(), _counts("bars")

    again = _bars_gate(conn, settings, source, starts, attempt=RETRY)

    assert _gx_runs() == runs  # no GX run at all
    assert _counts("bars") == (validated, reused + 3)
    assert sorted(again.ok) == ["AAA", "BBB"]
    assert isinstance(again.failed["CCC"], DataQualityError)
    assert str(again.failed["CCC"]) == str(first.failed["CCC"])
    rerun = _verdicts(conn, settings.schema, "bars")
    # The same verdicts (rules, results, hashes), stamped with the retry and flagged reused.
    assert {s: v[:4] for s, v in rerun.items()} == {s: v[:4] for s, v in stored.items()}
    assert all(v[4] and v[5] == 2 for v in rerun.values())
    assert again.ok["AAA"]["warnings"] == first.ok["AAA"]["warnings"]


def test_a_changed_row_runs_gx_again_for_its_symbol_only(db, source):
    conn, settings = db
    starts = _ingest(conn, settings, source)
    _bars_gate(conn, settings, source, starts)
    with conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE {settings.schema}.raw_bars SET volume = volume + 1 "
            "WHERE symbol = 'BBB' AND trade_date = %s",
            (D,),
        )
    runs, (validated, reused) = _gx_runs(), _counts("bars")

    _bars_gate(conn, settings, source, starts, attempt=RETRY)

    assert _gx_runs() == runs + 1
    assert _counts("bars") == (validated + 1, reused + 2)
    flags = {s: v[4] for s, v in _verdicts(conn, settings.schema, "bars").items()}
    assert flags == {"AAA": True, "BBB": False, "CCC": True}


def test_a_new_acknowledgement_runs_gx_again(db, source):
    conn, settings = db
    starts = _ingest(conn, settings, source)
    _bars_gate(conn, settings, source, starts)
    acks.acknowledge(
        conn, "CCC", D, "high_ge_open_close", "vendor confirmed", schema=settings.schema
    )
    runs = _gx_runs()

    again = _bars_gate(conn, settings, source, starts, attempt=RETRY)

    assert _gx_runs() == runs + 1
    assert sorted(again.ok) == ["AAA", "BBB", "CCC"]  # the acknowledged failure now warns
    assert not _verdicts(conn, settings.schema, "bars")["CCC"][4]


def test_a_new_suite_version_runs_gx_again(db, source, monkeypatch):
    conn, settings = db
    starts = _ingest(conn, settings, source)
    _bars_gate(conn, settings, source, starts)
    monkeypatch.setattr(gates, "BARS", dataclasses.replace(gates.BARS, version="99.0.0"))
    runs, (validated, _) = _gx_runs(), _counts("bars")

    _bars_gate(conn, settings, source, starts, attempt=RETRY)

    assert _gx_runs() == runs + 1
    assert _counts("bars")[0] == validated + 3
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT DISTINCT suite_version, reused FROM {settings.schema}.validation_reports"
        )
        assert cur.fetchall() == [("99.0.0", False)]


def test_an_unchanged_indicator_gate_reuses_and_a_changed_indicator_row_does_not(db, source):
    conn, settings = db
    starts = _ingest(conn, settings, source)
    _bars_gate(conn, settings, source, starts)
    compute_indicators(conn, ["AAA", "BBB"], D, settings, starts=starts, chunk=True)
    first = _indicator_gate(conn, settings, starts)
    assert sorted(first.ok) == ["AAA", "BBB"]
    runs = _gx_runs()

    again = _indicator_gate(conn, settings, starts, attempt=RETRY)
    assert _gx_runs() == runs
    assert again.ok == first.ok
    assert all(v[4] for v in _verdicts(conn, settings.schema, "indicators").values())

    with conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE {settings.schema}.indicators SET rsi_14 = rsi_14 + 0.5 "
            "WHERE symbol = 'AAA' AND trade_date = %s",
            (D,),
        )
    _indicator_gate(conn, settings, starts, attempt=RETRY)
    assert _gx_runs() == runs + 1
    flags = {s: v[4] for s, v in _verdicts(conn, settings.schema, "indicators").items()}
    assert flags == {"AAA": False, "BBB": True}
