"""Explainable trading signals: a small registry of pure rules over an indicator frame.

Each rule reads one symbol's indicator frame (the output of
:func:`market_pipeline.indicators.compute_frame`, possibly a trailing window) at a trade
date D and returns a :class:`SignalResult`: a direction, a strength in [0, 1] and
machine-readable reasons (each condition, whether it held, and the values it looked at).

A rule whose inputs are still warming up at D (SMA200 on a symbol with 120 sessions) is
*not ready*: ``ready=False``, ``direction="n/a"``, strength 0 and a reason naming what is
missing. That is recorded, not a failure and not a flat signal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd

from market_pipeline.errors import DataQualityError
from market_pipeline.indicators import WARMUP

LONG = "long"
SHORT = "short"
FLAT = "flat"
NOT_READY = "n/a"
DIRECTIONS = (LONG, SHORT, FLAT, NOT_READY)

#: Columns of the ``signals`` table rows built by :func:`results_frame`.
SIGNAL_COLUMNS = ("symbol", "trade_date", "rule", "direction", "strength", "ready", "reasons")

# Thresholds, named once (docs/indicators.md explains them).
RSI_OVERSOLD = 30.0
RSI_OVERBOUGHT = 70.0
SWING_RSI_LONG = (40.0, 70.0)
SWING_RSI_SHORT = (30.0, 60.0)
# Scales at which a swing_trend component counts as full strength.
SWING_EMA_SPREAD_FULL = 0.02  # EMA9 2 % away from EMA21
SWING_SMA50_GAP_FULL = 0.05  # close 5 % away from SMA50
SWING_MACD_HIST_FULL = 0.005  # MACD histogram 0.5 % of the close
RSI_REVERSAL_DEPTH_FULL = 20.0  # prior RSI 20 points beyond the threshold


@dataclass(frozen=True)
class SignalResult:
    """One rule's verdict for one symbol and trade date."""

    rule: str
    direction: str
    strength: float
    ready: bool
    reasons: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """A named signal rule: the columns it reads, at how many sessions, and its logic.

    ``lookback`` is how many rows (D and the ones before it) the rule reads: 1 reads D
    only, 2 also reads D-1 (crossings). ``fn`` receives those rows, oldest first, all
    needed columns present and not NaN, and returns (direction, strength, reasons).
    """

    name: str
    columns: tuple[str, ...]
    lookback: int
    description: str
    fn: Callable[[list[Mapping[str, float]]], tuple[str, float, dict[str, Any]]]

    @property
    def sessions_needed(self) -> int:
        """Sessions of history the rule needs at D (warm-up of its slowest input + reads)."""
        warm = max((WARMUP.get(c, 0) for c in self.columns), default=0)
        return warm + self.lookback


def _num(value: float) -> float | None:
    """A JSON-safe float (None for NaN/inf), rounded so reasons stay readable."""
    value = float(value)
    return round(value, 10) if math.isfinite(value) else None


def _cond(name: str, held: bool, **values: float) -> dict[str, Any]:
    return {"name": name, "held": bool(held), "values": {k: _num(v) for k, v in values.items()}}


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def _swing_trend(rows: list[Mapping[str, float]]) -> tuple[str, float, dict[str, Any]]:
    r = rows[-1]
    close, ema9, ema21, sma50 = r["close"], r["ema_9"], r["ema_21"], r["sma_50"]
    hist, rsi = r["macd_hist"], r["rsi_14"]
    bull = [
        _cond("ema_9_above_ema_21", ema9 > ema21, ema_9=ema9, ema_21=ema21),
        _cond("close_above_sma_50", close > sma50, close=close, sma_50=sma50),
        _cond("macd_hist_positive", hist > 0.0, macd_hist=hist),
        _cond(
            "rsi_in_long_band",
            SWING_RSI_LONG[0] <= rsi <= SWING_RSI_LONG[1],
            rsi_14=rsi,
            low=SWING_RSI_LONG[0],
            high=SWING_RSI_LONG[1],
        ),
    ]
    bear = [
        _cond("ema_9_below_ema_21", ema9 < ema21, ema_9=ema9, ema_21=ema21),
        _cond("close_below_sma_50", close < sma50, close=close, sma_50=sma50),
        _cond("macd_hist_negative", hist < 0.0, macd_hist=hist),
        _cond(
            "rsi_in_short_band",
            SWING_RSI_SHORT[0] <= rsi <= SWING_RSI_SHORT[1],
            rsi_14=rsi,
            low=SWING_RSI_SHORT[0],
            high=SWING_RSI_SHORT[1],
        ),
    ]
    if all(c["held"] for c in bull):
        direction, band_mid = LONG, sum(SWING_RSI_LONG) / 2
        conditions = bull
    elif all(c["held"] for c in bear):
        direction, band_mid = SHORT, sum(SWING_RSI_SHORT) / 2
        conditions = bear
    else:
        return FLAT, 0.0, {"conditions": bull + bear, "summary": "trend conditions disagree"}
    half_band = (SWING_RSI_LONG[1] - SWING_RSI_LONG[0]) / 2
    parts = {
        "ema_spread": _clip01(abs(ema9 / ema21 - 1.0) / SWING_EMA_SPREAD_FULL),
        "sma_50_gap": _clip01(abs(close / sma50 - 1.0) / SWING_SMA50_GAP_FULL),
        "macd_hist": _clip01(abs(hist) / (SWING_MACD_HIST_FULL * abs(close))),
        "rsi_centrality": _clip01(1.0 - abs(rsi - band_mid) / half_band),
    }
    strength = sum(parts.values()) / len(parts)
    return (
        direction,
        strength,
        {
            "conditions": conditions,
            "strength_parts": {k: _num(v) for k, v in parts.items()},
            "summary": f"all four {direction} conditions held",
        },
    )


