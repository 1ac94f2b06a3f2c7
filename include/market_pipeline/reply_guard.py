"""A bound on how long a market-database connection waits for the server's reply.

A frozen server (SIGSTOP, a hung host whose kernel still runs, a stalled disk under the
postmaster) never answers a statement, yet its kernel acknowledges every packet and every
TCP keepalive: libpq waits forever, ``statement_timeout`` is the frozen server's own to
enforce, and Airflow's ``execution_timeout`` raises from a Python signal handler that cannot
run while libpq blocks in C. So a task would hang instead of failing.

:func:`connect` returns a psycopg2 connection whose statements, commits and rollbacks arm a
deadline of ``reply_timeout`` seconds; one watchdog thread per process shuts the socket down
when a deadline passes. libpq then sees the connection end, and the call raises
``psycopg2.OperationalError`` naming the bound — a transient error: the try is retried by
the retry policy, and the failure callback's own connection is bounded by ``connect_timeout``.
The bound must exceed the longest statement a task runs (the server's ``statement_timeout``
stops a slow one first, with its own error); see ``connections.PG_REPLY_TIMEOUT``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref

import psycopg2
import psycopg2.extensions


class _Watchdog:
    """Deadlines of the guarded connections waiting on their server; one thread runs them."""

    def __init__(self) -> None:
        self._pid = -1
        self._start()

    def _start(self) -> None:
        # After a fork (LocalExecutor task processes) the parent's thread is not there.
        self._pid = os.getpid()
        self._cv = threading.Condition()
        self._armed: dict[int, tuple[float, weakref.ref]] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the thread wakes next on its own

    def arm(self, conn: GuardedConnection, seconds: float) -> None:
        if self._pid != os.getpid():
            self._start()
        deadline = time.monotonic() + seconds
        with self._cv:
            self._armed[id(conn)] = (deadline, weakref.ref(conn))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="market-db-reply-guard", daemon=True
                )
                self._thread.start()
            if deadline < self._wakes_at:  # wake the thread only to wait less
                self._cv.notify()

    def disarm(self, conn: GuardedConnection) -> None:
        with self._cv:
            self._armed.pop(id(conn), None)

    def _run(self) -> None:
        with self._cv:
            while True:
                now = time.monotonic()
                for key, (deadline, ref) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        conn = ref()
                        if conn is not None:
                            conn._cut()
                self._wakes_at = min((d for d, _ in self._armed.values()), default=now + 3600)
                self._cv.wait(timeout=max(self._wakes_at - now, 0.01))


_WATCHDOG = _Watchdog()


class GuardedConnection(psycopg2.extensions.connection):
    """A psycopg2 connection whose waits on the server are bounded (see the module)."""

    reply_timeout: float = 0.0
    stalled: bool = False

    def _cut(self) -> None:
        """Called by the watchdog: end the socket so libpq's wait returns."""
        if self.closed:
            return
        self.stalled = True
        try:
            with socket.socket(fileno=os.dup(self.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone: libpq returns on its own

    def _guarded(self, call, *args, **kwargs):
        if not self.reply_timeout:
            return call(*args, **kwargs)
        _WATCHDOG.arm(self, self.reply_timeout)
        try:
            return call(*args, **kwargs)
        except psycopg2.OperationalError as exc:
            if self.stalled:
                raise psycopg2.OperationalError(
                    f"expected a reply from the market database within "
                    f"{self.reply_timeout:g} s (reply_timeout), found none: the server is "
                    f"frozen or hung; the connection was closed and the try will be retried"
                ) from exc
            raise
        finally:
            _WATCHDOG.disarm(self)

    def commit(self) -> None:
        self._guarded(super().commit)

    def rollback(self) -> None:
        self._guarded(super().rollback)

    def __exit__(self, *exc):
        # ``with conn:`` commits or rolls back in C, past the methods above.
        return self._guarded(super().__exit__, *exc)

    def cursor(self, *args, **kwargs):
        kwargs.setdefault("cursor_factory", GuardedCursor)
        return super().cursor(*args, **kwargs)


class GuardedCursor(psycopg2.extensions.cursor):
    """Each call that waits on the server arms its connection's deadline."""

    def execute(self, query, vars=None):
        return self.connection._guarded(super().execute, query, vars)

    def executemany(self, query, vars_list):
        return self.connection._guarded(super().executemany, query, vars_list)

    def copy_expert(self, sql, file, size=8192):
        return self.connection._guarded(super().copy_expert, sql, file, size)

    def callproc(self, procname, parameters=None):
        return self.connection._guarded(super().callproc, procname, parameters)


def connect(dsn: str, reply_timeout: float) -> GuardedConnection:
    """A psycopg2 connection to ``dsn`` whose every wait for a reply is bounded by
    ``reply_timeout`` seconds (0: unbounded)."""
    conn = psycopg2.connect(dsn, connection_factory=GuardedConnection)
    conn.reply_timeout = float(reply_timeout)
    return conn
