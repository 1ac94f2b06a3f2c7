"""Each market_daily stage's flow as a plain function (a use case): one module per task id.

``universe`` · ``ingest_bars`` · ``wait_for_bars`` · ``validate_bars`` · ``compute_indicators`` ·
``validate_indicators`` · ``generate_signals`` · ``quorum_gate`` · ``score_universe`` ·
``publish_cache`` · ``verify_cache`` · ``run_health`` — each module holds the function of
that name. A use case takes a psycopg2 connection (a Redis client for the cache stages), the
symbols, the session and the run's :class:`~market_pipeline.stages.settings.Settings`; a
per-symbol stage returns an :class:`~market_pipeline.stages.outcome.Outcome` (what passed,
what failed and why), a tail stage a small dict. No Airflow here:
``plugins/market_airflow/tasks.py`` turns a task's context into these arguments and the
outcome into XCom, DLQ rows and links.

Shared helpers: ``outcome`` (per-symbol isolation), ``settings`` (the run's settings and
attempt), ``reports`` (a gate's HTML page, its link and its stored verdict), ``snapshots``
(what publish writes and verify checks), ``states`` (each symbol's state per stage),
``rebuild_cache`` (the serving copy rebuilt from Postgres after Redis lost it).
"""

from __future__ import annotations

#: The mapped task group of the per-symbol chain, and its tasks in order.
GROUP_ID = "per_symbol"
SYMBOL_TASKS = (
    "ingest_bars",
    "wait_for_bars",
    "validate_bars",
    "compute_indicators",
    "validate_indicators",
    "generate_signals",
)


def task_id(stage: str) -> str:
    """The Airflow task id of the per-symbol chain's ``stage`` (``per_symbol.<stage>``)."""
    return f"{GROUP_ID}.{stage}"


#: The tasks between the chain and run_health.
TAIL_TASKS = ("quorum_gate", "score_universe", "publish_cache", "verify_cache")

#: Indicator rows the indicator gate reads per symbol when the rows written this run are
#: unknown (SMA200's warm-up plus the longest rule lookback, with room).
INDICATOR_WINDOW = 260
