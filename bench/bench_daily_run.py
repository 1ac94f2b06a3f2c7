"""market_daily under a real scheduler against an empty DAG of the same shape (issue 9, P1/P7).

    .venv/bin/python bench/bench_daily_run.py [--symbols 500] [--parallelism 8] [--rounds 1]
        [--also-nogates] [--growth-from M] [--json PATH]
    .venv/bin/python bench/bench_daily_run.py --extrapolate A.json B.json [--to 5000]
    .venv/bin/python bench/bench_daily_run.py --ab-preload [--symbols 100]

One invocation starts one real Airflow (api-server, scheduler, dag-processor; LocalExecutor,
Postgres metadata DB, heartbeat 1 s, GX & co preloaded in the scheduler — see
``tests/support/airflow_cluster.py``), bootstraps ``--symbols`` synthetic symbols' history
into a throwaway schema (not timed), then triggers, one after another in the same cluster:

* ``market_daily`` (the project's DAG, unchanged) for the next session: a steady-state
  daily run — one new bar per symbol, gates, indicators, signals, scores, Redis publish;
* ``market_daily_empty``: the same shape (mapped group, same task count, the pool and the
  rescheduling sensor) with tasks that do nothing — the Airflow floor;
* with ``--also-nogates``, ``market_daily_nogates`` (the gate-cost baseline of
  ``bench_gates.py``) too, so one cluster yields both ratios.

Prints the wall time of each run (trigger → run end), the ratio (target ≤ 1.3×), the median
task-instance duration per stage for each variant, and a linear estimate for 5000 symbols;
writes everything to ``--json`` (default ``bench/results/daily-<utc>.json``).
``--growth-from M`` (P8) then runs market_daily at ``M`` symbols in a cluster of its own, in the
same invocation, and prints the cost growth: the wall at ``--symbols`` ÷ the wall at ``M``
(target ≤ 10× for 5000 ÷ 500).
``--extrapolate`` fits wall = a + b × task instances through earlier result files instead.
``--preload-calendar`` runs with the proposed calendar preload (``common.CALENDAR_PRELOAD``);
``--ab-preload`` measures it: market_daily in a cluster with the project's preload, then in
one with the calendar preload added (each with its own bootstrapped schema), and the ratio.
Exit status 1 when a run or task instance did not succeed (the figures would be meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from market_pipeline.chunks import AUTO, per_task_for

# Issue #20's targets: market_daily within 1.5x of the empty DAG of its shape at 500 (P1)
# and 5000 symbols (P7), the gates within 1.2x of no-op gates (P4); 5000 symbols in about
# 3 min on this box (indicative); P8: 5000 symbols cost at most 10x what 500 do.
TARGET = 1.5
GROWTH_TARGET = 10.0
GATE_TARGET = 1.2
P7_SYMBOLS = 5000
P7_TARGET_SECONDS = 3 * 60


def task_instances(symbols: int, per_task: int = 1) -> int:
    """Task instances of one market_daily run: each chain stage per map index, + 6."""
    return len(common.SYMBOL_STAGES) * -(-symbols // per_task) + 6


def _per_task(raw: dict) -> int:
    """The chunk size of the run: the Variable the bench set, else what ``auto`` picks."""
    setting = (raw.get("extra_env") or {}).get("AIRFLOW_VAR_MARKET_SYMBOLS_PER_TASK", AUTO)
    return per_task_for(raw["symbols"], setting)


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x; one point gives a = 0 (pure proportionality)."""
    if len(points) == 1:
        x, y = points[0]
        return 0.0, y / x
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def summarise(raw: dict, also_nogates: bool, log=print) -> dict:
    runs = raw["runs"]
    per_task = _per_task(raw)
    variants = ["real", "empty"] + (["nogates"] if also_nogates else [])
    log("")
    log(
        f"market_daily, {raw['symbols']} symbols, {per_task} per task, parallelism "
        f"{raw['parallelism']}, {task_instances(raw['symbols'], per_task)} task instances per run"
    )
    common.print_table(
        ["dag", "session", "state", "wall s", "run s", "TIs", "s/TI", "load before/after"],
        [
            [
                r["dag_id"],
                r["session"],
                r["state"],
                r["wall_seconds"],
                r["run_seconds"],
                r["task_instances"],
                r["wall_seconds"] / max(r["task_instances"], 1),
                f"{r['load_before']}/{r['load_after']}",
            ]
            for r in runs
        ],
        log,
    )
    walls = {v: common.median_wall(runs, v) for v in variants}
    ratio = walls["real"] / walls["empty"]
    log("")
    label = "P1 " if per_task == 1 else f"k={per_task}"  # P1 is defined at one symbol per task
    log(
        f"{label} market_daily {walls['real']:.1f} s / empty shape {walls['empty']:.1f} s = "
        f"{ratio:.2f}x  (P1/P7 target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})"
    )
    out: dict = {"walls": walls, "ratio": ratio, "target": TARGET, "target_met": ratio <= TARGET}
    if also_nogates:
        gate_ratio = walls["real"] / walls["nogates"]
        log(
            f"gates  market_daily {walls['real']:.1f} s / no-op gates {walls['nogates']:.1f} s"
            f" = {gate_ratio:.2f}x  (target <= {GATE_TARGET}x: "
            f"{'met' if gate_ratio <= GATE_TARGET else 'NOT met'})"
        )
        out.update(gate_ratio=gate_ratio, gate_target=GATE_TARGET)
    stages = common.per_stage_table(runs, variants)
    log("")
    log("median task-instance duration per stage (s) and task-seconds per run")
    headers = ["stage"]
    for v in variants:
        headers += [f"{v} med", f"{v} task-s"]
    common.print_table(
        headers,
        [
            [row["stage"], *[row[f"{v}_{k}"] for v in variants for k in ("median", "task_seconds")]]
            for row in stages
        ],
        log,
    )
    phases = common.phase_table(runs, variants)
    log("")
    log("task-log phases, median s: parse = DAG file parse in the task process, exec = the")
    log("task body, cpu = the body's own CPU (exec - cpu = waiting for a core, the database or")
    log("the source), post = XCom push + callbacks (+ startup/prepare in the JSON)")
    headers = ["stage"]
    for v in variants:
        headers += [f"{v} parse", f"{v} exec", f"{v} cpu", f"{v} post"]
    common.print_table(
        headers,
        [
            [
                row["stage"],
                *[
                    row[f"{v}_{k}"]
                    for v in variants
                    for k in ("parse", "execute", "body_cpu", "post")
                ],
            ]
            for row in phases
        ],
        log,
    )
    common.cpu_table(runs, log)
    out["task_memory_largest"] = common.memory_table(runs, log)
    per_ti = {v: walls[v] / task_instances(raw["symbols"], per_task) for v in variants}
    est = {v: per_ti[v] * task_instances(P7_SYMBOLS, per_task) for v in variants}
    log("")
    if raw["symbols"] == P7_SYMBOLS:
        minutes = walls["real"] / 60
        verdict = "met" if walls["real"] <= P7_TARGET_SECONDS else "NOT met"
        log(
            f"P7 measured: {P7_SYMBOLS} symbols at {per_task} per task: market_daily "
            f"{minutes:.1f} min, empty shape {walls['empty'] / 60:.1f} min (target <= "
            f"{P7_TARGET_SECONDS // 60} min: {verdict})"
        )
        out["p7_measured_seconds"] = walls["real"]
    else:
        log(
            f"P7 (proportional estimate from this run) {P7_SYMBOLS} symbols at {per_task} per "
            f"task: market_daily ~{est['real'] / 60:.1f} min, empty shape "
            f"~{est['empty'] / 60:.1f} min (target <= {P7_TARGET_SECONDS // 60} min); use "
            "--extrapolate with two sizes"
        )
    out.update(
        per_stage=stages, log_phases=phases, seconds_per_ti=per_ti, p7_proportional_seconds=est
    )
    return out


