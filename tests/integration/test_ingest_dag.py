"""Ingestion at the DAG level (issue 4): `airflow dags test` against the loopback vendor.

One scenario of market_daily runs over AAA, BBB, CCC and DDD with the Polygon source pointed at
an in-process :class:`VendorServer` (its thread keeps serving while the Airflow CLI runs in a
subprocess), real Postgres and Redis:

0. session D1 with a universe of invalid entries only (``aaa``, ``BB$``): the universe task
   fails, one ``source`` DLQ row per entry, and the tail fails cleanly.
1. session D1 (2024-11-20), all three symbols new: AAA gets a 429 with ``Retry-After: 3``
   and then its bars; BBB gets a malformed (truncated) JSON body; DDD gets a 503 on every
   try; CCC is served normally.
2. session D2 (2024-11-26), three sessions later (21, 22 and 25 were never run).
3. D2 again (a new run of the same session) after the vendor restated CCC's bar for D2.
4. AAA's ``ingest_bars`` executed again inside that finished run (``airflow tasks test
   --map-index 0``: what clearing that one instance and running it does).

The fixture records what each run left behind; each test asserts one behaviour of it. The
pool test at the end needs real concurrency, so it runs on a real scheduler
(:class:`tests.support.airflow_cluster.AirflowCluster`, LocalExecutor, parallelism 8).
"""

from __future__ import annotations

import json
import os
import time
from datetime import date
from itertools import pairwise

import pytest

from market_pipeline import calendar
from market_pipeline.sources.synthetic import SyntheticSource
from tests.support.airflow_home import make_airflow_home
from tests.support.db import drop_namespace
from tests.support.db import rows as _rows
from tests.support.vendor_server import Reply, VendorServer, rate_limited, server_error

SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
D1, D2 = date(2024, 11, 20), date(2024, 11, 26)
GAP = (date(2024, 11, 21), date(2024, 11, 22), date(2024, 11, 25))
RETRY_AFTER = 3
RETRIES = 3  # default_args of the DAG
INGEST = "per_symbol.ingest_bars"
WAIT = "per_symbol.wait_for_bars"
BAD_UNIVERSE = "aaa,BB$"
MALFORMED = '{"ticker": "BBB", "status": "OK", "results": [{"t": 17'


def _snapshot(home, dsn: str, proc) -> dict:
    """What one run left behind: TI states and tries, audit, DLQ and raw rows."""

    s = home.schema
    run_id, run_state = home.run_state()
    tis = home.task_instances(run_id)
    symbols = [r[0] for r in _rows(dsn, f"SELECT symbol FROM {s}.symbols ORDER BY symbol")]
    return {
        "proc": proc,
        "run_id": run_id,
        "run_state": run_state,
        "ti": {(t, symbols[i] if i >= 0 else None): (st, n) for t, i, st, n in tis},
        "audit": _rows(
            dsn,
            f"SELECT symbol, try_number, outcome, error_kind, window_start, window_end, "
            f"rows_fetched, rows_appended, latency_ms, created_at, error_message, run_id "
            f"FROM {s}.fetch_audit WHERE run_id=%s ORDER BY symbol, id",
            run_id,
        ),
        "dlq": _rows(
            dsn,
            f"SELECT symbol, stage, kind, try_number, error_class, error_message "
            f"FROM {s}.dlq WHERE run_id=%s AND resolved_at IS NULL AND symbol IS NOT NULL",
            run_id,
        ),
        "resolved": _rows(
            dsn,
            f"SELECT symbol, stage, kind, try_number, failures, resolved_by_try "
            f"FROM {s}.dlq WHERE run_id=%s AND resolved_at IS NOT NULL ORDER BY symbol",
            run_id,
        ),
        "raw": _rows(
            dsn,
            f"SELECT symbol, trade_date, version, close, source, fetched_at, run_id, "
            f"payload_hash FROM {s}.raw_bars ORDER BY symbol, trade_date, version",
        ),
        "clean": _rows(
            dsn,
            f"SELECT c.symbol, c.trade_date, c.close, r.version FROM {s}.clean_bars c "
            f"JOIN {s}.raw_bars r ON r.id = c.raw_bar_id ORDER BY c.symbol, c.trade_date",
        ),
    }


