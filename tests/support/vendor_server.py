"""A loopback HTTP server speaking Polygon/Massive's aggregates wire format, for tests.

It serves ``GET /v2/aggs/ticker/{T}/range/1/day/{from}/{to}`` and
``GET /v3/reference/tickers/{T}`` exactly as the vendor does (bodies, status codes, the
empty-range shape, 401/404/429 error bodies), counts requests and the most requests it
ever had in flight at once, and can be scripted per symbol (a queue of replies such as
``[rate_limited(retry_after=1), Reply()]``) or slowed down with a global ``delay``.

To observe concurrency without timing, ``hold()`` keeps every vendor request in flight
(counted, unanswered) until ``release()``; ``wait_in_flight(n)`` blocks the test until ``n``
requests are held at once::

    server.hold()
    ...                            # start what calls the vendor
    server.wait_in_flight(2)       # two calls are in flight together
    ...                            # check nothing else gets in while they are held
    server.release()

In-process::

    with VendorServer(api_key="k") as server:
        server.set_bars("AAPL", frame)
        server.script("AAPL", [rate_limited(1), Reply()])
        ...  # point the client at server.url
        assert server.max_concurrent <= 2

As a separate process (for an Airflow end-to-end test)::

    python -m tests.support.vendor_server --port 8765 --data DIR [--api-key K] [--delay S]

``DIR`` holds ``<SYMBOL>.csv`` / ``<SYMBOL>.parquet`` files in the file-drop format.
Control endpoints (not counted as vendor requests): ``GET /__stats``,
``POST /__reset`` (clears counters and scripts), ``POST /__script/{SYMBOL}`` with a
JSON list of reply objects (``{"status", "body", "headers", "delay", "truncate"}``),
``POST /__delay`` with ``{"seconds": S}``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

import pandas as pd

NEW_YORK = ZoneInfo("America/New_York")
RATE_LIMIT_MESSAGE = (
    "You've exceeded the maximum requests per minute, please wait or upgrade your "
    "subscription to continue. https://polygon.io/pricing"
)
_AGGS = re.compile(r"^/v2/aggs/ticker/([^/]+)/range/([^/]+)/([^/]+)/([^/]+)/([^/]+)/?$")
_TICKER = re.compile(r"^/v3/reference/tickers/([^/]+)/?$")


@dataclass
class Reply:
    """One scripted answer. ``body=None`` means the normal answer for the request.

    ``body`` may be a dict/list (sent as JSON), str or bytes (sent as is).
    ``truncate`` announces the full Content-Length but sends only half of the body and
    closes the connection (a transfer cut off mid-body).
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate: bool = False

    @classmethod
    def from_json(cls, spec: dict | str) -> Reply:
        if spec == "bars":
            return cls()
        if not isinstance(spec, dict):
            raise ValueError(f"expected a reply object or 'bars', found {spec!r}")
        return cls(
            status=int(spec.get("status", 200)),
            body=spec.get("body"),
            headers=dict(spec.get("headers") or {}),
            delay=float(spec.get("delay", 0.0)),
            truncate=bool(spec.get("truncate", False)),
        )


def _request_id() -> str:
    return uuid.uuid4().hex


def rate_limited(retry_after: float | str | None = 1) -> Reply:
    """Polygon's 429 body, with a ``Retry-After`` header when ``retry_after`` is given."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    body = {"status": "ERROR", "request_id": _request_id(), "error": RATE_LIMIT_MESSAGE}
    return Reply(status=429, body=body, headers=headers)


def server_error(status: int = 500) -> Reply:
    """A 5xx: JSON for 500 (the API), an HTML gateway page for 502/503/504."""
    if status == 500:
        body: Any = {"status": "ERROR", "request_id": _request_id(), "error": "Internal error"}
    else:
        body = f"<html><body><h1>{status} Service Unavailable</h1></body></html>"
    return Reply(status=status, body=body, headers={"Content-Type": "text/html"})


def not_authorized() -> Reply:
    """Polygon's 403 for a plan without access to the requested data."""
    body = {
        "status": "NOT_AUTHORIZED",
        "request_id": _request_id(),
        "message": "You are not entitled to this data. Please upgrade your plan at "
        "https://polygon.io/pricing",
    }
    return Reply(status=403, body=body)


def slow(seconds: float) -> Reply:
    """The normal answer, after ``seconds``."""
    return Reply(delay=seconds)


