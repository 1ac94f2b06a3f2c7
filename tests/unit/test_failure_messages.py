"""DLQ messages a person can act on: the error class is always shown, and a bar that never
came names the source and the file it was waited for. Real Postgres DLQ; the failure callback
runs in its own process, as in a task, with the deployment's schema in MARKET_SCHEMA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import psycopg2
import pytest

from market_pipeline import recovery, run_report, store
from tests.support import records
from tests.support.db import migrated

ROOT = Path(__file__).resolve().parents[2]
RUN = "scheduled__2024-11-29T14:30:00+00:00"
DAY = date(2024, 11, 29)

# Airflow calls on_failure_callback with the task instance's context; this is its subset the
# callback reads, built in a process of its own so MARKET_SCHEMA applies as in a deployment.
CALLBACK = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSensorTimeout
    from market_airflow import callbacks

    exceptions = {
        "KeyError": KeyError(-1),
        "AirflowSensorTimeout": AirflowSensorTimeout(
            "Sensor has timed out; run duration of 14400 seconds is more than the specified "
            "timeout of 14400."
        ),
    }
    for failure in sys.argv[2:]:  # TASK:EXCEPTION, one failed instance each
        task, error = failure.split(":")
        callbacks.record_failure(
            {
                "ti": SimpleNamespace(
                    dag_id="market_daily", run_id=sys.argv[1], task_id=f"per_symbol.{task}",
                    map_index=4, try_number=1, rendered_map_index="IBM",
                ),
                "exception": exceptions[error],
                "dag_run": SimpleNamespace(logical_date=None),
                "data_interval_start": datetime(2024, 11, 29, 14, 30, tzinfo=timezone.utc),
                "data_interval_end": datetime(2024, 11, 29, 18, 0, tzinfo=timezone.utc),
                "symbol": "IBM",
            }
        )
    """
)


@pytest.fixture
def dlq_schema(pg_schema):
    with migrated(*pg_schema):
        return pg_schema


def _fail(dsn, schema, *failures: str, **env) -> None:
    subprocess.run(
        [sys.executable, "-c", CALLBACK, RUN, *failures],
        env={**os.environ, "AIRFLOW_CONN_MARKET_DB": dsn, "MARKET_SCHEMA": schema, **env},
        check=True,
        timeout=600,
    )


def _open_rows(dsn, schema) -> list[dict]:
    conn = psycopg2.connect(dsn)
    try:
        return recovery.dlq_rows(conn, recovery.DlqFilter(), schema=schema)
    finally:
        conn.close()


def test_the_failure_callback_writes_the_error_class_and_where_a_missing_bar_was_expected(
    dlq_schema, tmp_path, capsys
):
    dsn, schema = dlq_schema

    _fail(
        dsn,
        schema,
        "compute_indicators:KeyError",
        "wait_for_bars:AirflowSensorTimeout",
        AIRFLOW_VAR_MARKET_SOURCE="file_drop",
        AIRFLOW_VAR_MARKET_SOURCE_PATH=str(tmp_path),
    )

    rows = {r["stage"]: r for r in _open_rows(dsn, schema)}
    code = rows["compute_indicators"]
    fix = "fix the cause (code or configuration) and clear per_symbol.compute_indicators[IBM]"
    assert (code["kind"], code["error_class"], code["error_message"]) == (
        "code",
        "KeyError",
        f"KeyError: -1 — next: {fix} with downstream",
    )
    late = rows["wait_for_bars"]
    assert late["kind"] == "not_delivered"
    assert late["error_message"] == (
        f"expected the bar of IBM for 2024-11-29 from source file_drop, file {tmp_path}/IBM.csv "
        "(or IBM.parquet), found none when the raw gate stopped waiting (AirflowSensorTimeout: "
        "Sensor has timed out; run duration of 14400 seconds is more than the specified timeout "
        "of 14400.) — next: fix the delivery and clear per_symbol.wait_for_bars[IBM] with "
        "downstream"
    )
    recovery.main(["--dsn", dsn, "--schema", schema, "list", "--stage", "compute_indicators"])
    listed = capsys.readouterr().out.splitlines()[1]
    assert listed.endswith(f"  KeyError: -1 — next: {fix} with downstream"), listed


def test_rows_written_without_the_class_in_their_message_are_shown_with_it(dlq_schema, capsys):
    dsn, schema = dlq_schema
    conn = psycopg2.connect(dsn)
    try:  # as a chunk records a dropped symbol: the class in its column, str(exc) as message
        store.dlq_record(
            conn,
            records.dlq_entry(
                "IBM",
                "compute_indicators",
                "code",
                map_index=0,
                message="-1",
                error_class="KeyError",
                run_id=RUN,
                trade_date=DAY,
            ),
            schema=schema,
        )
        report = run_report.collect(conn, DAY, schema=schema, symbols=["IBM"])
    finally:
        conn.close()

    recovery.main(["--dsn", dsn, "--schema", schema, "list", "--json"])
    assert json.loads(capsys.readouterr().out)[0]["error_class"] == "KeyError"
    recovery.main(["--dsn", dsn, "--schema", schema, "list"])
    assert capsys.readouterr().out.splitlines()[1].endswith("  KeyError: -1")
    assert report.notes["IBM"]["compute_indicators"] == "code: KeyError: -1"
    assert "<td>KeyError: -1</td>" in run_report.render(report)
