"""Polygon.io (now Massive) daily aggregates over REST — the one real vendor wire format.

``GET {base_url}/v2/aggs/ticker/{ticker}/range/1/day/{from}/{to}``
(``?adjusted=true&sort=asc&limit=50000``) with the API key in an
``Authorization: Bearer <key>`` header (never in the URL, so it cannot leak into logs,
audit rows or exception messages). See docs/sources.md for the wire format, status
codes and rate-limit signalling this client follows.

The client does not retry: it classifies every failure as a
:class:`~market_pipeline.errors.TransientSourceError` (429, 5xx, network, timeout,
a connection cut mid-body) or a :class:`~market_pipeline.errors.PermanentSourceError`
(other 4xx, unknown ticker, malformed payload) and leaves retrying to Airflow.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import pandas as pd
import requests

from market_pipeline.errors import (
    ConfigurationError,
    PermanentSourceError,
    TransientSourceError,
)
from market_pipeline.sources.base import empty_bars, normalise_bars

DEFAULT_BASE_URL = "https://api.polygon.io"
#: Polygon stamps a daily bar with the start of the session day in New York.
VENDOR_TZ = "America/New_York"
#: Statuses Polygon puts in a successful body ("DELAYED": a plan with delayed data).
OK_STATUSES = ("OK", "DELAYED")
_BAR_FIELDS = {"t": "timestamp", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}
_MAX_PAGES = 20
_EXCERPT = 200


class PolygonAggregatesSource:
    """Daily bars from Polygon/Massive's aggregates endpoint.

    :param base_url: API root, e.g. ``https://api.polygon.io`` (the ``market_source`` host).
    :param api_key: the API key (from the ``market_source`` connection's password).
    :param timeout: seconds to wait for the connection and for each read.
    :param session: a ``requests.Session`` to reuse (connection pooling); one is made if None.
    :param adjusted: ask for split-adjusted bars (Polygon's default).
    :param check_unknown: when the aggregates answer is empty, ask the ticker-overview
        endpoint whether the ticker exists, so an unknown symbol fails permanently instead of
        looking like a day without trades (the aggregates endpoint cannot tell them apart).

    After each ``fetch``, :attr:`last_request` holds ``status`` (HTTP status or None),
    ``latency_ms``, ``url`` (no key in it), ``request_id``, ``rows``, ``pages`` and
    ``error`` (class name or None) for the caller's audit row.
    """

    name = "polygon"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        adjusted: bool = True,
        check_unknown: bool = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"expected the vendor base URL to start with http:// or https://, "
                f"found {base_url!r} (host of the market_source connection)"
            )
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.session = session or requests.Session()
        self.adjusted = adjusted
        self.check_unknown = check_unknown
        self.last_request: dict[str, Any] | None = None

    def __repr__(self) -> str:  # never show the key
        return f"PolygonAggregatesSource(base_url={self.base_url!r}, timeout={self.timeout})"

    # -- public ------------------------------------------------------------------------
    def fetch(self, symbol: str, start: date, end: date) -> pd.DataFrame:
        """Bars of ``symbol`` in [start, end]; empty when the vendor has none yet."""
        path = (
            f"/v2/aggs/ticker/{quote(symbol, safe='')}/range/1/day/"
            f"{start.isoformat()}/{end.isoformat()}"
        )
        params = {"adjusted": str(self.adjusted).lower(), "sort": "asc", "limit": "50000"}
        url: str | None = f"{self.base_url}{path}"
        rows: list[dict] = []
        pages = 0
        started = time.perf_counter()
        self.last_request = {"status": None, "latency_ms": None, "url": url, "pages": 0}
        try:
            while url:
                pages += 1
                self.last_request["pages"] = pages
                if pages > _MAX_PAGES:
                    raise self._permanent(
                        f"expected at most {_MAX_PAGES} pages of daily bars, found more "
                        "(next_url keeps coming)",
                        symbol,
                        end,
                        "pagination loop",
                    )
                body = self._get_json(url, params if pages == 1 else None, symbol, end, started)
                rows.extend(self._results(body, symbol, end))
                # next_url is absolute and carries its own cursor, but never the key.
                url = body.get("next_url") or None
                if url and not str(url).startswith(self.base_url + "/"):
                    # Following it would hand our bearer key to another host.
                    raise self._permanent(
                        f"expected next_url on {self.base_url}, found {self._excerpt(url)!r}",
                        symbol,
                        end,
                        "foreign next_url",
                    )
            if not rows and self.check_unknown:
                self._check_ticker_exists(symbol, end, started)
            bars = self._to_frame(rows, symbol, end)
        except (TransientSourceError, PermanentSourceError) as exc:
            self.last_request["error"] = type(exc).__name__
            raise
        bars = bars[(bars["trade_date"] >= start) & (bars["trade_date"] <= end)]
        self.last_request.update(rows=len(bars), pages=pages, error=None)
        return bars.reset_index(drop=True)

    # -- HTTP --------------------------------------------------------------------------
    def _get(
        self, url: str, params: dict | None, symbol: str, session: date, started: float
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        try:
            response = self.session.get(url, params=params, headers=headers, timeout=self.timeout)
        except requests.Timeout as exc:
            self._stamp(None, url, started)
            raise self._transient(
                f"expected an answer from {self._host()} within {self.timeout:g} s, found none",
                symbol,
                session,
                f"timeout: {type(exc).__name__}",
            ) from None
        except requests.RequestException as exc:
            # Connection refused/reset, or the body was cut off mid-transfer.
            self._stamp(None, url, started)
            raise self._transient(
                f"expected a complete HTTP response from {self._host()}, "
                f"found a network error ({type(exc).__name__})",
                symbol,
                session,
                f"network: {self._scrub(str(exc))}",
            ) from None
        self._stamp(response.status_code, response.url, started)
        self.last_request["request_id"] = response.headers.get("X-Request-Id")
        return response

    def _get_json(
        self, url: str, params: dict | None, symbol: str, session: date, started: float
    ) -> dict:
        response = self._get(url, params, symbol, session, started)
        status = response.status_code
        if status == 200:
            return self._parse(response, symbol, session)
        detail = self._error_text(response)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise self._transient(
                "expected 200, found 429 Too Many Requests (vendor rate limit)"
                + (f"; retry after {retry_after:g} s" if retry_after is not None else "")
                + f": {detail}",
                symbol,
                session,
                "http 429",
                retry_after=retry_after,
            )
        if status >= 500:
            raise self._transient(
                f"expected 200, found {status} (vendor server error): {detail}",
                symbol,
                session,
                f"http {status}",
            )
        if status == 404:
            raise self._permanent(
                f"expected daily bars, found 404 (unknown symbol {symbol!r} or endpoint): {detail}",
                symbol,
                session,
                "unknown symbol",
            )
        if status in (401, 403):
            raise self._permanent(
                f"expected 200, found {status} (API key rejected or plan not entitled; "
                f"check the market_source connection): {detail}",
                symbol,
                session,
                f"http {status}",
            )
        raise self._permanent(
            f"expected 200, found {status}: {detail}", symbol, session, f"http {status}"
        )

    def _check_ticker_exists(self, symbol: str, session: date, started: float) -> None:
        """404 from the ticker overview means the vendor does not know ``symbol`` at all."""
        url = f"{self.base_url}/v3/reference/tickers/{quote(symbol, safe='')}"
        response = self._get(url, None, symbol, session, started)
        if response.status_code == 404:
            raise self._permanent(
                f"unknown symbol: expected {symbol!r} to be a ticker the vendor knows, "
                f"found 404 from the ticker overview: {self._error_text(response)}",
                symbol,
                session,
                "unknown symbol",
            )
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise self._transient(
                f"expected 200 from the ticker overview, found {response.status_code}: "
                f"{self._error_text(response)}",
                symbol,
                session,
                f"http {response.status_code}",
                retry_after=retry_after,
            )
        # Any other answer: the ticker exists (or we cannot tell); an empty range stands.

    # -- payload -----------------------------------------------------------------------
    def _parse(self, response: requests.Response, symbol: str, session: date) -> dict:
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            raise self._permanent(
                f"expected a JSON aggregates body, found malformed or truncated JSON "
                f"({exc}): {self._excerpt(response.text)!r}",
                symbol,
                session,
                "malformed payload",
            ) from None
        if not isinstance(body, dict):
            raise self._permanent(
                f"expected a JSON object, found {type(body).__name__}",
                symbol,
                session,
                "malformed payload",
            )
        if body.get("request_id"):
            self.last_request["request_id"] = str(body["request_id"])
        status = body.get("status")
        if status not in OK_STATUSES:
            # Polygon can refuse in the body of a 200 (e.g. status NOT_AUTHORIZED).
            raise self._permanent(
                f"expected status OK, found {status!r}: "
                f"{self._scrub(str(body.get('error') or body.get('message') or ''))}",
                symbol,
                session,
                f"vendor status {status}",
            )
        ticker = body.get("ticker")
        if ticker is not None and str(ticker).upper() != symbol.upper():
            raise self._permanent(
                f"expected bars for {symbol}, found bars for {ticker}",
                symbol,
                session,
                "wrong ticker",
            )
        return body

    def _results(self, body: dict, symbol: str, session: date) -> list[dict]:
        results = body.get("results")
        if results is None:  # the documented empty answer has no results key
            return []
        if not isinstance(results, list):
            raise self._permanent(
                f"expected results to be a list, found {type(results).__name__}",
                symbol,
                session,
                "malformed payload",
            )
        for i, bar in enumerate(results):
            missing = [k for k in _BAR_FIELDS if not isinstance(bar, dict) or k not in bar]
            bad = [
                k
                for k in _BAR_FIELDS
                if k not in missing
                and (not isinstance(bar[k], int | float) or isinstance(bar[k], bool))
            ]
            if missing or bad:
                raise self._permanent(
                    f"expected bar {i} to hold numbers t,o,h,l,c,v; "
                    + (f"missing {','.join(missing)}" if missing else "")
                    + ("; " if missing and bad else "")
                    + (f"non-numeric {','.join(bad)}" if bad else ""),
                    symbol,
                    session,
                    "malformed payload",
                )
        return results

    def _to_frame(self, rows: list[dict], symbol: str, session: date) -> pd.DataFrame:
        if not rows:
            return empty_bars()
        frame = pd.DataFrame([{name: bar[k] for k, name in _BAR_FIELDS.items()} for bar in rows])
        stamps = pd.to_datetime(frame.pop("timestamp"), unit="ms", utc=True)
        frame["trade_date"] = stamps.dt.tz_convert(VENDOR_TZ).dt.date
        frame["volume"] = frame["volume"].round()
        duplicated = frame["trade_date"].duplicated(keep=False)
        if duplicated.any():
            dates = sorted({d.isoformat() for d in frame.loc[duplicated, "trade_date"]})
            raise self._permanent(
                f"expected one daily bar per session, found duplicates for {', '.join(dates)}",
                symbol,
                session,
                "duplicate bars",
            )
        return normalise_bars(frame)

    # -- helpers -----------------------------------------------------------------------
    def _stamp(self, status: int | None, url: str, started: float) -> None:
        self.last_request.update(
            status=status,
            latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
            url=self._scrub(url),
        )

    def _host(self) -> str:
        return self.base_url.split("://", 1)[-1]

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _excerpt(self, text: str) -> str:
        text = self._scrub(text)
        return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."

    def _error_text(self, response: requests.Response) -> str:
        """The vendor's own words: ``error`` or ``message`` of its JSON, else the raw text."""
        try:
            body = response.json()
        except ValueError:
            return self._excerpt(response.text) or response.reason or ""
        if isinstance(body, dict):
            words = body.get("error") or body.get("message") or body.get("status")
            if words:
                return self._excerpt(str(words))
        return self._excerpt(response.text)

    def _transient(self, message: str, symbol: str, session: date, cause: str, **kw):
        return TransientSourceError(
            self._scrub(message), symbol=symbol, session=session, cause=self._scrub(cause), **kw
        )

    def _permanent(self, message: str, symbol: str, session: date, cause: str):
        return PermanentSourceError(
            self._scrub(message), symbol=symbol, session=session, cause=self._scrub(cause)
        )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