def extrapolate(paths: list[str], to: int, log=print) -> dict:
    """Fit wall = a + b × TIs per variant over earlier results; predict ``to`` symbols."""
    points: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        n = data["symbols"]
        for variant, wall in data["summary"]["walls"].items():
            points.setdefault(variant, []).append((task_instances(n), wall))
    out = {}
    log(f"P7: wall = a + b x task instances, fitted on {len(paths)} result file(s)")
    rows = []
    for variant, pts in points.items():
        a, b = linear_fit(pts)
        predicted = a + b * task_instances(to)
        out[variant] = {
            "points": pts,
            "a_seconds": a,
            "b_seconds_per_ti": b,
            "predicted_seconds": predicted,
        }
        rows.append([variant, len(pts), a, b, predicted, predicted / 60])
    common.print_table(["variant", "points", "a s", "b s/TI", f"{to} sym s", "min"], rows, log)
    if "real" in out:
        minutes = out["real"]["predicted_seconds"] / 60
        log(
            f"{to} symbols: market_daily ~{minutes:.1f} min "
            f"(target <= {P7_TARGET_SECONDS // 60} min: "
            f"{'met' if minutes * 60 <= P7_TARGET_SECONDS else 'NOT met'})"
        )
    return {"bench": "daily_run_extrapolation", "to_symbols": to, "fit": out, "sources": paths}


