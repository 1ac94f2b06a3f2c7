"""Where a chunk's time goes: each per-symbol stage body over one chunk, in process, profiled.

    .venv/bin/python bench/profile_chunk.py [--symbols 50] [--top 12] [--tail] [--json PATH]

(``PROFILE_CHUNK_PSTATS=DIR`` also writes each stage's raw profile to ``DIR/<stage>.pstats``.)

Bootstraps ``--symbols`` synthetic symbols' history (620 sessions) into a throwaway schema,
imports GX and builds its context (untimed: a task inherits both from the scheduler's
preload), then runs the six per-symbol tasks of ``market_airflow.tasks`` (ingest_bars →
wait_for_bars → validate_bars → compute_indicators → validate_indicators → generate_signals)
once over the whole set as one chunk, for the next session, exactly as a task instance with
``market_symbols_per_task`` = ``--symbols`` runs them — without Airflow's task runner around
them (a minimal context stands in for it). Prints each stage's wall time, its time per
symbol, the time spent in Postgres calls and the top functions by cumulative time; writes
the figures to ``--json`` (default ``bench/results/profile-chunk-<utc>.json``).

Then both gates run again over the same chunk and session, as a clear or a retry of an
unchanged day does: their verdicts are reused (no GX run), and the rerun's time, the
reused / validated symbol counts and the GX validations run are printed.

``--tail`` then runs the four tail bodies (score_universe, publish_cache, verify_cache,
run_health) over the same symbols, one after the other in process, and prints their wall
and CPU seconds (and their profiles): at 5000 symbols they run once a day on one core, so
their cost is wall time of the whole run (``--symbols 1500 --tail`` shows their shape).

``--against REF`` measures before/after in one invocation: the same command runs from a
``git archive`` of REF and from this tree, ``--rounds`` times each, alternating (ABAB), each
in a fresh process and schema; prints both sides per stage (medians) and their ratio.

This is the per-chunk cost that P7 (issue 9) multiplies by 5000 / k; the Airflow floor
around it is what ``bench_daily_run.py`` measures with the empty DAG.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from market_pipeline.stages import SYMBOL_TASKS

STAGES = SYMBOL_TASKS


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


def _reset_peak() -> None:
    """Start the peak (``VmHWM``) again from the current resident set."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


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


