"""The run-failure alert, sent through an Airflow notifier (log by default)."""

from __future__ import annotations

import logging

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


class LogNotifier(BaseNotifier):
    """Writes the alert to the task log (the default channel).

    :param message: the alert text (templated).
    """

    template_fields = ("message",)

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def notify(self, context) -> None:
        log.warning("market_daily alert: %s", self.message)


def summarise(open_rows) -> dict[str, dict[str, int]]:
    """``{stage: {kind: failed symbols}}`` from open DLQ rows."""
    out: dict[str, dict[str, int]] = {}
    for row in open_rows:
        per_stage = out.setdefault(row["stage"], {})
        per_stage[row["kind"]] = per_stage.get(row["kind"], 0) + 1
    return out


def alert_text(dag_id: str, run_id: str, summary: dict[str, dict[str, int]]) -> str:
    total = sum(sum(k.values()) for k in summary.values())
    parts = [
        f"{stage}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        for stage, kinds in sorted(summary.items())
    ]
    return f"{dag_id} run {run_id} failed: {total} failed task(s) — " + "; ".join(parts or ["?"])


def send_run_alert(context) -> str:
    from market_airflow.hooks import MarketDbHook
    from market_pipeline import store

    dag_run = context["dag_run"]
    conn = MarketDbHook().get_conn()
    try:
        rows = store.dlq_open(conn, run_id=dag_run.run_id).to_dict("records")
    finally:
        conn.close()
    text = alert_text(dag_run.dag_id, dag_run.run_id, summarise(rows))
    LogNotifier(message=text).notify(context)
    return text
