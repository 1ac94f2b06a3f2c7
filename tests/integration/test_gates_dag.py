"""The quality gates at the DAG level (issue 5): hand-built bad vendor files, `airflow dags test`.

One run of market_daily for session D over a file-drop folder: three clean symbols, one
symbol per critical raw-bar rule a source can deliver, one with a warning (stale repeats) and
one whose file is not there when the run starts (the test drops it once the gate has poked
and rescheduled). Afterwards the indicator gate is re-run, with `airflow tasks test`, for the
three clean symbols after their indicators for D were corrupted (a NaN, an RSI of 150, the
row for D deleted). The fixture records what was left behind; each test asserts one behaviour.

``not_null`` cannot come from a source (every source refuses non-numbers), so the NUL symbol
gets a hand-built raw version with a NULL close after the run and its raw gate is run again.
Rules no DAG run can reach (their unit tests are in tests/unit/test_quality.py): ``schema``
(the raw layer's columns are typed), ``unique_dates`` (sources refuse two bars for one
session, and the gate reads one version per session), and ``bar_for_session_present`` (a
missing bar makes the ``wait_for_bars`` sensor wait, see the LATE symbol, then time out as
``not_delivered``).
"""

from __future__ import annotations

import subprocess
import time
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from tests.support import deliveries
from tests.support.airflow_home import VENV_BIN, make_airflow_home
from tests.support.db import drop_namespace
from tests.support.db import rows as _rows

D = date(2024, 11, 27)
SESSIONS = 60
CLEAN = ("OKA", "OKB", "OKC")
#: symbol -> the critical rule its file breaks.
BROKEN = {
    "NEG": "positive_prices",
    "HIGH": "high_ge_open_close",
    "LOW": "low_le_open_close",
    "VOL": "volume_non_negative_integral",
    "WKND": "dates_are_sessions",
    "GAP": "no_missing_sessions",
    "SPIKE": "max_close_move",
}
WARNED, LATE = "STALE", "LATE"
#: Passes the run; then a hand-built raw version with a NULL close is gated by a rerun.
NULLED = "NUL"
UNIVERSE = sorted([*CLEAN, *BROKEN, WARNED, LATE, NULLED])
#: clean symbol -> (how its indicators for D are corrupted, the rule that must catch it).
CORRUPTED = {
    "OKA": ("UPDATE {s}.indicators SET ema_9 = NULL", "no_nan_after_warmup"),
    "OKB": ("UPDATE {s}.indicators SET rsi_14 = 150", "rsi_in_range"),
    "OKC": ("DELETE FROM {s}.indicators", "not_stale"),
}
GROUP = "per_symbol"


def _bars(symbol: str) -> pd.DataFrame:
    return deliveries.bars(symbol, D, SESSIONS)


def _broken(symbol: str) -> pd.DataFrame:
    """The symbol's bars with its one defect (on D unless the rule needs another row)."""
    bars = _bars(symbol)
    last = bars.index[-1]
    if symbol == "NEG":
        bars.loc[last, "low"] = -abs(bars.loc[last, "low"])
    elif symbol == "HIGH":
        bars.loc[last, "high"] = bars.loc[last, "close"] * 0.98
    elif symbol == "LOW":
        bars.loc[last, "low"] = max(bars.loc[last, "open"], bars.loc[last, "close"]) * 1.02
        bars.loc[last, "high"] = max(bars.loc[last, "high"], bars.loc[last, "low"])
    elif symbol == "VOL":
        bars.loc[last, "volume"] = -100
    elif symbol == "WKND":  # a Saturday between two sessions
        saturday = bars[bars["date"] == date(2024, 11, 22)].assign(date=date(2024, 11, 23))
        saturday["volume"] += 1
        bars = pd.concat([bars, saturday]).sort_values("date").reset_index(drop=True)
    elif symbol == "GAP":
        bars = bars[bars["date"] != date(2024, 11, 20)]
    elif symbol == "SPIKE":
        bars = deliveries.spike_last(bars)
    elif symbol == WARNED:  # identical OHLCV on the last three sessions
        for row in (last - 1, last):
            bars.loc[row, ["open", "high", "low", "close", "volume"]] = bars.loc[
                last - 2, ["open", "high", "low", "close", "volume"]
            ].to_numpy()
    return bars


