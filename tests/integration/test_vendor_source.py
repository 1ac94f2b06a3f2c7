"""PolygonAggregatesSource against a loopback server speaking Polygon's wire format."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pandas as pd
import pytest
import requests

from market_pipeline.errors import PermanentSourceError, TransientSourceError
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.sources.vendor import PolygonAggregatesSource, parse_retry_after
from tests.support.vendor_server import (
    Reply,
    VendorServer,
    not_authorized,
    rate_limited,
    server_error,
)

API_KEY = "pk_TEST_9f8e7d6c5b4a"
START, END = date(2024, 11, 25), date(2024, 11, 29)
REPO = Path(__file__).resolve().parents[2]


def _bars() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trade_date": [
                date(2024, 11, 25),
                date(2024, 11, 26),
                date(2024, 11, 27),
                date(2024, 11, 29),
            ],
            "open": [10.0, 10.5, 11.0, 11.5],
            "high": [11.0, 11.5, 12.0, 12.5],
            "low": [9.5, 10.0, 10.5, 11.0],
            "close": [10.5, 11.0, 11.5, 12.0],
            "volume": [1000, 2000, 3000, 4000],
        }
    )


@pytest.fixture
def server():
    with VendorServer(api_key=API_KEY) as running:
        running.set_bars("AAPL", _bars())
        yield running


@pytest.fixture
def client(server):
    return PolygonAggregatesSource(server.url, API_KEY, timeout=0.5)


# -- success --------------------------------------------------------------------------
def test_a_200_answer_becomes_canonical_bars_dated_by_session(client):
    bars = client.fetch("AAPL", START, END)

    assert list(bars.columns) == list(BAR_COLUMNS)
    pd.testing.assert_frame_equal(bars, _bars().astype({"volume": "int64"}))


def test_only_bars_within_the_requested_range_are_returned(client):
    bars = client.fetch("AAPL", date(2024, 11, 26), date(2024, 11, 27))

    assert bars["trade_date"].tolist() == [date(2024, 11, 26), date(2024, 11, 27)]


def test_bars_the_vendor_sends_outside_the_range_are_dropped(server, client):
    body = {
        "ticker": "AAPL",
        "status": "OK",
        "resultsCount": 2,
        "results": [  # 2024-11-22 and 2024-11-25, midnight New York
            {"o": 9.0, "h": 9.5, "l": 8.5, "c": 9.2, "v": 900, "t": 1732251600000},
            {"o": 10.0, "h": 11.0, "l": 9.5, "c": 10.5, "v": 1000, "t": 1732510800000},
        ],
    }
    server.script("AAPL", [Reply(body=body)])

    bars = client.fetch("AAPL", START, END)

    assert bars["trade_date"].tolist() == [date(2024, 11, 25)]


def test_an_empty_day_for_a_known_symbol_is_an_empty_frame_not_an_error(client):
    bars = client.fetch("AAPL", date(2024, 11, 28), date(2024, 11, 28))  # Thanksgiving

    assert bars.empty
    assert list(bars.columns) == list(BAR_COLUMNS)


def test_the_api_key_travels_as_a_bearer_header_and_never_in_the_url(server, client):
    client.fetch("AAPL", START, END)

    assert server.log[-1]["authorized"] is True
    assert API_KEY not in server.log[-1]["path"]
    assert API_KEY not in client.last_request["url"]


def test_last_request_records_status_latency_url_and_rows(client):
    client.fetch("AAPL", START, END)

    audit = client.last_request
    assert audit["status"] == 200
    assert audit["latency_ms"] > 0
    assert "/v2/aggs/ticker/AAPL/range/1/day/2024-11-25/2024-11-29" in audit["url"]
    assert audit["rows"] == 4
    assert audit["error"] is None


def test_next_url_pages_are_followed_and_joined(server, client):
    first = {
        "ticker": "AAPL",
        "queryCount": 1,
        "resultsCount": 1,
        "adjusted": True,
        "results": [{"o": 10.0, "h": 11.0, "l": 9.5, "c": 10.5, "v": 1000, "t": 1732510800000}],
        "status": "OK",
        "request_id": "p1",
        "count": 1,
        "next_url": f"{server.url}/v2/aggs/ticker/AAPL/range/1/day/2024-11-26/2024-11-29",
    }
    server.script("AAPL", [Reply(body=first)])

    bars = client.fetch("AAPL", START, END)

    assert len(bars) == 4
    assert client.last_request["pages"] == 2


def test_a_next_url_on_another_host_is_refused_so_the_key_never_leaves(server, client):
    body = {
        "ticker": "AAPL",
        "status": "OK",
        "resultsCount": 0,
        "next_url": "http://198.51.100.7/v2/aggs/ticker/AAPL/range/1/day/2024-11-26/2024-11-29",
    }
    server.script("AAPL", [Reply(body=body)])

    with pytest.raises(PermanentSourceError, match="expected next_url on"):
        client.fetch("AAPL", START, END)

    assert server.requests == 1


# -- transient ------------------------------------------------------------------------
def test_a_429_with_retry_after_is_transient_and_carries_the_delay(server, client):
    server.script("AAPL", [rate_limited(retry_after=7)])

    with pytest.raises(TransientSourceError) as raised:
        client.fetch("AAPL", START, END)

    assert raised.value.retry_after == 7.0
    assert "429" in str(raised.value)
    assert raised.value.symbol == "AAPL"
    assert raised.value.session == END
    assert raised.value.cause == "http 429"


def test_a_429_without_retry_after_leaves_the_delay_to_the_retry_policy(server, client):
    server.script("AAPL", [rate_limited(retry_after=None)])

    with pytest.raises(TransientSourceError) as raised:
        client.fetch("AAPL", START, END)

    assert raised.value.retry_after is None


def test_after_a_429_the_next_attempt_succeeds_and_the_client_never_retried_itself(server, client):
    server.script("AAPL", [rate_limited(retry_after=1), Reply()])
    with pytest.raises(TransientSourceError):
        client.fetch("AAPL", START, END)

    bars = client.fetch("AAPL", START, END)

    assert len(bars) == 4
    assert server.requests == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_transient(server, client, status):
    server.script("AAPL", [server_error(status)])

    with pytest.raises(TransientSourceError, match=f"found {status}"):
        client.fetch("AAPL", START, END)


def test_a_response_slower_than_the_timeout_is_transient(server, client):
    server.script("AAPL", [Reply(delay=1.5)])

    with pytest.raises(TransientSourceError, match=r"within 0\.5 s") as raised:
        client.fetch("AAPL", START, END)

    assert raised.value.cause.startswith("timeout")


def test_a_body_cut_off_mid_transfer_is_a_transient_network_error(server, client):
    server.script("AAPL", [Reply(truncate=True)])

    with pytest.raises(TransientSourceError, match="network error"):
        client.fetch("AAPL", START, END)


def test_a_refused_connection_is_transient():
    stopped = VendorServer(api_key=API_KEY).start()
    url = stopped.url
    stopped.stop()

    with pytest.raises(TransientSourceError, match="network error"):
        PolygonAggregatesSource(url, API_KEY, timeout=0.5).fetch("AAPL", START, END)


# -- permanent ------------------------------------------------------------------------
def test_a_complete_response_holding_truncated_json_is_a_permanent_malformed_payload(
    server, client
):
    server.script("AAPL", [Reply(body='{"ticker":"AAPL","results":[{"o":10.0,"h":1')])

    with pytest.raises(PermanentSourceError, match="malformed or truncated JSON") as raised:
        client.fetch("AAPL", START, END)

    assert raised.value.cause == "malformed payload"


def test_a_non_json_body_is_a_permanent_malformed_payload(server, client):
    server.script("AAPL", [Reply(body="<html>maintenance</html>")])

    with pytest.raises(PermanentSourceError, match="malformed or truncated JSON"):
        client.fetch("AAPL", START, END)


def test_a_bar_missing_a_field_is_a_permanent_error_naming_the_field(server, client):
    body = {
        "ticker": "AAPL",
        "status": "OK",
        "resultsCount": 1,
        "results": [{"o": 10.0, "h": 11.0, "l": 9.5, "v": 1000, "t": 1732510800000}],
    }
    server.script("AAPL", [Reply(body=body)])

    with pytest.raises(PermanentSourceError, match="missing c"):
        client.fetch("AAPL", START, END)


def test_an_unknown_symbol_is_a_permanent_error_worded_as_unknown_symbol(server, client):
    with pytest.raises(PermanentSourceError, match="unknown symbol") as raised:
        client.fetch("ZZZZQ", START, END)

    assert raised.value.cause == "unknown symbol"
    assert raised.value.symbol == "ZZZZQ"
    assert client.last_request["status"] == 404


def test_a_wrong_api_key_is_a_permanent_401(server):
    with pytest.raises(PermanentSourceError, match="found 401"):
        PolygonAggregatesSource(server.url, "wrong-key", timeout=0.5).fetch("AAPL", START, END)


def test_a_plan_without_access_is_a_permanent_403(server, client):
    server.script("AAPL", [not_authorized()])

    with pytest.raises(PermanentSourceError, match="found 403"):
        client.fetch("AAPL", START, END)


def test_a_refusal_inside_a_200_body_is_permanent(server, client):
    body = {"status": "NOT_AUTHORIZED", "request_id": "x", "message": "not entitled"}
    server.script("AAPL", [Reply(body=body)])

    with pytest.raises(PermanentSourceError, match="found 'NOT_AUTHORIZED': not entitled"):
        client.fetch("AAPL", START, END)


@pytest.mark.parametrize(
    "reply",
    [
        rate_limited(retry_after=1),
        server_error(500),
        not_authorized(),
        Reply(delay=1.5),
        Reply(truncate=True),
        Reply(status=400, body={"status": "ERROR", "error": f"bad apiKey={API_KEY}"}),
    ],
    ids=["429", "500", "403", "timeout", "cut-off", "400-echoing-the-key"],
)
def test_the_api_key_never_appears_in_errors_or_the_audit_record(server, client, reply):
    server.script("AAPL", [reply])

    with pytest.raises((TransientSourceError, PermanentSourceError)) as raised:
        client.fetch("AAPL", START, END)

    assert API_KEY not in str(raised.value)
    assert API_KEY not in (raised.value.cause or "")
    assert API_KEY not in json.dumps(client.last_request)
    assert API_KEY not in repr(client)


def test_retry_after_may_also_be_an_http_date():
    now = datetime(2024, 11, 29, 21, 0, tzinfo=UTC)

    seconds = parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now)

    assert seconds == 30.0


# -- the server itself ------------------------------------------------------------------
def test_the_server_counts_simultaneous_requests(server):
    server.hold()  # requests stay in flight until released: overlap without timing
    clients = [PolygonAggregatesSource(server.url, API_KEY, timeout=60) for _ in range(4)]
    threads = [threading.Thread(target=c.fetch, args=("AAPL", START, END)) for c in clients]

    for thread in threads:
        thread.start()
    try:
        held = server.wait_in_flight(4, timeout=60)
    finally:
        server.release()
    for thread in threads:
        thread.join()

    assert held == 4
    assert server.max_concurrent == 4
    assert server.requests == 4
    assert server.in_flight == 0


def test_the_stats_endpoint_reports_the_counts(server, client):
    client.fetch("AAPL", START, END)

    stats = requests.get(f"{server.url}/__stats", timeout=5).json()

    assert stats["requests"] == 1
    assert stats["max_concurrent"] == 1
    assert stats["per_symbol"] == {"AAPL": 1}


def test_replies_can_be_scripted_over_http(server, client):
    script = [{"status": 429, "body": {"status": "ERROR"}, "headers": {"Retry-After": "2"}}]
    requests.post(f"{server.url}/__script/AAPL", json=script, timeout=5).raise_for_status()

    with pytest.raises(TransientSourceError) as raised:
        client.fetch("AAPL", START, END)

    assert raised.value.retry_after == 2.0


def test_the_server_runs_as_a_separate_process_serving_a_drop_folder(tmp_path):
    _bars().rename(columns={"trade_date": "date"}).to_csv(tmp_path / "MSFT.csv", index=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.vendor_server",
            "--port",
            "0",
            "--data",
            tmp_path,
            "--api-key",
            API_KEY,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        url = banner.split(" on ")[1].split()[0]

        bars = PolygonAggregatesSource(url, API_KEY, timeout=5).fetch("MSFT", START, END)

        assert len(bars) == 4
        assert requests.get(f"{url}/__stats", timeout=5).json()["requests"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)
