"""``python -m market_pipeline.summary`` against a real Postgres: what a failed day prints."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from market_pipeline import store, summary
from tests.support import records
from tests.support.db import migrated

DAY = date(2024, 11, 29)


def _entry(symbol, task_id, stage, kind, message, map_index=-1):
    return records.dlq_entry(
        symbol,
        stage,
        kind,
        task_id=task_id,
        map_index=map_index,
        message=message,
        error_class="ConfigurationError",
        run_id="scheduled__2024-11-29",
        logical_date=datetime(2024, 11, 29, 21, 30, tzinfo=UTC),
        trade_date=DAY,
    )


@pytest.fixture
def db(pg_schema):
    with migrated(*pg_schema) as conn:
        yield conn, pg_schema[1], pg_schema[0]


def _run(dsn, schema, capsys) -> tuple[int, list[str]]:
    code = summary.main(["--trade-date", DAY.isoformat(), "--schema", schema, "--dsn", dsn])
    return code, capsys.readouterr().out.splitlines()


def test_a_failed_universe_is_reported_as_unknown_not_as_the_previous_runs_count(db, capsys):
    conn, schema, dsn = db
    store.sync_symbols(conn, ["AAPL", "IBM", "MSFT"], schema)  # the previous run's universe
    store.dlq_record(
        conn,
        _entry(None, "universe", "universe", "source", "invalid symbol(s) ['aapl']"),
        schema,
    )

    code, lines = _run(dsn, schema, capsys)

    universe = next(line for line in lines if line.strip().startswith("universe"))
    assert universe.split() == ["universe", "?"]
    assert summary.stage_counts(conn, DAY, schema)["universe"] is None
    assert code == 1
    assert "the universe task failed" in lines[-1]
    assert "of 3 symbols scored" not in lines[-1]


def test_run_level_dlq_rows_print_as_run_rows_not_nan(db, capsys):
    conn, schema, dsn = db
    store.sync_symbols(conn, ["AAPL", "IBM"], schema)
    store.dlq_record(
        conn,
        _entry("IBM", "per_symbol.validate_bars", "validate_bars", "data_quality", "spike", 1),
        schema,
    )
    store.dlq_record(
        conn, _entry(None, "run_health", "run_health", "code", "1 symbol failed"), schema
    )

    code, lines = _run(dsn, schema, capsys)

    rows = lines[lines.index("DLQ open rows for the session: 2") + 1 :][:2]
    assert [r.split()[:3] for r in rows] == [
        ["IBM", "validate_bars", "data_quality"],
        ["(run)", "run_health", "code"],
    ]
    assert not any("nan" in line.split() for line in lines)
    assert code == 1
    universe = next(line for line in lines if line.strip().startswith("universe"))
    assert universe.split() == ["universe", "2"]  # the universe task itself succeeded


def test_a_session_older_than_the_served_one_counts_as_published_when_its_version_is_stored(
    db, capsys, redis_client
):
    from market_pipeline import cache
    from tests.integration.test_cache import make_snapshots

    _conn, schema, dsn = db
    prefix = f"{redis_client.test_prefix}:v1"
    later = date(2024, 12, 2)
    for day in (later, DAY):  # the later session first: DAY is then stored, not served
        cache.publish(
            redis_client,
            trade_date=day,
            run_id=f"r-{day}",
            snapshots=make_snapshots(day, 3),
            prefix=prefix,
        )
    args = ["--trade-date", DAY.isoformat(), "--schema", schema, "--dsn", dsn]

    summary.main([*args, "--cache-prefix", prefix])
    stored = capsys.readouterr().out
    summary.main([*args, "--cache-prefix", f"{prefix}:none"])
    missing = capsys.readouterr().out

    assert "2024-11-29 is stored; the pointer stays on the later session" in stored
    assert "redis does not serve this session" not in stored
    assert "redis does not serve this session" in missing
