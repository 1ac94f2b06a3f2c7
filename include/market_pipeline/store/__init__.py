"""Postgres storage: every read and write of the pipeline's tables.

Functions take a psycopg2 connection and the schema name; they know tables, not RSI.
Writes are upserts keyed on (symbol, trade date[, rule]) so a cleared and rerun task
leaves the same rows — except ``raw_bars``, which only appends (a new version when a
session's values change), and the logs ``fetch_audit`` and ``dlq``.

One module per concern; this package re-exports their public names (``store.X``):

- :mod:`.sql` — the one identifier helper: every statement names its tables through it;
- :mod:`.symbols` — the universe; :mod:`.raw`, :mod:`.clean`, :mod:`.indicators`,
  :mod:`.signals` — the data layers, daily (per symbol) writes and chunk reads;
- :mod:`.validation` — gate verdicts; :mod:`.audit` — the fetch log; :mod:`.dlq`;
- :mod:`.bulk` — COPY-based loads of whole histories, through the daily layers' statements;
- :mod:`.db` — connections, row counts, where each symbol stands in a layer;
- :mod:`.rows` — typed-array row sources, per-symbol splits, JSON for ``jsonb``.
"""

from __future__ import annotations

from market_pipeline.store import sql
from market_pipeline.store.audit import MESSAGE_LIMIT, record_fetches
from market_pipeline.store.bulk import (
    append_raw_many,
    clean_bars_many,
    copy_binary,
    promote_many,
    symbols_with_rows,
    upsert_indicators_many,
)
from market_pipeline.store.clean import (
    clean_closes_on,
    clean_history,
    clean_history_frame,
    clean_history_many,
    clean_history_rows_many,
    clean_session_count,
    clean_session_counts,
    last_clean_session,
    last_clean_sessions,
    promote_clean_bars,
    promote_clean_bars_many,
    promote_raw_ids_many,
)
from market_pipeline.store.db import connect, last_sessions, symbols_on, table_counts
from market_pipeline.store.dlq import (
    DlqEntry,
    dlq_on,
    dlq_open,
    dlq_record,
    dlq_resolve,
    dlq_resolve_symbols,
)
from market_pipeline.store.indicators import (
    indicator_history,
    indicator_history_many,
    indicator_session_counts,
    indicators_on,
    upsert_indicator_frame,
    upsert_indicators,
)
from market_pipeline.store.raw import (
    PRICE_COLUMNS,
    RAW_WINDOW_COLUMNS,
    append_raw_bars,
    append_raw_bars_many,
    latest_raw_bars,
    latest_raw_bars_many,
    latest_raw_rows_many,
    payload_hashes,
    raw_bar_count,
)
from market_pipeline.store.rows import json_safe
from market_pipeline.store.signals import (
    replace_scores,
    scores_on,
    signals_on,
    upsert_signals,
    upsert_signals_many,
)
from market_pipeline.store.symbols import (
    active_symbols,
    ensure_symbols,
    sync_symbols,
    validate_symbols,
)
from market_pipeline.store.validation import (
    StoredVerdict,
    ValidationRecord,
    failed_verdicts,
    record_validation,
    record_validations,
    servable_on,
    stored_verdicts,
    verdict_lookup,
    verdicts_on,
    write_verdicts,
)

__all__ = [
    "MESSAGE_LIMIT",
    "PRICE_COLUMNS",
    "RAW_WINDOW_COLUMNS",
    "DlqEntry",
    "StoredVerdict",
    "ValidationRecord",
    "active_symbols",
    "append_raw_bars",
    "append_raw_bars_many",
    "append_raw_many",
    "clean_bars_many",
    "clean_closes_on",
    "clean_history",
    "clean_history_frame",
    "clean_history_many",
    "clean_history_rows_many",
    "clean_session_count",
    "clean_session_counts",
    "connect",
    "copy_binary",
    "dlq_on",
    "dlq_open",
    "dlq_record",
    "dlq_resolve",
    "dlq_resolve_symbols",
    "ensure_symbols",
    "failed_verdicts",
    "indicator_history",
    "indicator_history_many",
    "indicator_session_counts",
    "indicators_on",
    "json_safe",
    "last_clean_session",
    "last_clean_sessions",
    "last_sessions",
    "latest_raw_bars",
    "latest_raw_bars_many",
    "latest_raw_rows_many",
    "payload_hashes",
    "promote_clean_bars",
    "promote_clean_bars_many",
    "promote_many",
    "promote_raw_ids_many",
    "raw_bar_count",
    "record_fetches",
    "record_validation",
    "record_validations",
    "replace_scores",
    "scores_on",
    "servable_on",
    "signals_on",
    "sql",
    "stored_verdicts",
    "symbols_on",
    "symbols_with_rows",
    "sync_symbols",
    "table_counts",
    "upsert_indicator_frame",
    "upsert_indicators",
    "upsert_indicators_many",
    "upsert_signals",
    "upsert_signals_many",
    "validate_symbols",
    "verdict_lookup",
    "verdicts_on",
    "write_verdicts",
]
