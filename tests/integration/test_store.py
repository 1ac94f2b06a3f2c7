"""The store against a real Postgres: migrations, append-only raw layer, upserts, the DLQ."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest

from market_pipeline import indicators, migrate, store
from market_pipeline.errors import ConfigurationError
from market_pipeline.sources.synthetic import SyntheticSource
from market_pipeline.store.bulk import clean_bars_many
from market_pipeline.store.clean import HISTORY_FRAME_COLUMNS
from tests.support.db import migrated
from tests.support.records import verdict

NOW = datetime(2024, 11, 29, 22, 0, tzinfo=UTC)


@pytest.fixture
def db(pg_schema):
    with migrated(*pg_schema) as conn:
        yield conn, pg_schema[1]


def _bars(symbol="AAPL", start=date(2024, 11, 20), end=date(2024, 11, 29)):
    return SyntheticSource().fetch(symbol, start, end)


def test_migrations_apply_once_and_are_recorded(db):
    conn, schema = db
    assert migrate.apply(conn, schema) == []
    with conn.cursor() as cur:
        cur.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY version")
        versions = [r[0] for r in cur.fetchall()]
    assert versions == [m.version for m in migrate.discover()]
    assert store.table_counts(conn, schema) == {t: 0 for t in store.table_counts(conn, schema)}


def test_every_table_read_a_session_at_a_time_is_indexed_by_session(db):
    # The tail reads every symbol's row of one session: without an index leading with
    # trade_date each such read scans the whole table (docs/benchmarks.md).
    conn, schema = db
    with conn.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_indexes WHERE schemaname = %s "
            "AND indexdef LIKE '%%USING btree (trade_date)'",
            (schema,),
        )
        indexed = {r[0] for r in cur.fetchall()}
    assert {"raw_bars", "clean_bars", "indicators", "signals", "validation_reports"} <= indexed


def test_a_migration_changed_after_it_was_applied_is_refused(db):
    conn, schema = db
    with conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE {schema}.schema_migrations SET checksum = 'x' WHERE version = '0001_init'"
        )
    with pytest.raises(RuntimeError, match="0001_init was changed after it was applied"):
        migrate.apply(conn, schema)


def test_an_identical_refetch_appends_nothing(db):
    conn, schema = db
    first = store.append_raw_bars(
        conn, "AAPL", _bars(), source="synthetic", run_id="r1", fetched_at=NOW, schema=schema
    )
    again = store.append_raw_bars(
        conn, "AAPL", _bars(), source="synthetic", run_id="r2", fetched_at=NOW, schema=schema
    )
    assert first == 7
    assert again == 0
    assert store.raw_bar_count(conn, "AAPL", schema) == 7


def test_a_restatement_appends_one_new_version_that_becomes_the_latest(db):
    conn, schema = db
    bars = _bars()
    store.append_raw_bars(
        conn, "AAPL", bars, source="synthetic", run_id="r1", fetched_at=NOW, schema=schema
    )
    restated = bars.copy()
    restated.loc[restated.index[-1], "close"] += 1.0

    added = store.append_raw_bars(
        conn, "AAPL", restated, source="synthetic", run_id="r2", fetched_at=NOW, schema=schema
    )

    latest = store.latest_raw_bars(conn, "AAPL", date(2024, 11, 29), date(2024, 11, 29), schema)
    assert added == 1
    assert store.raw_bar_count(conn, "AAPL", schema) == 8
    assert latest.version.tolist() == [2]
    assert latest.close.iloc[0] == pytest.approx(restated.close.iloc[-1])


def test_promotion_is_an_upsert_with_its_validation_record(db):
    conn, schema = db
    store.append_raw_bars(
        conn, "AAPL", _bars(), source="synthetic", run_id="r1", fetched_at=NOW, schema=schema
    )
    raw = store.latest_raw_bars(conn, "AAPL", date(2024, 11, 20), date(2024, 11, 29), schema)
    record = verdict("AAPL", date(2024, 11, 29), warnings=("stale_repeats",), result={"ok": True})

    store.promote_clean_bars(conn, "AAPL", raw, record, schema)
    store.promote_clean_bars(conn, "AAPL", raw, record, schema)

    counts = store.table_counts(conn, schema)
    assert counts["clean_bars"] == 7
    assert counts["validation_reports"] == 1
    assert store.last_clean_session(conn, "AAPL", date(2024, 11, 30), schema) == date(2024, 11, 29)
    # Session counts: up to a date, 0 for an unknown symbol, and no further than asked.
    end = date(2024, 11, 28)
    assert store.clean_session_counts(conn, ["AAPL", "NONE"], end, schema) == {"AAPL": 6, "NONE": 0}
    capped = store.clean_session_counts(conn, ["AAPL", "NONE"], end, schema, at_most=4)
    assert capped == {"AAPL": 4, "NONE": 0}


def test_a_verdict_with_nan_dates_or_numpy_values_is_stored_as_strict_json(db):
    conn, schema = db
    day = date(2024, 11, 29)
    result = {"move": float("nan"), "day": day, "count": np.int64(3), "x": np.float64(0.5)}
    store.record_validation(
        conn,
        verdict("AAPL", day, critical=("max_close_move",), result=result),
        schema,
    )

    with conn.cursor() as cur:
        cur.execute(f"SELECT result FROM {schema}.validation_reports")
        assert cur.fetchone()[0] == {"move": None, "day": "2024-11-29", "count": 3, "x": 0.5}


def test_a_chunks_verdicts_are_stored_in_one_statement_and_a_rerun_replaces_them(db):
    conn, schema = db
    day = date(2024, 11, 29)

    def record(symbol, success, try_number):
        return verdict(
            symbol,
            day,
            gate="indicators",
            critical=() if success else ("rsi_in_range",),
            result={"symbol": symbol, "try": try_number},
            try_number=try_number,
        )

    store.record_validations(conn, [record("AAA", True, 1), record("BBB", False, 1)], schema)
    store.record_validations(conn, [record("BBB", True, 2)], schema)
    with pytest.raises(ValueError, match="one verdict per"):
        store.record_validations(conn, [record("CCC", True, 1), record("CCC", False, 1)], schema)

    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, success, failed_rules, try_number, result->>'try' "
            f"FROM {schema}.validation_reports ORDER BY symbol"
        )
        rows = cur.fetchall()
    assert rows == [("AAA", True, [], 1, "1"), ("BBB", True, [], 2, "2")]


def test_clean_bars_and_indicators_round_trip_exactly_with_nan_stored_as_null(db):
    conn, schema = db
    bars = _bars(start=date(2024, 1, 2))
    store.append_raw_bars(
        conn, "AAPL", bars, source="synthetic", run_id="r1", fetched_at=NOW, schema=schema
    )
    raw = store.latest_raw_bars(conn, "AAPL", date(2024, 1, 2), date(2024, 11, 29), schema)
    record = verdict("AAPL", date(2024, 11, 29))
    store.promote_clean_bars(conn, "AAPL", raw, record, schema)
    clean = store.clean_history(conn, "AAPL", date(2024, 11, 29), 1000, schema)
    assert clean.to_dict("records") == bars.reset_index(drop=True).to_dict("records")

    frame = indicators.compute_frame(clean)
    store.upsert_indicators(conn, "AAPL", frame, indicators.INDICATOR_COLUMNS, schema)
    frame.loc[frame.index[-1], "rsi_14"] = 42.125  # an update of one row's value
    store.upsert_indicators(conn, "AAPL", frame, indicators.INDICATOR_COLUMNS, schema)

    back = store.indicator_history(
        conn, "AAPL", date(2024, 11, 29), 1000, indicators.INDICATOR_COLUMNS, schema
    )
    assert len(back) == len(frame)
    with conn.cursor() as cur:  # warm-up NaN are SQL NULL, not the float NaN
        cur.execute(f"SELECT count(*) FROM \"{schema}\".indicators WHERE sma_200 = 'NaN'")
        assert cur.fetchone()[0] == 0
        cur.execute(f'SELECT count(*) FROM "{schema}".indicators WHERE sma_200 IS NULL')
        assert cur.fetchone()[0] == frame["sma_200"].isna().sum() > 0
    for col in ("close", *indicators.INDICATOR_COLUMNS):
        got = back[col].astype("float64").to_numpy()
        want = frame[col].astype("float64").to_numpy()
        assert ((got == want) | (np.isnan(got) & np.isnan(want))).all(), col
    assert back["rsi_14"].iloc[-1] == 42.125


def test_a_chunks_indicator_histories_are_each_symbols_own_rows_oldest_first(db):
    conn, schema = db
    cols = indicators.INDICATOR_COLUMNS
    written = {}
    for symbol, start in (("AAA", date(2024, 1, 2)), ("BBB", date(2024, 6, 3))):
        bars = _bars(symbol, start=start)
        store.append_raw_bars(
            conn, symbol, bars, source="synthetic", run_id="r1", fetched_at=NOW, schema=schema
        )
        raw = store.latest_raw_bars(conn, symbol, start, date(2024, 11, 29), schema)
        record = verdict(symbol, date(2024, 11, 29))
        store.promote_clean_bars(conn, symbol, raw, record, schema)
        clean = store.clean_history(conn, symbol, date(2024, 11, 29), 1000, schema)
        written[symbol] = indicators.compute_frame(clean)
        store.upsert_indicators(conn, symbol, written[symbol], cols, schema)

    # BBB first, a symbol without rows in between: the result follows the symbols asked.
    got = store.indicator_history_many(
        conn, ["BBB", "NONE", "AAA"], date(2024, 11, 28), 30, cols, schema
    )

    assert list(got) == ["BBB", "NONE", "AAA"]
    assert got["NONE"].empty and list(got["NONE"].columns) == ["trade_date", "close", *cols]
    for symbol in ("AAA", "BBB"):
        frame = got[symbol]
        want = written[symbol][written[symbol]["trade_date"] <= date(2024, 11, 28)].tail(30)
        assert frame["trade_date"].tolist() == want["trade_date"].tolist()  # oldest first
        assert list(frame.index) == list(range(30))
        assert frame[["close", *cols]].dtypes.eq("float64").all()
        assert np.allclose(frame["close"], want["close"])
        # Young BBB has NULL (NaN) SMA200 everywhere; old AAA has it everywhere in the tail.
        assert frame["sma_200"].isna().all() == (symbol == "BBB")
        single = store.indicator_history(conn, symbol, date(2024, 11, 28), 30, cols, schema)
        assert frame.equals(single)


def test_the_long_history_frame_equals_each_symbols_own_history_even_for_symbol_na(db):
    conn, schema = db
    end = date(2024, 11, 29)
    # NA and NULL are tickers here (the CSV of a COPY must not read them as missing values).
    for symbol, start in (("NULL", date(2024, 3, 1)), ("NA", date(2024, 1, 2))):
        bars = _bars(symbol, start)
        store.append_raw_bars(
            conn, symbol, bars, source="synthetic", run_id="r1", fetched_at=NOW, schema=schema
        )
        raw = store.latest_raw_bars(conn, symbol, start, end, schema)
        store.promote_clean_bars(conn, symbol, raw, verdict(symbol, end), schema)

    frame = store.clean_history_frame(
        conn, {"NULL": end, "NONE": end, "NA": date(2024, 11, 27)}, 150, schema
    )

    assert list(frame.columns) == list(HISTORY_FRAME_COLUMNS)
    assert list(dict.fromkeys(frame["symbol"])) == ["NULL", "NA"]  # in the order asked
    for symbol, upto in (("NULL", end), ("NA", date(2024, 11, 27))):
        want = store.clean_history(conn, symbol, upto, 150, schema)
        got = frame[frame["symbol"] == symbol].reset_index(drop=True)
        assert got["trade_date"].dt.date.tolist() == want["trade_date"].tolist()
        for col in ("high", "low", "close"):  # exactly as stored
            assert got[col].tolist() == want[col].tolist(), (symbol, col)
    assert len(frame[frame["symbol"] == "NA"]) == 150
    bulk = clean_bars_many(conn, ["NA", "NULL"], schema, last=5)
    assert sorted(set(bulk["symbol"])) == ["NA", "NULL"]


def _entry(**overrides):
    fields = dict(
        dag_id="market_daily",
        run_id="r1",
        logical_date=NOW,
        trade_date=date(2024, 11, 29),
        task_id="per_symbol.ingest_bars",
        map_index=3,
        symbol="XOM",
        stage="ingest_bars",
        try_number=1,
        kind="transient",
        error_class="TransientSourceError",
        error_message="503",
    )
    fields.update(overrides)
    return store.DlqEntry(**fields)


def _resolve(conn, schema: str, **overrides) -> int:
    """``dlq_resolve`` of ``_entry``'s instance (the first try of run r1) unless overridden."""
    fields = dict(
        dag_id="market_daily",
        run_id="r1",
        task_id="per_symbol.ingest_bars",
        map_index=3,
        try_number=1,
    )
    fields.update(overrides)
    return store.dlq_resolve(conn, schema=schema, **fields)