def growth(big: dict, small: dict, log=print) -> dict:
    """P8: market_daily's wall at the larger universe ÷ its wall at the smaller, both runs of
    one invocation (``common.compare`` results)."""
    walls = {raw["symbols"]: common.median_wall(raw["runs"], "real") for raw in (small, big)}
    ratio = walls[big["symbols"]] / walls[small["symbols"]]
    met = ratio <= GROWTH_TARGET
    log(
        f"\nP8 cost growth: market_daily {big['symbols']} symbols {walls[big['symbols']]:.1f} s / "
        f"{small['symbols']} symbols {walls[small['symbols']]:.1f} s = {ratio:.2f}x "
        f"(target <= {GROWTH_TARGET:g}x: {'met' if met else 'NOT met'})"
    )
    return {
        "symbols": [small["symbols"], big["symbols"]],
        "walls": {str(k): v for k, v in walls.items()},
        "ratio": ratio,
        "target": GROWTH_TARGET,
        "target_met": met,
    }


def _extra_env(args) -> dict[str, str]:
    env = {}
    if args.weight_rule:
        env["AIRFLOW__CORE__DEFAULT_TASK_WEIGHT_RULE"] = args.weight_rule
    if args.symbols_per_task:
        env["AIRFLOW_VAR_MARKET_SYMBOLS_PER_TASK"] = str(args.symbols_per_task)
    return env


