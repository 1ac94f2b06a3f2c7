"""Shared machinery of the whole-run benchmarks (issue 9 P1/P7, issue 5's gate cost).

One :class:`BenchCluster` (a real Airflow: api-server + scheduler + dag-processor,
LocalExecutor, Postgres metadata DB, the tuning of AIRFLOW-NOTES.md, GX/pandas/psycopg2/redis
preloaded in the scheduler) serves the DAGs of ``bench/dags``:

* ``market_daily`` — the project's DAG, loaded from ``dags/market_daily.py`` unchanged;
* ``market_daily_nogates`` — the same DAG with no-op quality gates;
* ``market_daily_empty`` — the same shape with tasks that do nothing.

:func:`compare` bootstraps the synthetic universe's history (``python -m
market_pipeline.bootstrap``, outside the timing) into a fresh ``MARKET_SCHEMA``, then
triggers the variants one after another in the same cluster — each run that touches data
on the next session, so every measured run is a steady-state daily run that fetches one
new bar per symbol — and reads wall times (trigger → run end) and every task instance's
timings back from the REST API. The schema, the Redis keys and the reports are removed
afterwards; the cluster drops its metadata database.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "include", ROOT / "plugins"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from market_pipeline.chunks import AUTO, per_task_for  # noqa: E402
from market_pipeline.stages import GROUP_ID, SYMBOL_TASKS  # noqa: E402
from scripts import local_airflow  # noqa: E402
from tests.support.airflow_cluster import AirflowCluster, ClusterError  # noqa: E402

#: The Airflow settings every deployment of the project uses (config/airflow.env; ``make up``
#: and the compose stack read the same file), so a bench measures what is deployed.
TUNING_FILE = local_airflow.TUNING_FILE


def tuning(path: Path = TUNING_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of config/airflow.env (comments and blank lines skipped)."""
    return local_airflow.read_env_file(path)


#: Task slots of the tuned deployment (``[core] parallelism``), the benches' default.
PARALLELISM = int(tuning()["AIRFLOW__CORE__PARALLELISM"])

BENCH_DAGS = ROOT / "bench" / "dags"
RESULTS = ROOT / "bench" / "results"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_CACHE = "redis://127.0.0.1:6379/1"

#: Variant name → DAG id in bench/dags.
DAGS = {
    "real": "market_daily",
    "nogates": "market_daily_nogates",
    "empty": "market_daily_empty",
    # Not a variant: run once, untimed, before the timed runs (bench/dags/bench_warmup.py).
    "warmup": "bench_warmup",
}
#: What ``compare`` can time: every DAG but the warm-up.
VARIANTS = tuple(v for v in DAGS if v != "warmup")
#: Variants whose runs read and write market data (each needs its own session).
DATA_VARIANTS = {"real", "nogates"}
GROUP = GROUP_ID
SYMBOL_STAGES = SYMBOL_TASKS
#: History is bootstrapped through this session; runs take the sessions after it.
BOOTSTRAP_END = date(2024, 11, 29)
#: Sessions of history per symbol (the DAG's indicators read 600).
HISTORY = 620


class BenchError(RuntimeError):
    """A benchmark run did not end as expected (state, task states, cleanup)."""


# --------------------------------------------------------------------------- environment


def machine(load_label: str = "") -> dict[str, Any]:
    """The box the figures come from: CPUs, memory, load averages, versions."""
    import airflow

    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        line = next(
            ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
        )
        mem_kb = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "load_label": load_label,
        "python": platform.python_version(),
        "airflow": airflow.__version__,
        "platform": platform.platform(),
    }


def db_uri() -> str:
    """libpq URI of the market Postgres (``AIRFLOW_CONN_MARKET_DB`` or the local test DB)."""
    return os.environ.get("AIRFLOW_CONN_MARKET_DB", DEFAULT_DB).split("?")[0]


def cache_uri() -> str:
    return os.environ.get("AIRFLOW_CONN_MARKET_CACHE", DEFAULT_CACHE)


