"""wait_for_bars: the raw gate's sensor — wait for D's bar of each symbol, asking the source.

Cheap by design: it reads the raw layer and asks the source again for the symbols still
without D; it judges nothing (``validate_bars`` does). It runs in the vendor pool, so its
calls to the source count against the same limit as ``ingest_bars``'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date

from market_pipeline import store
from market_pipeline.errors import NotDeliveredError, next_action
from market_pipeline.stages import task_id
from market_pipeline.stages.ingest_bars import RawWindows, fetch_and_append
from market_pipeline.stages.outcome import Outcome, run_each
from market_pipeline.stages.settings import Settings

log = logging.getLogger(__name__)


def wait_for_bars(
    conn,
    symbols: Sequence[str],
    session: date,
    settings: Settings,
    *,
    windows: RawWindows,
    chunk: bool,
    late_grace_over: Callable[[], bool],
    where: Callable[[str], str] | None = None,
    label: str | None = None,
) -> Outcome | None:
    """Whether every symbol has its raw bar of D (where its window, ``windows.starts[symbol]``
    to D, ends).

    1. Read every symbol's latest raw bar of D (one query). A symbol without it is asked
       from the source again (``windows.open_source()``, opened on first need), appending to
       raw as ingest does.
    2. Still without D: return ``None`` (the sensor pokes again) — unless this is a chunk
       whose ``late_grace_over()``, then the late symbols fail ``not_delivered`` (naming
       ``where(symbol)`` the bar was expected from) and the rest go on.

    The result per delivered symbol: ``{"window_start"}``.
    """
    schema, starts, attempt = settings.schema, windows.starts, windows.attempt
    source = None
    # Only D's bar is looked at: one row per symbol, not its window.
    latest = store.latest_raw_rows_many(
        conn, dict.fromkeys(symbols, (session, session)), schema=schema
    )

    def delivered(symbol: str) -> bool:
        nonlocal source
        if latest[symbol]:
            return True
        source = source or windows.open_source()
        last_clean = store.last_clean_session(conn, symbol, session, schema=schema)
        fetched = fetch_and_append(
            conn, symbol, session, settings, source=source, last_clean=last_clean, attempt=attempt
        )
        if not store.latest_raw_rows_many(conn, {symbol: (session, session)}, schema)[symbol]:
            log.info("%s: bar for %s not delivered yet (%s)", symbol, session, fetched)
            return False
        return True

    out = run_each(symbols, delivered, conn=conn, chunk=chunk)
    late = sorted(s for s, ok in out.ok.items() if not ok)
    if late:
        if not chunk or not late_grace_over():
            log.info(
                "waiting for %d symbol(s) not delivered for %s: %s",
                len(late),
                session,
                ", ".join(late[:20]),
            )
            return None
        for s in late:
            found = f"none from {where(s)}" if where else "none"
            out.fail(
                s,
                NotDeliveredError(
                    f"expected the bar for {session} within the late grace period, found {found}",
                    symbol=s,
                    session=session,
                    action=next_action(
                        "not_delivered",
                        task_id=task_id("wait_for_bars"),
                        label=label,
                        symbol=s,
                        session=session,
                    ),
                ),
            )
    out.ok = {s: {"window_start": starts[s].isoformat()} for s in sorted(out.ok)}
    return out
