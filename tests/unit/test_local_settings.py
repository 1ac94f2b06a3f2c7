"""config/airflow_local_settings.py: what the parent of task processes preloads, and that a
forked task can use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "config" / "airflow_local_settings.py"

PROBE = """
import json, os, runpy, sys, threading
sys.argv = {argv!r}
fds = len(os.listdir("/proc/self/fd"))
runpy.run_path({settings!r})
from market_pipeline import quality
report = {{
    "gx_imported": "great_expectations" in sys.modules,
    "engine_built": quality.engine.built(),
    "threads": threading.active_count(),
    "new_fds": len(os.listdir("/proc/self/fd")) - fds,
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
print("REPORT" + json.dumps(report))
"""


def _probe(argv: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, settings=str(SETTINGS))],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line.removeprefix("REPORT"))


def test_the_scheduler_preloads_gx_and_the_gate_engine_without_threads_or_files():
    report = _probe(["airflow", "scheduler"])

    assert report["gx_imported"] and report["engine_built"]
    assert report["threads"] == 1, report
    assert report["new_fds"] <= 0, report
    assert report["child_exit"] == 0, "a forked task could not validate with the inherited engine"


def test_other_airflow_processes_preload_nothing():
    report = _probe(["airflow", "api-server"])

    assert not report["gx_imported"] and not report["engine_built"]
