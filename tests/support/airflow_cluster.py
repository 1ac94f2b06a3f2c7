"""A real Airflow 3.3 deployment on loopback ports, for end-to-end tests and benchmarks.

``AirflowCluster`` creates a fresh Postgres metadata database (``af_<random>`` on the test
Postgres, dropped at the end), a temporary ``AIRFLOW_HOME`` with the simple-auth password
file and the project's ``airflow_local_settings.py`` (heavy imports preloaded in the
scheduler, whose forked task processes inherit them), then starts ``airflow api-server``,
``airflow scheduler --skip-serve-logs`` and ``airflow dag-processor`` with the
LocalExecutor and the settings of AIRFLOW-NOTES.md, and waits until the DAG is parsed::

    with AirflowCluster(env={"MARKET_SCHEMA": schema}) as cluster:
        cluster.set_variable("market_quorum", "0.9")
        run_id = cluster.trigger("2024-11-29")
        assert cluster.wait_for_run(run_id) == "success"

Every process runs in its own process group; ``stop()`` (called by ``__exit__``, and at
interpreter exit as a fallback) terminates each whole group, then kills what is left,
and drops the metadata database. Process output goes to ``<home>/proc/<name>.log``;
``logs_tail()`` returns the end of each for assertion messages.

Scheduled runs are off (``[scheduler] use_job_schedule = False``): triggered runs and
backfills still run, but the scheduler never creates the latest session's run by itself.

``executor="CeleryExecutor"`` adds one ``airflow celery worker`` per name in
``celery_workers``, each standing in for a machine of its own: its Celery node name is
``<name>@<host>`` and the hostname it reports for its task instances (``[core]
hostname_callable``, see ``worker_hostname``) is ``<name>``. The broker is the test Redis
(``AIRFLOW_CONN_MARKET_CACHE``) on database ``BROKER_DB`` with every key under a prefix of
this cluster's own, so clusters of parallel test runs never take each other's tasks; the
result backend is the metadata database. ``start()`` returns once every worker is ready.
All processes share this cluster's ``AIRFLOW_HOME``, so its ``logs/`` folder plays the shared
log volume of docs/deploy.md: the api-server reads any worker's task log from it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
TERMINAL_RUN_STATES = {"success", "failed"}
#: Environment passed through from the caller's process to every Airflow process.
PASSTHROUGH_PREFIXES = ("AIRFLOW_VAR_", "AIRFLOW_CONN_", "MARKET_")
DEFAULT_CACHE = "redis://127.0.0.1:6379/1"
#: Redis database of the Celery broker: beside the market cache's, never the same one.
BROKER_DB = 15
#: Set per Celery worker process: the hostname its task instances report.
HOSTNAME_ENV = "AIRFLOW_CLUSTER_HOSTNAME"


class ClusterError(RuntimeError):
    """The cluster did not start, or an API call did not answer as expected."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_hostname() -> str:
    """``[core] hostname_callable`` of this cluster's Celery workers: one name per worker.

    Two workers on one machine would both report the machine's name; each stands in for a
    machine of its own here, so each reports the name it was started with.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def broker_url(cache_url: str, db: int = BROKER_DB) -> str:
    """The Redis server of ``cache_url`` (an ``AIRFLOW_CONN_*`` URI), database ``db``."""
    parts = urlsplit(cache_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ClusterError(f"the Celery broker needs a redis:// URI, found {parts.scheme}://")
    cache_db = int(parts.path.strip("/") or 0)
    if cache_db == db:
        raise ClusterError(f"broker database {db} is the market cache's database: pick another")
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _admin_dsn(pg_dsn: str) -> str:
    """The same server, database ``postgres`` (to create and drop databases)."""
    parts = urlsplit(pg_dsn.split("?")[0])
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))


def _with_database(pg_dsn: str, database: str, scheme: str) -> str:
    parts = urlsplit(pg_dsn.split("?")[0])
    host = unquote(parts.hostname or "")
    if host.startswith("/"):
        # A Unix-socket directory (the local pgserver of `make test` without AIRFLOW_CONN_*):
        # SQLAlchemy wants it as the ``host`` query argument, not in the netloc.
        user = parts.username or "postgres"
        return f"{scheme}://{user}@/{database}?host={host}"
    return urlunsplit((scheme, parts.netloc, f"/{database}", "", ""))


class AirflowCluster:
    """api-server + scheduler + dag-processor (+ Celery workers) on a throwaway metadata DB.

    :param dags_folder: the DAGs folder to serve (default: the project's ``dags/``).
    :param plugins_folder: the plugins folder (default: the project's ``plugins/``).
    :param parallelism: ``[core] parallelism`` and ``max_active_tasks_per_dag``.
    :param env: extra environment for every Airflow process (e.g. ``MARKET_SCHEMA``,
        ``AIRFLOW_VAR_*``, ``AIRFLOW__*`` overrides); applied last.
    :param dag_id: the DAG the helpers default to; ``start()`` waits until it is parsed.
    :param pg_dsn: libpq URI of the Postgres server holding the metadata database
        (default: ``AIRFLOW_CONN_MARKET_DB`` or the local test server).
    :param pools: pools to create once the api-server is up, ``{name: slots}``.
    :param start_timeout: seconds to wait for the api-server and the DAG to appear.
    :param preload: copy the project's ``config/airflow_local_settings.py`` (GX, pandas,
        psycopg2, redis imported once in the scheduler) into the home.
    :param keep_home: leave the temporary AIRFLOW_HOME (logs) on disk after ``stop()``.
    :param die_with_parent: on Linux, the processes get SIGTERM when the thread that started
        them dies (pytest killed with SIGKILL); start the cluster from a long-lived thread.
    :param executor: ``LocalExecutor`` (tasks run under the scheduler) or ``CeleryExecutor``.
    :param celery_workers: with Celery, the names of the workers to start (one process each).
    :param worker_concurrency: with Celery, task slots per worker (``--concurrency``).
    :param cache_url: with Celery, the Redis whose database ``BROKER_DB`` is the broker
        (default: ``AIRFLOW_CONN_MARKET_CACHE`` or the local test server).
    :param template: a :class:`MetadataTemplate` to copy the metadata DB from instead of
        running ``airflow db migrate`` (tests share one per session).
    """

    def __init__(
        self,
        *,
        dags_folder: Path | str = ROOT / "dags",
        plugins_folder: Path | str = ROOT / "plugins",
        parallelism: int = 8,
        env: Mapping[str, str] | None = None,
        dag_id: str = "market_daily",
        pg_dsn: str | None = None,
        pools: Mapping[str, int] | None = None,
        start_timeout: float = 180.0,
        preload: bool = True,
        keep_home: bool = False,
        die_with_parent: bool = True,
        executor: str = "LocalExecutor",
        celery_workers: Sequence[str] = ("worker-1", "worker-2"),
        worker_concurrency: int = 2,
        cache_url: str | None = None,
        template: MetadataTemplate | None = None,
    ) -> None:
        self.dags_folder = Path(dags_folder)
        self.plugins_folder = Path(plugins_folder)
        self.parallelism = parallelism
        self.extra_env = dict(env or {})
        self.dag_id = dag_id
        raw = pg_dsn or os.environ.get("AIRFLOW_CONN_MARKET_DB") or DEFAULT_PG
        self.pg_dsn = raw.split("?")[0]
        self.pools = dict(pools if pools is not None else {"market_source_api": 4})
        self.start_timeout = start_timeout
        self.preload = preload
        self.keep_home = keep_home
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        if executor not in ("LocalExecutor", "CeleryExecutor"):
            raise ClusterError(
                f"executor: expected LocalExecutor or CeleryExecutor, found {executor}"
            )
        self.executor = executor
        self.celery_workers = tuple(celery_workers) if executor == "CeleryExecutor" else ()
        if len(set(self.celery_workers)) != len(self.celery_workers):
            raise ClusterError(f"celery_workers must be distinct, found {celery_workers}")
        self.worker_concurrency = worker_concurrency
        self.cache_url = cache_url or os.environ.get("AIRFLOW_CONN_MARKET_CACHE") or DEFAULT_CACHE
        self.template = template
        self.db_name = f"af_{uuid.uuid4().hex[:12]}"
        self.port = 0
        self.home: Path | None = None
        self.user, self.password = "admin", secrets.token_hex(8)
        self.procs: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self._db_created = False
        self._token: str | None = None
        self._session = requests.Session()
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL of the api-server."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment every Airflow process (and CLI call) of this cluster gets."""
        if self.home is None:
            raise ClusterError("the cluster has no AIRFLOW_HOME yet: call start() first")
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "AIRFLOW_HOME")) or k.startswith(PASSTHROUGH_PREFIXES)
        }
        meta = _with_database(self.pg_dsn, self.db_name, "postgresql+psycopg2")
        base.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(self.plugins_folder),
            AIRFLOW__CORE__EXECUTOR=self.executor,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=meta,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__API__MAXIMUM_PAGE_LIMIT="10000",
            AIRFLOW__API_AUTH__JWT_SECRET=self._jwt_secret,
            AIRFLOW__CORE__FERNET_KEY=self._fernet_key,
            AIRFLOW__CORE__PARALLELISM=str(self.parallelism),
            AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=str(self.parallelism),
            AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="1",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{self.user}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self.home / "passwords.json"),
            AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
            AIRFLOW__SCHEDULER__MP_START_METHOD="fork",
            # The DAG file does not change during a test: do not re-parse it every 30 s.
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="600",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="600",
            AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join(
                [str(self.plugins_folder), str(ROOT / "include"), str(ROOT)]
            ),
            PYTHONWARNINGS="ignore::DeprecationWarning",
        )
        if self.executor == "CeleryExecutor":
            base.update(self._celery_env())
        base.update(self.extra_env)
        return base

    def _celery_env(self) -> dict[str, str]:
        meta = _with_database(self.pg_dsn, self.db_name, "postgresql+psycopg2")
        return {
            "AIRFLOW__CELERY__BROKER_URL": broker_url(self.cache_url),
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{meta}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            # Longer than the longest task (the raw gate's reschedule pokes are short tries);
            # an unacknowledged task is redelivered after it (docs/deploy.md).
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            # Every broker key (queues, bindings, pub/sub) under this cluster's own prefix.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{self.db_name}:",
        }

    def start(self) -> AirflowCluster:
        """Create the database and home, start the three processes, wait for the DAG."""
        started = self._t0 = time.perf_counter()
        atexit.register(self.stop)
        try:
            self._prepare_home()
            if self.template is None:
                self._create_database()
                self.airflow("db", "migrate", timeout=300)
            else:
                self._create_database(self.template.name_for(self))
            self.timings["db_migrate"] = time.perf_counter() - started
            log_dir = self.home / "proc"
            self._spawn("api-server", ["api-server"], log_dir)
            self._spawn("scheduler", ["scheduler", "--skip-serve-logs"], log_dir)
            self._spawn("dag-processor", ["dag-processor"], log_dir)
            for name in self.celery_workers:
                self._spawn(name, self.worker_command(name), log_dir, self.worker_env(name))
            self._wait_for_api()
            self._wait_for_workers()
            for name, slots in self.pools.items():
                self.set_pool(name, slots)
            self._wait_for_dag()
            self.timings["dag_ready"] = time.perf_counter() - started
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.perf_counter() - started
        return self

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate every process group, then drop the metadata DB and the home."""
        if self._stopped:
            return
        self._stopped = True
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for proc in self.procs.values():
            # Whatever is left of the group (task processes included) is killed.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._session.close()
        if self._db_created:
            self._drop_database()
        if self.home is not None and not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def _prepare_home(self) -> None:
        from cryptography.fernet import Fernet

        self.home = Path(tempfile.mkdtemp(prefix="af_cluster_"))
        self.port = free_port()
        self._jwt_secret = secrets.token_urlsafe(32)
        self._fernet_key = Fernet.generate_key().decode()
        (self.home / "passwords.json").write_text(json.dumps({self.user: self.password}))
        local_settings = ROOT / "config" / "airflow_local_settings.py"
        if self.preload and local_settings.is_file():
            (self.home / "config").mkdir()
            shutil.copy(local_settings, self.home / "config" / local_settings.name)

    def _create_database(self, template: str | None = None) -> None:
        import psycopg2
        from psycopg2 import sql

        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn = psycopg2.connect(_admin_dsn(self.pg_dsn))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
            self._db_created = True
        finally:
            conn.close()

    def _drop_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(_admin_dsn(self.pg_dsn))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
            self._db_created = False
        finally:
            conn.close()

    def worker_env(self, name: str) -> dict[str, str]:
        """What worker ``name`` has on top of ``env()``: the hostname its tasks report."""
        return {
            HOSTNAME_ENV: name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
        }

    def worker_command(self, name: str) -> list[str]:
        """The ``airflow`` arguments that start Celery worker ``name`` (docs/deploy.md)."""
        return [
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(self.worker_concurrency),
            # The shared AIRFLOW_HOME holds every task log; two log servers on one machine
            # would also want the same port.
            "--skip-serve-logs",
        ]

    def _spawn(
        self, name: str, args: list[str], log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        log_dir.mkdir(exist_ok=True)
        out = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            self.procs[name] = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *args],
                env={**self.env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() kills the tree
                preexec_fn=_terminate_with_parent if self.die_with_parent else None,
                cwd=str(self.home),
            )
        finally:
            out.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(
                    f"airflow {name} exited with {proc.returncode} (expected it to keep "
                    f"running):\n{self.logs_tail(name)}"
                )

    def _wait_for_api(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self._session.get(f"{self.url}/api/v2/monitor/health", timeout=2).ok:
                    self.timings["api_ready"] = time.perf_counter() - self._t0
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ClusterError(
            f"api-server did not answer on {self.url} within {self.start_timeout:.0f} s:\n"
            + self.logs_tail("api-server")
        )

    def _wait_for_workers(self) -> None:
        """Until each Celery worker has logged ``<name>@<host> ready``."""
        deadline = time.monotonic() + self.start_timeout
        waiting = set(self.celery_workers)
        while waiting and time.monotonic() < deadline:
            self._check_alive()
            for name in list(waiting):
                log = self.home / "proc" / f"{name}.log"
                if log.is_file() and re.search(
                    rf"\b{re.escape(name)}@\S+ ready\.", log.read_text(errors="replace")
                ):
                    waiting.discard(name)
            time.sleep(0.5)
        if waiting:
            raise ClusterError(
                f"Celery workers {sorted(waiting)} not ready within {self.start_timeout:.0f} s:\n"
                + self.logs_tail(*sorted(waiting))
            )

    def _wait_for_dag(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            resp = self.api("GET", f"/api/v2/dags/{self.dag_id}", expect=None)
            if resp.status_code == 200 and not resp.json().get("is_paused", True):
                return
            time.sleep(1)
        errors = self.api("GET", "/api/v2/importErrors", expect=None).text[-3000:]
        raise ClusterError(
            f"DAG {self.dag_id} was not parsed (unpaused) within {self.start_timeout:.0f} s; "
            f"import errors: {errors}\n{self.logs_tail('dag-processor')}"
        )

    def logs_tail(self, *names: str, chars: int = 4000) -> str:
        """The last ``chars`` characters of each process's output (all when none named)."""
        out = []
        for name in names or tuple(self.procs):
            path = self.home / "proc" / f"{name}.log" if self.home else None
            if path and path.is_file():
                out.append(f"--- {name} ---\n{path.read_bytes()[-chars:].decode(errors='replace')}")
        return "\n".join(out)

    def airflow(self, *args: str, timeout: float = 300, check: bool = True):
        """Run an Airflow CLI command against this cluster; returns the CompletedProcess."""
        proc = subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(self.home),
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"airflow {' '.join(args)} exited {proc.returncode} (expected 0):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    # ------------------------------------------------------------------ REST

    def token(self) -> str:
        """A bearer token for the REST API (simple auth manager, the admin user)."""
        if self._token is None:
            resp = self._session.post(
                f"{self.url}/auth/token",
                json={"username": self.user, "password": self.password},
                timeout=30,
            )
            if resp.status_code not in (200, 201):
                raise ClusterError(f"POST /auth/token: expected 200/201, found {resp.status_code}")
            self._token = resp.json()["access_token"]
        return self._token

    def api(
        self, method: str, path: str, *, expect: int | Iterable[int] | None = 200, **kwargs
    ) -> requests.Response:
        """Call the REST API with the bearer token; raise when the status is not ``expect``."""
        headers = {"Authorization": f"Bearer {self.token()}"}
        resp = self._session.request(
            method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs
        )
        if expect is not None:
            allowed = {expect} if isinstance(expect, int) else set(expect)
            if resp.status_code not in allowed:
                raise ClusterError(
                    f"{method} {path}: expected HTTP {sorted(allowed)}, found "
                    f"{resp.status_code}: {resp.text[:2000]}"
                )
        return resp

    def set_variable(self, key: str, value: str) -> None:
        """Create or update an Airflow Variable in the metadata DB (not the environment).

        An ``AIRFLOW_VAR_<KEY>`` in the processes' environment would win over it: tasks read
        the environment backend first, then the Execution API (the metadata DB).
        """
        resp = self.api(
            "PATCH", f"/api/v2/variables/{key}", json={"key": key, "value": value}, expect=None
        )
        if resp.status_code == 404:
            self.api(
                "POST", "/api/v2/variables", json={"key": key, "value": value}, expect=(200, 201)
            )
        elif resp.status_code != 200:
            raise ClusterError(f"PATCH variable {key}: found {resp.status_code}: {resp.text}")

    def set_pool(self, name: str, slots: int) -> None:
        body = {"name": name, "slots": slots, "include_deferred": False}
        resp = self.api("POST", "/api/v2/pools", json=body, expect=None)
        if resp.status_code == 409:
            self.api("PATCH", f"/api/v2/pools/{name}", json=body)
        elif resp.status_code not in (200, 201):
            raise ClusterError(f"POST pool {name}: found {resp.status_code}: {resp.text}")

    def trigger(
        self,
        logical_date: str | None = None,
        conf: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        dag_id: str | None = None,
    ) -> str:
        """Trigger a run; ``logical_date`` ``"2024-11-29"`` names that session. Returns its id:
        ``run_id``, or the one Airflow minted (as for a trigger from the UI) when it is None."""
        if logical_date is not None and "T" not in logical_date:
            logical_date = f"{logical_date}T00:00:00Z"
        body = {"logical_date": logical_date, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        resp = self.api("POST", f"/api/v2/dags/{dag_id or self.dag_id}/dagRuns", json=body)
        return resp.json()["dag_run_id"]

    def run(self, run_id: str, dag_id: str | None = None) -> dict:
        """The DAG run as the REST API returns it."""
        return self.api("GET", f"/api/v2/dags/{dag_id or self.dag_id}/dagRuns/{run_id}").json()

    def runs(self, dag_id: str | None = None, **params) -> list[dict]:
        """All DAG runs of the DAG (``params`` are query filters such as ``run_type``)."""
        path = f"/api/v2/dags/{dag_id or self.dag_id}/dagRuns"
        return self._paged(path, "dag_runs", params)

    def wait_for_run(self, run_id: str, timeout: float = 300, dag_id: str | None = None) -> str:
        """Wait until the run is success or failed; returns the state."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            try:
                state = self.run(run_id, dag_id)["state"]
            except requests.Timeout:
                # An api-server starved of CPU on a loaded machine: ask again until the deadline.
                self._check_alive()
                continue
            if state in TERMINAL_RUN_STATES:
                return state
            self._check_alive()
            time.sleep(1)
        raise ClusterError(
            f"run {run_id} still {state} after {timeout:.0f} s (expected success/failed); "
            f"task states: {self.task_states(run_id, dag_id)}\n{self.logs_tail('scheduler')}"
        )

    def _paged(self, path: str, key: str, params: Mapping[str, Any] | None = None) -> list[dict]:
        out: list[dict] = []
        while True:
            query = {**(params or {}), "limit": 1000, "offset": len(out)}
            page = self.api("GET", path, params=query).json()
            out.extend(page[key])
            if not page[key] or len(out) >= page.get("total_entries", 0):
                return out

    def task_instances(self, run_id: str, dag_id: str | None = None) -> list[dict]:
        """Every task instance of the run (task_id, map_index, rendered_map_index, state...)."""
        path = f"/api/v2/dags/{dag_id or self.dag_id}/dagRuns/{run_id}/taskInstances"
        return self._paged(path, "task_instances")

    def task_states(self, run_id: str, dag_id: str | None = None) -> dict[tuple[str, int], str]:
        """``{(task_id, map_index): state}`` of the run."""
        return {
            (ti["task_id"], ti["map_index"]): ti["state"]
            for ti in self.task_instances(run_id, dag_id)
        }

    def clear(
        self,
        run_id: str,
        task_ids: list[str | tuple[str, int] | list] | None = None,
        *,
        only_failed: bool = False,
        include_downstream: bool = True,
        dry_run: bool = False,
        dag_id: str | None = None,
    ) -> list[dict]:
        """Clear task instances of a run (all when ``task_ids`` is None); returns them.

        ``dry_run`` is always sent: the server's default is ``true``.
        """
        body: dict[str, Any] = {
            "dag_run_id": run_id,
            "only_failed": only_failed,
            "include_downstream": include_downstream,
            "reset_dag_runs": True,
            "dry_run": dry_run,
        }
        if task_ids is not None:
            body["task_ids"] = [list(t) if isinstance(t, tuple) else t for t in task_ids]
        path = f"/api/v2/dags/{dag_id or self.dag_id}/clearTaskInstances"
        return self.api("POST", path, json=body).json()["task_instances"]

    def backfill(
        self,
        from_date: str,
        to_date: str,
        *,
        run_backwards: bool = False,
        max_active_runs: int = 1,
        dag_id: str | None = None,
    ) -> int:
        """``airflow backfill create`` over [from_date, to_date]; returns the backfill id."""
        before = {b["id"] for b in self.backfills(dag_id)}
        args = [
            "backfill",
            "create",
            "--dag-id",
            dag_id or self.dag_id,
            "--from-date",
            from_date,
            "--to-date",
            to_date,
            "--max-active-runs",
            str(max_active_runs),
        ]
        if run_backwards:
            args.append("--run-backwards")
        self.airflow(*args)
        new = [b for b in self.backfills(dag_id) if b["id"] not in before]
        if len(new) != 1:
            raise ClusterError(f"expected one new backfill, found {new}")
        return new[0]["id"]

    def backfills(self, dag_id: str | None = None) -> list[dict]:
        return self._paged("/api/v2/backfills", "backfills", {"dag_id": dag_id or self.dag_id})

    def wait_for_backfill(
        self, backfill_id: int, timeout: float = 600, dag_id: str | None = None
    ) -> dict[str, str]:
        """Wait until every run of the backfill is terminal; ``{run_id: state}``."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            runs = [
                r
                for r in self.runs(dag_id, run_type="backfill")
                if r.get("backfill_id") in (None, backfill_id)
            ]
            states = {r["dag_run_id"]: r["state"] for r in runs}
            backfill = self.api("GET", f"/api/v2/backfills/{backfill_id}").json()
            if (
                states
                and backfill.get("completed_at")
                and set(states.values()) <= set(TERMINAL_RUN_STATES)
            ):
                return states
            self._check_alive()
            time.sleep(2)
        raise ClusterError(f"backfill {backfill_id} not done after {timeout:.0f} s: {states}")


