"""The recovery CLI against a real Postgres DLQ, and callbacks/alerts that must never raise."""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from types import SimpleNamespace

import psycopg2
import pytest

# Imported at collection: Airflow configures logging on first import, which must not
# happen inside a test (it would replace pytest's log capture handler).
from market_airflow import callbacks, hooks, notify  # noqa: F401

from market_pipeline import recovery, store
from tests.support import records
from tests.support.db import migrated

GROUP = "per_symbol"
RUN = "scheduled__2024-11-29T14:30:00+00:00"
OLD_RUN = "scheduled__2024-11-27T14:30:00+00:00"


def _entry(symbol, index, stage, kind, *, run_id=RUN, trade_date=date(2024, 11, 29)):
    return records.dlq_entry(
        symbol, stage, kind, map_index=index, run_id=run_id, trade_date=trade_date
    )


@pytest.fixture
def dlq(pg_schema):
    """A migrated schema holding a few DLQ rows: (dsn, schema)."""
    dsn, schema = pg_schema
    with migrated(dsn, schema) as conn:
        for entry in (
            _entry("XOM", 19, "ingest_bars", "source"),
            _entry("IBM", 8, "validate_bars", "data_quality"),
            _entry(None, -1, "quorum_gate", "upstream"),
            _entry(
                "KO",
                12,
                "compute_indicators",
                "code",
                run_id=OLD_RUN,
                trade_date=date(2024, 11, 27),
            ),
        ):
            store.dlq_record(conn, entry, schema=schema)
        store.dlq_resolve(
            conn,
            dag_id="market_daily",
            run_id=OLD_RUN,
            task_id=f"{GROUP}.compute_indicators",
            map_index=12,
            try_number=2,
            schema=schema,
        )
    return dsn, schema


def _rows(dsn, schema, **kw):
    conn = psycopg2.connect(dsn)
    try:
        return recovery.dlq_rows(conn, recovery.DlqFilter(**kw), schema=schema)
    finally:
        conn.close()


def test_list_filters_open_rows_by_date_stage_kind_and_symbol(dlq):
    dsn, schema = dlq

    every_open = _rows(dsn, schema)
    by_kind = _rows(dsn, schema, kind="data_quality")
    by_stage = _rows(dsn, schema, stage="ingest_bars")
    by_symbol = _rows(dsn, schema, symbols=("XOM", "IBM"))
    old_day = _rows(dsn, schema, trade_date=date(2024, 11, 27))
    old_day_all = _rows(dsn, schema, trade_date=date(2024, 11, 27), include_resolved=True)

    assert sorted(r["stage"] for r in every_open) == ["ingest_bars", "quorum_gate", "validate_bars"]
    assert [r["symbol"] for r in by_kind] == ["IBM"]
    assert [r["symbol"] for r in by_stage] == ["XOM"]
    assert sorted(r["symbol"] for r in by_symbol) == ["IBM", "XOM"]
    assert old_day == []
    assert [(r["symbol"], r["resolved_by_run_id"]) for r in old_day_all] == [("KO", OLD_RUN)]


def test_the_list_command_prints_one_line_per_matching_row(dlq, capsys):
    dsn, schema = dlq

    code = recovery.main(
        ["--dsn", dsn, "--schema", schema, "list", "--kind", "source", "--trade-date", "2024-11-29"]
    )

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split()[:4] == ["trade_date", "symbol", "stage", "kind"]
    assert len(out) == 2 and out[1].split()[:4] == ["2024-11-29", "XOM", "ingest_bars", "source"]
    assert f"{GROUP}.ingest_bars[19]" in out[1] and "open" in out[1]


def test_the_list_command_prints_json_with_resolved_rows_under_all(dlq, capsys):
    dsn, schema = dlq

    recovery.main(["--dsn", dsn, "--schema", schema, "list", "--all", "--json", "--symbol", "ko"])

    rows = json.loads(capsys.readouterr().out)
    assert [(r["symbol"], r["kind"], r["resolved_by_run_id"]) for r in rows] == [
        ("KO", "code", OLD_RUN)
    ]