def _sma_cross(rows: list[Mapping[str, float]], up: bool) -> tuple[str, float, dict[str, Any]]:
    prev, now = rows[0], rows[1]
    before = prev["sma_50"] <= prev["sma_200"] if up else prev["sma_50"] >= prev["sma_200"]
    after = now["sma_50"] > now["sma_200"] if up else now["sma_50"] < now["sma_200"]
    side = "above" if up else "below"
    conditions = [
        _cond(
            f"sma_50_not_{side}_sma_200_before",
            before,
            sma_50=prev["sma_50"],
            sma_200=prev["sma_200"],
        ),
        _cond(f"sma_50_{side}_sma_200_now", after, sma_50=now["sma_50"], sma_200=now["sma_200"]),
    ]
    if before and after:
        return (LONG if up else SHORT), 1.0, {"conditions": conditions, "summary": "crossed"}
    return FLAT, 0.0, {"conditions": conditions, "summary": "no crossing on this session"}


def _golden_cross(rows: list[Mapping[str, float]]) -> tuple[str, float, dict[str, Any]]:
    return _sma_cross(rows, up=True)


def _death_cross(rows: list[Mapping[str, float]]) -> tuple[str, float, dict[str, Any]]:
    return _sma_cross(rows, up=False)


def _rsi_reversal(rows: list[Mapping[str, float]]) -> tuple[str, float, dict[str, Any]]:
    prev, now = rows[0]["rsi_14"], rows[1]["rsi_14"]
    oversold_exit = prev < RSI_OVERSOLD <= now
    overbought_exit = prev > RSI_OVERBOUGHT >= now
    conditions = [
        _cond("exited_oversold", oversold_exit, rsi_prev=prev, rsi_now=now, level=RSI_OVERSOLD),
        _cond(
            "exited_overbought", overbought_exit, rsi_prev=prev, rsi_now=now, level=RSI_OVERBOUGHT
        ),
    ]
    if oversold_exit:
        depth = (RSI_OVERSOLD - prev) / RSI_REVERSAL_DEPTH_FULL
        return LONG, _clip01(0.5 + 0.5 * depth), {"conditions": conditions}
    if overbought_exit:
        depth = (prev - RSI_OVERBOUGHT) / RSI_REVERSAL_DEPTH_FULL
        return SHORT, _clip01(0.5 + 0.5 * depth), {"conditions": conditions}
    return FLAT, 0.0, {"conditions": conditions}


def _bollinger_breakout(rows: list[Mapping[str, float]]) -> tuple[str, float, dict[str, Any]]:
    r = rows[-1]
    close, upper, middle, lower = r["close"], r["bb_upper"], r["bb_middle"], r["bb_lower"]
    half_width = upper - middle
    conditions = [
        _cond("close_above_upper_band", close > upper, close=close, bb_upper=upper),
        _cond("close_below_lower_band", close < lower, close=close, bb_lower=lower),
        _cond("bands_have_width", half_width > 0.0, bb_upper=upper, bb_middle=middle),
    ]
    if half_width <= 0.0:
        return FLAT, 0.0, {"conditions": conditions, "summary": "bands have zero width"}
    if close > upper:
        excess = (close - upper) / half_width
        return LONG, _clip01(0.5 + 0.5 * excess), {"conditions": conditions}
    if close < lower:
        excess = (lower - close) / half_width
        return SHORT, _clip01(0.5 + 0.5 * excess), {"conditions": conditions}
    return FLAT, 0.0, {"conditions": conditions}


#: The rule registry, in evaluation (and storage) order.
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "swing_trend",
            ("close", "ema_9", "ema_21", "sma_50", "macd_hist", "rsi_14"),
            1,
            "EMA9 vs EMA21, close vs SMA50 and MACD histogram agree, RSI in the trend's band",
            _swing_trend,
        ),
        Rule(
            "golden_cross",
            ("sma_50", "sma_200"),
            2,
            "SMA50 crosses above SMA200 on D",
            _golden_cross,
        ),
        Rule(
            "death_cross",
            ("sma_50", "sma_200"),
            2,
            "SMA50 crosses below SMA200 on D",
            _death_cross,
        ),
        Rule(
            "rsi_reversal",
            ("rsi_14",),
            2,
            "RSI leaves over-sold (crosses up through 30) or over-bought (down through 70)",
            _rsi_reversal,
        ),
        Rule(
            "bollinger_breakout",
            ("close", "bb_upper", "bb_middle", "bb_lower"),
            1,
            "close beyond the upper (long) or lower (short) Bollinger band",
            _bollinger_breakout,
        ),
    )
}


