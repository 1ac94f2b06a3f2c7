"""The shape of market_daily with tasks that do nothing: the Airflow floor of issue 9's P1.

Same structure as ``dags/market_daily.py``: ``universe`` → mapped task group ``per_symbol``
(``ingest_bars`` in the ``market_source_api`` pool → ``validate_bars`` as a rescheduling
sensor → ``compute_indicators`` → ``validate_indicators`` → ``generate_signals``, each
labelled by its symbol) → ``quorum_gate`` (all_done) → ``score_universe`` →
``publish_cache`` → ``verify_cache`` → ``run_health`` (all_done). Same task count per
symbol. No callbacks, no I/O: ``universe`` returns the ``market_universe`` Variable's comma
list as it is, every other task returns a tiny dict.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task, task_group

SYMBOL_LABEL = "{{ symbol }}"
POOL = "market_source_api"


def _label(symbol: str, context) -> dict:
    from airflow.sdk import get_current_context

    context["symbol"] = symbol
    get_current_context()["symbol"] = symbol
    return {"symbol": symbol}


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
    def universe() -> list[str]:
        from airflow.sdk import Variable

        raw = Variable.get("market_universe", default="") or ""
        return sorted({s.strip() for s in raw.split(",") if s.strip()})

    @task_group(group_id="per_symbol")
    def per_symbol(symbol: str):
        @task(pool=POOL, map_index_template=SYMBOL_LABEL)
        def ingest_bars(symbol: str, **context) -> dict:
            return _label(symbol, context)

        @task.sensor(
            mode="reschedule", poke_interval=1, timeout=600, map_index_template=SYMBOL_LABEL
        )
        def validate_bars(symbol: str, ingested: dict, **context):
            from airflow.sdk import PokeReturnValue

            return PokeReturnValue(is_done=True, xcom_value=_label(symbol, context))

        @task(map_index_template=SYMBOL_LABEL)
        def compute_indicators(symbol: str, validated: dict, **context) -> dict:
            return _label(symbol, context)

        @task(map_index_template=SYMBOL_LABEL)
        def validate_indicators(symbol: str, computed: dict, **context) -> dict:
            return _label(symbol, context)

        @task(map_index_template=SYMBOL_LABEL)
        def generate_signals(symbol: str, checked: dict, **context) -> dict:
            return _label(symbol, context)

        ingested = ingest_bars(symbol)
        validated = validate_bars(symbol, ingested)
        computed = compute_indicators(symbol, validated)
        checked = validate_indicators(symbol, computed)
        return generate_signals(symbol, checked)

    @task(trigger_rule="all_done")
    def quorum_gate(symbols: list[str]) -> dict:
        return {"passed": len(symbols)}

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
    def run_health(symbols: list[str]) -> dict:
        return {"symbols": len(symbols)}

    symbols = universe()
    chains = per_symbol.expand(symbol=symbols)
    quorum = quorum_gate(symbols)
    chains >> quorum
    verified = verify_cache(publish_cache(score_universe(quorum)))
    verified >> run_health(symbols)


market_daily_empty()
