"""The market UI plugin inside a real api-server, then an operator's recovery in a real browser.

One Airflow deployment (``AirflowCluster``: api-server with the simple auth manager,
scheduler, dag-processor) runs one red day over three symbols — IBM's last bar jumps +80 %, so
its raw gate stops it. The tests first read what the plugin serves about that day
(authentication, pages, report tabs, API, metrics); the last one, in Chromium driven by
Playwright, recovers the day as an operator would: log in to Airflow's UI, open **Market
health**, see the stopped symbol, open the instance's **GX report** tab, fix the source (clear
the synthetic defect Variable), clear the instance by clicking in Airflow's UI (with
downstream), and see the run turn green and the DLQ row resolve on the health page. It stays
last in this module because it changes the day the others read.

The browser is Debian's Chromium (``apt-get install -y chromium``), launched by path
(``MARKET_CHROMIUM`` names another binary); the browser test skips, saying so, when it or the
``playwright`` package is missing. On failure a screenshot of the page is saved in the test's
tmp dir.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from market_pipeline.stages import SYMBOL_TASKS
from tests.support.airflow_cluster import market_cluster
from tests.support.db import rows as query

pytestmark = pytest.mark.e2e

SESSION = "2024-11-29"
UNIVERSE = ["AAPL", "IBM", "KO"]  # map indexes 0, 1, 2
IBM = 1
GATE = "per_symbol.validate_bars"
# Clear the instance that failed: the raw gate asks the source for its window again when it
# runs again, so the corrected delivery becomes a new raw version and is what it judges.
CLEAR_FROM = "per_symbol.validate_bars"
# The browser is a system package (Debian's chromium), never a download.
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


@pytest.fixture(scope="module")
def red_day(pg_dsn, redis_url, airflow_cluster_factory):
    env = {"AIRFLOW_VAR_MARKET_UNIVERSE": ",".join(UNIVERSE), "AIRFLOW_VAR_MARKET_QUORUM": "0.5"}
    with market_cluster(airflow_cluster_factory, "ui", pg_dsn, redis_url, env) as cluster:
        # A metastore Variable (an AIRFLOW_VAR_* would win over it): the browser test fixes it.
        cluster.set_variable("market_synthetic_defects", "IBM:spike")
        run_id = cluster.trigger(SESSION, run_id=f"ui__{SESSION}")
        state = cluster.wait_for_run(run_id, timeout=600)
        assert state == "failed", cluster.task_states(run_id)
        cluster.run_id = run_id
        yield cluster


def _routes(run_id: str) -> dict[str, str]:
    """One request URL per route of the plugin app (keys: the app's route paths)."""
    run = {"dag_id": "market_daily", "run_id": run_id}
    return {
        "/": "/market/",
        "/report/run": f"/market/report/run?{urlencode(run)}",
        "/report/gx": f"/market/report/gx?{urlencode({**run, 'task_id': GATE, 'map_index': 1})}",
        "/api/scores": "/market/api/scores?n=2",
        "/api/symbols/{symbol}": "/market/api/symbols/AAPL",
        "/api/serving": "/market/api/serving",
        "/metrics": "/market/metrics",
    }


def _get(cluster, url: str, *, auth: bool = True, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {cluster.token()}"} if auth else {}
    return requests.get(cluster.url + url, headers=headers, timeout=60, **kwargs)


def test_every_route_of_the_plugin_is_listed_here():
    from market_ui.app import create_app

    paths = {route.path for route in create_app().routes}
    assert paths == set(_routes("x")), "a new route needs its anonymous-access test"


def test_anonymous_and_forged_requests_to_every_plugin_route_are_refused(red_day):
    for path, url in _routes(red_day.run_id).items():
        anonymous = _get(red_day, url, auth=False)
        forged = requests.get(
            red_day.url + url, headers={"Authorization": "Bearer not-a-jwt"}, timeout=60
        )
        cookie = requests.get(red_day.url + url, cookies={"_token": "not-a-jwt"}, timeout=60)
        assert anonymous.status_code == 401, (path, anonymous.status_code, anonymous.text)
        assert forged.status_code == 403, (path, forged.status_code, forged.text)
        assert cookie.status_code == 403, (path, cookie.status_code, cookie.text)
        assert "IBM" not in anonymous.text + forged.text + cookie.text


def test_every_route_answers_an_authenticated_user_and_accepts_no_write(red_day):
    for path, url in _routes(red_day.run_id).items():
        bearer = _get(red_day, url)
        cookie = requests.get(red_day.url + url, cookies={"_token": red_day.token()}, timeout=60)
        post = requests.post(
            red_day.url + url, headers={"Authorization": f"Bearer {red_day.token()}"}, timeout=60
        )
        assert bearer.status_code == 200, (path, bearer.status_code, bearer.text[:500])
        assert cookie.status_code == 200, (path, cookie.status_code, cookie.text[:500])
        assert post.status_code == 405, (path, post.status_code)


def test_airflow_lists_the_nav_page_and_the_two_tabs(red_day):
    plugins = red_day.api("GET", "/api/v2/plugins").json()["plugins"]
    [plugin] = [p for p in plugins if p["name"] == "market_ui"]

    views = {v["name"]: (v["destination"], v["href"]) for v in plugin["external_views"]}
    assert views["Market health"] == ("nav", "market/")
    assert views["Market report"][0] == "dag_run" and "{RUN_ID}" in views["Market report"][1]
    assert views["GX report"][0] == "task_instance" and "{MAP_INDEX}" in views["GX report"][1]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/market"]


def test_health_page_shows_the_stopped_symbol_its_map_index_and_next_action(red_day):
    page = _get(red_day, "/market/").text

    assert f"Session {SESSION}" in page and red_day.run_id in page
    ibm = re.search(r'<tr data-symbol="IBM">(.*?)</tr>', page).group(1)
    assert '<td class="num">1</td>' in ibm  # its map index
    assert 'class="stopped"' in ibm and "data_quality" in ibm
    assert f"tasks/{GATE}/mapped/1" in ibm  # the instance to clear, in Airflow's UI
    assert f"market-recovery replay --trade-date {SESSION} --symbol IBM" in page
    assert f"market-recovery ack IBM {SESSION} --gate bars --rule max_close_move" in page
    assert "2 scored" in page
    aapl = re.search(r'<tr data-symbol="AAPL">(.*?)</tr>', page).group(1)
    assert aapl.count('class="passed"') == len(SYMBOL_TASKS)
    assert 'href="/' not in page  # relative URLs only


def test_gx_report_tab_renders_the_stored_verdict_of_the_instance(red_day):
    query = {"dag_id": "market_daily", "run_id": red_day.run_id, "task_id": GATE}

    ibm = _get(red_day, f"/market/report/gx?{urlencode({**query, 'map_index': 1})}").text
    ko = _get(red_day, f"/market/report/gx?{urlencode({**query, 'map_index': 2})}").text
    other = _get(red_day, f"/market/report/gx?{urlencode({**query, 'task_id': 'run_health'})}").text
    beyond = _get(red_day, f"/market/report/gx?{urlencode({**query, 'map_index': 7})}")

    assert "IBM" in ibm and "FAIL" in ibm and "max_close_move" in ibm
    assert f"run {red_day.run_id}" in ibm  # which run stored the verdict
    assert "KO" in ko and "PASS" in ko and "FAIL" not in ko
    assert "is not a quality gate" in other
    assert beyond.status_code == 404


def test_run_report_tab_is_rendered_from_postgres_with_plugin_gx_links(red_day):
    query = urlencode({"dag_id": "market_daily", "run_id": red_day.run_id})

    page = _get(red_day, f"/market/report/run?{query}").text
    other = _get(red_day, "/market/report/run?dag_id=other&run_id=x").text

    assert f"session {SESSION}" in page and "stopped" in page
    assert f"gx?dag_id=market_daily&amp;run_id={red_day.run_id}" in page.replace("%3A", ":")
    assert "file://" not in page
    assert "is not market_daily" in other


def test_read_api_serves_the_published_day_and_validates_its_inputs(red_day):
    scores = _get(red_day, "/market/api/scores?n=5").json()
    aapl = _get(red_day, "/market/api/symbols/AAPL").json()
    ibm = _get(red_day, "/market/api/symbols/IBM")

    assert scores["trade_date"] == SESSION
    assert sorted(s["symbol"] for s in scores["scores"]) == ["AAPL", "KO"]
    assert [s["rank"] for s in scores["scores"]] == [1, 2]
    assert aapl["snapshot"]["symbol"] == "AAPL" and aapl["version"] == scores["version"]
    assert ibm.status_code == 404
    assert "'IBM' is not in the served day 2024-11-29" in ibm.json()["detail"]
    for bad in ("/market/api/symbols/aapl", "/market/api/scores?n=0", "/market/api/scores?n=501"):
        assert _get(red_day, bad).status_code == 422, bad


def test_metrics_expose_the_latest_session(red_day):
    text = _get(red_day, "/market/metrics").text

    assert 'market_session_symbols{stage="validate_bars",state="stopped"} 1.0' in text
    assert 'market_session_symbols{stage="generate_signals",state="passed"} 2.0' in text
    assert 'market_dlq_open_rows{kind="data_quality",stage="validate_bars"} 1.0' in text
    assert 'market_gate_failures{gate="bars",rule="max_close_move",severity="critical"} 1.0' in text
    assert f'trade_date="{SESSION}"' in text and 'state="failed"' in text
    assert re.search(r"^market_served_version_age_seconds \d", text, re.M)
    assert re.search(r"^market_run_duration_seconds \d", text, re.M)
    assert "market_served_symbols 2.0" in text


# --------------------------------------------------------------------------- browser
# Last in the module: it recovers the red day the tests above read.


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


def _gate_try(cluster, run_id: str) -> int:
    """The try number of IBM's raw gate instance, from the REST API."""
    (ti,) = [
        t
        for t in cluster.task_instances(run_id)
        if t["task_id"] == CLEAR_FROM and t["map_index"] == IBM
    ]
    return int(ti["try_number"])


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
    tried = _gate_try(red_day, run_id)
    page.goto(f"{red_day.url}/dags/market_daily/runs/{run_id}/tasks/{CLEAR_FROM}/mapped/{IBM}")
    page.get_by_role("button", name="Press shift+c to clear").click()
    dialog = page.get_by_role("dialog")
    # Downstream is on and "only failed" off by default: IBM's gate and the three stages
    # after it (4), and the tail (5).
    dialog.get_by_text("Affected Tasks: 9").wait_for()
    dialog.get_by_role("button", name="Confirm").click()
    dialog.wait_for(state="hidden")
    # The dialog closes before the clear is stored: the run reads "failed" until then. A
    # cleared instance gets its next try number, so wait for that, then for the run's end.
    _wait_until(lambda: _gate_try(red_day, run_id) > tried, 120, "the clear was not stored")

    state = _wait_until(
        lambda: (
            red_day.run(run_id)["state"] in ("success", "failed") and red_day.run(run_id)["state"]
        ),
        600,
        "the cleared run did not finish",
    )
    assert state == "success", _why_red(red_day, run_id, pg_dsn)

    # The health page agrees: the run is green and IBM's DLQ row is resolved.
    health = _health(page, red_day)
    health.locator('#grid tr[data-symbol="IBM"] td.passed').first.wait_for()
    assert health.locator("#dlq-open").inner_text().startswith("None")
    assert "IBM" in health.locator("#dlq-resolved").inner_text()
    assert query(
        pg_dsn,
        f"SELECT count(*) FROM {red_day.schema}.dlq WHERE resolved_at IS NULL",
    ) == [(0,)]


def _why_red(cluster, run_id: str, pg_dsn: str) -> str:
    """What a red cleared run says about itself: task states, IBM's raw versions of the
    session, and the end of each of its raw gate's task logs."""
    versions = query(
        pg_dsn,
        f"SELECT version, close, run_id FROM {cluster.schema}.raw_bars "
        "WHERE symbol = 'IBM' AND trade_date = %s ORDER BY version",
        SESSION,
    )
    logs = sorted(Path(cluster.home).glob(f"**/run_id={run_id}/task_id={GATE}/map_index={IBM}/*"))
    tails = "\n".join(
        f"--- {p.name}\n"
        + "".join(line for line in p.open(errors="replace") if "asked the source" in line)
        + p.read_text(errors="replace")[-3000:]
        for p in logs
    )
    return f"{cluster.task_states(run_id)}\nIBM raw versions: {versions}\n{tails}"
