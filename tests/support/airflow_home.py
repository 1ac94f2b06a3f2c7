"""A throwaway Airflow home (SQLite metadata) for running market_daily with `airflow dags test`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@dataclass
class AirflowHome:
    """An initialised Airflow home plus the market schema/prefix its runs write to."""

    path: Path
    schema: str = field(default_factory=lambda: f"t_{uuid.uuid4().hex[:10]}")
    cache_prefix: str = field(default_factory=lambda: f"test:{uuid.uuid4().hex[:10]}:v1")

    #: Extra environment for every call (e.g. another AIRFLOW_CONN_MARKET_CACHE).
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **variables: str) -> dict[str, str]:
        """Environment for an Airflow CLI call; ``variables`` become AIRFLOW_VAR_*."""
        env = dict(os.environ)
        env.update(
            AIRFLOW_HOME=str(self.path),
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
            AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")]),
            MARKET_SCHEMA=self.schema,
            MARKET_CACHE_PREFIX=self.cache_prefix,
            # A gate that waits must not hold a test for hours.
            MARKET_GATE_POKE_SECONDS="1",
            MARKET_GATE_TIMEOUT_SECONDS="5",
        )
        env.update(self.extra_env)
        for name, value in variables.items():
            env[f"AIRFLOW_VAR_{name.upper()}"] = value
        return env

    def airflow(self, *args: str, check: bool = True, **variables: str):
        proc = subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env(**variables),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def dags_test(self, trade_date: str, **variables: str):
        """Run ``airflow dags test market_daily <date>``; returns the CompletedProcess."""
        return self.airflow("dags", "test", "market_daily", trade_date, check=False, **variables)

    def query(self, statement: str, params: Sequence = ()) -> list[tuple]:
        """Every row of one statement on the metadata DB (SQLite)."""
        with sqlite3.connect(self.path / "airflow.db") as db:
            return db.execute(statement, params).fetchall()

    def task_states(self, dag_id: str = "market_daily") -> dict[tuple[str, int], str]:
        """``{(task_id, map_index): state}`` of the newest run in the metadata DB."""
        with sqlite3.connect(self.path / "airflow.db") as db:
            run_id = db.execute(
                "SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()[0]
            rows = db.execute(
                "SELECT task_id, map_index, state FROM task_instance WHERE dag_id=? AND run_id=?",
                (dag_id, run_id),
            ).fetchall()
        return {(task, index): state for task, index, state in rows}

    def task_instances(self, run_id: str, dag_id: str = "market_daily") -> list[tuple]:
        """``(task_id, map_index, state, try_number)`` of every task instance of a run."""
        return self.query(
            "SELECT task_id, map_index, state, try_number FROM task_instance "
            "WHERE dag_id=? AND run_id=?",
            (dag_id, run_id),
        )

    def asset_events(self, name: str = "market_scores") -> list[dict]:
        """The events of asset ``name`` in the metadata DB, oldest first: each its ``extra``
        (parsed JSON) and the task and run that emitted it."""
        import json

        rows = self.query(
            "SELECT e.extra, e.source_task_id, e.source_run_id FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id",
            (name,),
        )
        return [
            {"extra": json.loads(extra or "{}"), "task_id": task, "run_id": run}
            for extra, task, run in rows
        ]

    def run_state(self, dag_id: str = "market_daily") -> tuple[str, str]:
        """(run_id, state) of the newest run."""
        with sqlite3.connect(self.path / "airflow.db") as db:
            return db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1",
                (dag_id,),
            ).fetchone()


def migrate_template(path: Path) -> Path:
    """Migrate a SQLite metadata DB in ``path`` and add the vendor pool; returns the DB file.

    ``make_airflow_home(..., template=)`` copies it: one ``airflow db migrate`` per test
    session instead of one per home.
    """
    home = AirflowHome(path)
    home.airflow("db", "migrate")
    home.airflow("pools", "set", "market_source_api", "4", "vendor rate limit")
    return path / "airflow.db"


def make_airflow_home(path: Path, template: Path | None = None) -> AirflowHome:
    """An Airflow home in ``path``: a copy of ``template`` (see :func:`migrate_template`),
    or migrated here when there is none."""
    if template is None:
        return AirflowHome(migrate_template(path).parent)
    path.mkdir(parents=True, exist_ok=True)
    # The backup API copies a consistent database whatever its journal mode.
    source, target = sqlite3.connect(template), sqlite3.connect(path / "airflow.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return AirflowHome(path)