def universe(n: int) -> list[str]:
    """``n`` synthetic tickers, sorted: B0000, B0001, ..."""
    return [f"B{i:04d}" for i in range(n)]


def sessions_after(day: date, count: int) -> list[date]:
    from market_pipeline import calendar

    out, cur = [], day
    for _ in range(count):
        cur = calendar.next_session(cur, "XNYS")
        out.append(cur)
    return out


# --------------------------------------------------------------------------- market data


class MarketNamespace:
    """A throwaway MARKET_SCHEMA + MARKET_CACHE_PREFIX + report folder, removed on exit."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.schema = f"bench_daily_{tag}"
        self.cache_prefix = f"bench_daily:{tag}"
        self.report_dir = Path(tempfile.mkdtemp(prefix="bench_reports_"))

    def env(self) -> dict[str, str]:
        return {
            "MARKET_SCHEMA": self.schema,
            "MARKET_CACHE_PREFIX": self.cache_prefix,
            "MARKET_REPORT_DIR": str(self.report_dir),
            "AIRFLOW_CONN_MARKET_DB": db_uri(),
            "AIRFLOW_CONN_MARKET_CACHE": cache_uri(),
        }

    def __enter__(self) -> MarketNamespace:
        return self

    def __exit__(self, *exc) -> None:
        self.drop()

    def verdicts(self, session: date) -> dict[str, dict[str, int]]:
        """Per gate, the session's stored verdicts and how many were reused (no GX run)."""
        import psycopg2

        from market_pipeline.store import sql as store_sql

        query = store_sql.table("validation_reports", self.schema)
        conn = psycopg2.connect(db_uri())
        try:
            with conn.cursor() as cur:
                cur.execute(
                    store_sql.SQL(
                        "SELECT gate, count(*), count(*) FILTER (WHERE reused) FROM {} "
                        "WHERE trade_date = %s GROUP BY gate"
                    ).format(query),
                    (session,),
                )
                rows = cur.fetchall()
        except psycopg2.Error:  # a schema from before verdict reuse: nothing to count
            return {}
        finally:
            conn.close()
        return {gate: {"verdicts": n, "reused": reused} for gate, n, reused in rows}

    def drop(self) -> None:
        import psycopg2
        import redis

        conn = psycopg2.connect(db_uri())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            conn.close()
        client = redis.Redis.from_url(cache_uri())
        try:
            keys = list(client.scan_iter(match=f"{self.cache_prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        finally:
            client.close()
        shutil.rmtree(self.report_dir, ignore_errors=True)

    def bootstrap(self, symbols: Sequence[str], end: date = BOOTSTRAP_END) -> float:
        """Load ``HISTORY`` sessions per symbol through ``end`` (bulk, outside Airflow)."""
        from market_pipeline import calendar

        start = calendar.previous_sessions(end, HISTORY, "XNYS")[0]
        cmd = [
            sys.executable,
            "-m",
            "market_pipeline.bootstrap",
            "--source",
            "synthetic",
            "--symbols",
            ",".join(symbols),
            "--start",
            start.isoformat(),
            "--end",
            end.isoformat(),
            "--schema",
            self.schema,
            "--dsn",
            db_uri(),
        ]
        env = dict(
            os.environ,
            **self.env(),
            PYTHONPATH=os.pathsep.join([str(ROOT / "include"), str(ROOT / "plugins"), str(ROOT)]),
        )
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise BenchError(
                f"bootstrap of {len(symbols)} symbols exited {proc.returncode} (expected 0):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        return time.perf_counter() - started


# --------------------------------------------------------------------------- cluster


#: Appended to the home's ``airflow_local_settings.py`` by ``preload_calendar=True``: the
#: fix measured for the per-task calendar cost (exchange_calendars import + XNYS build).
CALENDAR_PRELOAD = """

if _is_task_parent():  # bench: calendar preload (proposed for config/)
    try:
        import exchange_calendars  # noqa: F401
        from market_pipeline import calendar as _market_calendar

        _market_calendar.get_calendar("XNYS")
    except Exception:  # pragma: no cover
        pass
"""


class BenchCluster(AirflowCluster):
    """:class:`AirflowCluster` serving ``bench/dags``; waits for every bench DAG.

    :param preload_calendar: also preload ``exchange_calendars`` and build the XNYS calendar
        in the scheduler (see :data:`CALENDAR_PRELOAD`), so forked tasks inherit both.
    """

    def __init__(
        self,
        *,
        symbols: int,
        parallelism: int,
        env: Mapping[str, str],
        keep_home: bool = False,
        preload_calendar: bool = False,
    ) -> None:
        self.preload_calendar = preload_calendar
        extra = {
            **tuning(),
            # --parallelism (default: the tuned value) sets both slot limits.
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
            "AIRFLOW_VAR_MARKET_SOURCE": "synthetic",
            # A run of N symbols maps N instances per stage.
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, symbols)),
            # Anything retried in a benchmark waits 1 s, not 30.
            "MARKET_RETRY_BASE_SECONDS": "1",
            "MARKET_GATE_POKE_SECONDS": "5",
            **env,
        }
        super().__init__(
            dags_folder=BENCH_DAGS,
            parallelism=parallelism,
            env=extra,
            dag_id=DAGS["empty"],
            pools={"market_source_api": 4},
            start_timeout=300,
            keep_home=keep_home,
        )

    def _prepare_home(self) -> None:
        super()._prepare_home()
        settings = self.home / "config" / "airflow_local_settings.py"
        if self.preload_calendar:
            if not settings.is_file():
                raise BenchError(f"expected the project's preload at {settings}, found none")
            settings.write_text(settings.read_text() + CALENDAR_PRELOAD)

    def start(self) -> BenchCluster:
        super().start()
        try:
            deadline = time.monotonic() + self.start_timeout
            for dag_id in DAGS.values():
                while True:
                    resp = self.api("GET", f"/api/v2/dags/{dag_id}", expect=None)
                    if resp.status_code == 200 and not resp.json().get("is_paused", True):
                        break
                    if time.monotonic() > deadline:
                        errors = self.api("GET", "/api/v2/importErrors", expect=None).text
                        raise ClusterError(f"bench DAG {dag_id} not parsed: {errors[-3000:]}")
                    time.sleep(1)
        except BaseException:
            self.stop()
            raise
        return self


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _secs(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() if a and b else None


#: Task-log events that split a task process's life into phases (Airflow 3.3 task runner).
_PHASE_MARKS = (
    ("parse", "Filling up the DagBag"),
    ("prepare", "Worker startup parse complete"),
    ("execute", "::endgroup::"),
    ("post", "::group::Post Execute"),
)


_BODY_CPU = re.compile(r"cpu: ([0-9.]+) s CPU in ([0-9.]+) s wall")
#: runtime.accounted's memory line: what the task process held over its parent at its peak.
_BODY_MEMORY = re.compile(r"memory: ([0-9.]+) MiB over the parent at the peak")


def _log_phases(path: Path) -> dict[str, float] | None:
    """Seconds per phase of one task log: startup, parse, prepare, execute, post."""
    stamps: list[tuple[str, datetime]] = []
    body: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "timestamp" in rec:
            stamps.append((str(rec.get("event") or ""), _ts(rec["timestamp"])))
            found = _BODY_CPU.match(stamps[-1][0])
            if found:  # runtime.accounted: the task body's own CPU and wall seconds
                body.update(body_cpu=float(found[1]), body_wall=float(found[2]))
            found = _BODY_MEMORY.match(stamps[-1][0])
            if found:  # runtime.accounted: MiB the task process added over its parent
                body["added_mib"] = float(found[1])
    if not stamps:
        return None
    bounds = [("startup", stamps[0][1])]
    i = 0
    for phase, mark in _PHASE_MARKS:
        while i < len(stamps) and not stamps[i][0].startswith(mark):
            i += 1
        if i == len(stamps):
            return None
        bounds.append((phase, stamps[i][1]))
    bounds.append(("end", stamps[-1][1]))
    spans = {
        name: (bounds[k + 1][1] - at).total_seconds() for k, (name, at) in enumerate(bounds[:-1])
    }
    return {**spans, **body}


def log_profile(home: Path | None, dag_id: str, run_id: str) -> dict[str, dict[str, float]]:
    """Median seconds per phase of every task id's task logs (first attempt of each)."""
    if home is None:
        return {}
    base = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    phases: dict[str, list[dict[str, float]]] = {}
    for path in base.glob("task_id=*/**/attempt=1.log"):
        task_id = next(p for p in path.parts if p.startswith("task_id=")).removeprefix("task_id=")
        found = _log_phases(path)
        if found:
            phases.setdefault(task_id, []).append(found)
    out = {}
    for task_id, found in phases.items():
        names = dict.fromkeys(name for p in found for name in p)
        out[task_id] = {
            name: round(statistics.median(p[name] for p in found if name in p), 4) for name in names
        }
        if "added_mib" in names:  # memory: the largest task process matters, not the median
            out[task_id]["added_mib_max"] = max(p["added_mib"] for p in found if "added_mib" in p)
    return out


def scheduler_cadence(home: Path | None, since: datetime, until: datetime | None) -> dict:
    """How often the scheduler queued tasks during the run, from its log.

    Gaps between "Setting the following tasks to queued state" lines (one per scheduling
    loop that queued anything): when they grow with the run's size, the scheduler loop,
    not the tasks, sets the pace.
    """
    path = home / "proc" / "scheduler.log" if home else None
    if path is None or not path.is_file() or until is None:
        return {}
    stamps = []
    for line in path.read_text(errors="replace").splitlines():
        if "Setting the following tasks to queued state" not in line:
            continue
        with contextlib.suppress(ValueError):
            at = _ts(line.split()[0])
            if at and since <= at <= until:
                stamps.append(at)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    return {
        "queue_loops": len(stamps),
        "gap_median": round(statistics.median(gaps), 3) if gaps else None,
        "gap_p90": round(_pct(gaps, 0.9), 3) if gaps else None,
    }


# --------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, str, float, float]]:
    """``{pid: (ppid, comm, own cpu s, reaped children's cpu s)}`` from /proc."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                raw = fh.read()
        except OSError:  # gone meanwhile
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # After comm: state ppid ... utime(14th field overall → index 11 here) stime cutime cstime
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        out[int(entry.name)] = (
            int(fields[1]),
            comm,
            (utime + stime) / _TICK,
            (cutime + cstime) / _TICK,
        )
    return out


def _tree_pids(table, root: int) -> list[int]:
    """``root`` and every live process under it (root first; empty when root is gone)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root] if root in table else []
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _tree_cpu(table, root: int) -> tuple[float, float]:
    """(root's own CPU s, CPU s of everything under it, live and reaped)."""
    if root not in table:
        return 0.0, 0.0
    below = table[root][3] + sum(sum(table[p][2:4]) for p in _tree_pids(table, root)[1:])
    return table[root][2], below


def _postgres_servers(table) -> list[int]:
    """The root process of every Postgres server visible in ``table``."""
    return [
        pid
        for pid, (ppid, comm, *_r) in table.items()
        if comm in ("postgres", "postmaster")
        and table.get(ppid, (0, ""))[1] not in ("postgres", "postmaster")
    ]


def postgres_cpu(table=None) -> float | None:
    """Cumulative CPU seconds of every Postgres server on the box (its backends, live and
    exited, included); ``None`` when no Postgres process is visible here (a server on
    another host, or in another container's process namespace): not measured, not zero."""
    table = _proc_table() if table is None else table
    masters = _postgres_servers(table)
    if not masters:
        return None
    return sum(sum(_tree_cpu(table, pid)) for pid in masters)


def cpu_snapshot(cluster: AirflowCluster) -> dict[str, float]:
    """Cumulative CPU seconds per component of the box (diff two of these around a run).

    ``scheduler`` is the scheduler process itself; ``tasks`` everything it forked (the
    LocalExecutor workers, each task's supervisor and the task process: our code *and* the
    task runner's own work); ``api_server`` / ``dag_processor`` their process trees (the
    Execution API every task talks to is the api-server); ``postgres`` the whole server
    (market and metadata databases alike); ``busy``/``idle`` the machine's totals.
    """
    table = _proc_table()
    out: dict[str, float] = {}
    for name, proc in getattr(cluster, "procs", {}).items():
        own, below = _tree_cpu(table, proc.pid)
        # `airflow <cmd>` may exec or fork its real server: count the whole tree.
        if name == "scheduler":
            # the scheduler's own loop vs what it forked (workers → supervisors → tasks)
            out["scheduler"], out["tasks"] = own, below
        else:
            out[name.replace("-", "_")] = own + below
    postgres = postgres_cpu(table)
    if postgres is not None:  # a server on another host is not measured (and not in `other`)
        out["postgres"] = postgres
    with open("/proc/stat") as fh:
        cpu = [int(x) for x in fh.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    out["busy"] = (sum(cpu[:8]) - idle) / _TICK
    out["idle"] = idle / _TICK
    return out


def _pss_mib(pid: int) -> float:
    """``pid``'s proportional set size in MiB (its shared pages split between the processes
    mapping them, so a tree's parts add up); 0 when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_snapshot(cluster: AirflowCluster) -> dict[str, float]:
    """MiB of memory (PSS) per component now, named as in :func:`cpu_snapshot`: the scheduler
    itself, ``tasks`` (everything it forked), the api-server and dag-processor trees, and
    every Postgres server (``postgres``, when visible here)."""
    table = _proc_table()
    out: dict[str, float] = {}
    for name, proc in getattr(cluster, "procs", {}).items():
        pids = _tree_pids(table, proc.pid)
        if name == "scheduler":
            out["scheduler"] = _pss_mib(proc.pid)
            out["tasks"] = sum(_pss_mib(p) for p in pids if p != proc.pid)
        else:
            out[name.replace("-", "_")] = sum(_pss_mib(p) for p in pids)
    masters = _postgres_servers(table)
    if masters:
        out["postgres"] = sum(_pss_mib(p) for m in masters for p in _tree_pids(table, m))
    return {k: round(v, 1) for k, v in out.items()}


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each component used between two snapshots; ``other`` = the rest of busy."""
    delta = {k: round(after[k] - before.get(k, 0.0), 1) for k in after}
    named = sum(v for k, v in delta.items() if k not in ("busy", "idle"))
    delta["other"] = round(delta["busy"] - named, 1)
    return delta


def timed_run(cluster: AirflowCluster, variant: str, session: date, timeout: float) -> dict:
    """Trigger ``variant`` for ``session``; wall time from trigger to the run's end."""
    dag_id = DAGS[variant]
    load_before = os.getloadavg()[0]
    cpu_before = cpu_snapshot(cluster)
    triggered = datetime.now(UTC)
    run_id = cluster.trigger(
        session.isoformat(),
        dag_id=dag_id,
        run_id=f"bench_{variant}_{session:%Y%m%d}_{uuid.uuid4().hex[:4]}",
    )
    deadline = time.monotonic() + timeout
    peak: dict[str, float] = {}
    polls = 0
    while True:
        if polls % 10 == 0:  # every ~5 s: each smaps_rollup read costs ~1.7 ms of CPU
            for name, mib in memory_snapshot(cluster).items():
                peak[name] = max(peak.get(name, 0.0), mib)
        polls += 1
        run = cluster.run(run_id, dag_id)
        if run["state"] in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s")
        time.sleep(0.5)
    cpu_after = cpu_snapshot(cluster)
    tis = cluster.task_instances(run_id, dag_id)
    states = Counter(ti["state"] for ti in tis)
    ended = _ts(run["end_date"])
    return {
        "variant": variant,
        "dag_id": dag_id,
        "run_id": run_id,
        "session": session.isoformat(),
        "state": run["state"],
        "wall_seconds": _secs(triggered, ended),
        "queued_to_start_seconds": _secs(_ts(run.get("queued_at")), _ts(run["start_date"])),
        "run_seconds": _secs(_ts(run["start_date"]), ended),
        "task_instances": len(tis),
        "ti_states": dict(states),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "stages": stage_profile(tis, _ts(run["start_date"])),
        "log_phases": log_profile(cluster.home, dag_id, run_id),
        "scheduler": scheduler_cadence(cluster.home, triggered, ended),
        "cpu_seconds": cpu_delta(cpu_before, cpu_after),
        "peak_memory_mib": peak,
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stage_profile(tis: Iterable[Mapping[str, Any]], run_start: datetime | None) -> dict:
    """Per task id: count, task-seconds, median/p90 duration, queue wait, span in the run."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for ti in tis:
        by_task.setdefault(ti["task_id"], []).append(ti)
    out = {}
    for task_id, group in by_task.items():
        durations = [float(ti["duration"]) for ti in group if ti.get("duration") is not None]
        waits = [
            w
            for ti in group
            if (w := _secs(_ts(ti.get("queued_when")), _ts(ti.get("start_date")))) is not None
        ]
        starts = [_ts(ti["start_date"]) for ti in group if ti.get("start_date")]
        ends = [_ts(ti["end_date"]) for ti in group if ti.get("end_date")]
        out[task_id] = {
            "count": len(group),
            "task_seconds": round(sum(durations), 3),
            "median": round(statistics.median(durations), 4) if durations else None,
            "p90": round(_pct(durations, 0.9), 4),
            "max": round(max(durations), 4) if durations else None,
            "queue_wait_median": round(statistics.median(waits), 4) if waits else None,
            "first_start": round(_secs(run_start, min(starts)) or 0, 2) if starts else None,
            "last_end": round(_secs(run_start, max(ends)) or 0, 2) if ends else None,
            "tries": max(int(ti.get("try_number") or 0) for ti in group),
        }
    return out


# --------------------------------------------------------------------------- comparison


def plan(variants: Sequence[str], rounds: int) -> list[str]:
    """Run order: the measured variant first in round 1, reversed in the next (ABBA...)."""
    order: list[str] = []
    for r in range(rounds):
        order += list(variants) if r % 2 == 0 else list(reversed(variants))
    return order


def compare(
    *,
    symbols: int,
    variants: Sequence[str],
    parallelism: int = PARALLELISM,
    rounds: int = 1,
    timeout: float | None = None,
    keep_home: bool = False,
    preload_calendar: bool = False,
    progress_path: str | Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    log=print,
) -> dict:
    """Run ``variants`` (names of :data:`DAGS`) for ``symbols`` in one cluster; raw results."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    order = plan(variants, rounds)
    names = universe(symbols)
    # A per-run budget from the task instances of one run (5 per map index + 6), not the
    # symbols: one symbol per task at 500 symbols ran past 2000 s on this box (session 3).
    per_task = per_task_for(
        symbols, (extra_env or {}).get("AIRFLOW_VAR_MARKET_SYMBOLS_PER_TASK", AUTO)
    )
    timeout = timeout or max(1800.0, 3.0 * (len(SYMBOL_STAGES) * -(-symbols // per_task) + 6))
    runs: list[dict] = []
    timings: dict[str, float] = {}
    with MarketNamespace() as ns:
        where = {"schema": ns.schema, "cache_prefix": ns.cache_prefix}
        if DATA_VARIANTS & set(variants):
            log(f"bootstrapping {symbols} symbols x {HISTORY} sessions into {ns.schema} ...")
            timings["bootstrap"] = round(ns.bootstrap(names), 2)
        env = {**ns.env(), "AIRFLOW_VAR_MARKET_UNIVERSE": ",".join(names), **(extra_env or {})}
        started = time.perf_counter()
        with BenchCluster(
            symbols=symbols,
            parallelism=parallelism,
            env=env,
            keep_home=keep_home,
            preload_calendar=preload_calendar,
        ) as cluster:
            timings["cluster_start"] = round(time.perf_counter() - started, 2)
            # The cluster's first task instance pays a one-off start-up (~9 s here); a
            # one-task run takes it, so that no variant's timed run does.
            warm = timed_run(cluster, "warmup", BOOTSTRAP_END, timeout)
            timings["warmup"] = round(warm["wall_seconds"], 2)
            log(f"  warm-up run (untimed): {warm['state']}, {warm['wall_seconds']:.1f} s")
            data_sessions = iter(sessions_after(BOOTSTRAP_END, len(order)))
            empty_sessions = iter(sessions_after(BOOTSTRAP_END, len(order)))
            for variant in order:
                session = next(data_sessions if variant in DATA_VARIANTS else empty_sessions)
                log(f"  {variant:<8} {session} ... (load {os.getloadavg()[0]:.2f})")
                result = timed_run(cluster, variant, session, timeout)
                log(f"  scheduler queue loops: {result['scheduler']}")
                log(
                    f"  {variant:<8} {session} {result['state']:<8} wall "
                    f"{result['wall_seconds']:.1f} s, {result['task_instances']} TIs"
                )
                if variant in DATA_VARIANTS:
                    # Gate verdicts of the run, and how many were reused (a retry or a
                    # rerun of an unchanged input: no GX run); a fresh session reuses none.
                    result["verdicts"] = ns.verdicts(session)
                    log(f"  gate verdicts (reused): {result['verdicts']}")
                runs.append(result)
                if progress_path:  # partial results survive an interrupted invocation
                    Path(progress_path).parent.mkdir(parents=True, exist_ok=True)
                    Path(progress_path).write_text(json.dumps(runs, indent=1, default=str))
            if keep_home:
                log(f"  AIRFLOW_HOME kept: {cluster.home}")
    return {
        "symbols": symbols,
        "parallelism": parallelism,
        "rounds": rounds,
        "preload_calendar": preload_calendar,
        "extra_env": dict(extra_env or {}),
        **where,
        "order": order,
        "timings": timings,
        "runs": runs,
    }


def median_wall(runs: Sequence[Mapping[str, Any]], variant: str) -> float:
    walls = [r["wall_seconds"] for r in runs if r["variant"] == variant]
    if not walls:
        raise BenchError(f"no run of {variant}")
    return statistics.median(walls)


def check_runs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems that make a figure meaningless: failed runs, non-success task instances."""
    problems = []
    for r in runs:
        bad = {s: n for s, n in r["ti_states"].items() if s != "success"}
        if r["state"] != "success" or bad:
            problems.append(f"{r['dag_id']} {r['session']}: run {r['state']}, task states {bad}")
    return problems


def per_stage_table(runs: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> list[dict]:
    """Median TI duration per stage and variant (medians over rounds), task ids unprefixed."""
    rows = []
    task_ids = list(dict.fromkeys(t for r in runs for t in r["stages"]))
    for task_id in task_ids:
        row: dict[str, Any] = {"stage": task_id.removeprefix(f"{GROUP}.")}
        for v in variants:
            meds = [
                r["stages"][task_id]["median"]
                for r in runs
                if r["variant"] == v and task_id in r["stages"]
            ]
            secs = [
                r["stages"][task_id]["task_seconds"]
                for r in runs
                if r["variant"] == v and task_id in r["stages"]
            ]
            row[f"{v}_median"] = statistics.median(meds) if meds else None
            row[f"{v}_task_seconds"] = statistics.median(secs) if secs else None
        rows.append(row)
    return rows


def phase_table(runs: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> list[dict]:
    """Median seconds per task-log phase, per stage and variant (medians over rounds)."""
    rows = []
    task_ids = list(dict.fromkeys(t for r in runs for t in r.get("log_phases", {})))
    for task_id in task_ids:
        row: dict[str, Any] = {"stage": task_id.removeprefix(f"{GROUP}.")}
        for v in variants:
            found = [
                r["log_phases"][task_id]
                for r in runs
                if r["variant"] == v and task_id in r.get("log_phases", {})
            ]
            for phase in ("startup", "parse", "prepare", "execute", "post", "body_cpu"):
                vals = [f[phase] for f in found if phase in f]
                row[f"{v}_{phase}"] = statistics.median(vals) if vals else None
        rows.append(row)
    return rows


def cpu_table(runs: Sequence[Mapping[str, Any]], log=print) -> None:
    """CPU seconds per component for each run (see :func:`cpu_snapshot`)."""
    keys = [
        "tasks",
        "scheduler",
        "api_server",
        "dag_processor",
        "postgres",
        "other",
        "busy",
        "idle",
    ]
    rows = [[r["dag_id"], *[(r.get("cpu_seconds") or {}).get(k) for k in keys]] for r in runs]
    log("")
    log("CPU seconds during each run (tasks = everything the scheduler forked: task runner +")
    log("our code; busy/idle = the whole machine, 2 cores = 2 CPU-s per wall second)")
    print_table(["dag", *keys], rows, log)


#: #20: a task process adds at most this over its parent (the preloaded scheduler or worker).
TASK_MEMORY_TARGET_MIB = 150


def memory_table(runs: Sequence[Mapping[str, Any]], log=print) -> dict | None:
    """Peak memory per component for each run, then what the task processes of the first
    run that logged it held over their parent (``runtime.accounted``), per stage; returns
    the largest chunk task and the largest tail task with their stages (``{"chunk": …,
    "tail": …}``; None when no task logged its memory). #20's target is per chunk task."""
    keys = ["tasks", "scheduler", "api_server", "dag_processor", "postgres"]
    rows = [[r["dag_id"], *[(r.get("peak_memory_mib") or {}).get(k) for k in keys]] for r in runs]
    log("")
    log("peak memory per component during each run, MiB (PSS: shared pages split between the")
    log("processes that map them, sampled every ~5 s; tasks = all task processes at once)")
    print_table(["dag", *keys], rows, log)
    run = next(
        (r for r in runs if any("added_mib" in p for p in (r.get("log_phases") or {}).values())),
        None,
    )
    if run is None:
        return None
    phases = {t: p for t, p in run["log_phases"].items() if "added_mib" in p}
    log("")
    log(f"{run['dag_id']}: MiB a task process held over its parent at its peak (its own pages)")
    print_table(
        ["stage", "median", "max"],
        [
            [t.removeprefix(f"{GROUP}."), p["added_mib"], p["added_mib_max"]]
            for t, p in phases.items()
        ],
        log,
    )
    # The target is per chunk task (what a worker runs several of at once); the tail's
    # tasks each take the whole universe and run one at a time: reported on their own.
    chain = {t: p for t, p in phases.items() if t.startswith(f"{GROUP}.")}
    tail = {t: p for t, p in phases.items() if t not in chain}
    largest = {}
    for name, group in (("chunk", chain), ("tail", tail)):
        if group:
            task_id, worst = max(group.items(), key=lambda kv: kv[1]["added_mib_max"])
            largest[name] = {
                "stage": task_id.removeprefix(f"{GROUP}."),
                "mib": worst["added_mib_max"],
            }
    if "tail" in largest:
        log(
            f"largest tail task over its parent: {largest['tail']['mib']:.1f} MiB "
            f"({largest['tail']['stage']}; the whole universe, one task at a time)"
        )
    if "chunk" in largest:
        chunk = largest["chunk"]
        met = "met" if chunk["mib"] <= TASK_MEMORY_TARGET_MIB else "NOT met"
        log(
            f"largest chunk task over its parent: {chunk['mib']:.1f} MiB ({chunk['stage']}; "
            f"target <= {TASK_MEMORY_TARGET_MIB} MiB: {met})"
        )
    return largest


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], log=print) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    log("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    log("  ".join("-" * w for w in widths))
    for r in cells:
        log("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def print_records(
    columns: Mapping[str, str], records: Iterable[Mapping[str, Any]], log=print
) -> None:
    """:func:`print_table` of dict rows: ``columns`` maps each header to its row key."""
    keys = list(columns.values())
    print_table(list(columns), ([r[k] for k in keys] for r in records), log)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(result: Mapping[str, Any], path: str | Path | None, prefix: str) -> Path:
    """Write ``result`` to ``path`` (default ``bench/results/<prefix>-<utc stamp>.json``)."""
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
