"""
### market_daily

Turns each exchange session's end-of-day bars into validated indicators, explainable
signals and ranked scores, served from Redis.

`universe` → **per_symbol** (one map index per symbol, or per chunk of
`market_symbols_per_task` symbols: `ingest_bars` → `wait_for_bars` (sensor) →
`validate_bars` → `compute_indicators` → `validate_indicators` → `generate_signals`) →
`quorum_gate` → `score_universe` → `publish_cache` → `verify_cache` → `run_health`. Every
task that may call the source (`ingest_bars`, `wait_for_bars`, `validate_bars`) runs in the
vendor pool `market_source_api`.

A failed symbol stops only its own chain (inside a chunk, only that symbol); the tail
goes on when the quorum holds, and `run_health` turns the run red when any symbol failed.
Fix the cause, then **clear the instance that failed** (with downstream): the rest of the
symbol's chain (or its chunk's) and the tail rerun, and every write is an upsert, so nothing
is duplicated. A cleared `validate_bars` asks the source again before it judges, so a
corrected delivery is picked up. Each failure message ends with its next action. See the
README's operations section.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task, task_group
from market_airflow import callbacks, notify
from market_airflow.links import gate_task  # tasks with a "GX report" link
from market_airflow.retry import MarketRetryPolicy
from market_airflow.timetable import ExchangeSessionTimetable

from market_pipeline.config import (
    DAG_ID,
    EXCHANGE,
    GATE_POKE_INTERVAL_SECONDS,
    GATE_TIMEOUT_SECONDS,
    SCORES_ASSET_NAME,
    SOURCE_POOL,
)

# Task code (market_airflow.tasks: pandas, psycopg2, GX) is imported inside each task, never at
# parse time.
SYMBOL_LABEL = "{{ symbol }}"  # each task puts its symbol (or "FIRST..LAST") in the context

# Updated by each verified publish (extra: {"session", "version"}): schedule a downstream DAG
# on it to run when a session's scores are served (docs/cache.md, "Waiting for a served day").
SCORES = Asset(name=SCORES_ASSET_NAME)

# Tests and benchmarks shorten the backoff; production keeps 30 s doubling up to 10 min.
RETRY_POLICY = MarketRetryPolicy(
    base_delay=timedelta(seconds=float(os.environ.get("MARKET_RETRY_BASE_SECONDS", 30)))
)

default_args = {
    "owner": "market-data",
    "retries": 3,
    # The policy decides every retry of a failure the task raised (transient → backoff, else
    # fail at once). Airflow's own delay settings apply only to tries no exception ended (a
    # killed process): they are read from the policy, so there is one backoff to configure.
    "retry_policy": RETRY_POLICY,
    "retry_delay": RETRY_POLICY.base_delay,
    "retry_exponential_backoff": RETRY_POLICY.multiplier,
    "max_retry_delay": RETRY_POLICY.max_delay,
    "on_failure_callback": callbacks.record_failure,
    # A try that fails and is retried leaves its DLQ row too (resolved, with its failures
    # count, when a retry succeeds): no failure goes unrecorded because it recovered.
    "on_retry_callback": callbacks.record_failure,
    "on_success_callback": callbacks.resolve_success,
    # Later stages outrank ingest_bars, so a pool-limited ingest wave does not leave
    # executor slots idle while symbols wait to be gated (docs/benchmarks.md).
    "weight_rule": "upstream",
}


@dag(
    dag_id=DAG_ID,
    schedule=ExchangeSessionTimetable(exchange=EXCHANGE, delay=timedelta(minutes=30)),
    # As far back as the trading calendar (1999): a backfill or `dags test` of a session
    # before start_date creates no task instances. catchup=False keeps the scheduler to the
    # latest session, so an early start_date schedules nothing extra.
    start_date=pendulum.datetime(1999, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs share each symbol's history window; one day at a time
    default_args=default_args,
    on_failure_callback=callbacks.alert_on_failure,
    # Scores served by MARKET_PUBLISH_DEADLINE_MINUTES after the close, or an alert.
    deadline=notify.publish_deadline(run_delay=timedelta(minutes=30)),
    tags=["market", "eod", "gx"],
    doc_md=__doc__,
)
def market_daily():
    @task
    def universe(**context) -> list[list[str]]:
        from market_airflow import tasks

        return tasks.universe(context)

    @task_group(group_id="per_symbol")
    def per_symbol(symbols: list[str]):
        @task(pool=SOURCE_POOL, map_index_template=SYMBOL_LABEL)
        def ingest_bars(symbols: list[str], **context) -> dict:
            from market_airflow import tasks

            return tasks.ingest_bars(symbols, context)

        # Waits for D's bar, asking the source again: a vendor call, so in the vendor pool.
        @task.sensor(
            pool=SOURCE_POOL,
            mode="reschedule",
            poke_interval=int(
                os.environ.get("MARKET_GATE_POKE_SECONDS", GATE_POKE_INTERVAL_SECONDS)
            ),
            timeout=int(os.environ.get("MARKET_GATE_TIMEOUT_SECONDS", GATE_TIMEOUT_SECONDS)),
            map_index_template=SYMBOL_LABEL,
        )
        def wait_for_bars(symbols: list[str], ingested: dict, **context):
            from airflow.sdk import PokeReturnValue
            from market_airflow import tasks

            done = tasks.wait_for_bars(symbols, ingested, context)
            return PokeReturnValue(is_done=done is not None, xcom_value=done)

        # Judges and promotes; run again (a retry or a clear) it first asks the source for
        # the window again, so it sits in the vendor pool too.
        @gate_task(pool=SOURCE_POOL, map_index_template=SYMBOL_LABEL)
        def validate_bars(symbols: list[str], delivered: dict, **context) -> dict:
            from market_airflow import tasks

            return tasks.validate_bars(symbols, delivered, context)

        @task(map_index_template=SYMBOL_LABEL)
        def compute_indicators(symbols: list[str], validated: dict, **context) -> dict:
            from market_airflow import tasks

            return tasks.compute_indicators(symbols, validated, context)

        @gate_task(map_index_template=SYMBOL_LABEL)
        def validate_indicators(symbols: list[str], computed: dict, **context) -> dict:
            from market_airflow import tasks

            return tasks.validate_indicators(symbols, computed, context)

        @task(map_index_template=SYMBOL_LABEL)
        def generate_signals(symbols: list[str], checked: dict, **context) -> dict:
            from market_airflow import tasks

            return tasks.generate_signals(symbols, checked, context)

        ingested = ingest_bars(symbols)
        delivered = wait_for_bars(symbols, ingested)
        validated = validate_bars(symbols, delivered)
        computed = compute_indicators(symbols, validated)
        checked = validate_indicators(symbols, computed)
        return generate_signals(symbols, checked)

    @task(trigger_rule="all_done")
    def quorum_gate(chunks: list[list[str]], **context) -> dict:
        from market_airflow import tasks

        return tasks.quorum_gate(chunks, context)

    @task
    def score_universe(quorum: dict, **context) -> dict:
        from market_airflow import tasks

        return tasks.score_universe(quorum, context)

    @task
    def publish_cache(scored: dict, **context) -> dict:
        from market_airflow import tasks

        return tasks.publish_cache(scored, context)

    @task(outlets=[SCORES])
    def verify_cache(published: dict, **context) -> dict:
        from market_airflow import tasks

        verified = tasks.verify_cache(published, context)
        # Only a verified publish emits the event: a failed verify raised above.
        context["outlet_events"][SCORES].extra = {
            "session": verified["trade_date"],
            "version": verified["version"],
        }
        return verified

    @task(trigger_rule="all_done", retries=0)
    def run_health(chunks: list[list[str]], **context) -> dict:
        from market_airflow import tasks

        return tasks.run_health(chunks, context)

    chunks = universe()
    chains = per_symbol.expand(symbols=chunks)
    quorum = quorum_gate(chunks)
    chains >> quorum
    verified = verify_cache(publish_cache(score_universe(quorum)))
    verified >> run_health(chunks)


market_daily()