def _not_ready(rule: Rule, rows: list[Mapping[str, float]], sessions: int) -> SignalResult:
    missing = sorted(
        {c for row in rows for c in rule.columns if not math.isfinite(row.get(c, math.nan))}
    )
    slowest = max(missing, key=lambda c: WARMUP.get(c, 0)) if missing else rule.columns[0]
    text = f"{slowest} needs {rule.sessions_needed} sessions, have {sessions}"
    return SignalResult(
        rule=rule.name,
        direction=NOT_READY,
        strength=0.0,
        ready=False,
        reasons={
            "not_ready": text,
            "missing": missing,
            "sessions_needed": rule.sessions_needed,
            "sessions_available": sessions,
        },
    )


def evaluate_rule(rule: Rule, frame: pd.DataFrame, position: int) -> SignalResult:
    """Evaluate one rule on ``frame`` at row ``position`` (D)."""
    first = position - rule.lookback + 1
    cols = [c for c in rule.columns if c in frame.columns]
    rows: list[Mapping[str, float]] = (
        frame.iloc[max(first, 0) : position + 1][cols].astype("float64").to_dict("records")
    )
    return _evaluate_rows(rule, rows, cols, position, position + 1)


def _evaluate_rows(
    rule: Rule, rows: list[Mapping[str, float]], cols: list[str], position: int, sessions: int
) -> SignalResult:
    """The rule on its lookback ``rows`` (``cols`` of them present) ending at ``position``;
    ``sessions``: the symbol's sessions up to D, which a not-ready verdict reports."""
    first = position - rule.lookback + 1
    complete = first >= 0 and len(cols) == len(rule.columns)
    if not complete or any(not math.isfinite(row[c]) for row in rows for c in cols):
        return _not_ready(rule, rows if complete else [{}], sessions)
    direction, strength, reasons = rule.fn(rows)
    if direction == FLAT:
        strength = 0.0
    return SignalResult(rule.name, direction, float(_clip01(strength)), True, reasons)


#: Indicator rows up to D that the rules read (the longest lookback).
ROWS_READ = max(rule.lookback for rule in RULES.values())


def evaluate(
    frame: pd.DataFrame, trade_date: date, *, sessions: int | None = None
) -> list[SignalResult]:
    """Every rule of :data:`RULES` for one symbol's indicator frame at ``trade_date``.

    Rows after ``trade_date`` are ignored. ``sessions`` is how many indicator rows the
    symbol has up to D when ``frame`` holds only the last ones (a not-ready verdict says
    it); by default the frame's rows up to D. Raises
    :class:`~market_pipeline.errors.DataQualityError` when ``trade_date`` is not a row of
    the frame.
    """
    symbol = str(frame["symbol"].iloc[0]) if "symbol" in frame.columns and len(frame) else None
    dates = frame["trade_date"].tolist()
    if not all(type(d) is date for d in dates):  # plain dates (the store's) need no parsing
        dates = pd.to_datetime(frame["trade_date"]).dt.date.tolist()
    hits = [i for i, d in enumerate(dates) if d == trade_date]
    if not hits:
        last = dates[-1] if len(dates) else None
        raise DataQualityError(
            f"generate_signals: expected an indicator row for {trade_date}; the frame has "
            f"{len(dates)} rows, last on {last}",
            symbol=symbol,
            session=trade_date,
            failed_expectations=["indicator_row_for_trade_date"],
        )
    position = hits[-1]
    # One float conversion of the longest lookback for every rule (not one per rule).
    lo = max(0, position - max(rule.lookback for rule in RULES.values()) + 1)
    present = [
        c for c in dict.fromkeys(c for r in RULES.values() for c in r.columns) if c in frame.columns
    ]
    # Column by column (a list-of-columns selection re-indexes the frame: most of the cost).
    values = [frame[c].to_numpy(dtype="float64")[lo : position + 1].tolist() for c in present]
    records = [dict(zip(present, row, strict=True)) for row in zip(*values, strict=True)]
    results = []
    for rule in RULES.values():
        cols = [c for c in rule.columns if c in frame.columns]
        start = max(position - rule.lookback + 1, 0) - lo
        rows = [{c: rec[c] for c in cols} for rec in records[start:]]
        results.append(_evaluate_rows(rule, rows, cols, position, sessions or position + 1))
    return results


def results_frame(symbol: str, trade_date: date, results: list[SignalResult]) -> pd.DataFrame:
    """``signals`` table rows keyed (symbol, trade_date, rule); reasons as JSON text."""
    return pd.DataFrame(
        [
            {
                "symbol": symbol,
                "trade_date": trade_date,
                "rule": r.rule,
                "direction": r.direction,
                "strength": r.strength,
                "ready": r.ready,
                "reasons": json.dumps(r.reasons, sort_keys=True, allow_nan=False),
            }
            for r in results
        ],
        columns=list(SIGNAL_COLUMNS),
    )
