"""One place for the facts the pipeline shares: names, keys, defaults and thresholds."""

from __future__ import annotations

import os
import re

DAG_ID = "market_daily"

# Airflow connection ids.
DB_CONN_ID = "market_db"
CACHE_CONN_ID = "market_cache"
SOURCE_CONN_ID = "market_source"

# Airflow pools.
SOURCE_POOL = "market_source_api"

# Postgres: everything the pipeline owns lives in one schema. MARKET_SCHEMA lets two
# deployments (or test runs) share one database.
SCHEMA = os.environ.get("MARKET_SCHEMA", "market")
TABLES = (
    "symbols",
    "raw_bars",
    "clean_bars",
    "indicators",
    "signals",
    "scores",
    "fetch_audit",
    "validation_reports",
    "dlq",
    "acknowledgements",
)

# The exchange whose sessions the DAG runs on: the timetable (the schedule) and every stage
# (ingestion windows, gates, scoring) read this one value. Read at parse time, like
# MARKET_SCHEMA: the dag-processor and every worker must see the same MARKET_EXCHANGE.
EXCHANGE = os.environ.get("MARKET_EXCHANGE", "XNYS")

# Airflow Variables (each overridable as AIRFLOW_VAR_<NAME upper-cased>) and their defaults.
VARIABLE_DEFAULTS: dict[str, str] = {
    "market_source": "synthetic",
    "market_source_path": "",
    "market_universe": "",  # empty: the bundled 20-symbol sample universe
    "market_quorum": "0.95",
    "market_history_sessions": "600",
    "market_max_move": "0.5",
    "market_cache_ttl_days": "7",
    # Synthetic source only: injected defects for demos and tests, "SYM:defect,SYM2:defect".
    "market_synthetic_defects": "",
    # Symbols per map index of the per-symbol chain. "auto": one symbol per map index up to
    # 32 symbols, else chunks sized for at most 32 map indexes per stage (never more than
    # [core] max_map_length). An integer k: N symbols make ceil(N / k) map indexes per
    # stage, which must stay within max_map_length. See docs/batching.md.
    "market_symbols_per_task": "auto",
    # With more than one symbol per task: how long the raw-bar gate waits for a late symbol
    # before recording it "not_delivered" and letting its chunk-mates go on (seconds, capped
    # at 80 % of the gate's timeout).
    "market_late_grace_seconds": "3600",
}

# Symbols: upper-case ticker, optional class/suffix, at most 10 characters.
SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.\-]{0,9}$")

# The sample universe used by `make demo` when market_universe is empty.
SAMPLE_UNIVERSE = (
    "AAPL",
    "AMZN",
    "BAC",
    "CSCO",
    "CVX",
    "DIS",
    "GOOG",
    "HD",
    "IBM",
    "INTC",
    "JNJ",
    "JPM",
    "KO",
    "MSFT",
    "NVDA",
    "ORCL",
    "PFE",
    "PG",
    "WMT",
    "XOM",
)

# How many sessions of history a new symbol is fetched with, and the indicator window.
HISTORY_SESSIONS = 600

# Redis key layout (see README "Redis keys"); MARKET_CACHE_PREFIX namespaces a deployment.
CACHE_PREFIX = os.environ.get("MARKET_CACHE_PREFIX", "market:v1")

# The Airflow Asset each verified publish updates (market_daily's verify_cache outlet). Named,
# without a URI: a URI makes Airflow load its scheme normalisers (SQLAlchemy) at every parse.
SCORES_ASSET_NAME = "market_scores"

# Raw-bar gate (a sensor): how often it pokes for late data, and when it gives up. Read
# at parse time from the environment (never from Variables there), so they are constants.
GATE_POKE_INTERVAL_SECONDS = 300
GATE_TIMEOUT_SECONDS = 4 * 3600

# How many clean sessions before the promoted window the raw gate sees as context.
GATE_CONTEXT_SESSIONS = 5

# The sample trading day `make demo` runs.
DEMO_TRADE_DATE = "2024-11-29"
