"""Smoke run of the whole-run benchmark (issue 9): the P1 script at 10 symbols, end to end.

The benchmarks are not part of ``make test`` at their real size (500 symbols take many
minutes); this runs ``bench/bench_daily_run.py --symbols 10`` as a user would, against a
real scheduler, so the script, the bench DAGs and the cluster wiring cannot silently rot.
It checks what the script promises: both runs succeed, ratios are printed, the JSON is
written, and the throwaway market schema and Redis keys are gone afterwards. It runs P7's
layout in small: 10 symbols in chunks of 4 (``--symbols-per-task``), so the chunked chain
runs under a real scheduler, with the no-op-gates DAG of the gate benchmark
(``--also-nogates``). ``bench_bootstrap.py`` (P5) runs at 20 symbols x 300 sessions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
import redis

from market_pipeline.stages import SYMBOL_TASKS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = 10


def _bench(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    """Run ``bench/<script> <args>`` from the repository root as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _schema_exists(pg_dsn: str, schema: str) -> bool:
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def _keys(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


# One symbol per task under a real scheduler is covered by the e2e recovery scenarios; the
# smoke runs the bench's chunked layout (both DAG shapes plus the no-op-gates DAG) to keep
# the suite short.
@pytest.mark.parametrize("per_task", [4], ids=["chunks-of-4"])
def test_daily_run_benchmark_prints_ratios_writes_json_and_cleans_up(
    tmp_path, pg_dsn, redis_url, per_task
):
    out_json = tmp_path / "daily.json"
    map_indexes = -(-SYMBOLS // per_task)
    env = dict(os.environ, AIRFLOW_CONN_MARKET_DB=pg_dsn, AIRFLOW_CONN_MARKET_CACHE=redis_url)

    proc = _bench(
        "bench_daily_run.py",
        "--symbols",
        str(SYMBOLS),
        "--json",
        str(out_json),
        "--symbols-per-task",
        str(per_task),
        *(["--also-nogates"] if per_task > 1 else []),
        env=env,
    )

    assert proc.returncode == 0, f"bench exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    label = "P1 " if per_task == 1 else f"k={per_task}"
    assert f"{label} market_daily" in proc.stdout and "x  (P1/P7 target <= 1.5x" in proc.stdout
    assert f"{len(SYMBOL_TASKS) * map_indexes + 6} task instances per run" in proc.stdout
    result = json.loads(out_json.read_text())
    assert result["symbols"] == SYMBOLS
    assert result["problems"] == []
    runs = {r["dag_id"]: r for r in result["raw"]["runs"]}
    expected_dags = {"market_daily", "market_daily_empty"}
    assert set(runs) == expected_dags | ({"market_daily_nogates"} if per_task > 1 else set())
    for run in runs.values():
        assert run["state"] == "success"
        assert run["task_instances"] == len(SYMBOL_TASKS) * map_indexes + 6
        assert run["ti_states"] == {"success": len(SYMBOL_TASKS) * map_indexes + 6}
    # Each data run stored one verdict per symbol and gate, and reused none (a new session).
    assert runs["market_daily"]["verdicts"] == {
        "bars": {"verdicts": SYMBOLS, "reused": 0},
        "indicators": {"verdicts": SYMBOLS, "reused": 0},
    }
    # Each wall time (the script's clock, trigger -> end) holds the run as Airflow dated it
    # (start -> end): a wall measured over the wrong span, or another run's, shows here.
    for run in runs.values():
        assert 0 < run["run_seconds"] <= run["wall_seconds"], run
    # The ratio divides the right runs' walls, and the line printed is the figure written.
    summary = result["summary"]
    real, empty = runs["market_daily"]["wall_seconds"], runs["market_daily_empty"]["wall_seconds"]
    assert summary["walls"]["real"] == real and summary["walls"]["empty"] == empty, summary
    printed = re.search(
        r"market_daily ([\d.]+) s / empty shape ([\d.]+) s = ([\d.]+)x", proc.stdout
    )
    assert printed, proc.stdout
    assert float(printed[1]) == pytest.approx(real, abs=0.05)
    assert float(printed[2]) == pytest.approx(empty, abs=0.05)
    assert float(printed[3]) == pytest.approx(summary["ratio"], abs=0.005)
    assert summary["ratio"] == pytest.approx(real / empty)
    assert {row["stage"] for row in summary["per_stage"]} >= {"validate_bars", "run_health"}
    # The stage profile comes from the task logs and the scheduler log: it must keep parsing.
    assert runs["market_daily"]["log_phases"]["per_symbol.validate_bars"]["parse"] > 0
    assert runs["market_daily"]["scheduler"]["queue_loops"] > 0
    # Each task body logs its own CPU (runtime.accounted); the empty DAG's bodies do not.
    validate = runs["market_daily"]["log_phases"]["per_symbol.validate_bars"]
    assert validate["body_cpu"] > 0 and validate["body_wall"] > 0
    assert "body_cpu" not in runs["market_daily_empty"]["log_phases"]["per_symbol.validate_bars"]
    # Each task body logs what its process held over its parent; the bench prints the largest.
    assert 0 < validate["added_mib"] <= validate["added_mib_max"], validate
    largest = summary["task_memory_largest"]["chunk"]
    assert largest["mib"] >= validate["added_mib_max"] and largest["stage"], largest
    assert f"largest chunk task over its parent: {largest['mib']:.1f} MiB" in proc.stdout
    assert summary["task_memory_largest"]["tail"]["mib"] > 0
    for run in runs.values():  # sampled while the run went on
        peak = run["peak_memory_mib"]
        assert peak["scheduler"] > 0 and peak["api_server"] > 0 and peak["tasks"] >= 0, peak
    # CPU seconds per component: the task processes and the scheduler did work in every run.
    for run in runs.values():
        cpu = run["cpu_seconds"]
        assert cpu["tasks"] > 0 and cpu["scheduler"] > 0 and cpu["api_server"] > 0, cpu
        named = sum(cpu[k] for k in ("tasks", "scheduler", "api_server", "postgres"))
        assert cpu["busy"] >= 0.8 * named, cpu  # the parts cannot exceed the machine's total
    assert "CPU seconds during each run" in proc.stdout
    assert not Path(f"{out_json}.partial").exists()
    raw = result["raw"]
    assert raw["schema"].startswith("bench_daily_") and raw["cache_prefix"]
    assert not _schema_exists(pg_dsn, raw["schema"])
    assert _keys(redis_url, raw["cache_prefix"]) == []


def test_bootstrap_benchmark_prints_both_ratios_and_drops_its_schemas(tmp_path, pg_dsn):
    env = dict(os.environ, AIRFLOW_CONN_MARKET_DB=pg_dsn)

    proc = _bench(
        "bench_bootstrap.py",
        "--symbols",
        "20",
        "--sessions",
        "300",
        "--dsn",
        pg_dsn,
        "--out",
        str(tmp_path),
        env=env,
    )

    assert proc.returncode == 0, f"bench exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "ratio bootstrap / plain COPY of the same rows = " in proc.stdout
    (path,) = tmp_path.glob("bootstrap-*.json")
    result = json.loads(path.read_text())
    assert result["rows"] == 20 * 300
    assert result["plain_copy_layers_seconds"]["rows"] == 3 * 20 * 300
    layers = result["plain_copy_layers_seconds"]
    # The timed spans hold their parts: the bootstrap's own phase laps (measured inside the
    # call) and the COPY's serialise + COPY steps; a span timed around the wrong code shows.
    phases = result["bootstrap_phases"]
    assert phases and sum(phases.values()) <= result["bootstrap_seconds"] + 0.001 * len(phases)
    assert layers["serialise"] + layers["copy"] <= layers["total"]
    printed = re.search(r"plain COPY of the same rows = ([\d.]+)x", proc.stdout)
    assert printed, proc.stdout
    assert float(printed[1]) == pytest.approx(result["ratio"], abs=0.005)
    assert result["ratio"] == pytest.approx(result["bootstrap_seconds"] / layers["total"])
    for schema in (f"bench_copy_{result['tag']}", f"bench_boot_{result['tag']}"):
        assert not _schema_exists(pg_dsn, schema)


def test_chunk_profile_runs_every_stage_body_and_drops_its_schema(tmp_path, pg_dsn, redis_url):
    out_json = tmp_path / "profile.json"
    env = dict(os.environ, AIRFLOW_CONN_MARKET_DB=pg_dsn, AIRFLOW_CONN_MARKET_CACHE=redis_url)

    proc = _bench(
        "profile_chunk.py",
        "--symbols",
        "3",
        "--top",
        "5",
        "--json",
        str(out_json),
        env=env,
    )

    assert proc.returncode == 0, f"profile exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out_json.read_text())
    stages = [row["stage"] for row in result["stages"]]
    assert stages == list(SYMBOL_TASKS)
    assert all(row["wall_s"] > 0 and row["db_execute_s"] >= 0 for row in result["stages"])
    # The server's CPU per stage (10 ms ticks): a number when the server runs on this box,
    # null for every stage when it does not (tests/unit/test_bench_cpu.py).
    pg_cpu = [row["postgres_cpu_s"] for row in result["stages"]]
    assert pg_cpu == [None] * len(pg_cpu) or all(v is not None and v >= 0 for v in pg_cpu)
    assert result["total_s"] == pytest.approx(sum(r["wall_s"] for r in result["stages"]), abs=0.01)
    assert "ms per symbol over 6 stages" in proc.stdout
    # What a task process would add over its parent: measured per stage, never negative.
    assert all(row["rss_before_mib"] > 100 for row in result["stages"])  # GX is loaded
    assert all(row["rss_added_mib"] >= 0 for row in result["stages"])
    added = max(row["rss_added_mib"] for row in result["stages"])
    assert f"a stage body adds at most {added:.0f} MiB" in proc.stdout
    schema = proc.stdout.split(" into ", 1)[1].split(" ...", 1)[0]
    assert schema.startswith("bench_daily_") and not _schema_exists(pg_dsn, schema)