def _write(folder: Path, symbol: str, bars: pd.DataFrame) -> None:
    tmp = folder / f".{symbol}.tmp"
    bars.to_csv(tmp, index=False, columns=["date", "open", "high", "low", "close", "volume"])
    tmp.replace(folder / f"{symbol}.csv")


def _execute(dsn: str, sql: str, *params) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()


def _run_until_late_file_is_dropped(home, variables, dsn, folder) -> tuple[object, float]:
    """`dags test` for D; drop LATE's file once its gate has poked without it (then returns)."""
    env = home.env(**variables)
    env.update(MARKET_GATE_TIMEOUT_SECONDS="180", MARKET_REPORT_DIR=str(home.path / "reports"))
    cmd = [str(VENV_BIN / "airflow"), "dags", "test", "market_daily", D.isoformat()]
    log = home.path / "dags_test.log"
    dropped_at = None
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                if dropped_at is None and _late_pokes(dsn, home.schema) >= 2:
                    _write(folder, LATE, _bars(LATE))  # ingest + one poke saw no file
                    dropped_at = time.monotonic()
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    out = log.read_text()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), dropped_at


def _late_pokes(dsn: str, schema: str) -> int:
    try:
        return _rows(
            dsn,
            f"SELECT count(*) FROM {schema}.fetch_audit WHERE symbol=%s "
            "AND outcome='not_delivered'",
            LATE,
        )[0][0]
    except psycopg2.Error:  # the schema is not migrated yet
        return 0


def _tis(home, run_id: str) -> dict[tuple[str, str | None], tuple[str, int]]:
    rows = home.task_instances(run_id)
    return {
        (t.removeprefix(f"{GROUP}."), UNIVERSE[i] if i >= 0 else None): (st, n)
        for t, i, st, n in rows
    }


def _links(home, run_id: str) -> dict:
    """``{(task, symbol): url}`` of the "GX report" extra-link XComs, and the DAG's link names."""
    import json
    import zlib

    rows = home.query(
        "SELECT task_id, map_index, value FROM xcom WHERE dag_id='market_daily' "
        "AND run_id=? AND key='_link_GxReportLink'",
        (run_id,),
    )
    ((data, compressed),) = home.query(
        "SELECT data, data_compressed FROM serialized_dag WHERE dag_id='market_daily' "
        "ORDER BY created_at DESC LIMIT 1"
    )
    dag = json.loads(data if data else zlib.decompress(compressed))
    declared = {
        t["__var"]["task_id"]: t["__var"].get("_operator_extra_links") for t in dag["dag"]["tasks"]
    }
    urls = {
        (t.removeprefix(f"{GROUP}."), UNIVERSE[i]): json.loads(v) if v else None for t, i, v in rows
    }
    return {"urls": urls, "declared": declared}


