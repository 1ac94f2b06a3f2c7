"""From a task's context to a use case's arguments, and from its outcome back to Airflow.

What every market_daily task needs, once: the session (the trade date of the data interval),
the run's settings (Variables), the attempt (run id, try), a connection, the chunk's label
(for ``map_index_template`` and the DLQ callbacks), the source, the gate pages' link, and the
per-symbol outcome settled into DLQ rows, a retry or a failure, and XCom.
:class:`SymbolTask` bundles these for the six per-symbol tasks (``tasks.py``).
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from market_airflow import chunking
from market_airflow.hooks import MarketDbHook
from market_airflow.settings import var
from market_pipeline import calendar
from market_pipeline.config import EXCHANGE
from market_pipeline.stages import task_id
from market_pipeline.stages.ingest_bars import RawWindows
from market_pipeline.stages.outcome import Outcome, is_chunk
from market_pipeline.stages.reports import GateReports
from market_pipeline.stages.settings import Attempt, Settings

log = logging.getLogger(__name__)


#: A folder: every task body is run under cProfile and its profile written there as
#: ``<task>-<pid>.prof`` (``python -m pstats``; ``docs/benchmarks.md``, "Profiling a run").
PROFILE_DIR_ENV = "MARKET_PROFILE_DIR"


def accounted(body):
    """Log the body's CPU and wall seconds when it ends: ``cpu: X s CPU in Y s wall``, then
    the process's memory: ``memory: A MiB over the parent at the peak (…)``.

    CPU is this process's only (not Postgres's); the gap to wall is waiting — for the
    database, the source, or a core on a busy worker. Memory (:func:`process_memory`): a task
    process is forked from a parent that holds the preload and shares its pages; what it
    adds is the memory only it holds, at its peak. ``bench/common.py`` reads these lines.
    With ``MARKET_PROFILE_DIR`` set, the body runs under cProfile (:data:`PROFILE_DIR_ENV`).
    """

    @functools.wraps(body)
    def timed(*args, **kwargs):
        profile_dir = os.environ.get(PROFILE_DIR_ENV)
        profile = cProfile.Profile() if profile_dir else None
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            if profile is not None:
                return profile.runcall(body, *args, **kwargs)
            return body(*args, **kwargs)
        finally:
            log.info(
                "cpu: %.3f s CPU in %.3f s wall (%s)",
                time.process_time() - cpu,
                time.perf_counter() - wall,
                body.__name__,
            )
            memory = process_memory()
            if memory is not None:
                log.info(
                    "memory: %.1f MiB over the parent at the peak (%.1f MiB private, "
                    "%.1f MiB peak resident) (%s)",
                    memory["added"],
                    memory["private"],
                    memory["peak"],
                    body.__name__,
                )
            if profile is not None:
                _write_profile(profile, Path(profile_dir), body.__name__)

    return timed


def process_memory() -> dict[str, float] | None:
    """MiB of this process's memory from ``/proc`` (None without it): ``private`` (pages no other
    process maps: ``Private_Clean`` + ``Private_Dirty`` — for a forked task process, its own
    allocations and its copies of inherited pages), ``peak`` and ``resident`` (``VmHWM``,
    ``VmRSS``), and ``added``: ``private`` plus what the resident set fell since its peak
    (the pages freed since were the process's own), i.e. what it held over its parent at
    its peak. A forked child's resident set starts below its parent's (mapped files are not
    copied at fork), so the difference of the two resident sets would not say it."""
    try:
        status = _kib_fields(Path("/proc/self/status"))
        rollup = _kib_fields(Path("/proc/self/smaps_rollup"))
    except (OSError, ValueError):
        return None
    try:
        private = (rollup["Private_Clean"] + rollup["Private_Dirty"]) / 1024
        peak, resident = status["VmHWM"] / 1024, status["VmRSS"] / 1024
    except KeyError:
        return None
    return {
        "added": private + max(0.0, peak - resident),
        "private": private,
        "peak": peak,
        "resident": resident,
    }


def _kib_fields(path: Path) -> dict[str, int]:
    """``Name:  123 kB`` lines of a ``/proc`` file as ``{name: 123}``."""
    out = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        first = value.split()[:1]
        if first and first[0].isdigit():
            out[name] = int(first[0])
    return out


def _write_profile(profile: cProfile.Profile, folder: Path, name: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{os.getpid()}.prof"
        profile.dump_stats(path)
        log.info("profile of %s: %s", name, path)
    except OSError:
        log.exception("could not write the profile of %s to %s", name, folder)


def load_settings() -> Settings:
    """The run's settings, each read from its Variable on first use."""
    return Settings(read=var)


def session(context, run_settings: Settings | None = None) -> date:
    """The session this run stands for (see ``calendar.session_for_interval``)."""
    exchange = (run_settings or load_settings()).exchange
    return calendar.session_for_interval(
        context["data_interval_start"], context["data_interval_end"], exchange
    )


def attempt(context) -> Attempt:
    """The run and try the task writes under."""
    ti = context["ti"]
    dag_run = context.get("dag_run")
    return Attempt(
        run_id=ti.run_id,
        try_number=ti.try_number,
        dag_id=ti.dag_id,
        logical_date=getattr(dag_run, "logical_date", None),
    )


def connect():
    """A new psycopg2 connection to the market database (the caller closes it)."""
    return MarketDbHook().get_conn()


def label(context, symbols: Sequence[str]) -> None:
    """Put the chunk in the task's context: map_index_template and the DLQ callbacks read it.

    The callable gets a copy of the context; the runtime keeps the original, so both are
    labelled. Outside a running task (an in-process bench) only ``context`` is.
    """
    from airflow.sdk import get_current_context

    from market_pipeline.chunks import chunk_label

    targets = [context]
    with contextlib.suppress(RuntimeError):  # no task running in this process: context only
        targets.append(get_current_context())
    for ctx in targets:
        ctx["symbol"] = chunk_label(symbols)
        ctx["symbols"] = list(symbols)


def make_source():
    """The bar source named by the ``market_source`` Variable (credentials from the
    ``market_source`` connection for a vendor)."""
    name = var("market_source")
    if name == "synthetic":
        from market_pipeline.sources.synthetic import SyntheticSource

        return SyntheticSource(
            exchange=EXCHANGE,
            defects=SyntheticSource.parse_defects(var("market_synthetic_defects")),
        )
    from market_pipeline.sources.registry import make_source as _make
    from market_pipeline.sources.registry import vendor_settings_from_connection

    options = {}
    if name != "file_drop":
        from airflow.sdk import BaseHook

        from market_pipeline.config import SOURCE_CONN_ID

        conn = BaseHook.get_connection(SOURCE_CONN_ID)
        options = vendor_settings_from_connection(
            host=conn.host,
            password=conn.password,
            schema=conn.schema,
            port=conn.port,
            extra=conn.extra_dejson,
        )
    return _make(name, path=var("market_source_path") or None, **options)


def delivery_location(symbol: str) -> str:
    """Where the configured source delivers ``symbol`` (the file, or the vendor endpoint)."""
    try:
        from market_pipeline.sources.registry import delivery_location as _where

        return _where(var("market_source"), symbol, path=var("market_source_path") or None)
    except Exception:  # a message must still be written: name what is known
        log.exception("could not tell where %s is delivered from", symbol)
        return "the configured source (Variable market_source)"


def gate_reports(context, symbols: Sequence[str]) -> GateReports:
    """The gate's pages, linked from the task's "GX report" extra link (an XCom)."""
    from market_airflow.links import GX_REPORT_XCOM_KEY

    ti = context["ti"]
    return GateReports(symbols, link=lambda url: ti.xcom_push(key=GX_REPORT_XCOM_KEY, value=url))


def late_grace_over(context, run_settings: Settings) -> bool:
    """True once a chunk's raw gate has waited the grace period for its late symbols."""
    ti = context["ti"]
    first = ti.get_first_reschedule_date(context)
    if first is None:
        return False
    timeout = getattr(context["task"], "timeout", None)
    timeout = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout
    grace = run_settings.late_grace_seconds
    if timeout:
        grace = min(grace, 0.8 * float(timeout))
    waited = (datetime.now(UTC) - first).total_seconds()
    return waited >= grace


def max_map_length() -> int | None:
    """Airflow's ``[core] max_map_length`` (the most map indexes a task may expand to)."""
    try:
        from airflow.sdk.configuration import conf

        return conf.getint("core", "max_map_length")
    except Exception:  # pragma: no cover - outside Airflow: no limit to check
        return None


def task_states(context, task_ids: Iterable[str]) -> dict[tuple[str, int], str | None]:
    """``{(task_id, map_index): state}`` of this run's ``task_ids`` (map_index -1 unmapped).

    ``get_task_states`` (the Task SDK's public call) names a mapped instance
    ``"<task_id>_<map_index>"`` in its keys and gives no structured form; this is the one
    place that reads that encoding (tests/plugins/test_runtime.py trips if it changes).
    """
    ti = context["ti"]
    wanted = list(task_ids)
    found = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=wanted)
    out: dict[tuple[str, int], str | None] = {}
    for key, state in found.get(ti.run_id, {}).items():
        task_id, index = split_task_state_key(key, wanted)
        out[(task_id, index)] = state
    return out


