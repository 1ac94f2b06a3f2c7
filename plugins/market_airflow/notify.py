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

The channel is chosen before anything else is read: a run-failure alert whose DLQ cannot
be read (the market database is down) still goes out, saying so. The publish deadline
(:func:`publish_deadline`) is an Airflow Deadline Alert whose callback
(:func:`publish_deadline_missed`) runs in the triggerer and alerts on the same channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, date, datetime, timedelta
from html import escape

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


def alert_action(rows, run_id: str, *, unreadable: bool = False) -> str:
    """The alert's one next action: the failed instance's own (one DLQ row), else where to
    read each one's (``market-recovery list``: every DLQ message ends with its action)."""
    from market_pipeline.errors import NEXT

    listing = f"`market-recovery list --run-id {run_id}`"
    if unreadable:
        return f"bring the market database back, then run {listing} and follow each row's action"
    if len(rows) == 1 and NEXT in str(rows[0].get("error_message") or ""):
        return str(rows[0]["error_message"]).rsplit(NEXT, 1)[-1]
    return f"run {listing} and follow each row's next action (fix, then clear that instance)"


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
            html_content=f"<pre>{escape(text)}</pre>",
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


#: Seconds the alert waits for the market database before saying the DLQ is unreadable.
DLQ_CONNECT_TIMEOUT = 10


def _open_dlq_rows(run_id: str) -> list[dict]:
    import psycopg2

    from market_airflow.hooks import MarketDbHook
    from market_pipeline import store

    # A database that does not answer (not only one that refuses) must not hold the alert.
    conn = psycopg2.connect(MarketDbHook().dsn, connect_timeout=DLQ_CONNECT_TIMEOUT)
    try:
        return store.dlq_open(conn, run_id=run_id).to_dict("records")
    finally:
        conn.close()


def send_run_alert(context) -> str:
    """Alert on a failed run: failed symbols per stage and kind, from its open DLQ rows.

    The alert goes out whatever else is down: when the DLQ cannot be read (the market
    database is unreachable) the text says so instead of counting symbols.
    """
    dag_run = context["dag_run"]
    try:
        rows, unreadable = _open_dlq_rows(dag_run.run_id), None
    except Exception as exc:
        log.exception("alert: could not read the DLQ of run %s", dag_run.run_id)
        rows, unreadable = [], " ".join(f"{type(exc).__name__}: {exc}".split())
    from market_pipeline.errors import with_next_action

    summary = summarise(rows)
    if unreadable is None:
        text = alert_text(dag_run.dag_id, dag_run.run_id, summary)
    else:
        text = f"{dag_run.dag_id} run {dag_run.run_id} failed; DLQ unreadable: {unreadable}"
    text = with_next_action(
        text, alert_action(rows, dag_run.run_id, unreadable=unreadable is not None)
    )
    channel, error = deliver(text, f"[market_daily] run {dag_run.run_id} failed", context)
    trade_dates = sorted({str(r["trade_date"]) for r in rows if r.get("trade_date")})
    record_alert(
        {
            "at": datetime.now(UTC).isoformat(),
            "kind": "run_failed",
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "trade_dates": trade_dates,
            "channel": channel,
            "delivered": error is None,
            "error": error,
            "dlq_error": unreadable,
            "summary": summary,
            "symbols": sorted({r["symbol"] for r in rows if isinstance(r.get("symbol"), str)}),
            "text": text,
        }
    )
    return text


# --------------------------------------------------------------------------- publish deadline

#: Minutes after the session's close by which its scores must be served (environment, read
#: when the DAG is parsed); unset or ``0``: no deadline. Off by default because Airflow 3.3.2's
#: ``airflow dags test`` crashes when a run of a DAG with a deadline succeeds
#: (``DagRun.update_state`` reads the SDK alerts as ids); deployments set it (e.g. 300).
DEADLINE_ENV = "MARKET_PUBLISH_DEADLINE_MINUTES"
DEFAULT_DEADLINE_MINUTES = 0


def deadline_after_close() -> timedelta | None:
    """``MARKET_PUBLISH_DEADLINE_MINUTES`` as a timedelta (``None`` when set to 0)."""
    raw = os.environ.get(DEADLINE_ENV, "").strip() or str(DEFAULT_DEADLINE_MINUTES)
    try:
        minutes = float(raw)
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV} must be a number of minutes, found {raw!r}") from None
    if minutes < 0:
        raise ValueError(f"{DEADLINE_ENV} must be >= 0 minutes, found {raw!r}")
    return timedelta(minutes=minutes) if minutes else None