def _table_bytes(schema: str) -> dict[str, int]:
    """Bytes on disk of each table of ``schema`` (its indexes and TOAST included)."""
    from market_airflow import runtime

    conn = runtime.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT c.relname, pg_total_relation_size(c.oid)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relkind = 'r'""",
                (schema,),
            )
            return dict(cur.fetchall())
    finally:
        conn.close()


def _growth(before: dict[str, int], after: dict[str, int], symbols: int) -> list[dict]:
    """What the day added to each table that grew: KiB in all and bytes per symbol."""
    rows = []
    for name in sorted(after):
        added = after[name] - before.get(name, 0)
        if added > 0:
            rows.append(
                {"table": name, "kib": round(added / 1024, 1), "per_symbol": added // symbols}
            )
    rows.append(
        {
            "table": "(all)",
            "kib": round(sum(r["kib"] for r in rows), 1),
            "per_symbol": sum(r["per_symbol"] for r in rows),
        }
    )
    return rows


def _rerun_gates(tasks, names: list[str], results: dict, day, run_id: str) -> list[dict]:
    """Both gates again on the unchanged chunk (a retry): time, reuse counts, GX runs."""
    from market_pipeline.quality import engine, gates

    out = []
    for stage, upstream in (
        ("validate_bars", results["ingest_bars"]),
        ("validate_indicators", results["compute_indicators"]),
    ):
        context = _context(stage, day, run_id)
        context["ti"].try_number = 2
        gate = "bars" if stage == "validate_bars" else "indicators"
        before = dict(gates.COUNTS)
        runs = engine.default().validations
        started = time.perf_counter()
        getattr(tasks, stage)(names, upstream, context)
        wall = time.perf_counter() - started
        out.append(
            {
                "stage": stage,
                "wall_s": round(wall, 3),
                **{
                    k: gates.COUNTS[gate, k] - before.get((gate, k), 0)
                    for k in ("reused", "validated")
                },
                "gx_validations": engine.default().validations - runs,
            }
        )
    return out


def _tail(names: list[str], day, run_id: str, top: int, *, profiled: bool) -> list[dict]:
    """The four tail bodies after the chunk (score, publish, verify, run health), in process
    and one after the other as the DAG runs them, over every symbol of the chunk: at 5000
    symbols they run once per day on one core, so their cost is wall time of the run."""
    from contextlib import closing

    from market_airflow import runtime
    from market_airflow.hooks import MarketCacheHook

    from market_pipeline.stages import SYMBOL_TASKS
    from market_pipeline.stages.publish_cache import publish_cache
    from market_pipeline.stages.run_health import run_health
    from market_pipeline.stages.score_universe import score_universe
    from market_pipeline.stages.verify_cache import verify_cache

    settings = runtime.load_settings()
    attempt = runtime.attempt(_context("run_health", day, run_id))
    states = {(stage, 0): "success" for stage in SYMBOL_TASKS}
    bodies = {
        "score_universe": lambda conn, client: score_universe(conn, names, day, settings),
        "publish_cache": lambda conn, client: publish_cache(
            conn, client, day, settings, attempt=attempt
        ),
        "verify_cache": lambda conn, client: verify_cache(conn, client, day, settings),
        "run_health": lambda conn, client: run_health(
            conn,
            [names],
            day,
            settings,
            task_states=states,
            tail_states={},
            attempt=attempt,
        ),
    }
    rows = []
    for stage, body in bodies.items():
        prof = cProfile.Profile() if profiled else None
        started = time.perf_counter()
        cpu_started = time.process_time()
        with closing(runtime.connect()) as conn, closing(MarketCacheHook().get_conn()) as client:
            if prof:
                prof.enable()
            body(conn, client)
            if prof:
                prof.disable()
        buf = io.StringIO()
        if prof:
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
        rows.append(
            {
                "stage": stage,
                "wall_s": round(time.perf_counter() - started, 3),
                "cpu_s": round(time.process_time() - cpu_started, 3),
                "profile": buf.getvalue(),
            }
        )
    return rows


def _head(root: Path) -> tuple[str, bool]:
    """The working tree's commit, and whether tracked files differ from it."""
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return head, bool(status)


