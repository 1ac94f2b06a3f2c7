"""The day's per-symbol snapshots from Postgres: what publish writes and verify checks."""

from __future__ import annotations

from datetime import date

from market_pipeline import indicators, store
from market_pipeline.stages.score_universe import servable
from market_pipeline.stages.settings import Settings


def day_snapshots(conn, session: date, settings: Settings) -> list[dict]:
    """One dict per servable symbol (``score_universe.servable``: valid results for D in
    Postgres, whichever attempt wrote them): close, indicators, signals, the gates'
    ``warnings``, indicator ``readiness``; ``score``, ``rank``, ``percentile`` and
    ``components`` from D's scores, all null for an unranked symbol, whose
    ``unranked_reasons`` say why (docs/cache.md, "Snapshot")."""
    schema = settings.schema
    rows = servable(conn, session, settings)
    symbols = [r["symbol"] for r in rows]
    # Plain dicts, not DataFrame lookups: a row lookup and twelve cell reads per symbol cost
    # ~0.5 ms in pandas, seconds at 5000 symbols (publish and verify both build this list).
    scores = {
        r["symbol"]: r for r in store.scores_on(conn, session, schema=schema).to_dict("records")
    }
    ind = {
        r["symbol"]: r
        for r in store.indicators_on(
            conn, session, indicators.INDICATOR_COLUMNS, schema=schema
        ).to_dict("records")
    }
    sigs = store.signals_on(conn, session, symbols, schema=schema)
    by_symbol: dict[str, list[dict]] = {}
    for r in sigs.to_dict("records"):
        by_symbol.setdefault(r["symbol"], []).append(
            {k: r[k] for k in ("rule", "direction", "strength", "ready", "reasons")}
        )
    snaps = []
    for r in rows:
        symbol = r["symbol"]
        row = ind[symbol]
        ranked = not r["unranked"] and symbol in scores
        score = scores[symbol] if ranked else None
        snaps.append(
            {
                "symbol": symbol,
                "trade_date": session.isoformat(),
                "close": float(row["close"]),
                "indicators": {
                    c: store.json_safe(float(row[c])) for c in indicators.INDICATOR_COLUMNS
                },
                "signals": by_symbol.get(symbol, []),
                "score": float(score["score"]) if ranked else None,
                "rank": int(score["rank"]) if ranked else None,
                "percentile": float(score["percentile"]) if ranked else None,
                "components": score["components"] if ranked else None,
                "unranked_reasons": list(r["unranked"])
                or ([] if ranked else ["not_scored: no score stored for the session"]),
                "warnings": _warnings(r),
                "readiness": {"ready": not r["not_ready"], "not_ready": dict(r["not_ready"])},
            }
        )
    return snaps


def _warnings(row: dict) -> list[dict]:
    """The gates' warnings on D: ``{"gate", "rule", "detail"}`` sorted by gate and rule."""
    out = []
    for gate in ("bars", "indicators"):
        details = row[f"{gate}_details"]
        for rule in sorted(set(row[f"{gate}_warnings"])):
            detail = details.get(rule)
            out.append(
                {"gate": gate, "rule": rule, "detail": None if detail is None else str(detail)}
            )
    return out