class MetadataTemplate:
    """A metadata database migrated once, copied by ``CREATE DATABASE ... TEMPLATE``.

    ``airflow db migrate`` is the slowest step of starting a cluster; a copy of a migrated
    database is the same schema at the same revision (Postgres copies it file by file). The
    template is migrated without a Fernet key, so it holds nothing encrypted with another
    cluster's key. ``drop()`` removes it.
    """

    def __init__(self, pg_dsn: str | None = None) -> None:
        raw = pg_dsn or os.environ.get("AIRFLOW_CONN_MARKET_DB") or DEFAULT_PG
        self.pg_dsn = raw.split("?")[0]
        self.name = f"af_tpl_{uuid.uuid4().hex[:12]}"
        self._migrated = False
        self._lock = threading.Lock()

    def name_for(self, cluster: AirflowCluster) -> str:
        """The template's name, migrated first (with ``cluster``'s settings) if not yet."""
        with self._lock:
            if not self._migrated:
                self._migrate(cluster)
                self._migrated = True
        return self.name

    def _migrate(self, cluster: AirflowCluster) -> None:
        _admin_execute(self.pg_dsn, "CREATE DATABASE {}", self.name)
        env = cluster.env()
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = _with_database(
            self.pg_dsn, self.name, "postgresql+psycopg2"
        )
        env["AIRFLOW__CORE__FERNET_KEY"] = ""
        proc = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(cluster.home),
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"airflow db migrate (template {self.name}) exited {proc.returncode} "
                f"(expected 0):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )

    def drop(self) -> None:
        _admin_execute(self.pg_dsn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)


