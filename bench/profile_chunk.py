"""Where a chunk's time goes: each per-symbol stage body over one chunk, in process, profiled.

    .venv/bin/python bench/profile_chunk.py [--symbols 50] [--top 12] [--json PATH]

Bootstraps ``--symbols`` synthetic symbols' history (620 sessions) into a throwaway schema,
imports GX and builds its context (untimed: a task inherits both from the scheduler's
preload), then runs the six per-symbol tasks of ``market_airflow.tasks`` (ingest_bars →
wait_for_bars → validate_bars → compute_indicators → validate_indicators → generate_signals)
once over the whole set as one chunk, for the next session, exactly as a task instance with
``market_symbols_per_task`` = ``--symbols`` runs them — without Airflow's task runner around
them (a minimal context stands in for it). Prints each stage's wall time, its time per
symbol, the time spent in Postgres calls and the top functions by cumulative time; writes
the figures to ``--json`` (default ``bench/results/profile-chunk-<utc>.json``).

This is the per-chunk cost that P7 (issue 9) multiplies by 5000 / k; the Airflow floor
around it is what ``bench_daily_run.py`` measures with the empty DAG.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

STAGES = (
    "ingest_bars",
    "wait_for_bars",
    "validate_bars",
    "compute_indicators",
    "validate_indicators",
    "generate_signals",
)


def _context(stage: str, day, run_id: str) -> dict:
    """The slice of a task context the stage bodies read."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    ti = SimpleNamespace(
        dag_id="market_daily",
        run_id=run_id,
        task_id=f"per_symbol.{stage}",
        map_index=0,
        try_number=1,
        max_tries=2,
        xcom_push=lambda **kw: None,
        get_first_reschedule_date=lambda ctx: None,
    )
    return {
        "ti": ti,
        "task": SimpleNamespace(timeout=timedelta(hours=2)),
        "dag_run": SimpleNamespace(logical_date=midnight),
        "data_interval_start": midnight,
        "data_interval_end": midnight,
    }


def _db_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds in psycopg2 calls: statements, fetches, commits (``with conn``)."""
    out = {"execute": 0.0, "fetch": 0.0, "commit": 0.0}
    for (_, _, name), (_, _, _, cum, _) in stats.stats.items():
        if name == "<method 'execute' of 'psycopg2.extensions.cursor' objects>":
            out["execute"] += cum
        elif name.startswith("<method 'fetch") and "psycopg2" in name:
            out["fetch"] += cum
        elif name in (
            "<method 'commit' of 'psycopg2.extensions.connection' objects>",
            "<method '__exit__' of 'psycopg2.extensions.connection' objects>",
        ):
            out["commit"] += cum
    return out


def profile(symbols: int, top: int, log=print, *, profiled: bool = True) -> dict:
    ns = common.MarketNamespace()
    env = ns.env()
    os.environ.update(env)
    os.environ["AIRFLOW_VAR_MARKET_SOURCE"] = "synthetic"
    os.environ["AIRFLOW_VAR_MARKET_SYMBOLS_PER_TASK"] = str(symbols)
    names = common.universe(symbols)
    try:
        log(f"bootstrapping {symbols} symbols x {common.HISTORY} sessions into {ns.schema} ...")
        ns.bootstrap(names)
        # Import after MARKET_SCHEMA is set: the store reads it once.
        from market_airflow import runtime, tasks

        from market_pipeline import migrate, quality

        # Not timed: a task inherits GX from the scheduler's preload and builds its context
        # once per process (config/airflow_local_settings.py); this process does both here.
        quality.warm_up()
        conn = runtime.connect()
        try:
            migrate.apply(conn)
        finally:
            conn.close()
        day = common.sessions_after(common.BOOTSTRAP_END, 1)[0]
        run_id = f"profile_{day.isoformat()}"
        upstream = None
        rows = []
        for stage in STAGES:
            context = _context(stage, day, run_id)
            fn = getattr(tasks, stage)
            args = (names,) if upstream is None else (names, upstream)
            prof = cProfile.Profile() if profiled else None
            started = time.perf_counter()
            cpu_started = time.process_time()
            if prof:
                prof.enable()
            result = fn(*args, context)
            if prof:
                prof.disable()
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            if result is None or result.get("failed"):
                raise common.BenchError(
                    f"{stage} did not pass every symbol (expected all {symbols}): "
                    f"{None if result is None else result['failed']}"
                )
            upstream = result
            db = dict.fromkeys(("execute", "fetch", "commit"), float("nan"))
            buf = io.StringIO()
            if prof:
                db = _db_seconds(pstats.Stats(prof))
                pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
            rows.append(
                {
                    "stage": stage,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "ms_per_symbol": round(wall / symbols * 1000, 1),
                    **{f"db_{k}_s": round(v, 3) for k, v in db.items()},
                    "profile": buf.getvalue(),
                }
            )
    finally:
        ns.drop()
    log("")
    log(f"one chunk of {symbols} symbols, session {day}, stage bodies in process")
    common.print_table(
        ["stage", "wall s", "cpu s", "ms/symbol", "execute s", "fetch s", "commit s"],
        [
            [
                r["stage"],
                r["wall_s"],
                r["cpu_s"],
                r["ms_per_symbol"],
                r["db_execute_s"],
                r["db_fetch_s"],
                r["db_commit_s"],
            ]
            for r in rows
        ],
        log=log,
    )
    total = sum(r["wall_s"] for r in rows)
    per_symbol = total / symbols * 1000
    log(f"total {total:.2f} s = {per_symbol:.1f} ms per symbol over {len(STAGES)} stages")
    for r in rows if profiled else ():
        log(f"\n--- {r['stage']}: top {top} by cumulative time")
        log("\n".join(r["profile"].strip().splitlines()[-(top + 2) :]))
    return {
        "symbols": symbols,
        "profiled": profiled,
        "session": day.isoformat(),
        "stages": rows,
        "total_s": round(total, 3),
        "machine": common.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json")
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="time the stage bodies without cProfile (its overhead inflates GX ~1.5-2x)",
    )
    args = parser.parse_args(argv)
    result = profile(args.symbols, args.top, profiled=not args.no_profile)
    path = common.write_json(result, args.json, "profile-chunk")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
