"""Airflow local settings shipped with the project ($AIRFLOW_HOME/config or ./config).

Heavy libraries are imported once in the long-lived parent of task processes (the
LocalExecutor scheduler or the Celery worker), so every forked task inherits them instead
of paying the import (GX alone costs 2.4-3.9 s per process; see docs/quality.md). The
quality gates' GX engine (an in-memory ephemeral context with its two suites) is built here
too, so a gate task does not spend ~0.1-0.2 s CPU building it: it holds no thread, no
connection and no open file, so a forked copy is as good as a new one (tested in
tests/unit/test_local_settings.py). No database connection or thread is created here.
Other Airflow processes (CLI, api-server, dag-processor) skip all of it.
"""

from __future__ import annotations

import sys

_ROLES = {("scheduler",), ("celery", "worker")}


def _is_task_parent() -> bool:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return any(tuple(args[: len(role)]) == role for role in _ROLES)


if _is_task_parent():
    try:
        import great_expectations  # noqa: F401
        import pandas  # noqa: F401
        import psycopg2  # noqa: F401
        import redis  # noqa: F401
    except ImportError:  # pragma: no cover - a missing library shows in the task itself
        pass
    try:
        # The trading calendar: ~0.3 s per task process otherwise (docs/benchmarks.md).
        # Pure data (no thread, no connection); its end (today + 2 years) is fixed when the
        # scheduler starts, so restart the scheduler at least once a year.
        from market_pipeline import calendar as _market_calendar

        _market_calendar.get_calendar("XNYS")
    except Exception:  # pragma: no cover - tasks then build it themselves
        pass
    try:
        from market_pipeline import quality as _market_quality

        _market_quality.warm_up()
    except Exception:  # pragma: no cover - a gate task then builds its own engine
        pass