def against(ref: str, symbols: int, rounds: int, log=print) -> dict:
    """The ``--no-profile`` figures of REF and of this tree, alternating, in one invocation."""
    root = common.ROOT
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    head, dirty = _head(root)
    sides: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="profile-against-") as tmp:
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        (old / ".venv").symlink_to(root / ".venv")
        for n in range(rounds):
            for side, tree in (("before", old), ("after", root)):
                out = Path(tmp) / f"{side}-{n}.json"
                cmd = [
                    sys.executable,
                    str(tree / "bench" / "profile_chunk.py"),
                    "--no-profile",
                    "--symbols",
                    str(symbols),
                    "--json",
                    str(out),
                ]
                log(f"round {n + 1}/{rounds}: {side} ({tree}) ...")
                subprocess.run(cmd, check=True, cwd=tree, stdout=subprocess.DEVNULL)
                run = json.loads(out.read_text())
                if side == "after":  # the tree as it was when this side ran
                    head, dirty = _head(root)
                    run["commit"], run["uncommitted_changes"] = head, dirty
                sides[side].append(run)
    table = []
    for stage in STAGES:
        med = {
            side: statistics.median(
                next(r["wall_s"] for r in run["stages"] if r["stage"] == stage) for run in runs
            )
            for side, runs in sides.items()
        }
        cpu = {
            side: statistics.median(
                next(r["cpu_s"] for r in run["stages"] if r["stage"] == stage) for run in runs
            )
            for side, runs in sides.items()
        }
        table.append(
            {
                "stage": stage,
                "before_ms_per_symbol": round(med["before"] / symbols * 1000, 1),
                "after_ms_per_symbol": round(med["after"] / symbols * 1000, 1),
                "before_cpu_ms_per_symbol": round(cpu["before"] / symbols * 1000, 1),
                "after_cpu_ms_per_symbol": round(cpu["after"] / symbols * 1000, 1),
            }
        )
    totals = {
        side: statistics.median(run["total_s"] for run in runs) / symbols * 1000
        for side, runs in sides.items()
    }
    commits = {(r["commit"], r["uncommitted_changes"]) for r in sides["after"]}
    if len(commits) > 1:
        log(f"WARNING: the tree changed between the after runs: {sorted(commits)}")
    head, dirty = sides["after"][-1]["commit"], sides["after"][-1]["uncommitted_changes"]
    log("")
    log(f"{symbols}-symbol chunk, medians of {rounds} round(s), ms per symbol (wall / CPU)")
    common.print_records(
        {
            "stage": "stage",
            "before wall": "before_ms_per_symbol",
            "after wall": "after_ms_per_symbol",
            "before cpu": "before_cpu_ms_per_symbol",
            "after cpu": "after_cpu_ms_per_symbol",
        },
        table,
        log=log,
    )
    log(
        f"five stages: before {totals['before']:.1f} ms/symbol ({commit[:7]}), after "
        f"{totals['after']:.1f} ms/symbol ({head[:7]}{'+changes' if dirty else ''}) = "
        f"{totals['after'] / totals['before']:.2f}x"
    )
    for run in sides["after"][:1]:
        for r in run.get("gate_reruns", []):
            log(
                f"after: rerun of {r['stage']} unchanged: {r['wall_s']} s, reused {r['reused']}, "
                f"GX validations {r['gx_validations']}"
            )
    return {
        "bench": "profile_chunk_against",
        "at": datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        "symbols": symbols,
        "rounds": rounds,
        "before": {"commit": commit, "ms_per_symbol": round(totals["before"], 1)},
        "after": {
            "commit": head,
            "uncommitted_changes": dirty,
            "ms_per_symbol": round(totals["after"], 1),
        },
        "ratio": round(totals["after"] / totals["before"], 3),
        "stages": table,
        "runs": sides,
        "machine": common.machine(),
    }