def _universe_snapshot(home, dsn: str, proc) -> dict:
    run_id, run_state = home.run_state()
    return {
        "proc": proc,
        "run_state": run_state,
        "ti": home.task_states(),
        "dlq": _rows(
            dsn,
            f"SELECT task_id, kind, try_number, error_class, error_message FROM {home.schema}.dlq "
            "WHERE run_id=%s",
            run_id,
        ),
        "symbols": _rows(dsn, f"SELECT count(*) FROM {home.schema}.symbols")[0][0],
    }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, pg_dsn, redis_url, airflow_home_template):
    """Run the three-run vendor scenario once; yields the snapshot of each run."""
    home = make_airflow_home(tmp_path_factory.mktemp("airflow_ingest"), airflow_home_template)
    history = {s: SyntheticSource().history(s, D2) for s in SYMBOLS}
    variables = {"market_source": "polygon", "market_universe": ",".join(SYMBOLS)}
    out: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as env, VendorServer(api_key="test-key") as server:
        conn = {"conn_type": "http", "host": server.url, "password": "test-key"}
        env.setenv("AIRFLOW_CONN_MARKET_SOURCE", json.dumps(conn))
        env.setenv("MARKET_RETRY_BASE_SECONDS", "1")
        for symbol, bars in history.items():
            server.set_bars(symbol, bars[bars["trade_date"] <= D1])
        try:
            proc = home.dags_test(D1.isoformat(), **{**variables, "market_universe": BAD_UNIVERSE})
            out["bad_universe"] = _universe_snapshot(home, pg_dsn, proc)

            server.script("AAA", [rate_limited(retry_after=RETRY_AFTER)])
            server.script("BBB", [Reply(status=200, body=MALFORMED)])
            server.script("DDD", [server_error(503)] * (RETRIES + 1))
            proc = home.dags_test(D1.isoformat(), **variables)
            out["d1"] = _snapshot(home, pg_dsn, proc)
            out["d1"]["vendor"] = server.stats()

            for symbol, bars in history.items():
                server.set_bars(symbol, bars)
            proc = home.dags_test(D2.isoformat(), **variables)
            out["d2"] = _snapshot(home, pg_dsn, proc)

            restated = history["CCC"].copy()
            last = restated.index[-1]
            close = round(restated.loc[last, "close"] * 1.01, 4)
            restated.loc[last, "close"] = close
            restated.loc[last, "high"] = max(restated.loc[last, "high"], close)
            server.set_bars("CCC", restated)
            proc = home.dags_test(D2.isoformat(), **variables)
            out["rerun"] = _snapshot(home, pg_dsn, proc)
            out["restated_close"] = float(restated.loc[last, "close"])

            # Re-execute AAA's cleared ingest_bars inside the finished run (map index 0).
            proc = home.airflow(
                "tasks",
                "test",
                "market_daily",
                INGEST,
                out["rerun"]["run_id"],
                "--map-index",
                "0",
                check=False,
                **variables,
            )
            out["cleared"] = _snapshot(home, pg_dsn, proc)
            yield out
        finally:
            drop_namespace(pg_dsn, redis_url, home.schema, home.cache_prefix)


def _audit(run: dict, symbol: str) -> list[tuple]:
    return [r for r in run["audit"] if r[0] == symbol]


def _explain(run: dict) -> str:
    return run["proc"].stdout[-5000:] + run["proc"].stderr[-5000:]


