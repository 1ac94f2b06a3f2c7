"""Indicators against TA-Lib (the oracle), on ragged symbols × sessions arrays."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_pipeline import indicators
from market_pipeline.errors import DataQualityError


def talib_reference(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> dict:
    """TA-Lib on one symbol's own (unpadded) series."""
    ref = {
        "ema_9": talib.EMA(close, 9),
        "ema_21": talib.EMA(close, 21),
        "sma_50": talib.SMA(close, 50),
        "sma_200": talib.SMA(close, 200),
        "rsi_14": talib.RSI(close, 14),
        "atr_14": talib.ATR(high, low, close, 14),
    }
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = talib.MACD(close, 12, 26, 9)
    ref["bb_upper"], ref["bb_middle"], ref["bb_lower"] = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    return ref


def assert_matches_talib(out: dict, high, low, close, starts) -> None:
    for row, start in enumerate(starts):
        ref = talib_reference(high[row, start:], low[row, start:], close[row, start:])
        for col in indicators.INDICATOR_COLUMNS:
            got, want = out[col][row], ref[col]
            assert np.isnan(got[:start]).all(), f"{col} row {row}: value before history"
            got = got[start:]
            assert np.array_equal(np.isnan(got), np.isnan(want)), f"{col} row {row}: NaNs"
            ok = ~np.isnan(want)
            diff = np.abs(got[ok] - want[ok])
            if col.startswith("bb_"):
                limit = 1e-9 * np.maximum(np.abs(ref["bb_middle"][ok]), 1e-300)
            else:
                limit = 1e-9
            assert (diff <= limit).all(), f"{col} row {row}: max deviation {diff.max()}"


