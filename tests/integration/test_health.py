"""market_pipeline.health against a real Postgres and Redis: the reads behind the market UI."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from market_pipeline import acks, cache, health, report, store
from tests.support import records
from tests.support.db import migrated

DAY = date(2024, 11, 29)
RUN = "scheduled__2024-11-29T21:30:00+00:00"
SYMBOLS = ["AAPL", "IBM", "KO", "MSFT"]


@pytest.fixture
def db(pg_schema):
    with migrated(*pg_schema) as conn:
        store.sync_symbols(conn, SYMBOLS, pg_schema[1])
        yield conn, pg_schema[1]


def _verdict(symbol, *, gate="bars", critical=(), warnings=(), acknowledged=()):
    rows = [
        {"rule": r, "severity": "critical", "success": False, "expectation": "e", "observed": 1}
        for r in critical
    ] + [{"rule": "ohlc_order", "severity": "critical", "success": True, "expectation": "e"}]
    return records.verdict(
        symbol,
        DAY,
        gate=gate,
        critical=critical,
        warnings=warnings,
        acknowledged=acknowledged,
        result={"expectations": rows, "details": {}, "not_ready": {"sma_200": "warm-up"}},
        run_id=RUN,
        suite_version="1.1.0",
    )


def _dlq(symbol, stage, kind, map_index, message="boom"):
    return records.dlq_entry(
        symbol, stage, kind, map_index=map_index, message=message, run_id=RUN, trade_date=DAY
    )


def _red_day(conn, schema) -> None:
    """AAPL, MSFT through; IBM stopped by its raw gate; KO never delivered."""
    for s in ("AAPL", "IBM", "MSFT"):
        store.record_validation(
            conn, _verdict(s, critical=["max_close_move"] * (s == "IBM")), schema
        )
    store.dlq_record(conn, _dlq("IBM", "validate_bars", "data_quality", 1, "spike +80 %"), schema)
    store.dlq_record(conn, _dlq("KO", "validate_bars", "not_delivered", 2), schema)
    with conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {schema}.scores (trade_date, symbol, score, rank, percentile, "
            "components, computed_at) VALUES (%s, 'AAPL', 1, 1, 100, '{}', now()), "
            "(%s, 'MSFT', 0.5, 2, 50, '{}', now())",
            (DAY, DAY),
        )


def test_symbol_states_take_the_chunk_state_and_drop_a_symbol_inside_a_chunk():
    chunks = [["AAPL", "IBM"], ["KO"]]
    ti = {(stage, 0): "success" for stage in health.STAGE_IDS}
    ti[("ingest_bars", 1)] = "success"
    ti[("validate_bars", 1)] = "failed"
    open_rows = [{"symbol": "IBM", "stage": "validate_bars"}]

    states = health.symbol_states(chunks, ti, open_rows)

    assert states["AAPL"] == dict.fromkeys(health.STAGE_IDS, "success")
    assert states["IBM"]["validate_bars"] == "failed"
    assert states["IBM"]["generate_signals"] == "upstream_failed"
    assert states["KO"]["validate_bars"] == "failed"
    assert states["KO"]["compute_indicators"] == "none"  # never ran: no state yet
    assert health.map_indexes(chunks) == {"AAPL": 0, "IBM": 0, "KO": 1}


def test_trade_date_of_a_run_is_the_session_its_interval_stands_for():
    start = datetime(2024, 11, 29, 14, 30, tzinfo=UTC)
    end = datetime(2024, 11, 29, 18, 0, tzinfo=UTC)  # half day: close 13:00 New York
    assert health.trade_date_of_run(start, end, None, None) == DAY
    manual = datetime(2024, 11, 30, tzinfo=UTC)  # a Saturday, date-only: the session before
    assert health.trade_date_of_run(None, None, manual, None) == DAY
    assert health.trade_date_of_run(None, None, None, None) is None


def test_session_from_task_states_shows_map_index_failures_and_next_actions(db):
    conn, schema = db
    _red_day(conn, schema)
    chunks = [[s] for s in SYMBOLS]  # AAPL 0, IBM 1, KO 2, MSFT 3
    ti = {(stage, i): "success" for stage in health.STAGE_IDS for i in (0, 3)}
    ti |= {("ingest_bars", 1): "success", ("validate_bars", 1): "failed"}
    ti |= {("ingest_bars", 2): "success", ("validate_bars", 2): "failed"}
    ti |= {("compute_indicators", 1): "upstream_failed"}

    h = health.session_health(conn, DAY, schema=schema, chunks=chunks, ti_states=ti, run_id=RUN)

    assert h.from_task_states
    assert h.map_index == {"AAPL": 0, "IBM": 1, "KO": 2, "MSFT": 3}
    assert h.cells["IBM"]["validate_bars"] == "stopped"
    assert h.cells["IBM"]["compute_indicators"] == "upstream"
    assert h.cells["IBM"]["generate_signals"] == "not run"
    assert h.cells["KO"]["validate_bars"] == "not delivered"
    assert h.cells["AAPL"] == dict.fromkeys(health.STAGE_IDS, "passed")
    assert "spike +80 %" in h.notes["IBM"]["validate_bars"]
    assert h.failed_symbols() == ["IBM", "KO"]
    assert h.scored == 2
    assert h.counts("validate_bars") == {"passed": 2, "stopped": 1, "not delivered": 1}
    ibm = next(r for r in h.open_dlq if r["symbol"] == "IBM")
    assert h.commands[ibm["id"]] == [
        "market-recovery replay --trade-date 2024-11-29 --symbol IBM --dry-run",
        "market-recovery replay --trade-date 2024-11-29 --symbol IBM",
        'market-recovery ack IBM 2024-11-29 --gate bars --rule max_close_move --reason "..."',
    ]
    ko = next(r for r in h.open_dlq if r["symbol"] == "KO")
    assert not any("ack" in c for c in h.commands[ko["id"]])  # nothing to acknowledge


def test_session_from_tables_alone_and_a_resolved_row(db):
    conn, schema = db
    _red_day(conn, schema)
    store.dlq_resolve(
        conn,
        dag_id="market_daily",
        run_id=RUN,
        task_id="per_symbol.validate_bars",
        map_index=2,
        try_number=2,
        schema=schema,
    )

    h = health.session_health(conn, DAY, schema=schema)

    assert not h.from_task_states and h.map_index == {}
    assert h.symbols == SYMBOLS
    assert h.cells["IBM"]["validate_bars"] == "stopped"
    assert h.cells["KO"]["validate_bars"] == "not run"  # resolved, and no verdict stored
    assert [r["symbol"] for r in h.open_dlq] == ["IBM"]
    assert [r["symbol"] for r in h.resolved_dlq] == ["KO"]
    assert health.open_dlq_by_session(conn, [DAY, date(2024, 11, 27)], schema=schema) == {
        DAY: 1,
        date(2024, 11, 27): 0,
    }
    assert health.open_dlq_by_kind(conn, schema=schema) == {("data_quality", "validate_bars"): 1}
    assert [r["symbol"] for r in health.open_dlq(conn, run_id=RUN, schema=schema)] == ["IBM"]


def test_acknowledged_rule_is_a_warned_cell_and_listed_with_who_and_why(db):
    conn, schema = db
    acks.acknowledge(conn, "AAPL", DAY, "max_close_move", "merger", by="ops", schema=schema)
    store.record_validation(
        conn, _verdict("AAPL", warnings=["max_close_move"], acknowledged=["max_close_move"]), schema
    )

    h = health.session_health(conn, DAY, schema=schema)

    assert h.cells["AAPL"]["validate_bars"] == "warned"
    assert h.notes["AAPL"]["validate_bars"] == "max_close_move (acknowledged)"
    [applied] = h.acknowledged
    assert (applied["symbol"], applied["rule"], applied["acknowledged_by"]) == (
        "AAPL",
        "max_close_move",
        "ops",
    )
    assert applied["reason"] == "merger"
    assert health.gate_failures_by_rule(conn, DAY, schema=schema) == {
        ("bars", "max_close_move", "acknowledged"): 1
    }


def test_gate_failures_by_rule_split_critical_from_warning(db):
    conn, schema = db
    store.record_validation(
        conn, _verdict("IBM", critical=["max_close_move"], warnings=["volume_spike"]), schema
    )
    assert health.gate_failures_by_rule(conn, DAY, schema=schema) == {
        ("bars", "max_close_move", "critical"): 1,
        ("bars", "volume_spike", "warning"): 1,
    }


def test_stored_verdicts_render_as_the_gx_report(db):
    conn, schema = db
    store.record_validation(
        conn, _verdict("IBM", critical=["max_close_move"], warnings=["volume_spike"]), schema
    )

    [(result, meta)] = health.gate_results(conn, "bars", ["IBM", "KO"], DAY, schema=schema)

    assert (result.symbol, result.success) == ("IBM", False)
    assert result.critical_failures == ("max_close_move",)
    assert result.warnings == ("volume_spike",)
    assert result.not_ready == {"sma_200": "warm-up"}
    assert (meta["run_id"], meta["try_number"]) == (RUN, 1)
    page = report.render_html([result], title="IBM")
    assert "FAIL" in page and "max_close_move" in page and "sma_200: warm-up" in page


def test_serving_scores_and_snapshots_through_the_pointer(redis_client):
    prefix = redis_client.test_prefix
    assert health.serving(redis_client, prefix=prefix) is None
    snaps = [
        {"symbol": s, "trade_date": DAY.isoformat(), "score": score}
        for s, score in (("AAPL", 2.0), ("IBM", 1.0), ("KO", 3.0))
    ]
    manifest = cache.publish(
        redis_client, trade_date=DAY, run_id=RUN, snapshots=snaps, prefix=prefix
    )
    close = datetime(2024, 11, 29, 18, 0, tzinfo=UTC)  # half day

    served = health.serving(redis_client, prefix=prefix, now=close.replace(hour=20))

    assert (served.version, served.trade_date, served.symbol_count) == (manifest.version, DAY, 3)
    assert served.session_close == close
    assert served.session_age_seconds == 7200.0
    assert health.top_scores(redis_client, 2, prefix=prefix) == [
        {"rank": 1, "symbol": "KO", "score": 3.0},
        {"rank": 2, "symbol": "AAPL", "score": 2.0},
    ]
    assert health.snapshot(redis_client, "IBM", prefix=prefix)["score"] == 1.0
    assert health.snapshot(redis_client, "XOM", prefix=prefix) is None


@pytest.mark.parametrize("n", [0, -1, health.MAX_TOP_N + 1, True, "5"])
def test_top_scores_rejects_n_out_of_bounds(redis_client, n):
    with pytest.raises(health.InvalidRequest, match="expected n between 1 and"):
        health.top_scores(redis_client, n, prefix=redis_client.test_prefix)


@pytest.mark.parametrize("symbol", ["", "aapl", "A" * 11, "AAPL;DROP", "../x"])
def test_snapshot_rejects_what_is_not_a_ticker(redis_client, symbol):
    with pytest.raises(health.InvalidRequest, match="expected a ticker matching"):
        health.snapshot(redis_client, symbol, prefix=redis_client.test_prefix)