def test_a_replay_plan_clears_each_failed_instance_and_the_tail_by_task_id(dlq):
    dsn, schema = dlq

    plans = recovery.plan(_rows(dsn, schema))

    assert len(plans) == 1
    (request,) = plans
    assert (request.dag_id, request.run_id, request.symbols) == (
        "market_daily",
        RUN,
        ("IBM", "XOM"),
    )
    assert request.body(dry_run=True) == {
        "dag_run_id": RUN,
        "task_ids": [[f"{GROUP}.ingest_bars", 19], [f"{GROUP}.validate_bars", 8], "quorum_gate"],
        "only_failed": False,
        "include_downstream": True,
        "include_upstream": False,
        "reset_dag_runs": True,
        "dry_run": True,
    }
    assert request.body(dry_run=False)["dry_run"] is False  # always sent: the server says true


def test_a_replay_plan_from_the_chain_start_targets_each_symbols_ingestion(dlq):
    dsn, schema = dlq

    (request,) = recovery.plan(_rows(dsn, schema, kind="data_quality"), from_chain_start=True)

    assert request.targets == ((f"{GROUP}.ingest_bars", 8),)


def test_replay_with_nothing_open_needs_no_api_and_says_so(dlq, capsys, monkeypatch):
    dsn, schema = dlq
    for name in ("MARKET_API_TOKEN", "MARKET_API_USER", "MARKET_API_PASSWORD"):
        monkeypatch.delenv(name, raising=False)

    code = recovery.main(
        ["--dsn", dsn, "--schema", schema, "replay", "--symbol", "NONE", "--dry-run"]
    )

    assert code == 0
    assert "nothing to replay" in capsys.readouterr().out


def test_replay_without_api_credentials_fails_naming_the_settings(dlq, capsys, monkeypatch):
    dsn, schema = dlq
    for name in ("MARKET_API_TOKEN", "MARKET_API_USER", "MARKET_API_PASSWORD"):
        monkeypatch.delenv(name, raising=False)

    code = recovery.main(["--dsn", dsn, "--schema", schema, "replay", "--dry-run"])

    assert code == 2
    assert "MARKET_API_TOKEN" in capsys.readouterr().err


def test_dry_run_output_names_each_instance_with_its_symbol_and_state():
    request = recovery.ClearRequest(
        "market_daily", RUN, ((f"{GROUP}.ingest_bars", 19),), ("XOM",), ((19, "XOM"),)
    )
    instances = [
        {"task_id": "run_health", "map_index": -1, "rendered_map_index": None, "state": "failed"},
        {
            "task_id": f"{GROUP}.ingest_bars",
            "map_index": 19,
            "rendered_map_index": "XOM",
            "state": "failed",
        },
        {
            "task_id": f"{GROUP}.validate_bars",
            "map_index": 19,
            "rendered_map_index": None,
            "state": "upstream_failed",
        },
    ]

    text = recovery.format_cleared(request, instances, dry_run=True)

    assert text.splitlines() == [
        f"market_daily run {RUN}: would clear 3 task instance(s) for XOM",
        f"  {GROUP}.ingest_bars[19 XOM]  (was failed)",
        f"  {GROUP}.validate_bars[19 XOM]  (was upstream_failed)",
        "  run_health  (was failed)",
    ]


def test_replay_against_an_unreachable_api_fails_with_the_url(dlq, capsys, monkeypatch):
    dsn, schema = dlq
    monkeypatch.setenv("MARKET_API_TOKEN", "t")

    code = recovery.main(
        ["--dsn", dsn, "--schema", schema, "replay", "--dry-run", "--api-url", "http://127.0.0.1:9"]
    )

    assert code == 2
    assert "cannot reach the Airflow API at http://127.0.0.1:9" in capsys.readouterr().err


# --------------------------------------------------------------------------- callbacks


def _failure_context():
    return {
        "ti": records.task_instance(run_id=RUN, map_index=3, rendered_map_index="IBM"),
        "exception": ValueError("the task's own error"),
        "dag_run": SimpleNamespace(
            dag_id="market_daily", run_id=RUN, logical_date=datetime(2024, 11, 29)
        ),
        "symbol": "IBM",
    }