def publish_deadline(*, run_delay: timedelta):
    """The DAG's Deadline Alert: a session's scores served by the configured time after its
    close, or an alert (``None`` when the deadline is off).

    A scheduled run is queued ``run_delay`` after the close (the timetable's delay), so the
    deadline counts from ``DAGRUN_QUEUED_AT``: a backfill or a manual run of an old session
    gets the same allowance from when it starts, not an alert for a deadline years past.
    """
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    from market_pipeline.config import CACHE_PREFIX

    after_close = deadline_after_close()
    if after_close is None:
        return None
    if after_close <= run_delay:
        raise ValueError(
            f"{DEADLINE_ENV} must be later than the run's start ({run_delay} after the close), "
            f"found {after_close}"
        )
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=after_close - run_delay,
        callback=AsyncCallback(
            publish_deadline_missed,
            kwargs={
                "after_close_minutes": after_close.total_seconds() / 60,
                "cache_prefix": CACHE_PREFIX,  # MARKET_CACHE_PREFIX, fixed at parse time too
            },
        ),
        name="scores_published",
    )


def _field(mapping, name: str):
    if mapping is None:
        return None
    if isinstance(mapping, dict):
        return mapping.get(name)
    return getattr(mapping, name, None)


def _as_datetime(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _session_of(dag_run) -> date | None:
    start = _as_datetime(_field(dag_run, "data_interval_start"))
    end = _as_datetime(_field(dag_run, "data_interval_end"))
    if start is None or end is None:
        return None
    from market_pipeline import calendar

    return calendar.session_for_interval(start, end, _variable("market_exchange", "XNYS"))


def _served_trade_date(prefix: str | None) -> date | None:
    from market_airflow.hooks import MarketCacheHook
    from market_pipeline import cache
    from market_pipeline.config import CACHE_PREFIX

    client = MarketCacheHook().get_conn()
    try:
        manifest = cache.latest_manifest(client, prefix or CACHE_PREFIX)
    finally:
        client.close()
    return manifest.trade_date if manifest else None


def check_publish_deadline(
    context, after_close_minutes: float | None = None, cache_prefix: str | None = None
) -> str | None:
    """Alert unless the run's session is served; the alert text, or ``None`` when served.

    Runs where Airflow runs the deadline's callback. A session it cannot work out, or a cache
    it cannot read, is no reason to stay silent: the alert says what it could not check.
    """
    context = context or {}
    dag_run = context.get("dag_run") or {}
    dag_id = _field(dag_run, "dag_id") or "market_daily"
    run_id = _field(dag_run, "dag_run_id") or _field(dag_run, "run_id") or "?"
    deadline_time = _field(context.get("deadline"), "deadline_time")
    allowance = (
        f" ({after_close_minutes:g} min after the close)" if after_close_minutes is not None else ""
    )
    try:
        session = _session_of(dag_run)
    except Exception as exc:
        log.exception("deadline: could not work out the session of run %s", run_id)
        session, problem = None, f"session unknown ({type(exc).__name__}: {exc})"
    else:
        problem = None if session else "session unknown (the run has no data interval)"
    served = None
    if problem is None:
        try:
            served = _served_trade_date(cache_prefix)
        except Exception as exc:
            log.exception("deadline: could not read the served version")
            problem = f"cache unreadable: {type(exc).__name__}: {exc}"
        else:
            if served is not None and served >= session:
                log.info("deadline: %s is served (version of %s); no alert", session, served)
                return None
    what = f"scores for session {session}" if session else "scores"
    found = problem or f"serving {served or 'nothing'}"
    text = " ".join(
        f"{dag_id} run {run_id}: {what} not published by the deadline "
        f"{deadline_time or '?'}{allowance}; {found}".split()
    )
    channel, error = deliver(text, f"[market_daily] {what} not published", context)
    record_alert(
        {
            "at": datetime.now(UTC).isoformat(),
            "kind": "publish_deadline",
            "dag_id": dag_id,
            "run_id": run_id,
            "trade_dates": [session.isoformat()] if session else [],
            "deadline": str(deadline_time) if deadline_time else None,
            "served": served.isoformat() if served else None,
            "channel": channel,
            "delivered": error is None,
            "error": error,
            "text": text,
        }
    )
    return text


async def publish_deadline_missed(
    context=None, after_close_minutes: float | None = None, cache_prefix: str | None = None
):
    """Deadline Alert callback (an ``AsyncCallback``, run by the triggerer).

    The check and the notifier are blocking (Redis, SMTP, Variables through the triggerer's
    supervisor), so they run in a worker thread, off the triggerer's event loop.
    """
    return await asyncio.to_thread(
        check_publish_deadline, context, after_close_minutes, cache_prefix
    )
