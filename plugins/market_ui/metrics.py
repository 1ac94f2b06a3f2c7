"""Prometheus exposition of the latest session's health (``prometheus_client``).

Each scrape builds a fresh registry from what Postgres, Redis and Airflow hold right now, so
a label value that no longer applies (a resolved DLQ kind, yesterday's run) disappears
instead of lingering at its last value. Names and labels: ``docs/ui.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from market_pipeline.health import CELL_STATES, STAGE_IDS, Serving, SessionHealth


def render(
    *,
    health: SessionHealth | None,
    run_id: str | None,
    run_state: str | None,
    run_duration: float | None,
    dlq_by_kind: Mapping[tuple[str, str], int],
    gate_failures: Mapping[tuple[str, str, str], int],
    serving: Serving | None,
    published_at: datetime | None,
    now: datetime,
    failed_tries: Mapping[tuple[str, str, str], int] | None = None,
) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=False)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    info = gauge(
        "market_latest_session_info",
        "The latest run of market_daily: its session, run id and state (value 1).",
        ("trade_date", "run_id", "state"),
    )
    symbols = gauge(
        "market_session_symbols",
        "Symbols of the latest session in each state, per stage.",
        ("stage", "state"),
    )
    dlq = gauge(
        "market_dlq_open_rows",
        "Open DLQ rows (every session), by kind and stage.",
        ("kind", "stage"),
    )
    tries = gauge(
        "market_dlq_failed_tries",
        "Failed task tries recorded in the DLQ (every session), by kind and stage; status "
        "'resolved' counts the failures a retry, a clear or a later run cured.",
        ("kind", "stage", "status"),
    )
    gates = gauge(
        "market_gate_failures",
        "Symbols of the latest session whose stored verdict failed a rule.",
        ("gate", "rule", "severity"),
    )
    if health is not None:
        info.labels(health.trade_date.isoformat(), run_id or "", run_state or "").set(1)
        for stage in STAGE_IDS:
            counts = health.counts(stage)
            for state in CELL_STATES:
                symbols.labels(stage, state).set(counts.get(state, 0))
    for (kind, stage), n in dlq_by_kind.items():
        dlq.labels(kind, stage).set(n)
    for (kind, stage, status), n in (failed_tries or {}).items():
        tries.labels(kind, stage, status).set(n)
    for (gate, rule, severity), n in gate_failures.items():
        gates.labels(gate, rule, severity).set(n)
    # Single values are exposed only when known: an absent series, not a misleading 0.
    if run_duration is not None:
        gauge(
            "market_run_duration_seconds",
            "Wall time of the latest run (start to end, or to now while it runs).",
        ).set(run_duration)
    if serving is not None:
        gauge("market_served_symbols", "Symbols in the served Redis version.").set(
            serving.symbol_count
        )
        gauge(
            "market_served_session_age_seconds",
            "Seconds since the close of the session the served Redis version holds.",
        ).set(serving.session_age_seconds)
        if published_at is not None:
            gauge(
                "market_served_version_age_seconds",
                "Seconds since the served Redis version was published (publish_cache ended).",
            ).set(max((now.astimezone(UTC) - published_at).total_seconds(), 0.0))
    return generate_latest(registry), CONTENT_TYPE_LATEST