@pytest.fixture(scope="module")
def gates(tmp_path_factory, pg_dsn, redis_url, airflow_home_template):
    """Run the gate scenario once; yields what it left behind."""
    home = make_airflow_home(tmp_path_factory.mktemp("airflow_gates"), airflow_home_template)
    folder = tmp_path_factory.mktemp("drop")
    for symbol in UNIVERSE:
        if symbol != LATE:
            _write(folder, symbol, _broken(symbol))
    variables = {
        "market_source": "file_drop",
        "market_source_path": str(folder),
        "market_universe": ",".join(UNIVERSE),
    }
    s = home.schema
    try:
        proc, dropped_at = _run_until_late_file_is_dropped(home, variables, pg_dsn, folder)
        run_id, _ = home.run_state()
        out = {"home": home, "proc": proc, "run_id": run_id, "dropped": dropped_at}
        out["ti"] = _tis(home, run_id)
        out["reschedules"] = home.query(
            "SELECT count(*) FROM task_reschedule r JOIN task_instance t ON t.id = r.ti_id "
            "WHERE t.run_id=? AND t.task_id=? AND t.map_index=?",
            (run_id, f"{GROUP}.wait_for_bars", UNIVERSE.index(LATE)),
        )[0][0]
        out["links"] = _links(home, run_id)
        out["dlq"] = _rows(
            pg_dsn,
            f"SELECT symbol, stage, kind, try_number, error_message "
            f"FROM {s}.dlq WHERE resolved_at IS NULL "
            "AND symbol IS NOT NULL",
        )
        out["reports"] = {
            (g, sym): (ok, rules, warned)
            for g, sym, ok, rules, warned in _rows(
                pg_dsn,
                f"SELECT gate, symbol, success, failed_rules, warning_failures "
                f"FROM {s}.validation_reports WHERE trade_date=%s",
                D,
            )
        }
        out["clean"] = dict(
            _rows(pg_dsn, f"SELECT symbol, count(*) FROM {s}.clean_bars GROUP BY symbol")
        )
        out["late_audit"] = _rows(
            pg_dsn,
            f"SELECT outcome, created_at FROM {s}.fetch_audit WHERE symbol=%s ORDER BY id",
            LATE,
        )

        # not_null: no source delivers a null, so append a hand-built raw version with a NULL
        # close for D and run the symbol's raw gate again inside the finished run.
        _execute(
            pg_dsn,
            f"""INSERT INTO {s}.raw_bars (symbol, trade_date, version, open, high,
                 low, close, volume, source, fetched_at, run_id, payload_hash)
                 SELECT symbol, trade_date, version + 1, open, high, low, NULL, volume,
                        'hand-built', now(), 'test', 'null-close'
                 FROM {s}.raw_bars WHERE symbol = %s AND trade_date = %s""",
            NULLED,
            D,
        )
        out["nulled_run"] = home.airflow(
            "tasks",
            "test",
            "market_daily",
            f"{GROUP}.validate_bars",
            run_id,
            "--map-index",
            str(UNIVERSE.index(NULLED)),
            check=False,
            **variables,
        )
        out["nulled_clean"] = _rows(
            pg_dsn,
            f"SELECT c.close, r.version FROM {s}.clean_bars c "
            f"JOIN {s}.raw_bars r ON r.id = c.raw_bar_id "
            "WHERE c.symbol = %s AND c.trade_date = %s",
            NULLED,
            D,
        )

        # The indicator gate: corrupt D's indicators of the clean symbols, re-run the gate.
        out["indicator_runs"] = {}
        for symbol, (sql, _) in CORRUPTED.items():
            _execute(pg_dsn, sql.format(s=s) + " WHERE symbol=%s AND trade_date=%s", symbol, D)
            out["indicator_runs"][symbol] = home.airflow(
                "tasks",
                "test",
                "market_daily",
                f"{GROUP}.validate_indicators",
                run_id,
                "--map-index",
                str(UNIVERSE.index(symbol)),
                check=False,
                **variables,
            )
        out["ti_after"] = _tis(home, run_id)
        out["dlq_after"] = _rows(
            pg_dsn,
            f"SELECT symbol, stage, kind, try_number, error_message "
            f"FROM {s}.dlq WHERE resolved_at IS NULL "
            "AND symbol = ANY(%s)",
            [*CORRUPTED, NULLED],
        )
        out["ind_reports"] = {
            sym: (ok, rules)
            for sym, ok, rules in _rows(
                pg_dsn,
                f"SELECT symbol, success, failed_rules FROM {s}.validation_reports "
                "WHERE gate='indicators' AND trade_date=%s",
                D,
            )
        }
        yield out
    finally:
        drop_namespace(pg_dsn, redis_url, s, home.cache_prefix)


def _explain(proc) -> str:
    return (proc.stdout or "")[-6000:] + (proc.stderr or "")[-3000:]


@pytest.mark.parametrize("symbol", sorted(BROKEN))
def test_a_critical_rule_fails_the_raw_gate_at_once_into_the_dlq_and_promotes_nothing(
    gates, symbol
):
    rule = BROKEN[symbol]

    dlq = [r for r in gates["dlq"] if r[0] == symbol]

    assert gates["ti"][("ingest_bars", symbol)][0] == "success", _explain(gates["proc"])
    assert gates["ti"][("validate_bars", symbol)] == ("failed", 1)  # one try, no retry
    assert gates["ti"][("compute_indicators", symbol)][0] == "upstream_failed"
    assert len(dlq) == 1
    _, stage, kind, try_number, message = dlq[0]
    assert (stage, kind, try_number) == ("validate_bars", "data_quality", 1)
    assert rule in message and symbol in message
    ok, rules, _ = gates["reports"][("bars", symbol)]
    assert not ok and rule in rules
    assert symbol not in gates["clean"]