def random_walks(seed: int, n_sym: int, n_ses: int, flat_share: float, scale: float):
    """OHLC random walks; a share of the steps are zero (flat stretches, equal bars)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.02, (n_sym, n_ses))
    steps[rng.random((n_sym, n_ses)) < flat_share] = 0.0
    close = scale * np.exp(np.cumsum(steps, axis=1))
    spread = rng.uniform(0.0, 0.03, (n_sym, n_ses))
    spread[steps == 0.0] = 0.0
    return close * (1.0 + spread), close * (1.0 - spread), close


@st.composite
def ragged_universes(draw):
    n_sym = draw(st.integers(1, 4))
    n_ses = draw(st.integers(1, 320))
    seed = draw(st.integers(0, 2**32 - 1))
    flat_share = draw(st.sampled_from([0.0, 0.0, 0.3, 0.9, 1.0]))
    scale = draw(st.sampled_from([0.05, 1.0, 97.3, 12_345.6]))
    starts = draw(st.lists(st.integers(0, n_ses), min_size=n_sym, max_size=n_sym))
    high, low, close = random_walks(seed, n_sym, n_ses, flat_share, scale)
    for row, start in enumerate(starts):
        high[row, :start] = low[row, :start] = close[row, :start] = np.nan
    return high, low, close, starts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(universe=ragged_universes())
def test_python_engine_matches_talib_on_every_bar_of_ragged_random_walks(universe):
    high, low, close, starts = universe

    out = indicators.compute_arrays(high, low, close, engine="python")

    assert_matches_talib(out, high, low, close, starts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(universe=ragged_universes())
def test_numba_engine_matches_talib_on_every_bar_of_ragged_random_walks(universe):
    pytest.importorskip("numba")
    high, low, close, starts = universe

    out = indicators.compute_arrays(high, low, close, engine="numba")

    assert_matches_talib(out, high, low, close, starts)


def test_both_engines_agree_bit_for_bit():
    pytest.importorskip("numba")
    high, low, close = random_walks(3, 6, 400, 0.2, 50.0)
    close[2, :150] = high[2, :150] = low[2, :150] = np.nan

    py = indicators.compute_arrays(high, low, close, engine="python")
    nb = indicators.compute_arrays(high, low, close, engine="numba")

    for col in indicators.INDICATOR_COLUMNS:
        assert np.array_equal(py[col], nb[col], equal_nan=True), col


def test_warmup_is_the_index_of_talibs_first_value():
    high, low, close = random_walks(5, 1, 300, 0.0, 20.0)
    ref = talib_reference(high[0], low[0], close[0])

    first_valid = {col: int(np.flatnonzero(~np.isnan(v))[0]) for col, v in ref.items()}

    assert first_valid == indicators.WARMUP


def test_a_600_session_window_gives_the_full_history_value_on_its_last_bar():
    high, low, close = random_walks(11, 1, 2500, 0.0, 40.0)
    window = indicators.EXACT_WINDOW_SESSIONS

    full = indicators.compute_arrays(high, low, close)
    tail = indicators.compute_arrays(high[:, -window:], low[:, -window:], close[:, -window:])

    for col in indicators.INDICATOR_COLUMNS:
        # The exponential state forgets its seed completely; running sums (SMA, middle
        # band) keep last-bit rounding of their own history, as in TA-Lib.
        assert abs(tail[col][0, -1] - full[col][0, -1]) <= 1e-12 * abs(full[col][0, -1]), col


def test_a_flat_window_after_a_volatile_one_has_bands_of_no_width_like_talib():
    close = np.r_[np.linspace(10.0, 300.0, 40), np.full(30, 100.1)]

    out = indicators.compute_arrays(close[None], close[None], close[None])
    width = out["bb_upper"][0, -1] - out["bb_lower"][0, -1]
    talib_width = np.subtract(*talib.BBANDS(close, 20, 2.0, 2.0, 0)[::2])[-1]

    assert talib_width == 0.0
    assert width <= 1e-12 * out["bb_middle"][0, -1]


def test_arrays_of_different_shapes_are_rejected():
    with pytest.raises(ValueError, match="one shape"):
        indicators.compute_arrays(np.ones((2, 5)), np.ones((2, 5)), np.ones((2, 6)))


def test_an_unknown_engine_is_rejected(monkeypatch):
    monkeypatch.setenv(indicators.ENGINE_ENV, "fortran")

    with pytest.raises(ValueError, match="fortran"):
        indicators.compute_arrays(np.ones((1, 5)), np.ones((1, 5)), np.ones((1, 5)))


def make_bars(n: int, seed: int = 1, start: date = date(2020, 1, 2)) -> pd.DataFrame:
    high, low, close = random_walks(seed, 1, n, 0.0, 30.0)
    return pd.DataFrame(
        {
            "trade_date": [start + timedelta(days=i) for i in range(n)],
            "open": close[0],
            "high": high[0],
            "low": low[0],
            "close": close[0],
            "volume": 1000,
        }
    )


def test_compute_frame_returns_date_close_and_every_indicator_with_nan_warmup():
    bars = make_bars(60)

    frame = indicators.compute_frame(bars)

    assert list(frame.columns) == ["trade_date", "close", *indicators.INDICATOR_COLUMNS]
    assert frame["trade_date"].tolist() == bars["trade_date"].tolist()
    assert frame["ema_9"].isna().sum() == 8
    assert frame["sma_200"].isna().all()


def test_compute_frame_rejects_a_missing_close():
    bars = make_bars(30)
    bars.loc[10, "close"] = np.nan

    with pytest.raises(DataQualityError, match="NaN"):
        indicators.compute_frame(bars)


def test_compute_frame_rejects_unsorted_dates():
    bars = make_bars(30).iloc[::-1].reset_index(drop=True)

    with pytest.raises(DataQualityError, match="increasing"):
        indicators.compute_frame(bars)


def test_compute_universe_equals_compute_frame_for_each_symbol_with_its_own_dates():
    a = make_bars(250, seed=1).assign(symbol="AAA")
    b = make_bars(40, seed=2, start=date(2020, 6, 1)).assign(symbol="BBB")
    c = make_bars(5, seed=3, start=date(2020, 3, 1)).assign(symbol="CCC")
    bars = pd.concat([b, c, a], ignore_index=True)

    universe = indicators.compute_universe(bars)

    for sym, one in (("AAA", a), ("BBB", b), ("CCC", c)):
        got = universe[universe["symbol"] == sym].drop(columns="symbol").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, indicators.compute_frame(one), check_exact=True)


def test_compute_universe_rejects_duplicate_bars():
    bars = make_bars(10).assign(symbol="AAA")
    bars = pd.concat([bars, bars.iloc[[3]]], ignore_index=True)

    with pytest.raises(DataQualityError, match="duplicates"):
        indicators.compute_universe(bars)


def test_compute_universe_of_no_bars_is_an_empty_frame_with_the_columns():
    empty = make_bars(0).assign(symbol=pd.Series(dtype=object))

    out = indicators.compute_universe(empty)

    assert out.empty
    assert list(out.columns) == ["symbol", "trade_date", "close", *indicators.INDICATOR_COLUMNS]


def test_auto_engine_interprets_a_small_input_when_no_kernel_is_compiled(monkeypatch):
    monkeypatch.delenv(indicators.ENGINE_ENV, raising=False)
    monkeypatch.setattr(indicators, "_compiled", None)

    assert indicators._choose_engine(None, 600) == "python"


def test_auto_engine_uses_a_kernel_already_compiled_in_the_process(monkeypatch):
    monkeypatch.delenv(indicators.ENGINE_ENV, raising=False)
    monkeypatch.setattr(indicators, "_compiled", object())

    assert indicators._choose_engine(None, 600) == "numba"


def test_results_can_be_written_into_preallocated_arrays():
    high, low, close = random_walks(8, 2, 50, 0.0, 10.0)
    out = {col: np.zeros((2, 50)) for col in indicators.INDICATOR_COLUMNS}

    result = indicators.compute_arrays(high, low, close, out=out)

    assert all(result[col] is out[col] for col in indicators.INDICATOR_COLUMNS)
    assert np.isnan(out["ema_9"][0, 7]) and not np.isnan(out["ema_9"][0, 8])


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)])
def test_an_empty_universe_gives_empty_arrays(shape):
    empty = np.ones(shape)

    out = indicators.compute_arrays(empty, empty, empty, engine="python")

    assert all(out[col].shape == shape for col in indicators.INDICATOR_COLUMNS)
