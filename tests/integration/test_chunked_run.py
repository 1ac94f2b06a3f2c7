"""market_daily with several symbols per task instance (market_symbols_per_task > 1).

One `airflow dags test` run of the 20 sample symbols in chunks of 6 (4 map indexes:
AAPL..DIS, GOOG..JPM, KO..PG, WMT..XOM), with a defect in each chunk, shows per-symbol
isolation inside a chunk: each bad symbol gets its own DLQ row under its chunk's map index,
its chunk-mates are scored and published, a transient failure retries the chunk, a chunk in
which every symbol failed fails as a task, and run_health names every failed symbol. A
second run of the same session without the defects heals every row.
"""

from __future__ import annotations

import sqlite3

import pytest
import redis

from tests.support.airflow_home import make_airflow_home
from tests.support.db import drop_namespace
from tests.support.db import rows as _rows

GROUP = "per_symbol"
DAY = "2024-11-29"
CHUNKS = {
    0: ("AAPL", "AMZN", "BAC", "CSCO", "CVX", "DIS"),
    1: ("GOOG", "HD", "IBM", "INTC", "JNJ", "JPM"),
    2: ("KO", "MSFT", "NVDA", "ORCL", "PFE", "PG"),
    3: ("WMT", "XOM"),
}
DEFECTS = {
    "DIS": "late",  # never delivered: dropped after the late grace period
    "IBM": "negative_price",  # a critical rule of the raw-bar gate
    "KO": "unavailable",  # transient: the chunk is retried, then KO alone is dropped
    "WMT": "unknown_symbol",  # with XOM: every symbol of chunk 3 fails ingestion
    "XOM": "unknown_symbol",
}
EXPECTED_DLQ = {
    ("DIS", "wait_for_bars", "not_delivered", 0),
    ("IBM", "validate_bars", "data_quality", 1),
    ("KO", "ingest_bars", "transient", 2),
    ("WMT", "ingest_bars", "source", 3),
    ("XOM", "ingest_bars", "source", 3),
}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, pg_dsn, redis_url, airflow_home_template):
    """Run the defective day, then the healed day; yields what each left behind."""
    home = make_airflow_home(tmp_path_factory.mktemp("airflow_chunks"), airflow_home_template)
    home.extra_env["MARKET_RETRY_BASE_SECONDS"] = "1"
    settings = {
        "market_symbols_per_task": "6",
        "market_late_grace_seconds": "2",
        "market_quorum": "0.5",
    }
    try:
        spec = ",".join(f"{s}:{d}" for s, d in DEFECTS.items())
        bad = home.dags_test(DAY, market_synthetic_defects=spec, **settings)
        seen = {
            "proc": bad,
            "states": home.task_states(),
            "tries": _tries(home),
            "labels": _labels(home),
            "run_state": home.run_state()[1],
            "dlq": _rows(
                pg_dsn,
                f"SELECT symbol, stage, kind, map_index, try_number, "
                f"error_message FROM {home.schema}.dlq "
                "WHERE resolved_at IS NULL ORDER BY symbol",
            ),
            "scored": {
                r[0]
                for r in _rows(
                    pg_dsn, f"SELECT symbol FROM {home.schema}.scores WHERE trade_date='{DAY}'"
                )
            },
            "clean": {
                r[0]
                for r in _rows(
                    pg_dsn, f"SELECT symbol FROM {home.schema}.clean_bars WHERE trade_date='{DAY}'"
                )
            },
            "cached": _cached_count(redis_url, home.cache_prefix),
            "log": bad.stdout + bad.stderr,
        }
        healed = home.dags_test(DAY, **settings)
        seen["healed"] = {
            "proc": healed,
            "states": home.task_states(),
            "open_dlq": _rows(
                pg_dsn, f"SELECT symbol FROM {home.schema}.dlq WHERE resolved_at IS NULL"
            ),
            "resolved": _rows(
                pg_dsn, f"SELECT count(*) FROM {home.schema}.dlq WHERE resolved_at IS NOT NULL"
            )[0][0],
            "scored": _rows(
                pg_dsn, f"SELECT count(*) FROM {home.schema}.scores WHERE trade_date='{DAY}'"
            )[0][0],
            "cached": _cached_count(redis_url, home.cache_prefix),
        }
        yield seen
    finally:
        drop_namespace(pg_dsn, redis_url, home.schema, home.cache_prefix)