def test_a_universe_without_a_valid_entry_fails_before_anything_is_mapped(scenario):
    bad = scenario["bad_universe"]

    assert bad["run_state"] == "failed"
    assert bad["ti"][("universe", -1)] == "failed", _explain(bad)
    assert not [key for key in bad["ti"] if key[1] >= 0]  # no map index was ever created
    assert bad["symbols"] == 0
    # One row per rejected entry, and the universe task's own: all `source`, none `code`.
    universe = sorted(r[:4] for r in bad["dlq"] if r[0] == "universe")
    assert universe == [
        ("universe", "source", 1, "UniverseEntryError"),
        ("universe", "source", 1, "UniverseEntryError"),
        ("universe", "source", 1, "UniverseEntryError"),
    ]
    messages = " ".join(r[4] for r in bad["dlq"] if r[0] == "universe")
    assert "'BB$'" in messages and "'aaa'" in messages and "^[A-Z]" in messages
    assert "market_universe Variable, entry 2 of 2" in messages
    assert not [r for r in bad["dlq"] if r[0].startswith("per_symbol.")]
    assert not [r for r in bad["dlq"] if r[1] == "code"], bad["dlq"]
    # The all_done tasks ran and failed with their own words, not a TypeError.
    assert bad["ti"][("quorum_gate", -1)] == "failed"
    assert bad["ti"][("run_health", -1)] == "failed"
    assert "NoneType" not in bad["proc"].stdout + bad["proc"].stderr


def test_a_429_then_200_succeeds_on_the_second_try_after_the_retry_after_delay(scenario):
    d1 = scenario["d1"]

    audit = _audit(d1, "AAA")

    assert d1["ti"][(INGEST, "AAA")] == ("success", 2), _explain(d1)
    assert [(r[1], r[2], r[3]) for r in audit] == [(1, "error", "transient"), (2, "ok", None)]
    assert "429" in audit[0][10]
    waited = (audit[1][9] - audit[0][9]).total_seconds()
    assert waited >= RETRY_AFTER, f"retried after {waited:.2f} s, Retry-After was {RETRY_AFTER}"
    assert d1["ti"][("per_symbol.generate_signals", "AAA")][0] == "success"
    assert not [r for r in d1["dlq"] if r[0] == "AAA"]  # healed by the retry: no open DLQ row
    # ...but the failed try stays visible: the retry callback recorded it, the success resolved it.
    assert [r for r in d1["resolved"] if r[0] == "AAA"] == [
        ("AAA", "ingest_bars", "transient", 1, 1, 2)
    ]


def test_a_malformed_body_fails_at_once_with_a_source_dlq_row_and_no_retry(scenario):
    d1 = scenario["d1"]

    dlq = [r for r in d1["dlq"] if r[0] == "BBB"]

    assert d1["ti"][(INGEST, "BBB")] == ("failed", 1), _explain(d1)
    assert [(r[1], r[2], r[3]) for r in _audit(d1, "BBB")] == [(1, "error", "source")]
    assert len(dlq) == 1
    _, stage, kind, try_number, error_class, message = dlq[0]
    assert (stage, kind, try_number, error_class) == (
        "ingest_bars",
        "source",
        1,
        "PermanentSourceError",
    )
    assert "malformed" in message and "BBB" in message
    assert d1["vendor"]["per_symbol"]["BBB"] == 1  # the vendor was asked once, never again
    assert d1["ti"][("per_symbol.validate_bars", "BBB")][0] == "upstream_failed"


def test_a_transient_error_on_every_try_backs_off_exponentially_then_lands_in_the_dlq(scenario):
    d1 = scenario["d1"]

    audit = _audit(d1, "DDD")
    dlq = [r for r in d1["dlq"] if r[0] == "DDD"]

    assert d1["ti"][(INGEST, "DDD")] == ("failed", RETRIES + 1), _explain(d1)
    assert [(r[1], r[2], r[3]) for r in audit] == [
        (n, "error", "transient") for n in range(1, RETRIES + 2)
    ]
    waits = [(b[9] - a[9]).total_seconds() for a, b in pairwise(audit)]
    for waited, backoff in zip(waits, (1, 2, 4), strict=True):  # base 1 s, doubling
        assert waited >= backoff, waits
    assert len(dlq) == 1
    assert dlq[0][1:5] == ("ingest_bars", "transient", RETRIES + 1, "TransientSourceError")
    assert "503" in dlq[0][5]