def _admin_execute(pg_dsn: str, statement: str, database: str) -> None:
    """Run ``statement`` with ``{}`` replaced by the quoted ``database`` name."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(_admin_dsn(pg_dsn))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(database)))
    finally:
        conn.close()


#: What every e2e cluster's market tasks need: short gate pokes and retry backoff.
FAST_MARKET_ENV = {
    "MARKET_GATE_POKE_SECONDS": "2",
    "MARKET_GATE_TIMEOUT_SECONDS": "120",
    "MARKET_RETRY_BASE_SECONDS": "1",
}


@contextlib.contextmanager
def market_cluster(
    make: Callable[..., AirflowCluster],
    tag: str,
    pg_dsn: str,
    redis_url: str,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Iterator[AirflowCluster]:
    """A started cluster whose runs write to a market schema and Redis prefix of their own.

    ``make`` builds the cluster (the ``airflow_cluster_factory`` fixture); ``env`` adds to
    (or overrides) :data:`FAST_MARKET_ENV` and the test's Postgres/Redis connections. The
    cluster carries ``schema`` and ``prefix``; both are dropped, and the cluster stopped, at
    the end, also when starting it failed.
    """
    from tests.support.db import drop_namespace

    schema = f"{tag}_{uuid.uuid4().hex[:10]}"
    prefix = f"test:{schema}:v1"
    cluster = make(
        env={
            "MARKET_SCHEMA": schema,
            "MARKET_CACHE_PREFIX": prefix,
            **FAST_MARKET_ENV,
            "AIRFLOW_CONN_MARKET_DB": pg_dsn,
            "AIRFLOW_CONN_MARKET_CACHE": redis_url,
            **(env or {}),
        },
        **kwargs,
    )
    cluster.schema, cluster.prefix = schema, prefix
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        drop_namespace(pg_dsn, redis_url, schema, prefix)