class VendorServer:
    """Polygon-compatible loopback server on 127.0.0.1 (port 0 = any free port).

    :param api_key: the key requests must carry (``Authorization: Bearer`` or ``apiKey=``);
        None accepts any request.
    :param delay: seconds every vendor request waits before it is answered.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.delay = delay
        self._bars: dict[str, pd.DataFrame] = {}
        self._known: set[str] = set()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._open = threading.Event()  # cleared by hold(): requests wait until release()
        self._open.set()
        self.requests = 0
        self.in_flight = 0
        self.max_concurrent = 0
        self.per_symbol: dict[str, int] = defaultdict(int)
        self.log: list[dict[str, Any]] = []
        self._httpd = _Server((host, port), _Handler)
        self._httpd.vendor = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> VendorServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll interval
            name="vendor-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> VendorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- programming -------------------------------------------------------------------
    def set_bars(self, symbol: str, frame: pd.DataFrame) -> None:
        """Serve ``frame`` (columns trade_date or date, open, high, low, close, volume)."""
        bars = frame.rename(columns={"date": "trade_date"}).copy()
        bars["trade_date"] = pd.to_datetime(bars["trade_date"]).dt.date
        with self._lock:
            self._bars[symbol] = bars.sort_values("trade_date").reset_index(drop=True)
            self._known.add(symbol)

    def add_known(self, symbol: str) -> None:
        """A ticker the vendor knows but has no bars for (every range is empty)."""
        with self._lock:
            self._known.add(symbol)

    def script(self, symbol: str, responses: list[Reply | dict | str]) -> None:
        """Queue replies for ``symbol``'s next aggregates requests; then normal answers."""
        replies = [r if isinstance(r, Reply) else Reply.from_json(r) for r in responses]
        with self._lock:
            self._scripts[symbol].extend(replies)

    def load_dir(self, directory: str | Path) -> list[str]:
        """Serve every ``<SYMBOL>.csv``/``.parquet`` of a file-drop folder; returns symbols."""
        from market_pipeline.sources.file_drop import FileDropSource

        source = FileDropSource(directory)
        symbols = sorted(
            {p.stem for p in Path(directory).iterdir() if p.suffix in (".csv", ".parquet")}
        )
        for symbol in symbols:
            self.set_bars(symbol, source.fetch(symbol, date(1900, 1, 1), date(2200, 1, 1)))
        return symbols

    def hold(self) -> None:
        """Keep every vendor request from now on in flight, unanswered, until ``release()``."""
        self._open.clear()

    def release(self) -> None:
        """Answer the held requests (and every later one at once)."""
        self._open.set()

    def wait_in_flight(self, count: int, timeout: float = 300.0) -> int:
        """Block until ``count`` vendor requests are in flight at once; returns how many are.

        Raises ``TimeoutError`` (naming the counts) when that does not happen in ``timeout``.
        """
        with self._arrived:
            if not self._arrived.wait_for(lambda: self.in_flight >= count, timeout=timeout):
                raise TimeoutError(
                    f"expected {count} vendor requests in flight at once within {timeout:g} s, "
                    f"found {self.in_flight} (requests so far: {self.requests})"
                )
            return self.in_flight

    def reset(self) -> None:
        """Clear counters, the request log and pending scripts (bars stay)."""
        with self._lock:
            self.requests = self.max_concurrent = 0
            self.per_symbol.clear()
            self.log.clear()
            self._scripts.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_concurrent": self.max_concurrent,
                "per_symbol": dict(self.per_symbol),
            }

    # -- serving (called from handler threads) -----------------------------------------
    def _enter(self, symbol: str | None, path: str, authorized: bool) -> Reply | None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
            self._arrived.notify_all()
            if symbol:
                self.per_symbol[symbol] += 1
            self.log.append({"path": path, "symbol": symbol, "authorized": authorized})
            queue = self._scripts.get(symbol) if symbol and authorized else None
            return queue.popleft() if queue else None

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _aggregates(self, ticker: str, mult: str, span: str, start: str, end: str):
        if mult != "1" or span != "day":
            return 400, _error(f"this test server serves only 1/day bars, not {mult}/{span}")
        try:
            first, last = date.fromisoformat(start), date.fromisoformat(end)
        except ValueError:
            return 400, _error(
                "Could not parse the time parameter: 'from'. Use YYYY-MM-DD or Unix MS Timestamps"
            )
        with self._lock:
            bars = self._bars.get(ticker)
        if bars is not None:
            bars = bars[(bars["trade_date"] >= first) & (bars["trade_date"] <= last)]
        body: dict[str, Any] = {"ticker": ticker, "queryCount": 0, "resultsCount": 0}
        body["adjusted"] = True
        if bars is not None and len(bars):
            results = [
                {
                    "v": float(row.volume),
                    "vw": round((row.high + row.low + row.close) / 3.0, 4),
                    "o": float(row.open),
                    "c": float(row.close),
                    "h": float(row.high),
                    "l": float(row.low),
                    "t": _session_ms(row.trade_date),
                    "n": 1000,
                }
                for row in bars.itertuples(index=False)
            ]
            body.update(queryCount=len(results), resultsCount=len(results), results=results)
        body.update(status="OK", request_id=_request_id(), count=body["resultsCount"])
        return 200, body

    def _ticker(self, ticker: str):
        with self._lock:
            known = ticker in self._known
        if not known:
            body = {"status": "NOT_FOUND", "request_id": _request_id()}
            body["message"] = "Ticker not found."
            return 404, body
        results = {"ticker": ticker, "name": ticker, "market": "stocks", "locale": "us"}
        results.update(active=True, currency_name="usd", type="CS")
        return 200, {"request_id": _request_id(), "results": results, "status": "OK"}


