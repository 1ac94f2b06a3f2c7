"""config/airflow_local_settings.py: what the parent of task processes preloads, and that a
forked task can use it."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "config" / "airflow_local_settings.py"
PLUGINS = ROOT / "plugins"  # on sys.path in every Airflow process (its plugins folder)

PROBE = """
import json, os, runpy, sys, threading
sys.argv = {argv!r}
sys.path.insert(0, {plugins!r})
# Airflow imports its local settings first; the preload then imports Airflow (the task
# modules do): keep that import from running the preload a second time.
import types
sys.modules["airflow_local_settings"] = types.ModuleType("airflow_local_settings")
sys.modules["airflow_local_settings"].__file__ = {settings!r}
before = set(sys.modules)
fds = len(os.listdir("/proc/self/fd"))
runpy.run_path({settings!r})
from market_pipeline import quality
report = {{
    "gx_imported": "great_expectations" in sys.modules,
    "engine_built": quality.engine.built(),
    "threads": threading.active_count(),
    "new_fds": len(os.listdir("/proc/self/fd")) - fds,
    "task_modules": sorted(
        m for m in set(sys.modules) - before
        if m in ("market_airflow.tasks", "market_airflow.callbacks",
                 "market_pipeline.stages.validate_bars", "market_pipeline.stages.run_health")
    ),
}}
if report["engine_built"]:
    from datetime import date
    import pandas as pd
    from market_pipeline import calendar
    days = calendar.previous_sessions(date(2024, 11, 27), 10)
    bars = pd.DataFrame({{"trade_date": days, "open": 10.0, "high": 11.0, "low": 9.0,
                          "close": [10.0 + i / 10 for i in range(10)], "volume": 1000}})
    pid = os.fork()  # as the task supervisor forks a task from the scheduler's tree
    if pid == 0:
        result = quality.validate_bars(bars, symbol="X", trade_date=days[-1])
        os._exit(0 if result.success and quality.engine.built() else 3)
    report["child_exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    from market_pipeline import indicators
    report["kernel_compiled"] = indicators._compiled is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked task computes with the inherited kernel, no compile of its own
        frame = indicators.compute_frame(bars)
        os.write(write, json.dumps({{
            "engine": indicators._choose_engine(None, len(bars)),
            "rsi": frame["rsi_14"].tolist(),
        }}).encode())
        os._exit(0)
    os.close(write)
    child = json.loads(os.read(read, 1 << 20))
    os.waitpid(pid, 0)
    interpreted = indicators.compute_frame(bars, engine="python")["rsi_14"].tolist()
    report["child_engine"] = child["engine"]
    report["child_equals_interpreted"] = json.dumps(child["rsi"]) == json.dumps(interpreted)
print("REPORT" + json.dumps(report))
"""


def _probe(argv: list[str]) -> tuple[dict, list[str]]:
    """The probe's report and the preload's stderr lines."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE.format(argv=argv, settings=str(SETTINGS), plugins=str(PLUGINS)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line.removeprefix("REPORT")), _preload_lines(out.stderr)


def _preload_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if " market_pipeline.preload: " in x]


def test_the_scheduler_preloads_gx_and_the_gate_engine_without_threads_or_files():
    report, lines = _probe(["airflow", "scheduler", "--skip-serve-logs"])

    assert report["gx_imported"] and report["engine_built"]
    assert report["threads"] == 1, report
    assert report["new_fds"] <= 0, report
    assert report["child_exit"] == 0, "a forked task could not validate with the inherited engine"
    assert report["kernel_compiled"], report
    assert report["child_engine"] == "numba", report
    assert report["child_equals_interpreted"], report
    assert len(lines) == 1 and " INFO " in lines[0], lines
    assert (
        "preload (scheduler): loaded great_expectations, pandas, psycopg2, redis, "
        "XNYS calendar, GX gate engine, numba indicator kernel, market_daily task modules in "
        in lines[0]
    ), lines
    # The DAG file's and the task bodies' modules, so a forked task imports none of them.
    assert report["task_modules"] == [
        "market_airflow.callbacks",
        "market_airflow.tasks",
        "market_pipeline.stages.run_health",
        "market_pipeline.stages.validate_bars",
    ], report


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["airflow", "scheduler", "--skip-serve-logs"], "scheduler"),
        (["airflow", "celery", "worker", "-H", "w1@%h", "--concurrency", "2"], "celery worker"),
        (["airflow", "celery", "flower"], None),
        (["airflow", "api-server"], None),
        (["airflow", "dag-processor"], None),
        (["airflow", "tasks", "test", "market_daily", "universe"], None),
    ],
)
def test_only_the_parents_of_task_processes_preload(argv, role):
    settings = runpy.run_path(str(SETTINGS))  # pytest's argv: preloads nothing

    assert settings["_task_parent_role"](argv) == role


def test_other_airflow_processes_preload_nothing_and_say_nothing():
    report, lines = _probe(["airflow", "api-server"])

    assert not report["gx_imported"] and not report["engine_built"]
    assert report["task_modules"] == [], report
    assert lines == []


def test_a_worker_without_the_package_logs_an_error_naming_what_it_could_not_load():
    # As on a worker whose image lacks the package: importing market_pipeline fails.
    code = (
        "import runpy, sys, types; sys.modules['market_pipeline'] = None; "
        "sys.modules['airflow_local_settings'] = types.ModuleType('airflow_local_settings'); "
        f"sys.argv = ['airflow', 'celery', 'worker']; runpy.run_path({str(SETTINGS)!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )

    lines = _preload_lines(out.stderr)
    assert "ModuleNotFoundError" in out.stderr and "market_pipeline" in out.stderr, out.stderr
    errors = [x for x in lines if " ERROR " in x]
    # the calendar, the GX engine, the kernel, the task modules, and the summary
    assert len(errors) == 5, lines
    assert (
        errors[-1]
        .split("market_pipeline.preload: ")[1]
        .startswith(
            "preload (celery worker): NOT loaded: the trading calendar, GX gate engine, "
            "numba indicator kernel, market_daily task modules (loaded: "
            "great_expectations, pandas, psycopg2, redis;"
        )
    ), errors
    assert not any(" INFO " in x for x in lines), lines
