"""The day's per-symbol snapshots from Postgres: what publish writes and verify checks."""

from __future__ import annotations

from datetime import date

from market_pipeline import indicators, store


def day_snapshots(conn, session: date, *, schema: str) -> list[dict]:
    """One dict per scored symbol: close, indicators, signals, score, rank, components."""
    scores = store.scores_on(conn, session, schema=schema)
    ind = store.indicators_on(conn, session, indicators.INDICATOR_COLUMNS, schema=schema).set_index(
        "symbol"
    )
    sigs = store.signals_on(conn, session, list(scores["symbol"]), schema=schema)
    by_symbol: dict[str, list[dict]] = {}
    for r in sigs.to_dict("records"):
        by_symbol.setdefault(r["symbol"], []).append(
            {k: r[k] for k in ("rule", "direction", "strength", "ready", "reasons")}
        )
    snaps = []
    for r in scores.to_dict("records"):
        row = ind.loc[r["symbol"]]
        snaps.append(
            {
                "symbol": r["symbol"],
                "trade_date": session.isoformat(),
                "close": float(row["close"]),
                "indicators": {
                    c: store.json_safe(float(row[c])) for c in indicators.INDICATOR_COLUMNS
                },
                "signals": by_symbol.get(r["symbol"], []),
                "score": float(r["score"]),
                "rank": int(r["rank"]),
                "percentile": float(r["percentile"]),
                "components": r["components"],
            }
        )
    return snaps