def test_a_new_symbol_is_fetched_with_its_full_history_window(scenario):
    d1 = scenario["d1"]

    (row,) = _audit(d1, "CCC")

    _, try_number, outcome, _, start, end, fetched, appended, latency, *_ = row
    assert (try_number, outcome) == (1, "ok")
    assert (start, end) == (calendar.previous_sessions(D1, 600)[0], D1)
    assert fetched == appended == 600
    assert latency is not None and latency > 0


def test_raw_rows_carry_source_fetch_time_run_id_and_payload_hash(scenario):
    d1 = scenario["d1"]

    ccc = [r for r in d1["raw"] if r[0] == "CCC"]

    assert len(ccc) == 600
    assert {r[4] for r in ccc} == {"polygon"}
    assert {r[6] for r in ccc} == {d1["run_id"]}
    assert all(r[5] is not None and len(r[7]) == 64 for r in ccc)
    assert {r[2] for r in ccc} == {1}


def test_a_three_session_gap_is_filled_by_the_next_run(scenario):
    d2 = scenario["d2"]

    clean = {(s, d) for s, d, *_ in d2["clean"]}

    assert d2["run_state"] == "success", _explain(d2)
    for symbol in ("AAA", "CCC"):
        (row,) = _audit(d2, symbol)
        assert (row[4], row[5], row[6], row[7]) == (GAP[0], D2, 4, 4), row
        assert {(symbol, d) for d in (*GAP, D2)} <= clean
    # BBB and DDD never had a clean session: their first success fetches the whole window.
    for symbol in ("BBB", "DDD"):
        (row,) = _audit(d2, symbol)
        assert (row[4], row[6]) == (calendar.previous_sessions(D2, 600)[0], 600)


def test_rerunning_the_session_appends_nothing_for_identical_data(scenario):
    d2, rerun = scenario["d2"], scenario["rerun"]

    before = [r for r in d2["raw"] if r[0] in ("AAA", "BBB")]
    after = [r for r in rerun["raw"] if r[0] in ("AAA", "BBB")]

    assert rerun["ti"][(INGEST, "AAA")][0] == "success", _explain(rerun)
    assert after == before
    for symbol in ("AAA", "BBB"):
        assert [(r[2], r[6], r[7]) for r in _audit(rerun, symbol)][-1] == ("ok", 1, 0)


def test_clearing_ingest_bars_for_a_symbol_and_rerunning_leaves_raw_bars_unchanged(scenario):
    rerun, cleared = scenario["rerun"], scenario["cleared"]

    audit = _audit(cleared, "AAA")

    assert cleared["proc"].returncode == 0, _explain(cleared)
    assert len(audit) == len(_audit(rerun, "AAA")) + 1  # the instance really fetched again
    assert (audit[-1][2], audit[-1][4], audit[-1][7]) == ("ok", D2, 0)
    assert cleared["raw"] == rerun["raw"]


def test_a_restatement_appends_one_version_and_is_promoted(scenario):
    d2, rerun = scenario["d2"], scenario["rerun"]

    ccc_before = [r for r in d2["raw"] if r[0] == "CCC"]
    ccc_after = [r for r in rerun["raw"] if r[0] == "CCC"]
    added = [r for r in ccc_after if r not in ccc_before]

    assert len(ccc_after) == len(ccc_before) + 1
    assert [(r[1], r[2]) for r in added] == [(D2, 2)]
    assert added[0][3] == pytest.approx(scenario["restated_close"])
    assert [r for r in ccc_after if r[1] == D2 and r[2] == 1]  # version 1 is kept
    clean = {(s, d): (c, v) for s, d, c, v in rerun["clean"]}
    assert clean[("CCC", D2)] == (pytest.approx(scenario["restated_close"]), 2)


# --------------------------------------------------------------------------- the pool

POOL_SYMBOLS = ("PA", "PB", "PC", "PD", "PE", "PF")
POOL_SLOTS = 2


