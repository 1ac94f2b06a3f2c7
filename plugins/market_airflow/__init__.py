"""Airflow-facing code for market_daily (loaded from ``plugins/``): timetable, hooks, callbacks."""
