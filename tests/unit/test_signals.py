"""Signal rules on hand-built indicator frames."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from market_pipeline import indicators, signals
from market_pipeline.errors import DataQualityError

START = date(2024, 1, 2)
# A bar where every swing_trend long condition holds.
BULL = {
    "close": 105.0,
    "ema_9": 104.0,
    "ema_21": 102.0,
    "sma_50": 100.0,
    "sma_200": 95.0,
    "rsi_14": 55.0,
    "macd": 1.0,
    "macd_signal": 0.5,
    "macd_hist": 0.5,
    "atr_14": 2.0,
    "bb_upper": 110.0,
    "bb_middle": 103.0,
    "bb_lower": 96.0,
}
BEAR = {
    **BULL,
    "close": 95.0,
    "ema_9": 96.0,
    "ema_21": 98.0,
    "rsi_14": 45.0,
    "macd_hist": -0.5,
}


def frame_of(*bars: dict, n: int | None = None) -> pd.DataFrame:
    """A frame whose last rows are ``bars`` (oldest first), padded to n rows with BULL."""
    n = n or len(bars)
    rows = [dict(BULL)] * (n - len(bars)) + [dict(b) for b in bars]
    out = pd.DataFrame(rows)
    out.insert(0, "trade_date", [START + timedelta(days=i) for i in range(n)])
    return out


def last_date(frame: pd.DataFrame) -> date:
    return frame["trade_date"].iloc[-1]


def result(frame: pd.DataFrame, rule: str, when: date | None = None) -> signals.SignalResult:
    results = signals.evaluate(frame, when or last_date(frame))
    return next(r for r in results if r.rule == rule)


def test_the_registry_holds_the_required_rules_in_order():
    assert list(signals.RULES) == [
        "swing_trend",
        "golden_cross",
        "death_cross",
        "rsi_reversal",
        "bollinger_breakout",
    ]


def test_each_rule_declares_its_columns_and_sessions_needed():
    assert signals.RULES["golden_cross"].columns == ("sma_50", "sma_200")
    assert signals.RULES["golden_cross"].sessions_needed == 201
    assert signals.RULES["swing_trend"].sessions_needed == 50
    assert signals.RULES["rsi_reversal"].sessions_needed == 16


def test_swing_trend_is_long_when_all_four_bull_conditions_hold():
    res = result(frame_of(BULL), "swing_trend")

    assert (res.direction, res.ready) == ("long", True)
    assert 0.0 < res.strength <= 1.0
    assert [c["held"] for c in res.reasons["conditions"]] == [True] * 4
    assert res.reasons["conditions"][0]["values"] == {"ema_9": 104.0, "ema_21": 102.0}


def test_swing_trend_is_short_when_all_four_bear_conditions_hold():
    res = result(frame_of(BEAR), "swing_trend")

    assert res.direction == "short"
    assert res.strength > 0.0


def test_swing_trend_is_flat_when_rsi_is_outside_the_long_band():
    res = result(frame_of({**BULL, "rsi_14": 75.0}), "swing_trend")

    assert (res.direction, res.strength, res.ready) == ("flat", 0.0, True)
    held = {c["name"]: c["held"] for c in res.reasons["conditions"]}
    assert held["rsi_in_long_band"] is False


def test_swing_trend_strength_grows_with_the_trend():
    weak = result(frame_of({**BULL, "ema_9": 102.1, "close": 100.5}), "swing_trend")
    strong = result(frame_of({**BULL, "ema_9": 106.0, "close": 106.0}), "swing_trend")

    assert weak.strength < strong.strength


def test_swing_trend_is_not_ready_while_sma_50_warms_up():
    res = result(frame_of({**BULL, "sma_50": math.nan}, n=30), "swing_trend")

    assert (res.ready, res.direction, res.strength) == (False, "n/a", 0.0)
    assert res.reasons["not_ready"] == "sma_50 needs 50 sessions, have 30"


def test_golden_cross_is_long_on_the_session_sma_50_crosses_above_sma_200():
    frame = frame_of({**BULL, "sma_50": 94.0}, {**BULL, "sma_50": 96.0}, n=250)

    res = result(frame, "golden_cross")

    assert (res.direction, res.strength) == ("long", 1.0)
    assert res.reasons["summary"] == "crossed"


def test_golden_cross_is_flat_when_sma_50_was_already_above():
    res = result(frame_of(BULL, BULL, n=250), "golden_cross")

    assert (res.direction, res.strength, res.ready) == ("flat", 0.0, True)


def test_death_cross_is_short_on_the_session_sma_50_crosses_below_sma_200():
    frame = frame_of({**BULL, "sma_50": 96.0}, {**BULL, "sma_50": 94.0}, n=250)

    res = result(frame, "death_cross")

    assert (res.direction, res.strength) == ("short", 1.0)


def test_a_cross_rule_is_not_ready_on_a_symbol_with_120_sessions():
    frame = frame_of({**BULL, "sma_200": math.nan}, n=120)

    res = result(frame, "golden_cross")

    assert (res.ready, res.direction) == (False, "n/a")
    assert res.reasons["not_ready"] == "sma_200 needs 201 sessions, have 120"
    assert res.reasons["missing"] == ["sma_200"]


def test_rsi_reversal_is_long_when_rsi_leaves_oversold():
    res = result(frame_of({**BULL, "rsi_14": 20.0}, {**BULL, "rsi_14": 32.0}), "rsi_reversal")

    assert res.direction == "long"
    assert res.strength == pytest.approx(0.75)


def test_rsi_reversal_is_short_when_rsi_leaves_overbought():
    res = result(frame_of({**BULL, "rsi_14": 80.0}, {**BULL, "rsi_14": 65.0}), "rsi_reversal")

    assert res.direction == "short"
    assert res.strength == pytest.approx(0.75)


def test_rsi_reversal_is_flat_while_rsi_stays_oversold():
    res = result(frame_of({**BULL, "rsi_14": 20.0}, {**BULL, "rsi_14": 25.0}), "rsi_reversal")

    assert res.direction == "flat"


def test_rsi_reversal_needs_the_previous_session():
    res = result(frame_of({**BULL, "rsi_14": 32.0}), "rsi_reversal")

    assert res.ready is False


def test_bollinger_breakout_is_long_above_the_upper_band():
    res = result(frame_of({**BULL, "close": 113.5}), "bollinger_breakout")

    assert res.direction == "long"
    assert res.strength == pytest.approx(0.75)


def test_bollinger_breakout_is_short_below_the_lower_band():
    res = result(frame_of({**BULL, "close": 90.0}), "bollinger_breakout")

    assert res.direction == "short"


def test_bollinger_breakout_is_flat_inside_the_bands():
    res = result(frame_of(BULL), "bollinger_breakout")

    assert (res.direction, res.strength) == ("flat", 0.0)


def test_bollinger_breakout_is_flat_when_the_bands_have_no_width():
    flat = {**BULL, "close": 100.0, "bb_upper": 100.0, "bb_middle": 100.0, "bb_lower": 100.0}

    res = result(frame_of(flat), "bollinger_breakout")

    assert res.direction == "flat"
    assert res.reasons["summary"] == "bands have zero width"


def test_rows_after_the_trade_date_are_ignored():
    frame = frame_of({**BULL, "sma_50": 94.0}, {**BULL, "sma_50": 96.0}, BULL, n=250)

    res = result(frame, "golden_cross", when=frame["trade_date"].iloc[-2])

    assert res.direction == "long"


def test_a_trade_date_missing_from_the_frame_raises_a_data_quality_error():
    frame = frame_of(BULL, n=5).assign(symbol="AAA")

    with pytest.raises(DataQualityError, match="expected an indicator row for 2030-01-01"):
        signals.evaluate(frame, date(2030, 1, 1))


def test_reasons_of_every_rule_on_a_computed_frame_are_json():
    rng = np.random.default_rng(4)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, 260)))
    bars = pd.DataFrame(
        {
            "trade_date": [START + timedelta(days=i) for i in range(260)],
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": 1,
        }
    )
    frame = indicators.compute_frame(bars)

    rows = signals.results_frame("AAA", last_date(frame), signals.evaluate(frame, last_date(frame)))

    assert list(rows.columns) == list(signals.SIGNAL_COLUMNS)
    assert rows["ready"].all()
    assert all(isinstance(json.loads(r), dict) for r in rows["reasons"])
    assert set(rows["direction"]) <= {"long", "short", "flat"}


@pytest.mark.parametrize("length", [1, 2, 30, 199, 201, 260])
def test_evaluate_gives_what_each_rule_gives_on_its_own(length):
    """evaluate() converts the frame once for all rules; the verdicts must not change."""
    rng = np.random.default_rng(length)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.03, length)))
    bars = pd.DataFrame(
        {
            "trade_date": [START + timedelta(days=i) for i in range(length)],
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": 1,
        }
    )
    frame = indicators.compute_frame(bars).drop(columns=["bb_lower"] if length == 30 else [])
    day = last_date(frame)

    together = signals.evaluate(frame, day)
    alone = [signals.evaluate_rule(rule, frame, length - 1) for rule in signals.RULES.values()]

    assert together == alone
