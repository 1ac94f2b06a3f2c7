"""The stages' use cases (market_pipeline.stages) against a real Postgres and Redis, no Airflow.

Each use case takes a connection, the symbols, the session and Settings; these tests call
them as the Airflow tasks do, and check what they wrote and what their Outcome says.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from market_pipeline import indicators, store
from market_pipeline.config import HISTORY_SESSIONS
from market_pipeline.errors import DataQualityError, NotDeliveredError, PermanentSourceError
from market_pipeline.sources.synthetic import SyntheticSource
from market_pipeline.stages import SYMBOL_TASKS, TAIL_TASKS
from market_pipeline.stages.compute_indicators import compute_indicators
from market_pipeline.stages.ingest_bars import RawWindows, ingest_bars
from market_pipeline.stages.publish_cache import publish_cache
from market_pipeline.stages.quorum_gate import QuorumError, quorum_gate
from market_pipeline.stages.reports import GateReports
from market_pipeline.stages.run_health import RunHealthError, run_health
from market_pipeline.stages.score_universe import score_universe
from market_pipeline.stages.settings import Attempt, Settings
from market_pipeline.stages.universe import universe
from market_pipeline.stages.validate_bars import validate_bars
from market_pipeline.stages.verify_cache import verify_cache
from market_pipeline.stages.wait_for_bars import wait_for_bars
from tests.support import records
from tests.support.chain import after_raw_gate
from tests.support.db import migrated

D = date(2024, 11, 29)
ATTEMPT = Attempt(run_id="scheduled__2024-11-29", try_number=1)


@pytest.fixture
def db(pg_schema, tmp_path, monkeypatch):
    """A migrated schema; gate pages under ``tmp_path``. Yields (conn, settings)."""
    monkeypatch.setenv("MARKET_REPORT_DIR", str(tmp_path))
    monkeypatch.delenv("MARKET_REPORT_BASE_URL", raising=False)
    with migrated(*pg_schema) as conn:
        yield conn, Settings(schema=pg_schema[1], exchange="XNYS", history_sessions=60)


def _count(conn, schema: str, table: str, symbol: str) -> int:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema}.{table} WHERE symbol = %s", (symbol,))
        return cur.fetchone()[0]


def _ingest(conn, settings, symbols, source):
    store.ensure_symbols(conn, symbols, schema=settings.schema)
    out = ingest_bars(
        conn, symbols, D, settings, source=source, attempt=ATTEMPT, chunk=len(symbols) > 1
    )
    return {s: date.fromisoformat(r["window_start"]) for s, r in out.ok.items()}


def _gate(conn, settings, symbols, source, *, links, grace_over=False):
    """Ingest, wait for D, then gate ``symbols`` as the tasks would: (window starts, the
    outcome; ``None`` while the sensor would poke again)."""
    starts = _ingest(conn, settings, symbols, source)
    chunk = len(symbols) > 1
    waited = wait_for_bars(
        conn,
        sorted(starts),
        D,
        settings,
        windows=RawWindows(starts, open_source=lambda: source, attempt=ATTEMPT),
        chunk=chunk,
        late_grace_over=lambda: grace_over,
        where=lambda s: f"file /drop/{s}.csv",
    )
    if waited is None:
        return starts, None
    out = _judge(conn, settings, sorted(waited.ok), starts, source, links=links, chunk=chunk)
    return starts, out.absorb(waited)


def _judge(conn, settings, symbols, starts, source, *, links, chunk, ask_again=(), attempt=None):
    return validate_bars(
        conn,
        symbols,
        D,
        settings,
        windows=RawWindows(starts, open_source=lambda: source, attempt=attempt or ATTEMPT),
        reports=GateReports(symbols, link=links.append),
        chunk=chunk,
        ask_again=ask_again,
    )


def test_a_bad_bar_fails_only_its_symbol_and_nothing_of_it_is_promoted(db):
    conn, settings = db
    links: list[str] = []
    source = SyntheticSource(defects={"BBB": "negative_price"})

    _, out = _gate(conn, settings, ["AAA", "BBB"], source, links=links)

    assert isinstance(out.failed["BBB"], DataQualityError)
    assert sorted(out.ok) == ["AAA"]
    assert out.ok["AAA"]["promoted"] == _count(conn, settings.schema, "clean_bars", "AAA") > 0
    assert _count(conn, settings.schema, "clean_bars", "BBB") == 0
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, success FROM {settings.schema}.validation_reports "
            "WHERE gate = 'bars' AND trade_date = %s ORDER BY symbol",
            (D,),
        )
        assert cur.fetchall() == [("AAA", True), ("BBB", False)]
    # A chunk links one page with both verdicts; only the failed symbol has a page of its own.
    assert len(links) == 1 and links[0].endswith("/gx/bars_AAA..BBB.html")
    chunk_page = Path(links[0].removeprefix("file://"))
    assert "AAA" in chunk_page.read_text() and "BBB" in chunk_page.read_text()
    assert out.ok["AAA"]["report"] is None
    assert sorted(p.name for p in chunk_page.parent.glob("bars_*.html")) == [
        "bars_AAA..BBB.html",
        "bars_BBB.html",
    ]


def test_one_symbol_alone_fails_its_gate_after_linking_its_page(db):
    conn, settings = db
    links: list[str] = []
    source = SyntheticSource(defects={"BBB": "spike"})

    with pytest.raises(DataQualityError, match="max_close_move"):
        _gate(conn, settings, ["BBB"], source, links=links)

    assert len(links) == 1 and links[0].endswith("/gx/bars_BBB.html")
    assert _count(conn, settings.schema, "clean_bars", "BBB") == 0


def _stored_indicators(conn, schema: str, symbol: str) -> list[tuple]:
    cols = ", ".join(indicators.INDICATOR_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT trade_date, close, {cols} FROM {schema}.indicators WHERE symbol = %s "
            "ORDER BY trade_date",
            (symbol,),
        )
        return cur.fetchall()


def _one_symbol_at_a_time(conn, schema: str, symbol: str, start: date) -> list[tuple]:
    history = store.clean_history(conn, symbol, D, HISTORY_SESSIONS, schema=schema)
    frame = indicators.compute_frame(history)
    frame = frame[frame["trade_date"] >= start]
    return [
        tuple(None if v != v else v for v in row)  # NaN is stored as NULL
        for row in frame[["trade_date", "close", *indicators.INDICATOR_COLUMNS]].itertuples(
            index=False
        )
    ]


@pytest.mark.parametrize("one_call", [True, False], ids=["one-kernel-call", "per-symbol-fallback"])
def test_a_chunks_indicators_equal_one_symbol_at_a_time_and_a_missing_bar_fails_alone(
    db, monkeypatch, one_call
):
    conn, settings = db
    starts, gated = _gate(conn, settings, ["AAA", "BBB"], SyntheticSource(), links=[])
    assert sorted(gated.ok) == ["AAA", "BBB"]
    store.ensure_symbols(conn, ["NEW"], schema=settings.schema)  # no clean bar at all
    if not one_call:  # the chunk's single kernel call fails: each symbol is computed alone

        def broken(bars, **kwargs):
            raise DataQualityError("compute_universe: expected one bar per (symbol, trade_date)")

        monkeypatch.setattr(indicators, "compute_universe", broken)

    out = compute_indicators(
        conn,
        ["AAA", "BBB", "NEW"],
        D,
        settings,
        starts={**starts, "NEW": D},
        chunk=True,
    )

    assert sorted(out.ok) == ["AAA", "BBB"] and list(out.failed) == ["NEW"]
    assert f"expected a clean bar for {D} before computing indicators, found none" in str(
        out.failed["NEW"]
    )
    for symbol in ("AAA", "BBB"):
        expected = _one_symbol_at_a_time(conn, settings.schema, symbol, starts[symbol])
        assert out.ok[symbol] == {"rows": len(expected), "window_start": starts[symbol].isoformat()}
        assert _stored_indicators(conn, settings.schema, symbol) == expected
    assert _stored_indicators(conn, settings.schema, "NEW") == []


def test_signals_read_only_the_last_rows_yet_say_how_many_sessions_a_warming_symbol_has(db):
    conn, settings = db
    starts, gated = _gate(conn, settings, ["AAA", "BBB"], SyntheticSource(), links=[])

    out = after_raw_gate(conn, settings, sorted(gated.ok), starts, D, ATTEMPT)

    assert sorted(out.ok) == ["AAA", "BBB"]
    rows = store.indicator_session_counts(conn, ["AAA", "BBB"], D, schema=settings.schema)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, ready, reasons FROM {settings.schema}.signals "
            "WHERE trade_date = %s AND rule = 'golden_cross' ORDER BY symbol",
            (D,),
        )
        found = cur.fetchall()
    # 60 sessions of history: SMA200 is warming up, and the verdict counts every row.
    assert [(s, ready) for s, ready, _ in found] == [("AAA", False), ("BBB", False)]
    for symbol, _, reasons in found:
        assert 2 < rows[symbol] < 201
        assert reasons["not_ready"] == f"sma_200 needs 201 sessions, have {rows[symbol]}"
        assert reasons["sessions_available"] == rows[symbol]


def test_the_raw_gate_waits_for_a_late_bar_until_the_chunk_grace_is_over(db):
    conn, settings = db
    source = SyntheticSource(defects={"BBB": "late"})

    _, waiting = _gate(conn, settings, ["AAA", "BBB"], source, links=[])
    assert waiting is None
    assert _count(conn, settings.schema, "clean_bars", "AAA") == 0

    _, out = _gate(conn, settings, ["AAA", "BBB"], source, links=[], grace_over=True)
    assert isinstance(out.failed["BBB"], NotDeliveredError)
    assert str(out.failed["BBB"]).startswith(
        f"expected the bar for {D} within the late grace period, found none from file /drop/BBB.csv"
    )
    assert str(out.failed["BBB"]).endswith(
        "— next: fix the delivery and clear per_symbol.wait_for_bars[BBB] with downstream"
    )
    assert sorted(out.ok) == ["AAA"]
    assert _count(conn, settings.schema, "clean_bars", "AAA") > 0


def _raw_versions(conn, schema: str, symbol: str) -> list[int]:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT version FROM {schema}.raw_bars WHERE symbol = %s AND trade_date = %s "
            "ORDER BY version",
            (symbol, D),
        )
        return [v for (v,) in cur.fetchall()]


def test_the_gate_run_again_asks_the_source_and_judges_a_corrected_delivery(db):
    conn, settings = db
    bad = SyntheticSource(defects={"BBB": "negative_price"})
    with pytest.raises(DataQualityError, match="positive_prices") as failed:
        _gate(conn, settings, ["BBB"], bad, links=[])
    assert str(failed.value).endswith(
        "— next: fix the delivery and clear per_symbol.validate_bars[BBB] with downstream"
    )
    starts = {"BBB": _ingest(conn, settings, ["BBB"], bad)["BBB"]}
    again = Attempt(run_id=ATTEMPT.run_id, try_number=2)

    # Unchanged delivery: asked again, nothing appended, the same verdict.
    with pytest.raises(DataQualityError, match="positive_prices"):
        _judge(conn, settings, ["BBB"], starts, bad, links=[], chunk=False, ask_again={"BBB"})
    assert _raw_versions(conn, settings.schema, "BBB") == [1]

    # Corrected delivery: a new raw version, judged and promoted.
    out = _judge(
        conn, settings, ["BBB"], starts, SyntheticSource(), links=[], chunk=False,
        ask_again={"BBB"}, attempt=again,
    )  # fmt: skip
    assert sorted(out.ok) == ["BBB"]
    assert _raw_versions(conn, settings.schema, "BBB") == [1, 2]
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT r.version FROM {settings.schema}.clean_bars c JOIN {settings.schema}.raw_bars"
            " r ON r.id = c.raw_bar_id WHERE c.symbol = 'BBB' AND c.trade_date = %s",
            (D,),
        )
        assert cur.fetchall() == [(2,)]
        cur.execute(
            f"SELECT try_number, outcome, rows_appended FROM {settings.schema}.fetch_audit "
            "WHERE symbol = 'BBB' ORDER BY id"
        )
        assert cur.fetchall()[-2:] == [(1, "ok", 0), (2, "ok", 1)]


def test_a_chunk_run_again_asks_the_source_once_for_all_and_isolates_a_failed_fetch(db):
    conn, settings = db
    symbols = ["AAA", "BBB", "CCC"]
    first = SyntheticSource(defects={"BBB": "negative_price"})
    starts, out = _gate(conn, settings, symbols, first, links=[])
    assert sorted(out.ok) == ["AAA", "CCC"] and isinstance(out.failed["BBB"], DataQualityError)

    # The chunk is cleared: BBB's delivery is corrected, CCC's vendor now refuses it.
    again = Attempt(run_id=ATTEMPT.run_id, try_number=2)
    opened: list[SyntheticSource] = []

    def open_source():
        opened.append(SyntheticSource(defects={"CCC": "unknown_symbol"}))
        return opened[-1]

    out = validate_bars(
        conn,
        symbols,
        D,
        settings,
        windows=RawWindows(starts, open_source=open_source, attempt=again),
        reports=GateReports(symbols, link=lambda url: None),
        chunk=True,
        ask_again=set(symbols),
    )

    assert len(opened) == 1  # one source for the whole chunk
    assert sorted(out.ok) == ["AAA", "BBB"]
    assert isinstance(out.failed["CCC"], PermanentSourceError)
    assert _raw_versions(conn, settings.schema, "AAA") == [1]  # unchanged: nothing appended
    assert _raw_versions(conn, settings.schema, "BBB") == [1, 2]  # corrected: version 2
    assert _count(conn, settings.schema, "clean_bars", "BBB") > 0
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, outcome, error_kind FROM {settings.schema}.fetch_audit "
            "WHERE try_number = 2 ORDER BY symbol"
        )
        assert cur.fetchall() == [
            ("AAA", "ok", None),
            ("BBB", "ok", None),
            ("CCC", "error", "source"),
        ]


def test_a_gate_that_is_not_asked_again_does_not_call_the_source(db):
    conn, settings = db
    source = SyntheticSource()
    starts = _ingest(conn, settings, ["AAA"], source)

    def no_source():
        raise AssertionError("the first run of the gate must not call the source")

    out = validate_bars(
        conn,
        ["AAA"],
        D,
        settings,
        windows=RawWindows(starts, open_source=no_source, attempt=ATTEMPT),
        reports=GateReports(["AAA"], link=lambda url: None),
        chunk=False,
    )
    assert sorted(out.ok) == ["AAA"]


def test_a_source_error_in_a_chunk_is_kept_and_audited(db):
    conn, settings = db
    source = SyntheticSource(defects={"BBB": "unknown_symbol"})
    store.sync_symbols(conn, ["AAA", "BBB"], schema=settings.schema)

    out = ingest_bars(conn, ["AAA", "BBB"], D, settings, source=source, attempt=ATTEMPT, chunk=True)

    assert isinstance(out.failed["BBB"], PermanentSourceError)
    assert out.ok["AAA"]["delivered"] and out.ok["AAA"]["appended"] > 0
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT outcome, error_kind FROM {settings.schema}.fetch_audit WHERE symbol = 'BBB'"
        )
        assert cur.fetchall() == [("error", "source")]
        cur.execute(
            f"SELECT outcome, rows_appended FROM {settings.schema}.fetch_audit WHERE symbol = 'AAA'"
        )
        assert cur.fetchall() == [("ok", out.ok["AAA"]["appended"])]  # one row per attempt


def test_a_source_error_of_a_lone_symbol_is_audited_and_fails_the_task(db):
    conn, settings = db
    source = SyntheticSource(defects={"BBB": "unknown_symbol"})
    store.sync_symbols(conn, ["BBB"], schema=settings.schema)

    with pytest.raises(PermanentSourceError):
        ingest_bars(conn, ["BBB"], D, settings, source=source, attempt=ATTEMPT, chunk=False)

    with conn.cursor() as cur:
        cur.execute(f"SELECT outcome, error_kind FROM {settings.schema}.fetch_audit")
        assert cur.fetchall() == [("error", "source")]
        cur.execute(f"SELECT count(*) FROM {settings.schema}.raw_bars")
        assert cur.fetchone() == (0,)


def test_a_chunk_ingested_again_unchanged_appends_nothing_and_a_restated_bar_one_version(db):
    conn, settings = db
    store.sync_symbols(conn, ["AAA", "BBB"], schema=settings.schema)
    first = ingest_bars(
        conn, ["AAA", "BBB"], D, settings, source=SyntheticSource(), attempt=ATTEMPT, chunk=True
    )
    assert all(r["appended"] > 0 for r in first.ok.values())

    again = ingest_bars(
        conn, ["AAA", "BBB"], D, settings, source=SyntheticSource(), attempt=ATTEMPT, chunk=True
    )
    defective = SyntheticSource(defects={"BBB": "negative_price"})
    restated = ingest_bars(
        conn, ["AAA", "BBB"], D, settings, source=defective, attempt=ATTEMPT, chunk=True
    )

    assert {s: r["appended"] for s, r in again.ok.items()} == {"AAA": 0, "BBB": 0}
    assert restated.ok["AAA"]["appended"] == 0 and restated.ok["BBB"]["appended"] >= 1
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, max(version) FROM {settings.schema}.raw_bars GROUP BY symbol "
            "ORDER BY symbol"
        )
        assert cur.fetchall() == [("AAA", 1), ("BBB", 2)]


def test_the_use_cases_run_a_whole_day_without_airflow(db, redis_client):
    conn, base = db
    settings = Settings(
        schema=base.schema,
        cache_prefix=redis_client.test_prefix,
        exchange="XNYS",
        history_sessions=60,
        universe="AAA,BBB,CCC",
        symbols_per_task=2,
        quorum=0.6,
    )
    source = SyntheticSource(defects={"CCC": "high_below_close"})

    chunks = universe(conn, D, settings)
    assert chunks == [["AAA", "BBB"], ["CCC"]]
    passed_chain = []
    for chunk in chunks:
        links: list[str] = []
        is_chunk = len(chunk) > 1
        try:
            starts, gated = _gate(conn, settings, chunk, source, links=links)
        except DataQualityError:
            assert chunk == ["CCC"]  # one symbol per task: its error fails the task
            store.dlq_record(conn, _dlq_entry("CCC", "validate_bars", 1), schema=settings.schema)
            continue
        signalled = after_raw_gate(
            conn, settings, gated.ok, starts, D, ATTEMPT, chunk=is_chunk, link=links.append
        )
        passed_chain += sorted(signalled.ok)
    assert passed_chain == ["AAA", "BBB"]

    states = {(t, 0): "success" for t in SYMBOL_TASKS}
    states.update({(t, 1): "upstream_failed" for t in SYMBOL_TASKS[3:]})
    states.update({("ingest_bars", 1): "success", ("wait_for_bars", 1): "success"})
    states[("validate_bars", 1)] = "failed"
    quorum = quorum_gate(conn, chunks, D, settings, task_states=states, attempt=ATTEMPT)
    assert quorum["passed"] == ["AAA", "BBB"] and quorum["failed"] == ["CCC"]
    with pytest.raises(QuorumError, match="expected at least 90% of 3 symbols"):
        strict = Settings(schema=settings.schema, quorum=0.9)
        quorum_gate(conn, chunks, D, strict, task_states=states, attempt=ATTEMPT)

    scored = score_universe(conn, quorum["passed"], D, settings)
    published = publish_cache(conn, redis_client, D, settings, attempt=ATTEMPT)
    verified = verify_cache(conn, redis_client, D, settings)
    # 60 sessions of history: sma_200 is not ready, so both are served unranked.
    assert published["symbol_count"] == verified["verified"] == 2
    assert scored["scored"] == published["ranked_count"] == verified["ranked"] == 0
    assert sorted(scored["unranked"]) == ["AAA", "BBB"]

    with pytest.raises(RunHealthError, match="1 of 3 symbols failed: CCC at validate_bars"):
        _run_health(conn, chunks, settings, states)
    day = Path(_report_dir()) / "market_daily" / D.isoformat()
    page = (day / "index.html").read_text()
    # A chunk's passed symbols have no GX page of their own: the run page links their
    # section of the chunk's page; a symbol alone (CCC) links its own.
    assert not (day / "gx" / "bars_AAA.html").exists()
    for gate in ("bars", "indicators"):
        chunk_page = day / "gx" / f"{gate}_AAA..BBB.html"
        for symbol in ("AAA", "BBB"):
            section = f"{gate}-{symbol}-{D.isoformat()}"
            assert f'href="gx/{gate}_AAA..BBB.html#{section}"' in page
            assert f'id="{section}"' in chunk_page.read_text()
    assert 'href="gx/bars_CCC.html"' in page


def test_run_health_records_a_failure_no_callback_saw(db):
    conn, settings = db
    chunks = [["AAA"], ["BBB"]]
    states = {(t, 0): "success" for t in SYMBOL_TASKS}
    states.update({(t, 1): "upstream_failed" for t in SYMBOL_TASKS})

    with pytest.raises(RunHealthError, match="BBB at ingest_bars"):
        _run_health(conn, chunks, settings, states)

    rows = store.dlq_open(conn, run_id=ATTEMPT.run_id, schema=settings.schema)
    assert rows[["symbol", "task_id", "map_index", "kind"]].to_dict("records") == [
        {"symbol": "BBB", "task_id": "per_symbol.ingest_bars", "map_index": 1, "kind": "upstream"}
    ]


def _run_health(conn, chunks, settings, states) -> dict:
    """run_health after a tail that completed."""
    tail = dict.fromkeys(TAIL_TASKS, "success")
    return run_health(
        conn, chunks, D, settings, task_states=states, tail_states=tail, attempt=ATTEMPT
    )


def _report_dir() -> str:
    import os

    return os.environ["MARKET_REPORT_DIR"]


def _dlq_entry(symbol: str, stage: str, index: int) -> store.DlqEntry:
    return records.dlq_entry(
        symbol,
        stage,
        "data_quality",
        map_index=index,
        message="critical expectations failed",
        error_class="DataQualityError",
        run_id=ATTEMPT.run_id,
        trade_date=D,
        dag_id=ATTEMPT.dag_id,
    )
