"""The real market_daily Airflow DAG, loaded from dags/market_daily.py unchanged (same dag_id).

Lives in the bench DAGs folder so one benchmark cluster serves it next to its baselines
(``market_daily_empty``, ``market_daily_nogates``); see bench/README in docs/benchmarks.md.
"""

from __future__ import annotations

from bench.dags._loader import load_market_daily

market_daily = load_market_daily(None, module_name="market_daily_bench_src")
