"""Cross-sectional scores: one composite per symbol for trade date D, ranked.

The formula (also in ``docs/indicators.md``)::

    signal   = Σ_rules w_rule · sign(direction) · strength / Σ_rules w_rule     ∈ [-1, 1]
    momentum = close / close_20 − 1            (20-session return)
    trend    = close / sma_50 − 1              (distance from the 50-session mean)
    z(x)     = clip((x − median) / (1.4826 · MAD), −3, 3) / 3                  ∈ [-1, 1]
    score    = 100 · (0.5 · signal + 0.3 · z(momentum) + 0.2 · z(trend))       ∈ [-100, 100]

``median`` and ``MAD`` are taken across the symbols scored on D (robust to outliers);
with no spread (MAD 0) the standard deviation is used, and with none at all z is 0. A
missing input (no ``close_20`` yet, SMA50 still warming up) scores 0 on that component,
i.e. the universe median. Long/short/flat signals count +1/−1/0 times their strength;
rules that are not ready count 0 but stay in the denominator, so a young symbol is not
scored as if it had every rule. Ranks are 1 = best, ties broken by symbol ascending; the
percentile is ``100 · (n − rank + 1) / n`` (best = 100).

Who is ranked (:func:`unranked_reasons`): a symbol is scored and ranked only when its
results for D are valid in Postgres, every indicator has finished its warm-up and neither
gate warned on D. Any other valid symbol is still served, with ``rank``, ``score`` and
``percentile`` null and the reasons (``"warned: stale_repeats"``, ``"not_ready: sma_200
(warm-up needs 200 sessions, NEW has 1)"``): a stale feed or a one-bar history never
outranks a symbol with full, clean history, and never shifts the universe's median.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from market_pipeline.errors import DataQualityError
from market_pipeline.indicators import WARMUP
from market_pipeline.signals import LONG, RULES, SHORT

#: Weight of each rule in the signal component (the registry's rules, summing to 1).
RULE_WEIGHTS: dict[str, float] = {
    "swing_trend": 0.35,
    "golden_cross": 0.15,
    "death_cross": 0.15,
    "rsi_reversal": 0.15,
    "bollinger_breakout": 0.20,
}
#: Weight of each component in the score.
COMPONENT_WEIGHTS: dict[str, float] = {"signal": 0.5, "momentum": 0.3, "trend": 0.2}
MOMENTUM_SESSIONS = 20
Z_CLIP = 3.0
SCORE_COLUMNS = ("symbol", "score", "rank", "percentile", "components")
# Scores are rounded so that equal composites tie exactly whatever the summation order.
SCORE_DECIMALS = 9


def _robust_z(values: pd.Series) -> pd.Series:
    """Cross-sectional robust z-score scaled to [-1, 1]; NaN inputs score 0."""
    valid = values.dropna()
    if len(valid) < 2:
        return pd.Series(0.0, index=values.index)
    centre = float(np.median(valid.to_numpy()))
    spread = 1.4826 * float(np.median(np.abs(valid.to_numpy() - centre)))
    if not spread > 0.0:
        spread = float(valid.std(ddof=0))
    if not spread > 0.0:
        return pd.Series(0.0, index=values.index)
    z = ((values - centre) / spread).clip(-Z_CLIP, Z_CLIP) / Z_CLIP
    return z.fillna(0.0)


def _json_float(value: float) -> float | None:
    return round(float(value), 10) if math.isfinite(float(value)) else None


def _signal_component(signals: pd.DataFrame, symbols: pd.Index) -> tuple[pd.Series, dict]:
    """Net weighted signal per symbol and each rule's signed contribution."""
    total = sum(RULE_WEIGHTS.values())
    per_rule: dict[str, dict[str, float | None]] = {s: {} for s in symbols}
    if signals.empty:
        return pd.Series(0.0, index=symbols), per_rule
    sig = signals[signals["symbol"].isin(symbols)].sort_values(["symbol", "rule"], kind="stable")
    # Summed in plain floats, rule by rule in (symbol, rule) order: a Series update per
    # signal cost ~40 us, a second at 5000 symbols x 5 rules.
    net = dict.fromkeys(symbols, 0.0)
    for symbol, rule, direction, strength, ready in zip(
        *(sig[c].tolist() for c in ("symbol", "rule", "direction", "strength", "ready")),
        strict=True,
    ):
        weight = RULE_WEIGHTS.get(rule, 0.0)
        sign = 1.0 if direction == LONG else -1.0 if direction == SHORT else 0.0
        contribution = weight * sign * float(strength) / total if ready else 0.0
        net[symbol] += contribution
        per_rule[symbol][rule] = _json_float(contribution) if ready else None
    return pd.Series([net[s] for s in symbols], index=symbols, dtype="float64"), per_rule


