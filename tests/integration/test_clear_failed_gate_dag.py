"""Clearing the instance that failed is enough (issue 19, item 2), at the DAG level.

One run of market_daily for session D over a file-drop folder with two symbols: OKA (clean)
and SPIKE, whose file delivers a +80 % close on D. The run turns red at
``validate_bars[SPIKE]``. Then, as an operator would, only that failed instance is cleared
(with downstream) and the run goes on (``tests/support/clear_and_resume.py``: Airflow's own
clear, then the ``dags test`` loop):

1. before the file is fixed: the gate asks the source again, the unchanged delivery appends
   nothing, the gate fails again (the DLQ row counts a second failure);
2. after the file is corrected: the corrected bar becomes raw version 2 (a restatement), the
   gate passes and promotes it, the run turns green and the DLQ row is resolved.

Each failure message ends with the one next action (here, a true-event rule: the exact
``market-recovery ack`` command, or fix the delivery and clear this instance).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from tests.support import deliveries
from tests.support.airflow_home import ROOT, VENV_BIN, make_airflow_home
from tests.support.db import drop_namespace
from tests.support.db import rows as _rows

D = date(2024, 11, 27)
SESSIONS = 60
UNIVERSE = ["OKA", "SPIKE"]
SPIKE = UNIVERSE.index("SPIKE")
GATE = "per_symbol.validate_bars"


def _bars(symbol: str) -> pd.DataFrame:
    return deliveries.bars(symbol, D, SESSIONS)


def _spiked(symbol: str) -> pd.DataFrame:
    return deliveries.spike_last(_bars(symbol))


def _write(folder: Path, symbol: str, bars: pd.DataFrame) -> None:
    tmp = folder / f".{symbol}.tmp"
    bars.to_csv(tmp, index=False, columns=["date", "open", "high", "low", "close", "volume"])
    tmp.replace(folder / f"{symbol}.csv")


def _state(home, dsn: str, run_id: str, proc) -> dict:
    s = home.schema
    with sqlite3.connect(home.path / "airflow.db") as db:
        run_state = db.execute(
            "SELECT state FROM dag_run WHERE dag_id='market_daily' AND run_id=?", (run_id,)
        ).fetchone()[0]
        tis = db.execute(
            "SELECT task_id, map_index, state, try_number FROM task_instance "
            "WHERE dag_id='market_daily' AND run_id=?",
            (run_id,),
        ).fetchall()
    return {
        "proc": proc,
        "run_state": run_state,
        "ti": {(t, UNIVERSE[i] if i >= 0 else None): (st, n) for t, i, st, n in tis},
        "raw": _rows(
            dsn,
            f"SELECT version, close FROM {s}.raw_bars WHERE symbol='SPIKE' AND trade_date=%s "
            "ORDER BY version",
            D,
        ),
        "clean": _rows(
            dsn,
            f"SELECT c.close, r.version FROM {s}.clean_bars c JOIN {s}.raw_bars r "
            f"ON r.id = c.raw_bar_id WHERE c.symbol='SPIKE' AND c.trade_date=%s",
            D,
        ),
        "dlq": _rows(
            dsn,
            f"SELECT task_id, kind, failures, error_message, resolved_at IS NOT NULL "
            f"FROM {s}.dlq WHERE symbol='SPIKE' ORDER BY id",
        ),
        "asked": _rows(
            dsn,
            f"SELECT try_number, outcome, rows_appended FROM {s}.fetch_audit "
            "WHERE symbol='SPIKE' ORDER BY id",
        ),
    }


def _explain(proc) -> str:
    return (proc.stdout or "")[-6000:] + (proc.stderr or "")[-3000:]


@pytest.fixture(scope="module")
def cleared(tmp_path_factory, pg_dsn, redis_url, airflow_home_template):
    home = make_airflow_home(tmp_path_factory.mktemp("airflow_clear"), airflow_home_template)
    folder = tmp_path_factory.mktemp("drop")
    _write(folder, "OKA", _bars("OKA"))
    _write(folder, "SPIKE", _spiked("SPIKE"))
    variables = {
        "market_source": "file_drop",
        "market_source_path": str(folder),
        "market_universe": ",".join(UNIVERSE),
        "market_quorum": "0.5",  # the tail goes on with OKA; run_health turns the run red
    }
    env = home.env(**variables)
    env["PYTHONPATH"] = f"{ROOT}{':' + env['PYTHONPATH'] if env.get('PYTHONPATH') else ''}"

    def resume(run_id: str):
        return subprocess.run(
            [str(VENV_BIN / "python"), "-m", "tests.support.clear_and_resume", "market_daily",
             run_id, GATE, str(SPIKE)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip

    try:
        proc = home.dags_test(D.isoformat(), **variables)
        run_id, _ = home.run_state()
        out = {"red": _state(home, pg_dsn, run_id, proc)}
        # 1. Clear the failed gate without fixing anything: asked again, nothing new, red.
        out["unchanged"] = _state(home, pg_dsn, run_id, resume(run_id))
        # 2. Fix the delivery, clear the failed gate again: green.
        _write(folder, "SPIKE", _bars("SPIKE"))
        out["fixed"] = _state(home, pg_dsn, run_id, resume(run_id))
        out["fixed_close"] = float(_bars("SPIKE")["close"].iloc[-1])
        out["spiked_close"] = float(_spiked("SPIKE")["close"].iloc[-1])
        yield out
    finally:
        drop_namespace(pg_dsn, redis_url, home.schema, home.cache_prefix)


def test_a_bad_delivery_turns_the_run_red_at_the_raw_gate_with_the_next_action(cleared):
    red = cleared["red"]

    assert red["run_state"] == "failed", _explain(red["proc"])
    assert red["ti"][(GATE, "SPIKE")] == ("failed", 1)
    assert red["ti"][(GATE, "OKA")][0] == "success"
    (task_id, kind, failures, message, resolved), *_ = red["dlq"]
    assert (task_id, kind, failures, resolved) == (GATE, "data_quality", 1, False)
    # max_close_move can be a true event: the exact ack command, else fix and clear.
    assert message.endswith(
        f"— next: if it is a true market event, run `market-recovery ack SPIKE {D} --rule "
        f'max_close_move --reason "<the event>"` and clear {GATE}[SPIKE] with downstream; '
        f"otherwise fix the delivery and clear {GATE}[SPIKE] with downstream"
    ), message
    assert [v for v, _ in red["raw"]] == [1]


def test_clearing_the_failed_gate_asks_the_source_again_and_an_unchanged_delivery_adds_nothing(
    cleared,
):
    before, after = cleared["red"], cleared["unchanged"]

    cleared = re.search(r"^cleared: (.*)$", after["proc"].stdout, re.MULTILINE)
    assert cleared, _explain(after["proc"])
    cleared = set(cleared.group(1).split())
    assert {f"{GATE}[{SPIKE}]", "run_health[-1]"} <= cleared, cleared
    assert not {f"per_symbol.ingest_bars[{SPIKE}]", f"per_symbol.wait_for_bars[{SPIKE}]"} & cleared
    assert not any(c.endswith("[0]") for c in cleared), cleared  # OKA's chain is left alone
    assert after["run_state"] == "failed", _explain(after["proc"])
    assert after["ti"][(GATE, "SPIKE")] == ("failed", 2)
    assert after["asked"][len(before["asked"]) :] == [(2, "ok", 0)]  # asked, nothing new
    assert after["raw"] == before["raw"]
    (_, _, failures, _, resolved), *_ = after["dlq"]
    assert (failures, resolved) == (2, False)


def test_clearing_the_failed_gate_after_the_fix_restates_the_bar_and_turns_the_run_green(cleared):
    fixed = cleared["fixed"]

    assert fixed["run_state"] == "success", _explain(fixed["proc"])
    assert fixed["ti"][(GATE, "SPIKE")] == ("success", 3)
    assert fixed["ti"][("per_symbol.ingest_bars", "SPIKE")] == ("success", 1)  # not cleared
    assert fixed["ti"][("per_symbol.wait_for_bars", "SPIKE")] == ("success", 1)
    assert fixed["ti"][("per_symbol.generate_signals", "SPIKE")][0] == "success"
    assert fixed["raw"] == [
        (1, pytest.approx(cleared["spiked_close"])),
        (2, pytest.approx(cleared["fixed_close"])),
    ]
    assert fixed["clean"] == [(pytest.approx(cleared["fixed_close"]), 2)]
    assert [resolved for *_, resolved in fixed["dlq"]] == [True]