def _error(message: str) -> dict[str, str]:
    return {"status": "ERROR", "request_id": _request_id(), "error": message}


def _session_ms(day: date) -> int:
    """Polygon stamps a daily bar with midnight New York time of the session, in Unix ms."""
    return int(datetime(day.year, day.month, day.day, tzinfo=NEW_YORK).timestamp() * 1000)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a handler sleeping out a delay
    vendor: VendorServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and truncation works

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    # -- dispatch ----------------------------------------------------------------------
    def do_GET(self) -> None:
        vendor = self.server.vendor
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if path == "/__stats":
            self._send(200, vendor.stats())
            return
        aggs, ticker = _AGGS.match(path), _TICKER.match(path)
        if not aggs and not ticker:
            self._send(404, _error(f"Not found: {path}"))
            return
        symbol = (aggs or ticker).group(1)
        authorized = self._authorized(parse_qs(parts.query))
        reply = vendor._enter(symbol if aggs else None, path, authorized)
        try:
            # Held requests count as in flight; the bound only keeps a forgotten hold from
            # leaking threads past the test.
            vendor._open.wait(timeout=900)
            if vendor.delay:
                time.sleep(vendor.delay)
            if not authorized:
                self._send(401, _error("Unknown API Key"))
                return
            if reply is not None and reply.delay:
                time.sleep(reply.delay)
            if reply is not None and reply.body is not None:
                self._send(reply.status, reply.body, reply.headers, truncate=reply.truncate)
                return
            status, body = vendor._aggregates(*aggs.groups()) if aggs else vendor._ticker(symbol)
            if reply is not None:
                headers, truncate = reply.headers, reply.truncate
                status = reply.status if reply.status != 200 else status
            else:
                headers, truncate = {}, False
            self._send(status, body, headers, truncate=truncate)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer
        finally:
            vendor._leave()

    def do_POST(self) -> None:
        vendor = self.server.vendor
        path = unquote(urlsplit(self.path).path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            payload = json.loads(raw) if raw else None
            if path == "/__reset":
                vendor.reset()
            elif path.startswith("/__script/"):
                vendor.script(path.removeprefix("/__script/"), list(payload or []))
            elif path == "/__delay":
                vendor.delay = float((payload or {}).get("seconds", 0.0))
            else:
                self._send(404, _error(f"Not found: {path}"))
                return
        except (ValueError, TypeError) as exc:
            self._send(400, _error(f"bad control request: {exc}"))
            return
        self._send(200, vendor.stats())

    # -- helpers -----------------------------------------------------------------------
    def _authorized(self, query: dict[str, list[str]]) -> bool:
        expected = self.server.vendor.api_key
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        return header == f"Bearer {expected}" or query.get("apiKey") == [expected]

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        *,
        truncate: bool = False,
    ) -> None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if truncate else data)
        self.wfile.flush()
        if truncate:
            self.close_connection = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data", help="folder of <SYMBOL>.csv/.parquet files to serve")
    parser.add_argument("--api-key", default=None, help="required key (default: accept any)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)

    server = VendorServer(api_key=args.api_key, delay=args.delay, host=args.host, port=args.port)
    symbols = server.load_dir(args.data) if args.data else []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"vendor server listening on {server.url} serving {len(symbols)} symbols", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