def ab_preload(args, argv) -> int:
    """market_daily with the project's preload (A), then with the calendar preload (B)."""
    load = common.machine()["loadavg"]
    print(f"load average before: {load}")
    raws = {}
    for label, extra in (("project_preload", False), ("calendar_preload", True)):
        print(f"{label}:")
        raws[label] = common.compare(
            symbols=args.symbols,
            variants=["real"],
            parallelism=args.parallelism,
            rounds=1,
            timeout=args.timeout,
            preload_calendar=extra,
            extra_env=_extra_env(args),
        )
    runs = [dict(r, variant=label) for label, raw in raws.items() for r in raw["runs"]]
    problems = common.check_runs(runs)
    walls = {label: common.median_wall(runs, label) for label in raws}
    ratio = walls["calendar_preload"] / walls["project_preload"]
    print("")
    common.print_table(
        ["stage", "project med s", "calendar med s"],
        [
            [r["stage"], r["project_preload_median"], r["calendar_preload_median"]]
            for r in common.per_stage_table(runs, list(raws))
        ],
    )
    print(
        f"\nmarket_daily, {args.symbols} symbols: project preload {walls['project_preload']:.1f} s,"
        f" + calendar preload {walls['calendar_preload']:.1f} s = {ratio:.2f}x"
    )
    result = {
        "bench": "daily_run_ab_preload",
        "symbols": args.symbols,
        "at": datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "command": " ".join(["bench/bench_daily_run.py", *(argv or sys.argv[1:])]),
        "machine": {**common.machine(), "loadavg_before": load},
        "summary": {"walls": walls, "ratio": ratio},
        "problems": problems,
        "raw": raws,
    }
    print(f"JSON: {common.write_json(result, args.json, 'daily-ab-preload')}")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=common.PARALLELISM)
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds (medians)")
    parser.add_argument(
        "--also-nogates",
        action="store_true",
        help="also run the no-op-gates DAG (the gate-cost baseline)",
    )
    parser.add_argument("--json", help="result file (default bench/results/daily-<utc>.json)")
    parser.add_argument("--timeout", type=float, help="seconds per run")
    parser.add_argument("--keep-home", action="store_true", help="keep AIRFLOW_HOME (task logs)")
    parser.add_argument(
        "--extrapolate",
        nargs="+",
        metavar="RESULT_JSON",
        help="no runs: fit earlier results and predict --to symbols",
    )
    parser.add_argument("--to", type=int, default=P7_SYMBOLS)
    parser.add_argument(
        "--growth-from",
        type=int,
        metavar="M",
        help="P8: then market_daily at M symbols too, and the growth --symbols / M",
    )
    parser.add_argument(
        "--preload-calendar",
        action="store_true",
        help="add the proposed calendar preload to the scheduler",
    )
    parser.add_argument(
        "--weight-rule",
        choices=["downstream", "upstream", "absolute"],
        help="[core] default_task_weight_rule for every bench DAG",
    )
    parser.add_argument(
        "--symbols-per-task",
        type=int,
        help="market_symbols_per_task for every bench DAG (P7: e.g. 5000 symbols at 50)",
    )
    parser.add_argument(
        "--ab-preload",
        action="store_true",
        help="market_daily without, then with, the calendar preload",
    )
    args = parser.parse_args(argv)

    if args.ab_preload:
        return ab_preload(args, argv)

    if args.extrapolate:
        result = extrapolate(args.extrapolate, args.to)
        result["machine"] = common.machine()
        print(f"JSON: {common.write_json(result, args.json, 'daily-p7')}")
        return 0

    variants = ["real", "empty"] + (["nogates"] if args.also_nogates else [])
    load = common.machine()["loadavg"]
    print(f"load average before: {load}")
    raw = common.compare(
        symbols=args.symbols,
        variants=variants,
        parallelism=args.parallelism,
        rounds=args.rounds,
        timeout=args.timeout,
        keep_home=args.keep_home,
        preload_calendar=args.preload_calendar,
        progress_path=f"{args.json}.partial" if args.json else None,
        extra_env=_extra_env(args),
    )
    problems = common.check_runs(raw["runs"])
    summary = summarise(raw, args.also_nogates)
    if args.growth_from:
        print(f"\nP8: market_daily at {args.growth_from} symbols, in a cluster of its own:")
        small = common.compare(
            symbols=args.growth_from,
            variants=["real"],
            parallelism=args.parallelism,
            rounds=args.rounds,
            timeout=args.timeout,
            extra_env=_extra_env(args),
        )
        problems += common.check_runs(small["runs"])
        summary["growth"] = growth(raw, small)
        raw = {**raw, "growth_from": small}
    result = {
        "bench": "daily_run",
        "at": datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "command": " ".join(["bench/bench_daily_run.py", *(argv or sys.argv[1:])]),
        "symbols": args.symbols,
        "machine": {**common.machine(), "loadavg_before": load},
        "summary": summary,
        "problems": problems,
        "raw": raw,
    }
    path = common.write_json(result, args.json, "daily")
    print(f"JSON: {path}")
    if args.json:
        Path(f"{args.json}.partial").unlink(missing_ok=True)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