def _held_back_by_the_pool(
    cluster, run_id: str, task_id: str, waiting: int, timeout: float = 300
) -> dict:
    """Wait until the pool is full with ``waiting`` instances of ``task_id`` kept behind it
    (scheduled, or a sensor up for reschedule), then until the scheduler has finished a whole
    loop after that (its heartbeat moved twice): it has then looked at the waiting tasks and
    left them waiting. Returns the pool as seen."""

    def pool() -> dict:
        found = cluster.api("GET", "/api/v2/pools/market_source_api").json()
        found["waiting"] = sum(
            t["task_id"] == task_id and t["state"] in ("scheduled", "up_for_reschedule")
            for t in cluster.task_instances(run_id)
        )
        return found

    def heartbeat() -> str | None:
        health = cluster.api("GET", "/api/v2/monitor/health").json()
        return health["scheduler"]["latest_scheduler_heartbeat"]

    deadline = time.monotonic() + timeout
    seen = pool()
    while not (seen["open_slots"] == 0 and seen["waiting"] >= waiting):
        assert time.monotonic() < deadline, f"the pool never filled up: {seen}"
        time.sleep(0.5)  # polling the API, not a synchronisation
        seen = pool()
    beats = [heartbeat()]
    while len(set(beats)) < 3:
        assert time.monotonic() < deadline, f"the scheduler stopped heartbeating: {beats}"
        time.sleep(0.5)
        beats.append(heartbeat())
    return pool()


def _held_in_flight(cluster, server, run_id: str, task_id: str, waiting: int) -> dict:
    """Both pool slots held at the vendor, ``waiting`` instances of ``task_id`` kept behind
    them through a whole scheduler loop; what the vendor and the pool showed meanwhile."""
    held = server.wait_in_flight(POOL_SLOTS)
    pool = _held_back_by_the_pool(cluster, run_id, task_id, waiting)
    return {"held": held, "pool": pool, "in_flight_while_full": server.stats()["in_flight"]}


def _until(predicate, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)  # polling the API, not a synchronisation


@pytest.fixture(scope="module")
def pooled_run(pg_dsn, redis_url, airflow_cluster_factory):
    """One run on a real scheduler (LocalExecutor, parallelism 8) with a 2-slot vendor pool.

    The loopback vendor holds every request unanswered until the test has seen POOL_SLOTS
    of them in flight at once and the scheduler keep the other tasks that call it waiting for
    a slot for a whole loop; then it answers them all. Twice:

    1. the six ``ingest_bars`` (the vendor has no bar for D1 yet, so each delivers none);
    2. once every ingest is done, the six ``wait_for_bars`` sensors, which ask the vendor
       again at each poke; then D1's bars appear and the run goes on.
    """
    schema = f"t_{os.urandom(5).hex()}"
    prefix = f"test:{schema}:v1"
    with VendorServer(api_key="test-key") as server:
        history = {s: SyntheticSource().history(s, D1) for s in POOL_SYMBOLS}
        for symbol, bars in history.items():
            server.set_bars(symbol, bars[bars["trade_date"] < D1])  # D1 not delivered yet
        server.hold()
        # Held requests must not time out on the client's side (its default is 10 s).
        source = {"conn_type": "http", "host": server.url, "password": "test-key"}
        source["extra"] = {"timeout": 600}
        env = {
            "MARKET_SCHEMA": schema,
            "MARKET_CACHE_PREFIX": prefix,
            "MARKET_RETRY_BASE_SECONDS": "1",
            # Not shorter: Airflow 3.3.2 fails a reschedule-mode poke whose executor event
            # arrives after the next poke is due (apache/airflow#71172; docs/decisions.md).
            "MARKET_GATE_POKE_SECONDS": "15",
            "MARKET_GATE_TIMEOUT_SECONDS": "1800",
            "AIRFLOW_CONN_MARKET_DB": pg_dsn,
            "AIRFLOW_CONN_MARKET_CACHE": redis_url,
            "AIRFLOW_CONN_MARKET_SOURCE": json.dumps(source),
            "AIRFLOW_VAR_MARKET_SOURCE": "polygon",
            "AIRFLOW_VAR_MARKET_UNIVERSE": ",".join(POOL_SYMBOLS),
        }
        cluster = airflow_cluster_factory(
            env=env, parallelism=8, pools={"market_source_api": POOL_SLOTS}
        )
        # At least one instance held back behind the full pool through a whole scheduler
        # loop: the scheduler could have started a third vendor call there, and did not.
        waiting = 1
        try:
            cluster.start()
            run_id = cluster.trigger(D1.isoformat())
            try:
                ingest = _held_in_flight(cluster, server, run_id, INGEST, waiting)
            finally:
                server.release()

            def ingested() -> bool:
                tis = cluster.task_instances(run_id)
                return sum(t["task_id"] == INGEST and t["state"] == "success" for t in tis) == len(
                    POOL_SYMBOLS
                )

            _until(ingested, "the ingest tasks did not all succeed")
            server.hold()  # the sensors' next pokes
            try:
                sensors = _held_in_flight(cluster, server, run_id, WAIT, waiting)
                for symbol, bars in history.items():
                    server.set_bars(symbol, bars)  # D1 arrives
            finally:
                server.release()
            state = cluster.wait_for_run(run_id, timeout=900)
            links = cluster.api(
                "GET",
                f"/api/v2/dags/market_daily/dagRuns/{run_id}/taskInstances/"
                "per_symbol.validate_bars/links",
                params={"map_index": 0},
            ).json()
            yield {
                "state": state,
                "tis": cluster.task_instances(run_id),
                "vendor": server.stats(),
                "ingest": ingest,
                "sensors": sensors,
                "links": links,
                "logs": cluster.logs_tail("scheduler"),
            }
        finally:
            cluster.stop()
            drop_namespace(pg_dsn, redis_url, schema, prefix)


