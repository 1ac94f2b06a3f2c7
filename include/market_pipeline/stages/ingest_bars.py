"""ingest_bars: fetch each symbol's missing sessions, append them to the raw layer, audit.

The one fetch (:func:`ingest_bars`; :func:`fetch_and_append` for one symbol) is also how the
raw gate asks the source again;
:class:`RawWindows` is what that gate (``wait_for_bars``, ``validate_bars``) is given for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from market_pipeline import calendar, store
from market_pipeline.errors import PermanentSourceError, failure_kind
from market_pipeline.stages.outcome import Outcome, run_each, write_passed
from market_pipeline.stages.settings import Attempt, Settings

if TYPE_CHECKING:
    import pandas as pd

    from market_pipeline.sources.base import BarSource


@dataclass(frozen=True)
class RawWindows:
    """What the raw gate (``wait_for_bars``, then ``validate_bars``) judges and where it asks
    again: each symbol's raw window ``[starts[symbol], session]`` (from ingest), the source
    to ask again for a window (``open_source()``, opened on first need) and the attempt each
    such fetch is audited under — and the gate's verdicts are written under."""

    starts: Mapping[str, date]
    open_source: Callable[[], BarSource]
    attempt: Attempt


def ingest_bars(
    conn,
    symbols: Sequence[str],
    session: date,
    settings: Settings,
    *,
    source: BarSource,
    attempt: Attempt,
    chunk: bool,
    windows: Mapping[str, tuple[date, date]] | None = None,
) -> Outcome:
    """Fetch each symbol's window — (last clean session, D], the last clean sessions of the
    whole chunk in one query, or ``windows[symbol]`` (both ends included) — and append it to
    ``raw_bars``.

    Each symbol is fetched from the source on its own (a failed fetch fails only that symbol,
    audited ``outcome="error"``; without a chunk the audit row is written before the error
    propagates); then every fetched symbol's bars are appended and every attempt audited, each
    in one statement. The result per symbol: ``{"window_start", "window_end", "fetched",
    "appended", "delivered"}``.
    """
    if windows is None:
        last_clean = store.last_clean_sessions(conn, symbols, session, schema=settings.schema)
        windows = {s: fetch_window(last_clean[s], session, settings) for s in symbols}
    schema = settings.schema
    audits: list[dict] = []

    def audit(symbol: str, outcome: str, **fields) -> dict:
        start, end = windows[symbol]
        row = {
            "symbol": symbol,
            "window_start": start,
            "window_end": end,
            "source": source.name,
            "run_id": attempt.run_id,
            "try_number": attempt.try_number,
            "outcome": outcome,
            **fields,
        }
        audits.append(row)
        return row

    def fetch(symbol: str) -> tuple:
        started = time.perf_counter()
        try:
            bars = source.fetch(symbol, *windows[symbol])
            check_one_bar_per_session(bars, symbol, session)
        except Exception as exc:
            latency = (time.perf_counter() - started) * 1000
            row = audit(
                symbol,
                "error",
                latency_ms=latency,
                error_kind=failure_kind(exc),
                error_message=str(exc),
            )
            if not chunk and not conn.closed:
                conn.rollback()
                store.record_fetches(conn, [row], schema)  # the task fails with it
            raise
        return bars, (time.perf_counter() - started) * 1000

    out = run_each(symbols, fetch, conn=conn, chunk=chunk)
    fetched = dict(out.ok)
    appended: dict[str, int] = {}

    def append_all(found: dict) -> None:
        appended.update(
            store.append_raw_bars_many(
                conn,
                {s: bars for s, (bars, _) in found.items()},
                source=source.name,
                run_id=attempt.run_id,
                fetched_at=datetime.now(UTC),
                schema=schema,
            )
        )

    write_passed(out, append_all, conn=conn, chunk=chunk)
    results = {}
    for symbol in out.ok:
        bars, latency = fetched[symbol]
        delivered = session in bars["trade_date"].tolist()
        audit(
            symbol,
            "ok" if delivered else "not_delivered",
            rows_fetched=len(bars),
            rows_appended=appended[symbol],
            latency_ms=latency,
        )
        start, end = windows[symbol]
        results[symbol] = {
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "fetched": len(bars),
            "appended": appended[symbol],
            "delivered": delivered,
        }
    if chunk or results:
        store.record_fetches(conn, audits, schema)
    out.ok = results
    return out


def fetch_window(last_clean: date | None, session: date, settings: Settings) -> tuple[date, date]:
    """(session after the last clean one, D]; a symbol with no clean bar gets its history."""
    if last_clean is None:
        history = settings.history_sessions
        return calendar.previous_sessions(session, history, settings.exchange)[0], session
    return calendar.next_session(last_clean, settings.exchange), session


def check_one_bar_per_session(bars: pd.DataFrame, symbol: str, session: date) -> None:
    """A payload with two bars for one session cannot be versioned: reject it as the source's."""
    days = bars["trade_date"].tolist()
    if len(set(days)) != len(days):  # the usual case answered without a pandas pass
        duplicated = bars["trade_date"].duplicated(keep=False)
        dates = sorted({d.isoformat() for d in bars.loc[duplicated, "trade_date"]})
        raise PermanentSourceError(
            f"expected one bar per session from the source, found duplicates for "
            f"{', '.join(dates[:5])}",
            symbol=symbol,
            session=session,
            cause="duplicate bars",
        )


def fetch_and_append(
    conn,
    symbol: str,
    session: date,
    settings: Settings,
    *,
    source: BarSource,
    last_clean: date | None,
    attempt: Attempt,
    window: tuple[date, date] | None = None,
) -> dict:
    """:func:`ingest_bars` of one symbol: fetch (``last_clean``, D] (or ``window``, both
    ends included), append to raw, audit the attempt. A failed fetch is audited
    (``outcome="error"``) and raised."""
    windows = {symbol: window or fetch_window(last_clean, session, settings)}
    out = ingest_bars(
        conn,
        [symbol],
        session,
        settings,
        source=source,
        attempt=attempt,
        chunk=False,
        windows=windows,
    )
    return out.ok[symbol]
