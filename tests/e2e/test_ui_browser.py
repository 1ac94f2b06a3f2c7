"""An operator's recovery in a real browser: Chromium driven by Playwright against a real cluster.

Log in to Airflow's UI, open **Market health**, see the symbol its raw gate stopped (IBM, a
+80 % spike), open the instance's **GX report** tab, fix the source (clear the synthetic
defect Variable), clear the instance by clicking in Airflow's UI (with downstream), and see
the run turn green and the DLQ row resolve — on the health page.

The browser is Debian's Chromium (``apt-get install -y chromium``), launched by path; the
test skips, saying so, when ``/usr/bin/chromium`` or the ``playwright`` package is missing.
On failure a screenshot of the page is saved in the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.support.airflow_cluster import AirflowCluster
from tests.support.db import drop_namespace
from tests.support.db import rows as query

pytestmark = pytest.mark.e2e

# The browser is a system package (Debian's chromium), never a download: MARKET_CHROMIUM
# names another binary.
CHROMIUM = Path(os.environ.get("MARKET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SESSION = "2024-11-29"
UNIVERSE = ["AAPL", "IBM", "KO"]  # IBM is map index 1
IBM = 1
# Clear the instance that failed: the raw gate asks the source for its window again when it
# runs again, so the corrected delivery becomes a new raw version and is what it judges.
CLEAR_FROM = "per_symbol.validate_bars"


def _sync_playwright():
    if not CHROMIUM.is_file():
        pytest.skip(
            "browser test needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "browser test needs the playwright package: pip install -r requirements-dev.txt"
        )
    return sync_playwright


@pytest.fixture(scope="module")
def red_day(pg_dsn, redis_url):
    _sync_playwright()  # skip before starting a cluster
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    prefix = f"test:{schema}:v1"
    env = {
        "MARKET_SCHEMA": schema,
        "MARKET_CACHE_PREFIX": prefix,
        "MARKET_GATE_POKE_SECONDS": "2",
        "MARKET_GATE_TIMEOUT_SECONDS": "120",
        "MARKET_RETRY_BASE_SECONDS": "1",
        "AIRFLOW_CONN_MARKET_DB": pg_dsn,
        "AIRFLOW_CONN_MARKET_CACHE": redis_url,
        "AIRFLOW_VAR_MARKET_UNIVERSE": ",".join(UNIVERSE),
        "AIRFLOW_VAR_MARKET_QUORUM": "0.5",
    }
    cluster = AirflowCluster(env=env, pg_dsn=pg_dsn)
    try:
        cluster.start()
        cluster.set_variable("market_synthetic_defects", "IBM:spike")  # fixed later by the test
        run_id = cluster.trigger(SESSION, run_id=f"ui__{SESSION}")
        assert cluster.wait_for_run(run_id, timeout=600) == "failed"
        cluster.schema, cluster.run_id = schema, run_id
        yield cluster
    finally:
        cluster.stop()
        drop_namespace(pg_dsn, redis_url, schema, prefix)


@pytest.fixture
def page(red_day, tmp_path, request):
    """A Chromium page; when the test fails, a full-page screenshot is saved in its tmp dir."""
    sync_playwright = _sync_playwright()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        page = context.new_page()
        try:
            yield page
            report = getattr(request.node, "rep_call", None)
            if report is None or report.failed:
                shot = tmp_path / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the page at the failure: {shot}")
        finally:
            browser.close()


def _login(page, cluster) -> None:
    page.goto(cluster.url + "/")
    page.get_by_label("Username").fill(cluster.user)
    page.get_by_label("Password").fill(cluster.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*auth/login).*$"))


def _health(page, cluster):
    page.goto(cluster.url + "/plugin/market-health")
    return page.frame_locator('iframe[title="Market health"]')


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def test_operator_sees_the_failed_symbol_reads_its_gx_report_and_clears_it_in_the_ui(
    red_day, page, pg_dsn
):
    run_id = red_day.run_id
    _login(page, red_day)

    # Market health: IBM stopped at the raw gate, with its map index and an open DLQ row.
    health = _health(page, red_day)
    ibm = health.locator('#grid tr[data-symbol="IBM"]')
    ibm.locator("td.stopped").first.wait_for()
    assert ibm.locator("td.num").first.inner_text() == str(IBM)
    assert "data_quality" in health.locator('#dlq-open tr[data-symbol="IBM"]').inner_text()

    # Its GX report, as a tab of the failed gate instance.
    gate = f"{red_day.url}/dags/market_daily/runs/{run_id}/tasks/per_symbol.validate_bars"
    page.goto(f"{gate}/mapped/{IBM}")
    page.get_by_role("link", name="GX report").click()  # the plugin's task_instance tab
    report = page.frame_locator('iframe[title="GX report"]')
    report.get_by_text("max_close_move").first.wait_for()
    assert "FAIL" in report.locator("body").inner_text()

    # Fix the source, then clear IBM's chain in Airflow's UI, with downstream.
    red_day.set_variable("market_synthetic_defects", "")
    page.goto(f"{red_day.url}/dags/market_daily/runs/{run_id}/tasks/{CLEAR_FROM}/mapped/{IBM}")
    page.get_by_role("button", name="Press shift+c to clear").click()
    dialog = page.get_by_role("dialog")
    # Downstream is on and "only failed" off by default: IBM's gate and the three stages
    # after it (4), and the tail (5).
    dialog.get_by_text("Affected Tasks: 9").wait_for()
    dialog.get_by_role("button", name="Confirm").click()
    dialog.wait_for(state="hidden")

    state = _wait_until(
        lambda: (
            red_day.run(run_id)["state"] in ("success", "failed") and red_day.run(run_id)["state"]
        ),
        600,
        "the cleared run did not finish",
    )
    assert state == "success", red_day.task_states(run_id)

    # The health page agrees: the run is green and IBM's DLQ row is resolved.
    health = _health(page, red_day)
    health.locator('#grid tr[data-symbol="IBM"] td.passed').first.wait_for()
    assert health.locator("#dlq-open").inner_text().startswith("None")
    assert "IBM" in health.locator("#dlq-resolved").inner_text()
    assert query(
        pg_dsn,
        f"SELECT count(*) FROM {red_day.schema}.dlq WHERE resolved_at IS NULL",
    ) == [(0,)]
