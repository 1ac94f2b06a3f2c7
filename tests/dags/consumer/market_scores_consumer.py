"""An example downstream DAG: runs when market_daily has verified a published day.

Not in the project's ``dags/`` (a deployment would parse it); the e2e suite serves it beside
market_daily. docs/cache.md, "Waiting for a served day", shows the same DAG.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

MARKET_SCORES = Asset(name="market_scores")


@dag(
    dag_id="market_scores_consumer",
    schedule=[MARKET_SCORES],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["market", "example"],
)
def market_scores_consumer():
    @task
    def served_day(*, triggering_asset_events=None) -> list[dict]:
        """The session and version of each event that triggered the run (its XCom)."""
        return [
            {"session": e.extra["session"], "version": e.extra["version"]}
            for e in triggering_asset_events[MARKET_SCORES]
        ]

    served_day()


market_scores_consumer()
