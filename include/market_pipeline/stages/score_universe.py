"""score_universe: score and rank, cross-sectionally, every symbol whose day is valid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date

from market_pipeline import calendar, indicators, scoring, store
from market_pipeline.stages.settings import Settings

log = logging.getLogger(__name__)


def servable(conn, session: date, settings: Settings) -> list[dict]:
    """The active symbols whose results for ``session`` are valid in Postgres
    (``store.servable_on``), each with its ``unranked`` reasons (empty: ranked).

    Not only the symbols that passed in the current attempt: a clear that fails one symbol
    leaves its earlier valid results for the session served (see docs/cache.md).
    """
    active = store.active_symbols(conn, schema=settings.schema)
    rows = store.servable_on(conn, session, active, schema=settings.schema)
    for row in rows:
        row["unranked"] = scoring.unranked_reasons(row)
    return rows


def score_universe(conn, passed: Sequence[str], session: date, settings: Settings) -> dict:
    """Replace D's ``scores`` with the ranking of the servable symbols that are ready and
    unwarned (``scoring.unranked_reasons``); ``{"trade_date", "scored", "unranked", "top"}``
    (the five best). ``passed`` (this attempt's survivors) is only logged: a symbol with
    valid results from an earlier attempt of the session is scored too."""
    schema = settings.schema
    rows = servable(conn, session, settings)
    ranked = [r["symbol"] for r in rows if not r["unranked"]]
    unranked = {r["symbol"]: r["unranked"] for r in rows if r["unranked"]}
    earlier = sorted({r["symbol"] for r in rows} - set(passed))
    log.info(
        "scoring %d of %d servable symbols for %s (%d passed this attempt; valid from an "
        "earlier attempt: %s); unranked: %s",
        len(ranked),
        len(rows),
        session,
        len(passed),
        earlier,
        unranked,
    )
    latest = store.indicators_on(conn, session, indicators.INDICATOR_COLUMNS, schema=schema)
    latest = latest[latest["symbol"].isin(ranked)].reset_index(drop=True)
    then = calendar.previous_sessions(session, scoring.MOMENTUM_SESSIONS + 1, settings.exchange)[0]
    latest["close_20"] = latest["symbol"].map(store.clean_closes_on(conn, then, schema=schema))
    sigs = store.signals_on(conn, session, ranked, schema=schema, reasons=False)
    scores = scoring.score_universe(latest, sigs)
    count = store.replace_scores(conn, session, scores, schema=schema)
    top = scores.head(5)[["symbol", "score"]].to_dict("records")
    return {
        "trade_date": session.isoformat(),
        "scored": count,
        "unranked": unranked,
        "top": top,
    }
