"""A persistent local Airflow for real use: ``make up`` / ``make down`` / ``make status``.

    python scripts/local_airflow.py up       # start (or find running) and print URL + login
    python scripts/local_airflow.py down     # stop every process; data and history stay
    python scripts/local_airflow.py status   # what runs, where, since when

What ``up`` runs: ``airflow api-server`` (the UI and REST API), ``scheduler`` (LocalExecutor,
the project's task-parent preload), ``dag-processor`` and ``triggerer``, under a small
supervisor that restarts a process when it exits and, before that, kills its whole process
group: a scheduler that died takes its LocalExecutor workers (and any task they hold, with
its database locks) with it, so the restarted scheduler is never blocked by orphans.

Metadata lives in Postgres, never SQLite: the database ``market_airflow`` on the market
database's server (``AIRFLOW_CONN_MARKET_DB`` when set, else the local server that
``scripts/services.py`` starts under ``.local/``), or on the server of
``MARKET_AIRFLOW_META_CONN`` (a Postgres URI; its database name is ignored) when set: metadata
apart from market data, as docs/deploy.md recommends. It is never dropped, so runs and history
survive ``down``/``up``. The admin password, the JWT secret and the Fernet key are generated
once into ``<state>/secrets.json`` (mode 600) and reused. Connections, Variables and pools
missing from the metadata database are created from ``airflow_settings.yaml`` (the file
the Astro CLI reads); ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` in the environment win over
them at run time, as everywhere in Airflow. Logs go to ``<state>/logs``.

State directory: ``MARKET_LOCAL_AIRFLOW_DIR`` (default ``.local/airflow-up``); UI port:
``MARKET_UI_PORT`` (default 8080). Your own DAGs beside ``market_daily`` (e.g. one scheduled on
the ``market_scores`` Asset): ``MARKET_EXTRA_DAGS``, folders separated by ``:``, each served as
its own DAG bundle. ``MARKET_SCHEDULED_RUNS=0``: the scheduler creates no run by itself, only
triggered runs run (the fault suite runs fixed past sessions).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("MARKET_LOCAL_AIRFLOW_DIR") or ROOT / ".local" / "airflow-up")
PORT = int(os.environ.get("MARKET_UI_PORT", "8080"))
META_DB = os.environ.get("MARKET_AIRFLOW_META_DB", "market_airflow")
USER = "admin"
#: The processes ``up`` runs, with their Airflow CLI arguments.
COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
#: A process that stays up this long has its restart delay reset to the first step.
HEALTHY_AFTER_SECONDS = 60.0
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
#: How long ``down`` lets the components finish what they do (a task's write) before SIGKILL.
STOP_GRACE_SECONDS = 20.0


def say(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- state


def _secrets() -> dict[str, str]:
    """The admin password, JWT secret and Fernet key: generated once, then reused."""
    path = STATE / "secrets.json"
    if path.is_file():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    STATE.mkdir(parents=True, exist_ok=True)
    values = {
        "password": secrets.token_urlsafe(12),
        "jwt_secret": secrets.token_urlsafe(32),
        "fernet_key": Fernet.generate_key().decode(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(values, out)
    return values


def _pid(name: str) -> int | None:
    """The pid recorded for ``name`` when that process is alive, else None."""
    path = STATE / "run" / f"{name}.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    return pid


def _write_pid(name: str, pid: int) -> None:
    (STATE / "run").mkdir(parents=True, exist_ok=True)
    (STATE / "run" / f"{name}.pid").write_text(str(pid))


def _on_market_server(database: str, scheme: str) -> str:
    """A URI of ``database`` on the metadata server: the server of ``MARKET_AIRFLOW_META_CONN``
    when set (metadata apart from market data, docs/deploy.md), else of
    ``AIRFLOW_CONN_MARKET_DB``."""
    dsn = os.environ.get("MARKET_AIRFLOW_META_CONN") or os.environ.get("AIRFLOW_CONN_MARKET_DB")
    if not dsn:
        raise SystemExit("AIRFLOW_CONN_MARKET_DB is not set: run this through `make up`")
    parts = urlsplit(dsn.split("?")[0])
    host = unquote(parts.hostname or "")
    if host.startswith("/"):
        # The local pgserver listens on a Unix socket: libpq and SQLAlchemy both take the
        # socket directory as the ``host`` query argument.
        return f"{scheme}://{parts.username or 'postgres'}@/{database}?host={host}"
    return urlunsplit((scheme, parts.netloc, f"/{database}", "", ""))


def _metadata_uri() -> str:
    """SQLAlchemy URI of the metadata database (on the market database's server unless
    ``MARKET_AIRFLOW_META_CONN`` names another)."""
    return _on_market_server(META_DB, "postgresql+psycopg2")


def _ensure_metadata_database() -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(_on_market_server("postgres", "postgresql"), connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (META_DB,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(META_DB)))
                say(f"created the metadata database {META_DB}")
    finally:
        conn.close()


TUNING_FILE = ROOT / "config" / "airflow.env"


def read_env_file(path: Path = TUNING_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (``#`` comments and blank lines skipped)."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{n}: expected KEY=VALUE, found {line!r}")
        out[key.strip()] = value.strip()
    return out


def tuning() -> dict[str, str]:
    """The Airflow settings of config/airflow.env; ``MARKET_PARALLELISM`` overrides the slots."""
    values = read_env_file()
    slots = os.environ.get("MARKET_PARALLELISM")
    if slots:
        values["AIRFLOW__CORE__PARALLELISM"] = values["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = (
            slots
        )
    return values


def dag_bundles() -> list[dict]:
    """The project's ``dags/`` (the default bundle's name, so existing runs keep their DAG)
    and one local bundle per folder of ``MARKET_EXTRA_DAGS``."""
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [{"name": "dags-folder", "classpath": local, "kwargs": {"path": str(ROOT / "dags")}}]
    for n, folder in enumerate(filter(None, os.environ.get("MARKET_EXTRA_DAGS", "").split(":"))):
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise SystemExit(f"MARKET_EXTRA_DAGS: expected a folder of DAG files, found {folder!r}")
        name = f"extra-{n + 1}-{path.name}"
        bundles.append({"name": name, "classpath": local, "kwargs": {"path": str(path)}})
    return bundles


def env() -> dict[str, str]:
    """The environment of every Airflow process of the local deployment."""
    values = _secrets()
    home = STATE / "home"
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    # A real scheduler and triggerer run here, so the publish deadline is on (docs/operations.md).
    base.setdefault("MARKET_PUBLISH_DEADLINE_MINUTES", "300")
    base.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=json.dumps(dag_bundles()),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=_metadata_uri(),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{PORT}/execution/",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(PORT),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{PORT}",
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API_AUTH__JWT_SECRET=values["jwt_secret"],
        AIRFLOW__CORE__FERNET_KEY=values["fernet_key"],
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        # MARKET_SCHEDULED_RUNS=0: the scheduler creates no run by itself; triggered runs
        # (UI, REST API, backfills) still run. For tests that run fixed sessions only.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=str(
            os.environ.get("MARKET_SCHEDULED_RUNS", "1") != "0"
        ),
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        # Task slots, heartbeats, scheduler loop: config/airflow.env (shared with the compose
        # stack and the benches); MARKET_PARALLELISM overrides the slots.
        **tuning(),
        # Forked task processes inherit the preload (config/airflow_local_settings.py).
        AIRFLOW__SCHEDULER__MP_START_METHOD="fork",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(STATE / "logs" / "tasks"),
        AIRFLOW__LOGGING__LOGGING_LEVEL=os.environ.get("AIRFLOW_LOG_LEVEL", "INFO"),
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "plugins"), str(ROOT / "include"), str(ROOT / "config"), str(ROOT)]
        ),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    return base


def _airflow(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(VENV_BIN / "airflow"), *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(STATE),
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc


# --------------------------------------------------------------------------- settings


def load_settings(path: Path = ROOT / "airflow_settings.yaml") -> dict[str, list[str]]:
    """Create the connections, Variables and pools of ``path`` that Airflow lacks.

    Through the REST API, as the admin user. Objects that exist are left as they are (an
    operator's edits in the UI stand); the environment (``AIRFLOW_CONN_*`` /
    ``AIRFLOW_VAR_*``) wins over both at run time.
    """
    import requests
    import yaml

    spec = (yaml.safe_load(path.read_text()) or {}).get("airflow", {})
    base = f"http://127.0.0.1:{PORT}"
    token = requests.post(
        f"{base}/auth/token",
        json={"username": USER, "password": _secrets()["password"]},
        timeout=120,
    )
    token.raise_for_status()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    bodies: dict[str, list[tuple[str, str, dict]]] = {
        "connections": [],
        "variables": [],
        "pools": [],
    }
    for item in spec.get("connections") or []:
        extra = item.get("conn_extra")
        body = {
            "connection_id": item["conn_id"],
            "conn_type": item.get("conn_type"),
            "host": item.get("conn_host"),
            "schema": item.get("conn_schema"),
            "login": item.get("conn_login"),
            "password": item.get("conn_password"),
            "port": item.get("conn_port"),
            "extra": json.dumps(extra) if extra else None,
        }
        bodies["connections"].append((item["conn_id"], "/api/v2/connections", body))
    for item in spec.get("variables") or []:
        body = {"key": item["variable_name"], "value": str(item.get("variable_value") or "")}
        bodies["variables"].append((item["variable_name"], "/api/v2/variables", body))
    for item in spec.get("pools") or []:
        body = {
            "name": item["pool_name"],
            "slots": int(item["pool_slot"]),
            "description": item.get("pool_description") or "",
            "include_deferred": False,
        }
        bodies["pools"].append((item["pool_name"], "/api/v2/pools", body))
    created: dict[str, list[str]] = {kind: [] for kind in bodies}
    for kind, items in bodies.items():
        for name, route, body in items:
            resp = requests.post(f"{base}{route}", json=body, headers=headers, timeout=120)
            if resp.status_code in (200, 201):
                created[kind].append(name)
            elif resp.status_code != 409:  # 409: it exists already, and stays as it is
                raise SystemExit(
                    f"creating {kind[:-1]} {name!r} from {path.name}: HTTP {resp.status_code}: "
                    f"{resp.text[:500]}"
                )
    return created


# --------------------------------------------------------------------------- supervisor


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_groups(pgids: list[int], grace: float) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds for all of them to end,
    then SIGKILL whatever is left (LocalExecutor workers ignore SIGTERM once orphaned)."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(g) for g in pgids):
        time.sleep(0.2)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


class Supervisor:
    """Keeps each component running; one process group per component."""

    def __init__(self, components: dict[str, list[str]]) -> None:
        self.components = components
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.failures: dict[str, int] = dict.fromkeys(components, 0)
        self.restart_at: dict[str, float] = {}
        self.stopping = False

    def spawn(self, name: str) -> None:
        logs = STATE / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *self.components[name]],
                env=env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: its workers die with it
                cwd=str(STATE),
            )
        self.procs[name] = proc
        self.started_at[name] = time.monotonic()
        _write_pid(name, proc.pid)
        say(f"{time.strftime('%H:%M:%S')} started {name} (pid {proc.pid})")

    def reap(self, name: str) -> None:
        proc = self.procs[name]
        code = proc.poll()
        # Whatever the component left behind (LocalExecutor workers, task processes with
        # open transactions) goes with it before a new one starts.
        _kill_groups([proc.pid], grace=5)
        up_for = time.monotonic() - self.started_at[name]
        if up_for >= HEALTHY_AFTER_SECONDS:
            self.failures[name] = 0
        delay = RESTART_DELAYS[min(self.failures[name], len(RESTART_DELAYS) - 1)]
        self.failures[name] += 1
        self.restart_at[name] = time.monotonic() + delay
        say(
            f"{time.strftime('%H:%M:%S')} {name} exited with {code} after {up_for:.0f} s; "
            f"restarting in {delay:.0f} s (see {STATE / 'logs' / (name + '.log')})"
        )

    def stop(self, *_args) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for name in self.components:
            self.spawn(name)
        while not self.stopping:
            for name, proc in list(self.procs.items()):
                if name in self.restart_at:
                    if time.monotonic() >= self.restart_at[name]:
                        del self.restart_at[name]
                        self.spawn(name)
                elif proc.poll() is not None:
                    self.reap(name)
            time.sleep(0.5)
        say(f"{time.strftime('%H:%M:%S')} stopping")
        _kill_groups([proc.pid for proc in self.procs.values()], grace=STOP_GRACE_SECONDS)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in self.components:
            (STATE / "run" / f"{name}.pid").unlink(missing_ok=True)
        return 0


# --------------------------------------------------------------------------- commands


def _port_owner_is_us() -> bool:
    return _pid("supervisor") is not None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the api-server binds: a port whose last connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_healthy(timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{PORT}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        if _pid("supervisor") is None:
            raise SystemExit(f"the supervisor exited; see {STATE / 'logs' / 'supervisor.log'}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).ok:
                return
        time.sleep(1)
    raise SystemExit(f"the api-server did not answer on {url} within {timeout:.0f} s")


def _login_lines() -> list[str]:
    return [
        f"Airflow UI:  http://127.0.0.1:{PORT}   (Market health: Browse → Market health)",
        f"login:       {USER} / {_secrets()['password']}   (kept in {STATE / 'secrets.json'})",
        f"logs:        {STATE / 'logs'}",
    ]


def up() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    if _pid("supervisor") is not None:
        say("local Airflow is already running")
        for line in _login_lines():
            say(line)
        return 0
    if not _port_free(PORT):
        raise SystemExit(
            f"port {PORT} is taken by another process: stop it, or choose another port with "
            f"MARKET_UI_PORT=<port> make up"
        )
    home = STATE / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({USER: _secrets()["password"]}))
    _ensure_metadata_database()
    say("migrating the metadata database (airflow db migrate)…")
    _airflow("db", "migrate")
    logs = STATE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "python"), str(Path(__file__).resolve()), "supervise"],
            env=os.environ.copy(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _write_pid("supervisor", proc.pid)
    _wait_healthy(timeout=float(os.environ.get("MARKET_UP_TIMEOUT", "180")))
    for kind, names in load_settings().items():
        if names:
            say(f"created {kind} from airflow_settings.yaml: {', '.join(names)}")
    for line in _login_lines():
        say(line)
    return 0


def down() -> int:
    pid = _pid("supervisor")
    if pid is None:
        say("local Airflow is not running")
        return 0
    components = [p for p in (_pid(name) for name in COMPONENTS) if p is not None]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS + 15
    while time.monotonic() < deadline and _pid("supervisor") is not None:
        time.sleep(0.5)
    # Whatever the supervisor could not stop in time goes now, with its whole group.
    _kill_groups([pid, *components], grace=0)
    for name in ("supervisor", *COMPONENTS):
        (STATE / "run" / f"{name}.pid").unlink(missing_ok=True)
    say(f"local Airflow stopped (metadata, logs and secrets kept under {STATE})")
    return 0


def status() -> int:
    sup = _pid("supervisor")
    say(f"supervisor: {'running, pid ' + str(sup) if sup else 'not running'}")
    for name in COMPONENTS:
        pid = _pid(name)
        say(f"{name}: {'pid ' + str(pid) if pid else 'not running'}")
    if sup:
        for line in _login_lines():
            say(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "up":
        return up()
    if command == "down":
        return down()
    if command == "status":
        return status()
    if command == "supervise":
        return Supervisor(COMPONENTS).run()
    raise SystemExit(f"usage: {Path(__file__).name} up|down|status")


if __name__ == "__main__":
    sys.exit(main())
