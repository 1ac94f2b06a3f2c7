"""Connection settings for code that runs outside Airflow (CLI tools, tests, the demo).

Inside tasks the Airflow layer resolves the ``market_db`` / ``market_cache`` connections
itself; outside, the same ``AIRFLOW_CONN_MARKET_DB`` / ``AIRFLOW_CONN_MARKET_CACHE``
environment variables are read here (URI or Airflow's JSON form), so one setting serves both.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qsl, unquote, urlsplit

from market_pipeline.config import CACHE_CONN_ID, DB_CONN_ID


def _env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def connection_parts(conn_id: str) -> dict:
    """host, port, login, password, schema and extra of an ``AIRFLOW_CONN_*`` variable."""
    raw = os.environ.get(_env_name(conn_id))
    if not raw:
        raise RuntimeError(
            f"connection {conn_id!r} is not configured: expected environment variable "
            f"{_env_name(conn_id)} (a URI such as postgresql://user@host:5432/db)"
        )
    raw = raw.strip()
    if raw.startswith("{"):
        data = json.loads(raw)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        return {
            "host": data.get("host"),
            "port": data.get("port"),
            "login": data.get("login"),
            "password": data.get("password"),
            "schema": data.get("schema"),
            "extra": extra,
        }
    url = urlsplit(raw)
    extra = dict(parse_qsl(url.query))
    if "__extra__" in extra:
        extra = json.loads(extra["__extra__"])
    return {
        "host": unquote(url.hostname or "") if url.hostname else None,
        "port": url.port,
        "login": unquote(url.username) if url.username else None,
        "password": unquote(url.password) if url.password else None,
        "schema": unquote(url.path.lstrip("/")) or None,
        "extra": extra,
    }


#: libpq connection keywords a connection's extra may set (every one but the five the
#: connection's own fields carry); any other extra (Airflow's ``cursor``, ``iam``,
#: ``sqlalchemy_*``, …) is not libpq's and is left out.
LIBPQ_EXTRAS = frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "fallback_application_name",
        "gssencmode",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "load_balance_hosts",
        "options",
        "passfile",
        "requirepeer",
        "sslcert",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslmode",
        "sslpassword",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
    }
)


#: Client-side bounds of every market-database connection, in seconds (README
#: "Configuration reference"; docs/operations.md). Each can be set in the connection's extra
#: under the same name; 0 turns a server-side one off (and sends no ``options``, for poolers
#: such as PgBouncer that refuse them).
PG_TIMEOUTS: dict[str, int] = {
    # Give up on a server that does not accept the connection.
    "connect_timeout": 10,
    # TCP keepalives: a dead host or a cut network ends the connection after about
    # idle + interval * count seconds instead of the kernel's two hours.
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    # Server-side: one statement runs at most this long; a transaction left idle (a worker
    # killed mid-write) releases its locks after this long.
    "statement_timeout": 600,
    "idle_in_transaction_session_timeout": 600,
}
_SERVER_TIMEOUTS = ("statement_timeout", "idle_in_transaction_session_timeout")
#: Client side, tasks only (``market_pipeline.reply_guard``): a statement, commit or rollback
#: with no reply from the server for this long — a frozen server, which answers TCP keepalives
#: from its kernel and never enforces its own ``statement_timeout`` — has its connection closed,
#: and the try fails as transient. Above any statement a task runs (they take seconds); set
#: ``reply_timeout`` in the extra to change it, 0 for none. Not a libpq keyword.
PG_REPLY_TIMEOUT = 180


def reply_timeout(extra: dict | None) -> int:
    """The connection's ``reply_timeout`` (seconds, :data:`PG_REPLY_TIMEOUT` by default)."""
    return _seconds(extra or {}, "reply_timeout", PG_REPLY_TIMEOUT)


#: Extras :func:`postgres_dsn` sets itself, from :data:`PG_TIMEOUTS` and the extra.
_BOUNDED = frozenset({*PG_TIMEOUTS, "keepalives", "options"})


def _seconds(extra: dict, key: str, default: int | None = None) -> int:
    """The extra's ``key`` in whole seconds (:data:`PG_TIMEOUTS` by default), checked."""
    raw = extra.get(key, PG_TIMEOUTS[key] if default is None else default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"connection extra {key}: expected a number of seconds, found {raw!r}"
        ) from None
    if value < 0:
        raise ValueError(f"connection extra {key}: expected seconds >= 0, found {raw!r}")
    return int(value)


def postgres_dsn(host, port, login, password, schema, extra=None) -> str:
    """A libpq keyword DSN (works for TCP hosts and Unix-socket directories alike): every
    libpq keyword of the connection's extra (:data:`LIBPQ_EXTRAS`), with the connect,
    keepalive, statement and idle-transaction bounds of :data:`PG_TIMEOUTS`."""
    from psycopg2.extensions import make_dsn

    extra = extra or {}
    kwargs = {
        "host": host or None,
        "port": port or None,
        "user": login or None,
        "password": password or None,
        "dbname": schema or None,
    }
    for key in sorted((LIBPQ_EXTRAS - _BOUNDED) & set(extra)):
        if extra[key] not in (None, ""):
            kwargs[key] = extra[key]
    connect = _seconds(extra, "connect_timeout")
    if connect:
        kwargs["connect_timeout"] = max(connect, 2)  # libpq treats 1 as 2
    kwargs["keepalives"] = 1
    for key in ("keepalives_idle", "keepalives_interval", "keepalives_count"):
        kwargs[key] = max(_seconds(extra, key), 1)
    options = [str(extra["options"])] if extra.get("options") else []
    for key in _SERVER_TIMEOUTS:
        seconds = _seconds(extra, key)
        if seconds:
            options.append(f"-c {key}={seconds}s")
    if options:
        kwargs["options"] = " ".join(options)
    return make_dsn(**{k: v for k, v in kwargs.items() if v is not None})


def db_dsn(conn_id: str = DB_CONN_ID) -> str:
    """libpq DSN of the market database, from ``AIRFLOW_CONN_MARKET_DB``."""
    parts = connection_parts(conn_id)
    # Airflow URIs keep the socket directory percent-encoded in the host.
    return postgres_dsn(**parts)


def redis_params(conn_id: str = CACHE_CONN_ID) -> dict:
    """Keyword arguments for ``redis.Redis`` from ``AIRFLOW_CONN_MARKET_CACHE``."""
    parts = connection_parts(conn_id)
    return redis_params_from_parts(**parts)


def redis_params_from_parts(host, port, login, password, schema, extra=None) -> dict:
    """``redis.Redis`` keyword arguments from connection fields (db from extra or path)."""
    extra = extra or {}
    db = extra.get("db", schema or 0)
    params = {
        "host": host or "127.0.0.1",
        "port": int(port or 6379),
        "db": int(db or 0),
        "username": login or None,
        "password": password or None,
    }
    for key in ("socket_timeout", "socket_connect_timeout", "health_check_interval"):
        if extra.get(key) not in (None, ""):
            params[key] = float(extra[key])
    if str(extra.get("ssl", "")).lower() in ("1", "true", "yes"):
        params["ssl"] = True
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if extra.get(key):
                params[key] = extra[key]
    return params
