"""score_universe: score and rank the symbols that passed, cross-sectionally."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from market_pipeline import calendar, indicators, scoring, store
from market_pipeline.stages.settings import Settings


def score_universe(conn, passed: Sequence[str], session: date, settings: Settings) -> dict:
    """Replace D's ``scores`` with the ranking of ``passed``; ``{"trade_date", "scored",
    "top"}`` (the five best)."""
    schema = settings.schema
    latest = store.indicators_on(conn, session, indicators.INDICATOR_COLUMNS, schema=schema)
    latest = latest[latest["symbol"].isin(passed)].reset_index(drop=True)
    then = calendar.previous_sessions(session, scoring.MOMENTUM_SESSIONS + 1, settings.exchange)[0]
    latest["close_20"] = latest["symbol"].map(store.clean_closes_on(conn, then, schema=schema))
    sigs = store.signals_on(conn, session, passed, schema=schema)
    scores = scoring.score_universe(latest, sigs)
    count = store.replace_scores(conn, session, scores, schema=schema)
    top = scores.head(5)[["symbol", "score"]].to_dict("records")
    return {"trade_date": session.isoformat(), "scored": count, "top": top}