@pytest.fixture
def broken_dlq_database(monkeypatch):
    """``market_db`` points at a port where no Postgres listens."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKET_DB", "postgres://postgres@127.0.0.1:9/market?connect_timeout=2"
    )


def test_a_broken_dlq_database_does_not_hide_the_tasks_error_nor_the_alert(
    broken_dlq_database, caplog, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_CHANNEL", "log")

    with caplog.at_level(logging.WARNING):
        callbacks.record_failure(_failure_context())  # must not raise
        callbacks.resolve_success(_failure_context())
        callbacks.alert_on_failure(_failure_context())

    messages = [r.getMessage() for r in caplog.records]
    assert any("could not record the failure" in m for m in messages), messages
    assert any("could not resolve" in m for m in messages), messages
    failure = next(r for r in caplog.records if "could not record" in r.getMessage())
    assert failure.exc_info and "127.0.0.1" in str(failure.exc_info[1])
    # The alert still goes out, saying why it cannot count the failed symbols.
    alert = f"market_daily alert: market_daily run {RUN} failed; DLQ unreadable: OperationalError"
    assert any(m.startswith(alert) for m in messages), messages
    assert not any("could not send the run-failure alert" in m for m in messages), messages


def test_an_alert_is_recorded_as_a_json_line_and_an_unusable_channel_falls_back_to_the_log(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("MARKET_ALERT_LOG", str(path))
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_CHANNEL", "slack")

    with caplog.at_level(logging.WARNING, logger="market_airflow.notify"):
        channel, error = notify.deliver("market_daily run r failed: 1", "subject", {})
    notify.record_alert({"run_id": "r", "channel": channel, "error": error})

    assert channel == "slack"
    assert "apache-airflow-providers-slack" in error
    assert any(
        "market_daily alert: market_daily run r failed" in r.getMessage() for r in caplog.records
    )
    assert json.loads(path.read_text()) == {"run_id": "r", "channel": "slack", "error": error}


def test_an_unknown_alert_channel_is_rejected_naming_the_choices(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_MARKET_ALERT_CHANNEL", "pager")

    with pytest.raises(notify.AlertChannelError, match=r"\['log', 'smtp', 'slack'\].*'pager'"):
        notify.alert_channel()


def test_the_alert_summary_counts_failed_symbols_per_stage_and_kind():
    rows = [
        {"stage": "ingest_bars", "kind": "source"},
        {"stage": "validate_bars", "kind": "data_quality"},
        {"stage": "ingest_bars", "kind": "source"},
    ]

    summary = notify.summarise(rows)

    assert summary == {"ingest_bars": {"source": 2}, "validate_bars": {"data_quality": 1}}
    assert notify.alert_text("market_daily", "r1", summary) == (
        "market_daily run r1 failed: 3 failed task(s) — ingest_bars: 2 source; "
        "validate_bars: 1 data_quality"
    )


class _ClearApi:
    """A loopback server speaking Airflow 3's ``clearTaskInstances`` wire format: a dry run
    answers the instances as they are; a real clear answers them after the clear (state
    None), as ``api_fastapi.core_api.routes.public.task_instances`` does."""

    def __init__(self, states: dict[tuple[str, int], str]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        api = self
        self.states = dict(states)
        self.bodies: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.bodies.append(body)
                instances = [
                    {"task_id": t, "map_index": i, "rendered_map_index": None, "state": s}
                    for (t, i), s in sorted(api.states.items())
                ]
                if not body["dry_run"]:
                    api.states = dict.fromkeys(api.states)
                    instances = [{**ti, "state": None} for ti in instances]
                data = json.dumps(
                    {"task_instances": instances, "total_entries": len(instances)}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_replay_prints_the_state_each_instance_was_in_before_the_clear(dlq, capsys, monkeypatch):
    dsn, schema = dlq
    monkeypatch.setenv("MARKET_API_TOKEN", "t")
    api = _ClearApi(
        {
            (f"{GROUP}.ingest_bars", 19): "failed",
            (f"{GROUP}.validate_bars", 19): "upstream_failed",
            ("run_health", -1): "failed",
        }
    )
    try:
        code = recovery.main(
            ["--dsn", dsn, "--schema", schema, "replay", "--symbol", "XOM", "--api-url", api.url]
        )
    finally:
        api.close()

    assert code == 0
    out = capsys.readouterr().out
    assert "(was None)" not in out, out
    assert f"  {GROUP}.ingest_bars[19 XOM]  (was failed)" in out
    assert f"  {GROUP}.validate_bars[19 XOM]  (was upstream_failed)" in out
    assert "  run_health  (was failed)" in out
    assert [b["dry_run"] for b in api.bodies] == [True, False]  # asked first, then cleared
    assert api.states == dict.fromkeys(api.states)  # and it did clear