def test_a_warning_passes_the_raw_gate_and_is_recorded(gates):
    ok, rules, warned = gates["reports"][("bars", WARNED)]

    assert gates["ti"][("generate_signals", WARNED)][0] == "success", _explain(gates["proc"])
    assert (ok, rules, warned) == (True, ["stale_repeats"], 1)
    assert gates["clean"][WARNED] == SESSIONS
    assert not [r for r in gates["dlq"] if r[0] == WARNED]


def test_a_late_file_makes_the_gate_reschedule_and_then_pass_when_it_appears(gates):
    outcomes = [outcome for outcome, _ in gates["late_audit"]]

    assert gates["dropped"] is not None, "the gate never poked for the missing file"
    assert gates["reschedules"] >= 1  # the sensor waited, not the gate
    assert gates["ti"][("wait_for_bars", LATE)][0] == "success", _explain(gates["proc"])
    assert gates["ti"][("validate_bars", LATE)] == ("success", 1), _explain(gates["proc"])
    assert outcomes[:2] == ["not_delivered", "not_delivered"]  # ingest, then a poke
    assert outcomes[-1] == "ok"
    assert gates["clean"][LATE] == SESSIONS
    assert gates["ti"][("generate_signals", LATE)][0] == "success"


def test_the_clean_symbols_pass_both_gates(gates):
    for symbol in CLEAN:
        assert gates["ti"][("generate_signals", symbol)][0] == "success", symbol
        assert gates["reports"][("bars", symbol)][:2] == (True, [])
        assert gates["reports"][("indicators", symbol)][:2] == (True, [])


def test_the_raw_gate_writes_a_readable_html_report_per_symbol(gates):
    folder = gates["home"].path / "reports" / "market_daily" / D.isoformat() / "gx"

    spike = (folder / "bars_SPIKE.html").read_text()

    assert {p.name for p in folder.glob("bars_*.html")} == {f"bars_{s}.html" for s in UNIVERSE}
    assert "max_close_move" in spike and "FAIL" in spike
    assert "PASS" in (folder / "bars_OKA.html").read_text()
    assert str(folder / "bars_SPIKE.html") in gates["proc"].stdout  # the task log names it


def test_a_null_in_the_raw_layer_fails_the_raw_gate_at_once_and_promotes_nothing(gates):
    dlq = [r for r in gates["dlq_after"] if r[0] == NULLED]

    assert gates["ti"][("validate_bars", NULLED)][0] == "success"  # before the null
    assert gates["ti_after"][("validate_bars", NULLED)] == ("failed", 1), _explain(
        gates["nulled_run"]
    )
    assert len(dlq) == 1
    _, stage, kind, try_number, message = dlq[0]
    assert (stage, kind, try_number) == ("validate_bars", "data_quality", 1)
    assert "not_null" in message and NULLED in message
    (close, version), *_ = gates["nulled_clean"]
    assert close is not None and version == 1  # the clean bar is still the good version


def test_the_gate_tasks_link_their_report_in_the_ui(gates):
    folder = gates["home"].path / "reports" / "market_daily" / D.isoformat() / "gx"
    declared, urls = gates["links"]["declared"], gates["links"]["urls"]

    assert declared[f"{GROUP}.validate_bars"] == {"GX report": "_link_GxReportLink"}
    assert declared[f"{GROUP}.validate_indicators"] == {"GX report": "_link_GxReportLink"}
    assert urls[("validate_bars", "SPIKE")] == (folder / "bars_SPIKE.html").as_uri()  # failed
    assert urls[("validate_bars", "OKA")] == (folder / "bars_OKA.html").as_uri()  # passed
    assert urls[("validate_indicators", "OKA")] == (folder / "indicators_OKA.html").as_uri()


@pytest.mark.parametrize("symbol", sorted(CORRUPTED))
def test_the_indicator_gate_rejects_a_nan_an_out_of_range_rsi_and_a_stale_date(gates, symbol):
    rule = CORRUPTED[symbol][1]

    dlq = [r for r in gates["dlq_after"] if r[0] == symbol]

    assert gates["indicator_runs"][symbol].returncode == 0  # `tasks test` itself ran
    assert gates["ti_after"][("validate_indicators", symbol)] == ("failed", 1)
    ok, rules = gates["ind_reports"][symbol]
    assert not ok and rule in rules
    assert len(dlq) == 1
    _, _, kind, try_number, message = dlq[0]
    assert (kind, try_number) == ("data_quality", 1)
    assert rule in message and symbol in message
