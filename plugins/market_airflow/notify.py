"""The run-failure alert, sent through an Airflow notifier (log by default).

The channel is the Variable ``market_alert_channel``:

- ``log`` (default): :class:`LogNotifier`, a warning in the callback's log;
- ``smtp``: ``SmtpNotifier`` from apache-airflow-providers-smtp, to the addresses in
  ``market_alert_email_to`` (comma list) through the connection ``market_alert_smtp_conn``
  (default ``smtp_default``);
- ``slack``: ``SlackWebhookNotifier`` through ``market_alert_slack_conn`` (default
  ``slack_default``) — only when apache-airflow-providers-slack is installed (it is not
  pinned here); without it the alert falls back to the log and says why.

A channel that fails never hides the alert: it falls back to the log. Every alert is also
*recorded* as one JSON line appended to the file named by the environment variable
``MARKET_ALERT_LOG`` (when set), so operators and tests can read what was sent.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

CHANNELS = ("log", "smtp", "slack")
ALERT_LOG_ENV = "MARKET_ALERT_LOG"


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


class AlertChannelError(RuntimeError):
    """The configured alert channel cannot be used (unknown, or its provider is missing)."""


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


def _variable(name: str, default: str) -> str:
    from airflow.sdk import Variable

    try:
        value = Variable.get(name, default=None)
    except Exception:  # no Variable backend reachable: the default channel still works
        log.exception("alert: could not read Variable %s; using %r", name, default)
        return default
    return default if value in (None, "") else str(value).strip()


def alert_channel() -> str:
    """The configured channel (Variable ``market_alert_channel``), validated."""
    channel = _variable("market_alert_channel", "log").lower()
    if channel not in CHANNELS:
        raise AlertChannelError(
            f"market_alert_channel must be one of {list(CHANNELS)}, found {channel!r}"
        )
    return channel


def make_notifier(channel: str, text: str, subject: str) -> BaseNotifier:
    """The notifier for ``channel`` carrying ``text``."""
    if channel == "log":
        return LogNotifier(message=text)
    if channel == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        to = [a.strip() for a in _variable("market_alert_email_to", "").split(",") if a.strip()]
        if not to:
            raise AlertChannelError(
                "market_alert_channel is smtp but market_alert_email_to names no address"
            )
        return SmtpNotifier(
            to=to,
            subject=subject,
            html_content=f"<pre>{text}</pre>",
            smtp_conn_id=_variable("market_alert_smtp_conn", "smtp_default"),
        )
    if channel == "slack":
        try:
            from airflow.providers.slack.notifications.slack_webhook import (
                SlackWebhookNotifier,
            )
        except ImportError:
            raise AlertChannelError(
                "market_alert_channel is slack but apache-airflow-providers-slack is not "
                "installed; install it or use log/smtp"
            ) from None
        return SlackWebhookNotifier(
            slack_webhook_conn_id=_variable("market_alert_slack_conn", "slack_default"),
            text=text,
        )
    raise AlertChannelError(f"unknown alert channel {channel!r}; known: {list(CHANNELS)}")


def record_alert(record: dict) -> None:
    """Append the alert as one JSON line to ``$MARKET_ALERT_LOG`` (when set)."""
    path = os.environ.get(ALERT_LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str, sort_keys=True) + "\n")


def deliver(text: str, subject: str, context) -> tuple[str, str | None]:
    """Send ``text`` on the configured channel, falling back to the log; (channel, error)."""
    channel, error = "log", None
    try:
        channel = alert_channel()
        make_notifier(channel, text, subject).notify(context)
        return channel, None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.exception("alert: channel %s failed; falling back to the log", channel)
    LogNotifier(message=text).notify(context)
    return channel, error


def send_run_alert(context) -> str:
    """Alert on a failed run: failed symbols per stage and kind, from its open DLQ rows."""
    from market_airflow.hooks import MarketDbHook
    from market_pipeline import store

    dag_run = context["dag_run"]
    conn = MarketDbHook().get_conn()
    try:
        rows = store.dlq_open(conn, run_id=dag_run.run_id).to_dict("records")
    finally:
        conn.close()
    summary = summarise(rows)
    text = alert_text(dag_run.dag_id, dag_run.run_id, summary)
    channel, error = deliver(text, f"[market_daily] run {dag_run.run_id} failed", context)
    trade_dates = sorted({str(r["trade_date"]) for r in rows if r.get("trade_date")})
    record_alert(
        {
            "at": datetime.now(UTC).isoformat(),
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "trade_dates": trade_dates,
            "channel": channel,
            "delivered": error is None,
            "error": error,
            "summary": summary,
            "symbols": sorted({r["symbol"] for r in rows if r.get("symbol")}),
            "text": text,
        }
    )
    return text