def score_universe(latest: pd.DataFrame, signals: pd.DataFrame) -> pd.DataFrame:
    """Score, rank and percentile every symbol of ``latest`` (those whose gates passed on D).

    ``latest``: one row per symbol with ``symbol``, ``close``, ``sma_50`` (the indicator
    columns for D) and ``close_20``, the close :data:`MOMENTUM_SESSIONS` sessions before D
    (NaN when the symbol is younger). ``signals``: rows ``symbol, rule, direction,
    strength, ready`` for D. Returns ``symbol, score, rank, percentile, components``
    sorted by rank; deterministic whatever the input order.
    """
    if latest.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS}).astype(
            {"score": "float64", "rank": "int64", "percentile": "float64"}
        )
    required = {"symbol", "close", "sma_50", "close_20"}
    missing = sorted(required - set(latest.columns))
    if missing:
        raise DataQualityError(
            f"score_universe: expected columns {sorted(required)} in latest; missing {missing}"
        )
    dup = latest["symbol"][latest["symbol"].duplicated()]
    if not dup.empty:
        raise DataQualityError(
            "score_universe: expected one latest row per symbol; found duplicates",
            symbol=str(dup.iloc[0]),
            failed_expectations=["one_row_per_symbol"],
        )
    unknown = sorted(set(signals.get("rule", pd.Series(dtype=object))) - set(RULES))
    if unknown:
        raise DataQualityError(f"score_universe: expected rules {list(RULES)}; found {unknown}")
    frame = latest.sort_values("symbol", kind="stable").set_index("symbol", drop=False)
    close = frame["close"].astype("float64")
    if close.isna().any() or not (close > 0).all():
        bad = frame.index[~(close > 0)][0]
        raise DataQualityError(
            "score_universe: expected a positive close for every passed symbol; found "
            f"{close[bad]}",
            symbol=str(bad),
            failed_expectations=["close_positive"],
        )
    momentum_raw = close / frame["close_20"].astype("float64") - 1.0
    trend_raw = close / frame["sma_50"].astype("float64") - 1.0
    momentum_raw = momentum_raw.where(np.isfinite(momentum_raw))
    trend_raw = trend_raw.where(np.isfinite(trend_raw))
    momentum_z = _robust_z(momentum_raw)
    trend_z = _robust_z(trend_raw)
    signal, per_rule = _signal_component(signals, frame.index)

    w = COMPONENT_WEIGHTS
    score = (
        100.0 * (w["signal"] * signal + w["momentum"] * momentum_z + w["trend"] * trend_z)
    ).round(SCORE_DECIMALS)
    out = pd.DataFrame({"symbol": frame.index.to_numpy(), "score": score.to_numpy()})
    out = out.sort_values(["score", "symbol"], ascending=[False, True], kind="stable")
    n = len(out)
    out["rank"] = np.arange(1, n + 1, dtype="int64")
    out["percentile"] = 100.0 * (n - out["rank"] + 1) / n
    components: list[dict[str, Any]] = []
    for sym in out["symbol"]:
        components.append(
            {
                "signal": _json_float(signal[sym]),
                "rules": per_rule[sym],
                "momentum_raw": _json_float(momentum_raw[sym]),
                "momentum_z": _json_float(momentum_z[sym]),
                "trend_raw": _json_float(trend_raw[sym]),
                "trend_z": _json_float(trend_z[sym]),
                "weights": dict(w),
            }
        )
    out["components"] = components
    return out.reset_index(drop=True)[list(SCORE_COLUMNS)]


def unranked_reasons(servable: dict) -> list[str]:
    """Why a servable symbol is not ranked (empty: it is ranked).

    ``servable``: a row of ``store.servable_on`` (the gates' warnings, the indicators not
    ready). One ``"warned: <rule>"`` per rule a gate warned on; one ``"not_ready: …"`` naming
    the indicator with the longest warm-up still missing (the others are in the snapshot's
    ``readiness``).
    """
    warned = sorted(
        set(servable.get("bars_warnings", [])) | set(servable.get("indicators_warnings", []))
    )
    reasons = [f"warned: {rule}" for rule in warned]
    not_ready = servable.get("not_ready") or {}
    if not_ready:
        col = max(not_ready, key=lambda c: (WARMUP.get(c, 0), c))
        more = len(not_ready) - 1
        reasons.append(
            f"not_ready: {col} ({not_ready[col]})"
            + (f" and {more} more indicator{'s' if more > 1 else ''}" if more else "")
        )
    return reasons
