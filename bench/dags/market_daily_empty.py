"""The shape of market_daily with tasks that do nothing: the Airflow floor of issue 9's P1.

Same structure as ``dags/market_daily.py``: ``universe`` → mapped task group ``per_symbol``
(``ingest_bars`` in the ``market_source_api`` pool → ``wait_for_bars``, a rescheduling
sensor in that pool → ``validate_bars`` in that pool → ``compute_indicators`` →
``validate_indicators`` → ``generate_signals``, each labelled by its symbol) →
``quorum_gate`` (all_done) → ``score_universe`` → ``publish_cache`` → ``verify_cache`` →
``run_health`` (all_done). Same task count per symbol (or chunk: ``market_symbols_per_task``
cuts the sorted universe into chunks of k, as the real DAG does). No callbacks, no I/O:
``universe`` returns the ``market_universe`` Variable's comma list in chunks, every other
task returns a tiny dict.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task, task_group

SYMBOL_LABEL = "{{ symbol }}"
POOL = "market_source_api"


def _label(symbols: list[str], context) -> dict:
    from airflow.sdk import get_current_context

    label = symbols[0] if len(symbols) == 1 else f"{symbols[0]}..{symbols[-1]}"
    context["symbol"] = label
    get_current_context()["symbol"] = label
    return {"symbols": symbols}


@dag(
    dag_id="market_daily_empty",
    schedule=None,
    start_date=pendulum.datetime(1999, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "bench", "retries": 3},
    tags=["bench"],
)
def market_daily_empty():
    @task
    def universe() -> list[list[str]]:
        from airflow.sdk import Variable

        raw = Variable.get("market_universe", default="") or ""
        from market_pipeline.chunks import per_task_for

        symbols = sorted({s.strip() for s in raw.split(",") if s.strip()})
        k = per_task_for(len(symbols), Variable.get("market_symbols_per_task", default="auto"))
        return [symbols[i : i + k] for i in range(0, len(symbols), k)]

    @task_group(group_id="per_symbol")
    def per_symbol(symbols: list[str]):
        @task(pool=POOL, map_index_template=SYMBOL_LABEL)
        def ingest_bars(symbols: list[str], **context) -> dict:
            return _label(symbols, context)

        @task.sensor(
            pool=POOL,
            mode="reschedule",
            poke_interval=1,
            timeout=600,
            map_index_template=SYMBOL_LABEL,
        )
        def wait_for_bars(symbols: list[str], ingested: dict, **context):
            from airflow.sdk import PokeReturnValue

            return PokeReturnValue(is_done=True, xcom_value=_label(symbols, context))

        @task(pool=POOL, map_index_template=SYMBOL_LABEL)
        def validate_bars(symbols: list[str], delivered: dict, **context) -> dict:
            return _label(symbols, context)

        @task(map_index_template=SYMBOL_LABEL)
        def compute_indicators(symbols: list[str], validated: dict, **context) -> dict:
            return _label(symbols, context)

        @task(map_index_template=SYMBOL_LABEL)
        def validate_indicators(symbols: list[str], computed: dict, **context) -> dict:
            return _label(symbols, context)

        @task(map_index_template=SYMBOL_LABEL)
        def generate_signals(symbols: list[str], checked: dict, **context) -> dict:
            return _label(symbols, context)

        ingested = ingest_bars(symbols)
        validated = validate_bars(symbols, wait_for_bars(symbols, ingested))
        computed = compute_indicators(symbols, validated)
        checked = validate_indicators(symbols, computed)
        return generate_signals(symbols, checked)

    @task(trigger_rule="all_done")
    def quorum_gate(chunks: list[list[str]]) -> dict:
        return {"passed": sum(len(c) for c in chunks)}

    @task
    def score_universe(quorum: dict) -> dict:
        return quorum

    @task
    def publish_cache(scored: dict) -> dict:
        return scored

    @task
    def verify_cache(published: dict) -> dict:
        return published

    @task(trigger_rule="all_done", retries=0)
    def run_health(chunks: list[list[str]]) -> dict:
        return {"symbols": sum(len(c) for c in chunks)}

    chunks = universe()
    chains = per_symbol.expand(symbols=chunks)
    quorum = quorum_gate(chunks)
    chains >> quorum
    verified = verify_cache(publish_cache(score_universe(quorum)))
    verified >> run_health(chunks)


market_daily_empty()
