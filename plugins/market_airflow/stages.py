"""Kept only for ``market_airflow.callbacks.trade_date_of``, which imports ``trade_date`` from
here. The tasks are ``market_airflow.tasks``; their flows ``market_pipeline.stages``."""

from __future__ import annotations

from market_airflow.runtime import session as trade_date

__all__ = ["trade_date"]