def test_the_pool_bounds_concurrent_vendor_calls_across_mapped_ingest_tasks(pooled_run):
    ingest = [ti for ti in pooled_run["tis"] if ti["task_id"] == INGEST]
    held = pooled_run["ingest"]

    assert pooled_run["state"] == "success", pooled_run["logs"]
    assert sorted(ti["rendered_map_index"] for ti in ingest) == list(POOL_SYMBOLS)
    assert {ti["pool"] for ti in ingest} == {"market_source_api"}
    # The scheduler ran ingest tasks side by side (two calls held in flight together) ...
    assert held["held"] == POOL_SLOTS, pooled_run["vendor"]
    # ... and, while those held both slots, kept the others waiting through a whole
    # scheduler loop: no third call reached the vendor, then or later.
    assert held["in_flight_while_full"] == POOL_SLOTS, held["pool"]
    assert pooled_run["vendor"]["max_concurrent"] == POOL_SLOTS, pooled_run["vendor"]


def test_the_sensor_that_asks_the_source_again_is_bounded_by_the_same_pool(pooled_run):
    sensors = [ti for ti in pooled_run["tis"] if ti["task_id"] == WAIT]
    gates = [ti for ti in pooled_run["tis"] if ti["task_id"] == "per_symbol.validate_bars"]
    held = pooled_run["sensors"]

    assert {ti["pool"] for ti in sensors} == {ti["pool"] for ti in gates} == {"market_source_api"}
    assert {ti["state"] for ti in sensors} == {"success"}, pooled_run["logs"]
    # Every symbol was asked by its ingest and then again by its sensor (at least once).
    assert all(n >= 2 for n in pooled_run["vendor"]["per_symbol"].values()), pooled_run["vendor"]
    # Two pokes held at the vendor at once, the other sensors kept waiting for a slot
    # through a whole scheduler loop, and never a third call in flight, then or later.
    assert held["held"] == POOL_SLOTS, pooled_run["vendor"]
    assert held["in_flight_while_full"] == POOL_SLOTS, held["pool"]
    assert pooled_run["vendor"]["max_concurrent"] == POOL_SLOTS, pooled_run["vendor"]


def test_the_raw_gate_shows_its_gx_report_as_an_extra_link_in_the_ui(pooled_run):
    links = pooled_run["links"]["extra_links"]

    assert list(links) == ["GX report"]
    assert links["GX report"].startswith("file://")
    assert links["GX report"].endswith(f"/market_daily/{D1.isoformat()}/gx/bars_PA.html")
