"""market_pipeline: the domain of the market_daily DAG (no Airflow imports here).

Sources, quality suites, indicators, signals, scoring, storage and the Redis
serving copy live in this package as plain Python, testable without a scheduler.
"""

__version__ = "0.1.0"
