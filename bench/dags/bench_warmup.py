"""One no-op task, run once before a benchmark's timed runs (``bench.common.compare``).

The first task instance a fresh cluster runs pays a one-off start-up: 9 s measured at
500 symbols in session 5, against 0.03 s for every later one. Without this warm-up that
cost landed on whichever variant ran first (always ``market_daily``) and on no other.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(
    dag_id="bench_warmup",
    schedule=None,
    start_date=pendulum.datetime(1999, 1, 4, tz="UTC"),
    catchup=False,
    default_args={"owner": "bench"},
    tags=["bench"],
)
def bench_warmup():
    @task
    def nothing() -> None:
        return None

    nothing()


bench_warmup()