def profile(
    symbols: int, top: int, log=print, *, profiled: bool = True, tail: bool = False
) -> dict:
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

        from market_pipeline import indicators, migrate, quality

        # Not timed: a task inherits GX and the compiled indicator kernel from the
        # scheduler's preload (config/airflow_local_settings.py); this process loads both here.
        quality.warm_up()
        indicators.warm_jit()
        conn = runtime.connect()
        try:
            migrate.apply(conn)
        finally:
            conn.close()
        day = common.sessions_after(common.BOOTSTRAP_END, 1)[0]
        run_id = f"profile_{day.isoformat()}"
        upstream = None
        rows = []
        results = {}
        sizes_before = _table_bytes(ns.schema)
        for stage in STAGES:
            context = _context(stage, day, run_id)
            fn = getattr(tasks, stage)
            args = (names,) if upstream is None else (names, upstream)
            prof = cProfile.Profile() if profiled else None
            # A task process starts from its parent's imports and GX engine (this process
            # after warm-up); what the body adds on top is its own working set.
            _reset_peak()
            resident = runtime.process_memory()["resident"]
            pg_started = common.postgres_cpu()
            started = time.perf_counter()
            cpu_started = time.process_time()
            if prof:
                prof.enable()
            result = fn(*args, context)
            if prof:
                prof.disable()
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            pg_ended = common.postgres_cpu()
            pg_cpu = None if pg_started is None or pg_ended is None else pg_ended - pg_started
            peak = runtime.process_memory()["peak"]  # since _reset_peak
            if result is None or result.get("failed"):
                raise common.BenchError(
                    f"{stage} did not pass every symbol (expected all {symbols}): "
                    f"{None if result is None else result['failed']}"
                )
            upstream = results[stage] = result
            db = dict.fromkeys(("execute", "fetch", "commit"), float("nan"))
            buf = io.StringIO()
            if prof:
                if os.environ.get("PROFILE_CHUNK_PSTATS"):  # a directory for the raw profiles
                    prof.dump_stats(Path(os.environ["PROFILE_CHUNK_PSTATS"]) / f"{stage}.pstats")
                db = _db_seconds(pstats.Stats(prof))
                pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
            rows.append(
                {
                    "stage": stage,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "postgres_cpu_s": None if pg_cpu is None else round(pg_cpu, 3),
                    "ms_per_symbol": round(wall / symbols * 1000, 1),
                    "rss_before_mib": round(resident, 1),
                    "rss_added_mib": round(peak - resident, 1),
                    # What the task hands on as XCom (stored and served by Airflow's API).
                    "xcom_kib": round(len(json.dumps(result, default=str)) / 1024, 1),
                    **{f"db_{k}_s": round(v, 3) for k, v in db.items()},
                    "profile": buf.getvalue(),
                }
            )
        growth = _growth(sizes_before, _table_bytes(ns.schema), symbols)
        reruns = _rerun_gates(tasks, names, results, day, run_id)
        tail_rows = _tail(names, day, run_id, top, profiled=profiled) if tail else []
    finally:
        ns.drop()
    log("")
    log(f"one chunk of {symbols} symbols, session {day}, stage bodies in process")
    common.print_records(
        {
            "stage": "stage",
            "wall s": "wall_s",
            "cpu s": "cpu_s",
            "pg cpu s": "postgres_cpu_s",
            "ms/symbol": "ms_per_symbol",
            "+MiB": "rss_added_mib",
            "XCom KiB": "xcom_kib",
            "execute s": "db_execute_s",
            "fetch s": "db_fetch_s",
            "commit s": "db_commit_s",
        },
        rows,
        log=log,
    )
    total = sum(r["wall_s"] for r in rows)
    per_symbol = total / symbols * 1000
    log(f"total {total:.2f} s = {per_symbol:.1f} ms per symbol over {len(STAGES)} stages")
    log(
        f"memory: {rows[0]['rss_before_mib']:.0f} MiB resident after the imports and the GX "
        f"warm-up (a task's parent); a stage body adds at most "
        f"{max(r['rss_added_mib'] for r in rows):.0f} MiB at its peak (+MiB column)"
    )
    log("\nwhat the day's six stages added on disk (tables with their indexes and TOAST)")
    common.print_records(
        {"table": "table", "KiB": "kib", "bytes per symbol": "per_symbol"}, growth, log=log
    )
    for r in reruns:
        log(
            f"rerun of {r['stage']} on the unchanged chunk: {r['wall_s']} s, verdicts reused "
            f"{r['reused']}, validated {r['validated']}, GX validations {r['gx_validations']}"
        )
    if tail_rows:
        log(f"\nthe tail over the {symbols} symbols, one body after the other")
        common.print_records({"stage": "stage", "wall s": "wall_s", "cpu s": "cpu_s"}, tail_rows)
    for r in [*rows, *tail_rows] if profiled else ():
        log(f"\n--- {r['stage']}: top {top} by cumulative time")
        log("\n".join(r["profile"].strip().splitlines()[-(top + 2) :]))
    return {
        "symbols": symbols,
        "profiled": profiled,
        "session": day.isoformat(),
        "stages": rows,
        "total_s": round(total, 3),
        "ms_per_symbol": round(total / symbols * 1000, 1),
        "gate_reruns": reruns,
        "disk_growth": growth,
        "tail": tail_rows,
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
    parser.add_argument(
        "--tail",
        action="store_true",
        help="then the four tail bodies (score, publish, verify, run health) over the symbols",
    )
    parser.add_argument("--against", metavar="REF", help="before/after: REF vs this tree")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side (--against)")
    args = parser.parse_args(argv)
    if args.against:
        result = against(args.against, args.symbols, args.rounds)
        path = common.write_json(result, args.json, "profile-chunk-against")
        print(f"\nwrote {path}")
        return 0
    result = profile(args.symbols, args.top, profiled=not args.no_profile, tail=args.tail)
    path = common.write_json(result, args.json, "profile-chunk")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
