"""The retry policy's decisions on the errors the real vendor client raises (loopback server).

The DAG-level tests (test_ingest_dag.py) show one 429 → 200 retry end to end; these pin the
policy's arithmetic and its transient/permanent split for every failure the Polygon client
classifies, without paying for a DAG run per case.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from airflow.sdk.definitions.retry_policy import RetryAction
from market_airflow.retry import MarketRetryPolicy, failure_kind

from market_pipeline.errors import DataQualityError
from market_pipeline.sources.synthetic import SyntheticSource
from market_pipeline.sources.vendor import PolygonAggregatesSource
from tests.support.vendor_server import Reply, VendorServer, rate_limited, server_error

D = date(2024, 11, 20)
POLICY = MarketRetryPolicy(base_delay=timedelta(seconds=30), max_delay=timedelta(minutes=10))


def _vendor_error(reply: Reply | None, symbol: str = "AAA") -> Exception:
    """The exception the real client raises when the vendor answers ``reply``."""
    with VendorServer(api_key="test-key") as server:
        if symbol == "AAA":
            server.set_bars(symbol, SyntheticSource().history(symbol, D).tail(5))
        if reply is not None:
            server.script(symbol, [reply])
        source = PolygonAggregatesSource(server.url, "test-key", timeout=5)
        with pytest.raises(Exception) as info:
            source.fetch(symbol, D, D)
    return info.value


def test_a_rate_limit_is_retried_after_the_vendors_retry_after_when_longer_than_the_backoff():
    error = _vendor_error(rate_limited(retry_after=45))

    decision = POLICY.evaluate(error, try_number=1, max_tries=3)

    assert failure_kind(error) == "transient"
    assert decision.action == RetryAction.RETRY
    assert decision.retry_delay == timedelta(seconds=45)


def test_a_server_error_backs_off_exponentially_up_to_the_max_delay():
    error = _vendor_error(server_error(503))

    delays = [POLICY.evaluate(error, try_number=n, max_tries=20).retry_delay for n in (1, 2, 3, 8)]

    assert failure_kind(error) == "transient"
    assert delays == [timedelta(seconds=s) for s in (30, 60, 120, 600)]


def test_a_retry_after_beyond_the_max_delay_is_capped():
    error = _vendor_error(rate_limited(retry_after=3600))

    decision = POLICY.evaluate(error, try_number=1, max_tries=3)

    assert decision.retry_delay == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("reply", "symbol"),
    [
        (Reply(status=200, body='{"status": "OK", "results": [{"t": 1'), "AAA"),  # malformed
        (None, "ZZZZ"),  # unknown ticker: empty range, then 404 from the ticker overview
        (Reply(status=400, body={"status": "ERROR", "error": "bad request"}), "AAA"),
    ],
    ids=["malformed-body", "unknown-symbol", "http-400"],
)
def test_a_permanent_source_error_fails_at_once(reply, symbol):
    error = _vendor_error(reply, symbol)

    decision = POLICY.evaluate(error, try_number=1, max_tries=3)

    assert failure_kind(error) == "source"
    assert decision.action == RetryAction.FAIL
    assert error.symbol == symbol and error.session == D and error.cause


def test_a_data_quality_error_fails_at_once():
    error = DataQualityError(
        "critical expectations failed: max_close_move",
        symbol="AAA",
        session=D,
        failed_expectations=["max_close_move"],
    )

    decision = POLICY.evaluate(error, try_number=1, max_tries=3)

    assert failure_kind(error) == "data_quality"
    assert decision.action == RetryAction.FAIL


def test_a_payload_with_two_bars_for_one_session_is_a_permanent_source_error():
    from market_pipeline.stages.ingest_bars import check_one_bar_per_session

    bars = SyntheticSource(defects={"AAA": "duplicate_day"}).fetch("AAA", date(2024, 11, 18), D)

    with pytest.raises(Exception) as info:
        check_one_bar_per_session(bars, "AAA", D)

    assert failure_kind(info.value) == "source"
    assert "duplicates for 2024-11-20" in str(info.value)
    assert POLICY.evaluate(info.value, try_number=1, max_tries=3).action == RetryAction.FAIL


def test_the_indicator_gate_reads_the_sessions_written_this_run_plus_context():
    from market_airflow.runtime import window_starts

    from market_pipeline import calendar
    from market_pipeline.config import GATE_CONTEXT_SESSIONS
    from market_pipeline.stages import INDICATOR_WINDOW
    from market_pipeline.stages.settings import Settings
    from market_pipeline.stages.validate_indicators import indicator_gate_window

    settings = Settings(exchange="XNYS")

    def window(computed: dict) -> int:
        return indicator_gate_window(window_starts(computed), D, settings)

    ten_back = calendar.previous_sessions(D, 11)[0]

    def computed(*starts):
        return {
            "results": {
                f"S{i}": {"rows": 1, "window_start": s.isoformat()} for i, s in enumerate(starts)
            }
        }

    # A daily run writes D only; a catch-up run wrote ten more sessions for one symbol.
    assert window(computed(D, D)) == 1 + GATE_CONTEXT_SESSIONS
    assert window(computed(D, ten_back)) == 11 + GATE_CONTEXT_SESSIONS
    # An upstream XCom from before window_start was recorded: the full window.
    legacy = {"results": {"S0": {"rows": 1}}}
    assert window(legacy) == INDICATOR_WINDOW
