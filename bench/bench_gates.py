"""Cost of the GX quality gates under a real scheduler (issue 5): market_daily vs no-op gates.

    .venv/bin/python bench/bench_gates.py [--symbols 500] [--parallelism 8] [--rounds 1]
        [--json PATH]

One invocation, one real Airflow cluster (LocalExecutor, Postgres metadata DB, GX, pandas,
psycopg2 and redis preloaded in the scheduler by the project's
``config/airflow_local_settings.py``, so forked task processes inherit them), one
bootstrapped synthetic universe; then, one after another, a steady-state daily run of:

* ``market_daily`` — the project's DAG: ``validate_bars`` and ``validate_indicators`` run
  their GX suites (context built once per task process) and write the HTML report;
* ``market_daily_nogates`` — the same DAG, the same shape, with those two callables
  replaced by no-op gates (``bench/dags/market_daily_nogates.py``: the raw window is still
  promoted to the clean layer, nothing is validated).

Prints both wall times (trigger → run end), the ratio (target ≤ 1.2×), the two gates'
median task-instance durations in each variant and, per run, the gate verdicts stored and
how many were reused without a GX run (``reused``/``verdicts`` per gate); writes JSON (default
``bench/results/gates-<utc>.json``). ``bench_daily_run.py --also-nogates`` gives the same
ratio from the P1 cluster. Exit status 1 when a run or task instance did not succeed.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

TARGET = 1.2
GATES = ("validate_bars", "validate_indicators")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=common.PARALLELISM)
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds (medians)")
    parser.add_argument("--json", help="result file (default bench/results/gates-<utc>.json)")
    parser.add_argument("--timeout", type=float, help="seconds per run")
    args = parser.parse_args(argv)

    load = common.machine()["loadavg"]
    print(f"load average before: {load}")
    variants = ["real", "nogates"]
    raw = common.compare(
        symbols=args.symbols,
        variants=variants,
        parallelism=args.parallelism,
        rounds=args.rounds,
        timeout=args.timeout,
    )
    problems = common.check_runs(raw["runs"])
    walls = {v: common.median_wall(raw["runs"], v) for v in variants}
    ratio = walls["real"] / walls["nogates"]
    print("")
    common.print_table(
        ["dag", "session", "state", "wall s", "TIs", "load before/after", "verdicts reused"],
        [
            [
                r["dag_id"],
                r["session"],
                r["state"],
                r["wall_seconds"],
                r["task_instances"],
                f"{r['load_before']}/{r['load_after']}",
                ", ".join(
                    f"{g} {v['reused']}/{v['verdicts']}"
                    for g, v in sorted(r.get("verdicts", {}).items())
                )
                or "-",
            ]
            for r in raw["runs"]
        ],
    )
    stages = [row for row in common.per_stage_table(raw["runs"], variants) if row["stage"] in GATES]
    print("")
    common.print_table(
        ["gate", "GX med s", "no-op med s", "GX task-s", "no-op task-s"],
        [
            [
                r["stage"],
                r["real_median"],
                r["nogates_median"],
                r["real_task_seconds"],
                r["nogates_task_seconds"],
            ]
            for r in stages
        ],
    )
    common.cpu_table(raw["runs"])
    print("")
    print(
        f"gates  market_daily {walls['real']:.1f} s / no-op gates {walls['nogates']:.1f} s = "
        f"{ratio:.2f}x  (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})"
    )
    result = {
        "bench": "gates",
        "at": datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "command": " ".join(["bench/bench_gates.py", *(argv or sys.argv[1:])]),
        "symbols": args.symbols,
        "machine": {**common.machine(), "loadavg_before": load},
        "summary": {
            "walls": walls,
            "ratio": ratio,
            "target": TARGET,
            "target_met": ratio <= TARGET,
            "gates": stages,
        },
        "problems": problems,
        "raw": raw,
    }
    print(f"JSON: {common.write_json(result, args.json, 'gates')}")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