def split_task_state_key(key: str, task_ids: Iterable[str]) -> tuple[str, int]:
    """``("group.task", 3)`` from ``"group.task_3"``; ``(key, -1)`` for an unmapped task."""
    if key in task_ids:
        return key, -1
    task_id, _, index = key.rpartition("_")
    if not index.isdigit():
        raise ValueError(
            f"expected a task-state key '<task_id>' or '<task_id>_<map_index>' of "
            f"{sorted(task_ids)}, found {key!r}"
        )
    return task_id, int(index)


def chain_states(context) -> dict[tuple[str, int], str | None]:
    """The per-symbol chain's task states, keyed by stage name (no group prefix)."""
    from market_pipeline.stages import SYMBOL_TASKS

    states = task_states(context, [task_id(t) for t in SYMBOL_TASKS])
    return {(t.rsplit(".", 1)[-1], i): st for (t, i), st in states.items()}


@dataclass
class SymbolTask:
    """One per-symbol task instance: its chunk, session, settings, attempt and connection.

    ``with SymbolTask(context, symbols) as task:`` labels the chunk and opens the
    connection (closed on exit); ``task.finish(outcome, upstream)`` settles the outcome
    (DLQ rows, retry or failure — ``chunking.settle``) and returns the XCom.
    """

    context: Mapping
    symbols: Sequence[str]
    settings: Settings = field(default_factory=load_settings)

    def __post_init__(self) -> None:
        from market_pipeline.chunks import chunk_label

        label(self.context, self.symbols)
        #: How the instance is named in the UI and in "clear …" (its symbol, or FIRST..LAST).
        self.label = chunk_label(self.symbols)
        self.session = session(self.context, self.settings)
        self.chunk = is_chunk(self.symbols)
        self.attempt = attempt(self.context)
        self.conn = None

    def __enter__(self) -> SymbolTask:
        self.conn = connect()
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()

    def gate_reports(self) -> GateReports:
        return gate_reports(self.context, self.symbols)

    def raw_windows(self, upstream: Mapping, open_source) -> RawWindows:
        """The raw gate's windows from the upstream XCom, asking ``open_source()`` again
        (the adapter names it: tests/dags/test_dag_integrity.py finds who opens the source)."""
        return RawWindows(
            starts=window_starts(upstream), open_source=open_source, attempt=self.attempt
        )

    def run(self, stage, upstream: Mapping | None = None, **options) -> dict | None:
        """Call the use case ``stage`` on upstream's passed symbols (the chunk's own without
        an upstream) with this instance's session, settings and chunk flag, then settle its
        outcome and return the XCom; ``None`` (a sensor that pokes again) is returned as is."""
        symbols = self.symbols if upstream is None else upstream["symbols"]
        out = stage(self.conn, symbols, self.session, self.settings, chunk=self.chunk, **options)
        return None if out is None else self.finish(out, upstream)

    def finish(self, out: Outcome, upstream: Mapping | None = None) -> dict:
        chunking.settle(out, self.symbols, self.context, self.conn, day=self.session)
        return chunking.output(self.session, out, (upstream or {}).get("failed"))


def window_starts(upstream: Mapping) -> dict[str, date | None]:
    """Each passed symbol's ``window_start`` from the upstream XCom (None when absent)."""
    return {
        s: date.fromisoformat(r["window_start"]) if r.get("window_start") else None
        for s, r in upstream.get("results", {}).items()
    }
