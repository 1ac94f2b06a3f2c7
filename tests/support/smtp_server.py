"""A real SMTP server on a loopback port (aiosmtpd) that keeps the messages it receives."""

from __future__ import annotations

import asyncio
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage


class LoopbackSmtpServer:
    """``with LoopbackSmtpServer() as smtp:`` — ``smtp.port``, ``smtp.messages``.

    Runs aiosmtpd's SMTP protocol in its own event-loop thread on 127.0.0.1 (port 0, so
    parallel test runs never collide). A message is in ``messages`` before the client's
    DATA command is answered, so a sender that returned has been fully received.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopback-smtp", daemon=True)
        self._server = None

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd handler hook
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def _run(self) -> None:
        from aiosmtpd.smtp import SMTP

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: SMTP(self), "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> LoopbackSmtpServer:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("loopback SMTP server did not start")
        return self

    def __exit__(self, *exc) -> None:
        def stop() -> None:
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def connection_json(self, from_email: str = "market-daily@example.com") -> str:
        """An Airflow SMTP connection (``AIRFLOW_CONN_…`` JSON) for this server."""
        import json

        return json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": self.port,
                "extra": {
                    "from_email": from_email,
                    "disable_ssl": True,
                    "disable_tls": True,
                    "retry_limit": 0,
                    "timeout": 10,
                },
            }
        )
