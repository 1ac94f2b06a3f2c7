"""Hooks for the market database and the Redis serving cache.

Credentials come only from the Airflow connections ``market_db`` and ``market_cache``
(``BaseHook.get_connection``: environment, secrets backends, the metadata DB); clients are
built lazily, inside ``execute``/``poke``, never at parse time. Why these are not
``PostgresHook``/``RedisHook`` (pinned, and measured): docs/decisions.md, "Hooks: ours, not the
providers'".
"""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook

from market_pipeline.config import CACHE_CONN_ID, DB_CONN_ID
from market_pipeline.connections import postgres_dsn, redis_params_from_parts, reply_timeout


class MarketDbHook(BaseHook):
    """psycopg2 access to the market schema through the ``market_db`` connection.

    :param market_db_conn_id: Airflow connection id of the market Postgres database.
    """

    conn_name_attr = "market_db_conn_id"
    default_conn_name = DB_CONN_ID
    conn_type = "postgres"
    hook_name = "Market database"

    def __init__(self, market_db_conn_id: str = DB_CONN_ID) -> None:
        super().__init__()
        self.market_db_conn_id = market_db_conn_id

    @cached_property
    def _connection(self):
        return self.get_connection(self.market_db_conn_id)

    @cached_property
    def dsn(self) -> str:
        """The libpq DSN: the connection's fields and every libpq keyword of its extra, with
        the bounds of ``connections.PG_TIMEOUTS`` where the extra sets none."""
        conn = self._connection
        return postgres_dsn(
            conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra_dejson
        )

    def get_conn(self):
        """A new psycopg2 connection (the caller closes it) whose every wait for the server's
        reply is bounded by the extra's ``reply_timeout`` (``market_pipeline.reply_guard``)."""
        from market_pipeline import reply_guard

        return reply_guard.connect(self.dsn, reply_timeout(self._connection.extra_dejson))


class MarketCacheHook(BaseHook):
    """A redis-py client for the serving cache through the ``market_cache`` connection.

    :param market_cache_conn_id: Airflow connection id of the Redis serving cache
        (host, port, password; ``db``, ``ssl``, ``ssl_ca_certs`` in extra).
    """

    conn_name_attr = "market_cache_conn_id"
    default_conn_name = CACHE_CONN_ID
    conn_type = "redis"
    hook_name = "Market serving cache"

    def __init__(self, market_cache_conn_id: str = CACHE_CONN_ID) -> None:
        super().__init__()
        self.market_cache_conn_id = market_cache_conn_id

    def get_conn(self):
        """A redis-py client with timeouts, health checks and short reconnect retries."""
        from market_pipeline.cache import client_from_params

        conn = self.get_connection(self.market_cache_conn_id)
        params = redis_params_from_parts(
            conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra_dejson
        )
        return client_from_params(**params)
