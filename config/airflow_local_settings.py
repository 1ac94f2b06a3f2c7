"""Airflow local settings shipped with the project ($AIRFLOW_HOME/config or ./config).

Heavy libraries are imported once in the long-lived parent of task processes (the
LocalExecutor scheduler or the Celery worker), so every forked task inherits them instead
of paying the import (GX alone costs 2.4-3.9 s per process; see docs/quality.md). The
quality gates' GX engine (an in-memory ephemeral context with its two suites) is built here
too, so a gate task does not spend ~0.1-0.2 s CPU building it: it holds no thread, no
connection and no open file, so a forked copy is as good as a new one (tested in
tests/unit/test_local_settings.py). So is the numba-compiled indicator kernel, which
compute_indicators then uses instead of the interpreted one, and the project's own task
modules (what the DAG file and the task bodies import). No database connection or thread
is created here.
Other Airflow processes (CLI, api-server, dag-processor) skip all of it.

A task parent says on stderr, in one line, what it preloaded; anything it could not load is
logged as an error with its exception (a worker without the preload runs every gate ~8x
slower: docs/deploy.md). Airflow configures its logging only after importing this file, so
the preload logger writes to stderr itself.
"""

from __future__ import annotations

import logging
import sys
import time

# Airflow copies every public name of this module into airflow.settings: export none.
__all__: list[str] = []

_ROLES = {("scheduler",), ("celery", "worker")}
_LIBRARIES = ("great_expectations", "pandas", "psycopg2", "redis")
#: The project's modules a task process imports: the DAG file's (parsed again in every task
#: process) and ``market_airflow.tasks``; :func:`_preload` adds the stage module of every
#: task id (each task body imports its own on call).
_TASK_MODULES = (
    "market_airflow.callbacks",
    "market_airflow.links",
    "market_airflow.notify",
    "market_airflow.retry",
    "market_airflow.timetable",
    "market_airflow.tasks",
)


def _task_parent_role(argv: list[str]) -> str | None:
    """``"scheduler"`` or ``"celery worker"`` when this process forks tasks, else None."""
    args = [a for a in argv[1:] if not a.startswith("-")]
    return next((" ".join(r) for r in _ROLES if tuple(args[: len(r)]) == r), None)


def _logger() -> logging.Logger:
    logger = logging.getLogger("market_pipeline.preload")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _preload(role: str) -> None:
    """Import the heavy libraries, build the calendar and the GX engine; log what loaded."""
    logger = _logger()
    started = time.perf_counter()
    loaded: list[str] = []
    failed: list[str] = []
    for name in _LIBRARIES:
        try:
            __import__(name)
            loaded.append(name)
        except Exception as exc:
            failed.append(name)
            logger.error("preload (%s): import %s failed: %r", role, name, exc, exc_info=True)
    try:
        # The trading calendar: ~0.3 s per task process otherwise (docs/benchmarks.md).
        # Pure data (no thread, no connection); it extends itself when a date near its end
        # is asked for, so no restart is ever needed for new sessions.
        from market_pipeline import calendar
        from market_pipeline.config import EXCHANGE

        calendar.get_calendar(EXCHANGE)
        loaded.append(f"{EXCHANGE} calendar")
    except Exception as exc:
        failed.append("the trading calendar")
        logger.error("preload (%s): the trading calendar failed: %r", role, exc, exc_info=True)
    try:
        from market_pipeline import quality

        quality.warm_up()
        loaded.append("GX gate engine")
    except Exception as exc:
        failed.append("GX gate engine")
        logger.error("preload (%s): GX gate engine failed: %r", role, exc, exc_info=True)
    try:
        # The indicator kernel compiled by numba (from its on-disk cache; a first compile
        # ~8 s writes it): compute_indicators then runs it instead of the interpreted kernel,
        # ~1 CPU-s less per 157-symbol chunk (docs/benchmarks.md). No thread, no open file.
        from market_pipeline import indicators

        if indicators.numba_available():
            indicators.warm_jit()
            loaded.append("numba indicator kernel")
    except Exception as exc:
        failed.append("numba indicator kernel")
        logger.error("preload (%s): numba indicator kernel failed: %r", role, exc, exc_info=True)
    try:
        # ~45 ms CPU per task process otherwise (docs/decisions.md, "Fast by default").
        import importlib

        from market_pipeline.stages import SYMBOL_TASKS, TAIL_TASKS

        stages = ("universe", *SYMBOL_TASKS, *TAIL_TASKS, "run_health")
        for name in (*_TASK_MODULES, *(f"market_pipeline.stages.{s}" for s in stages)):
            importlib.import_module(name)
        loaded.append("market_daily task modules")
    except Exception as exc:
        failed.append("market_daily task modules")
        logger.error("preload (%s): market_daily task modules failed: %r", role, exc, exc_info=True)
    seconds = time.perf_counter() - started
    if failed:
        logger.error(
            "preload (%s): NOT loaded: %s (loaded: %s; %.1f s); each task pays for them itself",
            role,
            ", ".join(failed),
            ", ".join(loaded) or "nothing",
            seconds,
        )
    else:
        logger.info("preload (%s): loaded %s in %.1f s", role, ", ".join(loaded), seconds)


_ROLE = _task_parent_role(sys.argv)
if _ROLE is not None:
    _preload(_ROLE)