def _tries(home) -> dict[tuple[str, int], int]:
    with sqlite3.connect(home.path / "airflow.db") as db:
        run_id = db.execute("SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1").fetchone()[0]
        rows = db.execute(
            "SELECT task_id, map_index, try_number FROM task_instance WHERE run_id=?", (run_id,)
        ).fetchall()
    return {(t, i): n for t, i, n in rows}


def _labels(home) -> dict[int, str]:
    with sqlite3.connect(home.path / "airflow.db") as db:
        run_id = db.execute("SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1").fetchone()[0]
        rows = db.execute(
            "SELECT map_index, rendered_map_index FROM task_instance WHERE run_id=? AND task_id=?",
            (run_id, f"{GROUP}.ingest_bars"),
        ).fetchall()
    return dict(rows)


def _cached_count(redis_url, prefix) -> int | None:
    from market_pipeline import cache

    client = redis.Redis.from_url(redis_url)
    try:
        manifest = cache.latest_manifest(client, prefix=prefix)
    finally:
        client.close()
    return manifest.symbol_count if manifest else None


def test_the_universe_is_cut_into_labelled_chunks_one_map_index_each(chunked):
    assert chunked["labels"] == {0: "AAPL..DIS", 1: "GOOG..JPM", 2: "KO..PG", 3: "WMT..XOM"}


def test_each_bad_symbol_has_its_own_dlq_row_under_its_chunks_map_index(chunked):
    dlq = {(s, stage, kind, index) for s, stage, kind, index, _, _ in chunked["dlq"]}

    assert dlq == EXPECTED_DLQ
    messages = {s: m for s, _, _, _, _, m in chunked["dlq"]}
    assert "low_positive" in messages["IBM"] or "price" in messages["IBM"], messages["IBM"]
    assert "IBM" in messages["IBM"]
    assert "grace" in messages["DIS"]


def test_chunk_mates_of_a_bad_symbol_are_gated_scored_and_published(chunked):
    failed = set(DEFECTS)
    good = {s for chunk in CHUNKS.values() for s in chunk} - failed

    assert chunked["scored"] == good
    assert chunked["clean"] == good  # the gate promoted no bad symbol's bar
    assert chunked["cached"] == len(good)


def test_a_transient_failure_retries_the_chunk_and_then_drops_only_that_symbol(chunked):
    tries = chunked["tries"]
    states = chunked["states"]

    assert tries[(f"{GROUP}.ingest_bars", 2)] == 4  # 1 try + 3 retries
    assert states[(f"{GROUP}.ingest_bars", 2)] == "success"
    assert states[(f"{GROUP}.generate_signals", 2)] == "success"
    ko = next(row for row in chunked["dlq"] if row[0] == "KO")
    assert ko[4] == 4  # recorded by the last try
    assert tries[(f"{GROUP}.ingest_bars", 1)] == 1  # a permanent failure is never retried


def test_a_chunk_whose_every_symbol_failed_fails_its_task_and_stops_its_chain(chunked):
    states = chunked["states"]

    assert states[(f"{GROUP}.ingest_bars", 3)] == "failed"
    assert chunked["tries"][(f"{GROUP}.ingest_bars", 3)] == 1
    for task in (
        "wait_for_bars",
        "validate_bars",
        "compute_indicators",
        "validate_indicators",
        "generate_signals",
    ):
        assert states[(f"{GROUP}.{task}", 3)] == "upstream_failed"


def test_run_health_turns_the_day_red_naming_every_failed_symbol(chunked):
    states = chunked["states"]

    assert chunked["run_state"] == "failed"
    assert states[("quorum_gate", -1)] == "success"
    assert states[("verify_cache", -1)] == "success"
    assert states[("run_health", -1)] == "failed"
    assert "5 of 20 symbols failed" in chunked["log"]
    for symbol, stage, *_ in EXPECTED_DLQ:
        assert f"{symbol} at {stage}" in chunked["log"]


def test_a_later_run_of_the_session_without_the_defects_heals_every_symbol(chunked):
    healed = chunked["healed"]

    assert healed["proc"].returncode == 0, healed["proc"].stdout[-4000:]
    assert set(healed["states"].values()) == {"success"}
    assert healed["open_dlq"] == []
    assert healed["resolved"] == len(EXPECTED_DLQ)
    assert healed["scored"] == 20
    assert healed["cached"] == 20
