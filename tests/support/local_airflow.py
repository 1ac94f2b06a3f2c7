"""Drive a ``make up`` deployment (``scripts/local_airflow.py``) from a test: the script,
the REST API, runs and task instances, waits that name what they waited for."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_airflow.py"
TERMINAL = {"success", "failed", "upstream_failed", "skipped", "removed"}


class LocalAirflow:
    """``make up`` under test: runs the script, talks to its REST API (one token, renewed
    when refused)."""

    def __init__(self, state: Path, port: int, env: dict[str, str]) -> None:
        self.state, self.port, self.env = state, port, env
        self.base = f"http://127.0.0.1:{port}"
        self._token: str | None = None

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        for _ in range(2):
            if self._token is None:
                password = json.loads((self.state / "secrets.json").read_text())["password"]
                token = requests.post(
                    f"{self.base}/auth/token",
                    json={"username": "admin", "password": password},
                    timeout=30,
                )
                token.raise_for_status()
                self._token = token.json()["access_token"]
            resp = requests.request(
                method,
                f"{self.base}{path}",
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=30,
                **kwargs,
            )
            if resp.status_code != 401:
                return resp
            self._token = None
        return resp

    def get(self, path: str) -> dict:
        resp = self.api("GET", path)
        resp.raise_for_status()
        return resp.json()

    def wait_for(self, what: str, condition, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException, psycopg2.OperationalError):
                value = condition()
                if value:
                    return value
            time.sleep(0.5)
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted((self.state / "logs").glob("*.log"))
        )
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def pid(self, name: str) -> int | None:
        path = self.state / "run" / f"{name}.pid"
        return int(path.read_text()) if path.is_file() else None

    # runs and task instances

    def trigger(self, run_id: str, session: str) -> None:
        resp = self.api(
            "POST",
            "/api/v2/dags/market_daily/dagRuns",
            json={"dag_run_id": run_id, "logical_date": f"{session}T00:00:00Z"},
        )
        assert resp.status_code in (200, 201), resp.text

    def tis(self, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/market_daily/dagRuns/{run_id}/taskInstances?limit=200")[
            "task_instances"
        ]

    def ti(self, run_id: str, task_id: str) -> dict:
        return self.get(f"/api/v2/dags/market_daily/dagRuns/{run_id}/taskInstances/{task_id}")

    def states(self, run_id: str) -> dict[str, str]:
        """``{task label: state}``, a mapped instance labelled ``task[symbol]``."""
        out = {}
        for t in self.tis(run_id):
            label = t["task_id"]
            if t["map_index"] >= 0:
                label += f"[{t['rendered_map_index'] or t['map_index']}]"
            out[label] = t["state"]
        return out

    def finished(self, run_id: str, timeout: float = 420) -> str:
        """Wait for the run to end (every instance in a final state too); its state."""

        def done() -> str | None:
            run = self.get(f"/api/v2/dags/market_daily/dagRuns/{run_id}")
            if run["state"] not in ("success", "failed"):
                return None
            if any(t["state"] not in TERMINAL for t in self.tis(run_id)):
                return None
            return run["state"]

        return self.wait_for(f"run {run_id} to finish", done, timeout=timeout)

    def clear(self, run_id: str, task_ids: list, *, downstream: bool = True) -> None:
        resp = self.api(
            "POST",
            "/api/v2/dags/market_daily/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "only_failed": False,
                "include_downstream": downstream,
            },
        )
        assert resp.status_code == 200, resp.text

    def map_index(self, run_id: str, task_id: str, symbol: str) -> int:
        return next(
            t["map_index"]
            for t in self.tis(run_id)
            if t["task_id"] == task_id and t["rendered_map_index"] == symbol
        )

    def supervisor_log(self) -> str:
        return (self.state / "logs" / "supervisor.log").read_text(errors="replace")

    @property
    def password(self) -> str:
        return json.loads((self.state / "secrets.json").read_text())["password"]

    def runs(self) -> list[dict]:
        return self.get("/api/v2/dags/market_daily/dagRuns?limit=100")["dag_runs"]


def alive_group(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