def test_repeated_failures_of_one_instance_update_its_open_dlq_row(db):
    conn, schema = db
    store.dlq_record(conn, _entry(), schema)
    store.dlq_record(conn, _entry(try_number=2, kind="source", error_message="x" * 5000), schema)

    rows = store.dlq_open(conn, schema=schema)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row.try_number, row.kind, row.failures) == (2, "source", 2)
    assert len(row.error_message) == store.MESSAGE_LIMIT


def test_success_resolves_the_row_and_a_later_failure_opens_a_new_one(db):
    conn, schema = db
    store.dlq_record(conn, _entry(), schema)

    resolved = _resolve(conn, schema, try_number=2)
    store.dlq_record(conn, _entry(try_number=3), schema)

    assert resolved == 1
    assert len(store.dlq_open(conn, schema=schema)) == 1
    assert store.table_counts(conn, schema)["dlq"] == 2


def test_a_later_run_of_the_same_session_resolves_an_earlier_runs_row(db):
    conn, schema = db
    store.dlq_record(conn, _entry(run_id="scheduled__1"), schema)

    resolved = _resolve(
        conn, schema, run_id="manual__2", map_index=7, trade_date=date(2024, 11, 29), symbol="XOM"
    )

    assert resolved == 1
    assert store.dlq_open(conn, schema=schema).empty


def test_an_invalid_symbol_is_rejected_before_anything_is_written(db):
    conn, schema = db
    with pytest.raises(
        ConfigurationError, match=r"invalid symbol\(s\) \['TOO-LONG-TICKER', 'aapl'\]"
    ):
        store.sync_symbols(conn, ["MSFT", "aapl", "TOO-LONG-TICKER"], schema)
    assert store.active_symbols(conn, schema) == []


def test_the_universe_is_sorted_and_dropped_symbols_are_deactivated_not_deleted(db):
    conn, schema = db
    store.sync_symbols(conn, ["MSFT", "AAPL", "IBM"], schema)
    store.sync_symbols(conn, ["MSFT", "AAPL"], schema)
    assert store.active_symbols(conn, schema) == ["AAPL", "MSFT"]
    assert store.table_counts(conn, schema)["symbols"] == 3
