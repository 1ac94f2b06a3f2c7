"""market_pipeline.quality: the GX raw-bar and indicator gates, on hand-built and real frames."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from market_pipeline import calendar, quality
from market_pipeline.errors import DataQualityError
from market_pipeline.stages.validate_indicators import history_cap

D = date(2024, 11, 27)
REAL_EOD = Path(__file__).resolve().parents[1] / "data" / "real-eod"
AAPL_DROP = date(2000, 9, 29)

pytestmark = pytest.mark.usefixtures("gx_context")


def clean_bars(sessions: int = 30, end: date = D) -> pd.DataFrame:
    """A plausible bar window: a gentle random walk over the sessions ending at ``end``."""
    dates = calendar.previous_sessions(end, sessions)
    rng = np.random.default_rng(7)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.01, len(dates)))
    open_ = close * (1 + rng.normal(0, 0.003, len(dates)))
    return pd.DataFrame(
        {
            "trade_date": dates,
            "open": open_,
            "high": np.maximum(open_, close) * 1.01,
            "low": np.minimum(open_, close) * 0.99,
            "close": close,
            "volume": rng.integers(1_000_000, 2_000_000, len(dates)),
        }
    )


def real_bars(symbol: str) -> pd.DataFrame:
    frame = pd.read_csv(REAL_EOD / f"{symbol}.csv")
    frame["trade_date"] = pd.to_datetime(frame["date"]).dt.date
    return frame[["trade_date", "open", "high", "low", "close", "volume"]]


def _set(frame: pd.DataFrame, row: int, **values: object) -> pd.DataFrame:
    out = frame.copy()
    for col, value in values.items():
        if isinstance(value, float) and not float(value).is_integer():
            out[col] = out[col].astype("float64")
        out.loc[row, col] = value
    return out


def _jump(frame: pd.DataFrame, row: int, factor: float) -> pd.DataFrame:
    out = frame.copy()
    for col in ("open", "high", "low", "close"):
        out.loc[row:, col] = out.loc[row:, col] * factor
    return out


def _stale(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    cols = ["open", "high", "low", "close", "volume"]
    out.loc[len(out) - 3 :, cols] = out.loc[len(out) - 3, cols].to_numpy()
    return out


BAD_FRAMES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "schema": lambda f: f.drop(columns=["volume"]),
    "not_null": lambda f: _set(f, 10, close=np.nan),
    "positive_prices": lambda f: _set(f, 5, low=0.0),
    "high_ge_open_close": lambda f: _set(f, 7, high=float(f.loc[7, "close"] - 1)),
    "low_le_open_close": lambda f: _set(f, 8, low=float(f.loc[8, "open"] + 1)),
    "volume_non_negative_integral": lambda f: _set(f, 3, volume=-5),
    "unique_dates": lambda f: pd.concat([f, f.iloc[[12]]], ignore_index=True),
    "dates_are_sessions": lambda f: pd.concat(
        [f, f.iloc[[-1]].assign(trade_date=date(2024, 11, 28))], ignore_index=True
    ),  # Thanksgiving
    "no_missing_sessions": lambda f: f.drop(index=15).reset_index(drop=True),
    "bar_for_session_present": lambda f: f.iloc[:-1],
    "max_close_move": lambda f: _jump(f, 20, 1.6),
}


# ------------------------------------------------------------------------- raw-bar gate


def test_clean_bars_pass_with_no_failures_or_warnings():
    result = quality.validate_bars(clean_bars(), symbol="TEST", trade_date=D)

    assert (result.success, result.critical_failures, result.warnings) == (True, (), ())


@pytest.mark.parametrize("rule", list(BAD_FRAMES))
def test_a_broken_critical_rule_fails_the_gate_naming_the_rule(rule):
    bars = BAD_FRAMES[rule](clean_bars())

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert not result.success
    assert rule in result.critical_failures
    with pytest.raises(DataQualityError, match=rule) as raised:
        result.raise_for_failure()
    assert rule in raised.value.failed_expectations
    assert (raised.value.symbol, raised.value.session) == ("TEST", D)


@pytest.mark.parametrize("rule", [r for r in BAD_FRAMES if r != "schema"])
def test_a_single_broken_rule_is_the_only_critical_failure(rule):
    bars = BAD_FRAMES[rule](clean_bars())

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert result.critical_failures == (rule,)


def test_fractional_volume_fails_the_volume_rule():
    bars = _set(clean_bars(), 4, volume=1000.5)

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert result.critical_failures == ("volume_non_negative_integral",)


def test_trade_dates_given_as_strings_fail_the_schema_rule():
    bars = clean_bars().assign(trade_date=lambda f: f["trade_date"].astype(str))

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert result.critical_failures == ("schema",)


def test_a_wrong_type_fails_the_schema_rule_naming_the_column_and_the_type_found():
    bars = clean_bars().assign(open=lambda f: f["open"].astype(str))
    bars["trade_date"] = bars["trade_date"].astype(object)
    bars.loc[3, "trade_date"] = pd.Timestamp(bars.loc[3, "trade_date"]).to_pydatetime()

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert "schema" in result.critical_failures
    observed = {r["rule"]: r["observed"] for r in result.result["expectations"]}
    assert "30 unexpected rows" in observed["schema"]
    types = quality.rules.wrong_types(bars)
    assert types[3] == f"trade_date (datetime),open ({bars['open'].dtype.name})"
    assert types[4] == f"open ({bars['open'].dtype.name})"


def test_right_types_and_nulls_are_not_type_errors():
    bars = _set(clean_bars(), 2, close=np.nan)
    bars.loc[5, "trade_date"] = None

    assert (quality.rules.wrong_types(bars) == "").all()


def test_an_empty_frame_fails_because_the_bar_for_the_session_is_absent():
    bars = clean_bars().iloc[:0]

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert "bar_for_session_present" in result.critical_failures


def test_stale_repeats_pass_the_gate_and_are_recorded_as_a_warning():
    result = quality.validate_bars(_stale(clean_bars()), symbol="TEST", trade_date=D)

    assert (result.success, result.warnings) == (True, ("stale_repeats",))
    rows = [r for r in result.result["expectations"] if r["rule"] == "stale_repeats"]
    assert rows[0]["severity"] == "warning" and rows[0]["success"] is False


def test_a_move_flagged_as_a_corporate_action_is_explained():
    bars = _jump(clean_bars(), 20, 1.6)
    bars["corporate_action"] = bars.index == 20

    result = quality.validate_bars(bars, symbol="TEST", trade_date=D)

    assert result.success and result.critical_failures == ()


def test_a_move_on_an_explained_date_is_not_a_failure():
    bars = _jump(clean_bars(), 20, 1.6)

    result = quality.validate_bars(
        bars, symbol="TEST", trade_date=D, explained_dates=[bars.loc[20, "trade_date"]]
    )

    assert result.success


def test_the_move_bound_is_configurable():
    bars = _jump(clean_bars(), 20, 1.2)

    loose = quality.validate_bars(bars, symbol="TEST", trade_date=D)
    tight = quality.validate_bars(bars, symbol="TEST", trade_date=D, max_move=0.1)

    assert (loose.success, tight.critical_failures) == (True, ("max_close_move",))


def test_acknowledging_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="max_move_typo"):
        quality.validate_bars(
            clean_bars(), symbol="T", trade_date=D, acknowledged=["max_move_typo"]
        )


def test_the_report_payload_is_strict_json_with_the_gx_result_and_counts():
    result = quality.validate_bars(BAD_FRAMES["not_null"](clean_bars()), symbol="T", trade_date=D)

    payload = json.loads(quality.result_json(result))

    assert payload["suite_name"] == quality.BARS_SUITE_NAME
    assert payload["suite_version"] == quality.SUITE_VERSION
    assert payload["critical_failure_count"] == 1 and payload["warning_count"] == 0
    assert payload["gx"]["suite_name"] == quality.BARS_SUITE_NAME
    assert {r["rule"] for r in payload["expectations"]} == set(quality.BAR_RULES)


# ------------------------------------------------------------------------- batch


def test_a_batch_attributes_failures_only_to_the_symbol_that_broke_a_rule():
    frames = {"GOOD": clean_bars(), "BAD": BAD_FRAMES["high_ge_open_close"](clean_bars())}

    results = quality.validate_bars_many(frames, trade_date=D)

    assert results["GOOD"].success and results["GOOD"].critical_failures == ()
    assert results["BAD"].critical_failures == ("high_ge_open_close",)
    assert results["GOOD"].result["batch_symbols"] == 2


def test_a_malformed_frame_in_a_batch_fails_alone():
    frames = {"GOOD": clean_bars(), "NOVOL": clean_bars().drop(columns=["volume"])}

    results = quality.validate_bars_many(frames, trade_date=D)

    assert results["GOOD"].success and "schema" in results["NOVOL"].critical_failures


def test_a_passing_batch_pays_one_quick_gx_pass_and_a_failing_one_reruns_complete(monkeypatch):
    from great_expectations.datasource.fluent.interfaces import Batch

    formats: list[str] = []
    real_validate = Batch.validate

    def spy(self, expect, *args, result_format=None, **kwargs):
        formats.append((result_format or {}).get("result_format"))
        return real_validate(self, expect, *args, result_format=result_format, **kwargs)

    monkeypatch.setattr(Batch, "validate", spy)

    passing = quality.validate_bars_many({"A": clean_bars(), "B": clean_bars(20)}, trade_date=D)
    assert formats == ["BOOLEAN_ONLY"]
    assert passing["A"].success and passing["B"].success
    # The quick pass names no row, yet each symbol's row-level checks count its own rows.
    rows = {r["rule"]: r["observed"] for r in passing["B"].result["expectations"]}
    assert rows["positive_prices"] == "0 unexpected of 20 rows", rows
    moves = [
        r
        for r in passing["B"].result["gx"]["results"]
        if r["expectation_config"]["meta"]["rule"] == "max_close_move"
    ]
    assert moves[0]["result"]["element_count"] == 20
    assert moves[0]["result"]["unexpected_index_list"] == []

    formats.clear()
    failing = quality.validate_bars_many(
        {"A": clean_bars(), "BAD": BAD_FRAMES["positive_prices"](clean_bars())}, trade_date=D
    )
    assert formats == ["BOOLEAN_ONLY", "COMPLETE"]
    assert failing["A"].success and failing["BAD"].critical_failures == ("positive_prices",)
    observed = {r["rule"]: r["observed"] for r in failing["BAD"].result["expectations"]}
    assert observed["positive_prices"].startswith("1 unexpected rows")


def test_batch_and_single_validation_agree():
    bars = BAD_FRAMES["no_missing_sessions"](clean_bars())

    single = quality.validate_bars(bars, symbol="X", trade_date=D)
    batch = quality.validate_bars_many({"X": bars, "Y": clean_bars()}, trade_date=D)["X"]

    assert single.result["expectations"] == batch.result["expectations"]


def test_every_symbol_of_a_mixed_batch_gets_the_verdict_it_gets_alone():
    """The batch builds one validation frame for all symbols; no rule may leak across them."""
    base = clean_bars()
    cases = {f"BAD_{rule.upper()}": make(base) for rule, make in BAD_FRAMES.items()}
    cases["STALE"] = _stale(base)
    cases["SHUFFLED"] = base.sample(frac=1, random_state=3).reset_index(drop=True)
    cases["CORP"] = _jump(base, 20, 1.6).assign(corporate_action=[i == 20 for i in range(30)])
    cases["EXPLAINED"] = _jump(base, 18, 0.5)
    # Boundary traps. ENDS_TWICE's last two bars are identical (a run of 2: allowed) and
    # REPEATS_PREV's first bar repeats them: a run carried across symbols would reach 3 (a
    # stale warning). HIGHER starts 60% above its predecessor's last close (a move carried
    # across symbols would fail it). BEHIND lacks D (its own "latest", not a neighbour's).
    cols = ["open", "high", "low", "close", "volume"]
    cases["ENDS_TWICE"] = base.copy()
    cases["ENDS_TWICE"].loc[29, cols] = base.loc[28, cols].to_numpy()
    cases["REPEATS_PREV"] = base.copy()
    cases["REPEATS_PREV"].loc[0, cols] = base.loc[28, cols].to_numpy()
    cases["HIGHER"] = _jump(base, 0, 1.6)
    cases["BEHIND"] = base.iloc[:-1]
    # SHORT ends 2 sessions before LATE_START begins: a gap carried across symbols would be a
    # missing session.
    cases["SHORT"] = base.iloc[:10]
    cases["LATE_START"] = base.iloc[12:].reset_index(drop=True)
    explained = {"EXPLAINED": [base.loc[18, "trade_date"]]}

    batch = quality.validate_bars_many(cases, trade_date=D, explained_dates=explained)

    for symbol, bars in cases.items():
        alone = quality.validate_bars(
            bars, symbol=symbol, trade_date=D, explained_dates=explained.get(symbol, ())
        )
        got = batch[symbol]
        assert (got.critical_failures, got.warnings) == (alone.critical_failures, alone.warnings), (
            symbol
        )
        assert got.result["expectations"] == alone.result["expectations"], symbol
    assert batch["SHUFFLED"].success and batch["HIGHER"].success and batch["LATE_START"].success
    assert batch["ENDS_TWICE"].warnings == () and batch["REPEATS_PREV"].warnings == ()
    assert batch["CORP"].success and batch["EXPLAINED"].success
    assert batch["STALE"].warnings == ("stale_repeats",)
    assert "bar_for_session_present" in batch["BEHIND"].critical_failures


def _comparable(result: quality.GateResult) -> dict:
    """A verdict without the one value that differs between two runs (GX's load time)."""
    payload = json.loads(quality.result_json(result))
    payload["gx"]["meta"]["batch_markers"].pop("ge_load_time", None)
    return payload


def test_the_configuration_memo_changes_no_verdict_and_saves_most_builds(monkeypatch):
    from great_expectations.expectations.expectation import Expectation
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    assert Expectation.configuration.fget.market_memo  # installed by warm_up()
    base = clean_bars()
    bars = {rule: make(base) for rule, make in BAD_FRAMES.items() if rule != "schema"}
    bars |= {"STALE": _stale(base), "CLEAN": base}
    ind = {
        "CLEAN": clean_indicators(),
        "NAN": _set(clean_indicators(), 39, sma_50=np.nan),
        "RSI": _set(clean_indicators(), 39, rsi_14=101.0),
    }
    builds = 0
    real_init = ExpectationConfiguration.__init__

    def counted(self, *args, **kwargs):
        nonlocal builds
        builds += 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ExpectationConfiguration, "__init__", counted)

    def run(memo: bool) -> tuple[dict, dict, int]:
        nonlocal builds
        monkeypatch.setattr(quality, "CONFIGURATION_MEMO", memo)
        builds = 0
        return (
            quality.validate_bars_many(bars, trade_date=D),
            quality.validate_indicators_many(ind, trade_date=D, history_sessions=400),
            builds,
        )

    plain_bars, plain_ind, plain_builds = run(memo=False)
    memo_bars, memo_ind, memo_builds = run(memo=True)

    for plain, memo in ((plain_bars, memo_bars), (plain_ind, memo_ind)):
        for symbol in plain:
            assert _comparable(memo[symbol]) == _comparable(plain[symbol]), symbol
    assert memo_bars["CLEAN"].success and memo_bars["STALE"].warnings == ("stale_repeats",)
    assert memo_ind["RSI"].critical_failures == ("rsi_in_range",)
    # GX rebuilds an expectation's configuration on every read (~70 per expectation and
    # call); with the memo it is built about once per expectation and call.
    assert memo_builds * 5 < plain_builds, (memo_builds, plain_builds)
    assert quality.engine._MEMO.entries is None  # the memo ends with the call


# ------------------------------------------------------------------------- real data


def test_real_aapl_fails_only_the_close_move_rule_on_2000_09_29():
    bars = real_bars("AAPL")
    window = bars[bars["trade_date"] <= AAPL_DROP].tail(60)

    result = quality.validate_bars(window, symbol="AAPL", trade_date=AAPL_DROP)

    assert result.critical_failures == ("max_close_move",)
    with pytest.raises(DataQualityError) as raised:
        result.raise_for_failure()
    assert "raw bar gate failed for AAPL on 2000-09-29" in str(raised.value)
    assert "max_close_move (|move| -51.9% > 50%" in str(raised.value)


def test_acknowledging_the_real_aapl_move_passes_and_records_it():
    bars = real_bars("AAPL")
    window = bars[bars["trade_date"] <= AAPL_DROP].tail(60)

    result = quality.validate_bars(
        window, symbol="AAPL", trade_date=AAPL_DROP, acknowledged=["max_close_move"]
    )

    assert result.success
    assert (result.acknowledged, result.warnings) == (("max_close_move",), ("max_close_move",))


def test_a_per_session_acknowledgement_waives_the_rule_only_on_that_session():
    bars = real_bars("AAPL")
    window = bars[bars["trade_date"] <= date(2000, 10, 3)].tail(60)

    on_the_day = quality.validate_bars(
        window,
        symbol="AAPL",
        trade_date=date(2000, 10, 3),
        acknowledged={AAPL_DROP: ["max_close_move"]},
    )
    other_day = quality.validate_bars(
        window,
        symbol="AAPL",
        trade_date=date(2000, 10, 3),
        acknowledged={date(2000, 9, 28): ["max_close_move"]},
    )

    assert on_the_day.success
    assert on_the_day.acknowledged == ("max_close_move",)
    assert on_the_day.result["acknowledged_sessions"] == {"2000-09-29": ["max_close_move"]}
    assert other_day.critical_failures == ("max_close_move",)
    assert other_day.result["critical_sessions"] == {"max_close_move": ["2000-09-29"]}


def test_a_per_session_acknowledgement_of_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown rule names acknowledged"):
        quality.validate_bars(clean_bars(), symbol="T", trade_date=D, acknowledged={D: ["typo"]})


def test_a_move_outside_the_acknowledged_session_still_fails_in_one_history_run():
    bars = real_bars("AAPL")
    history = bars[bars["trade_date"] <= date(2000, 10, 3)].copy()
    spike = history["trade_date"] == date(2000, 10, 2)
    history.loc[spike, ["open", "high", "low", "close"]] *= 3  # a fake one-day spike

    result = quality.validate_bars(
        history,
        symbol="AAPL",
        trade_date=date(2000, 10, 3),
        acknowledged={AAPL_DROP: ["max_close_move"]},
    )

    assert result.critical_failures == ("max_close_move",)
    assert result.result["critical_sessions"]["max_close_move"] == ["2000-10-02", "2000-10-03"]


def test_all_real_history_passes_except_the_aapl_drop():
    frames = {s: real_bars(s) for s in ("AAPL", "GLD", "GOOG", "IBM", "SPY")}
    last = date(2012, 9, 11)
    frames = {s: f[f["trade_date"] <= last] for s, f in frames.items()}

    results = quality.validate_bars_many(frames, trade_date=last)

    failed = {s: r.critical_failures for s, r in results.items() if not r.success}
    assert failed == {"AAPL": ("max_close_move",)}
    assert all(r.warnings == () for r in results.values())


# ------------------------------------------------------------------------- indicator gate


def clean_indicators(sessions: int = 40, end: date = D) -> pd.DataFrame:
    dates = calendar.previous_sessions(end, sessions)
    close = np.linspace(100, 110, len(dates))
    frame = pd.DataFrame({"trade_date": dates, "close": close})
    for col in quality.INDICATOR_COLUMNS:
        frame[col] = close
    frame["rsi_14"] = 55.0
    frame["bb_upper"], frame["bb_lower"] = close + 2, close - 2
    return frame


def test_clean_indicators_pass():
    result = quality.validate_indicators(
        clean_indicators(), symbol="TEST", trade_date=D, history_sessions=400
    )

    assert (result.success, result.critical_failures, result.not_ready) == (True, (), {})


def test_a_nan_after_warm_up_fails_the_indicator_gate():
    ind = _set(clean_indicators(), 39, sma_50=np.nan)

    result = quality.validate_indicators(ind, symbol="TEST", trade_date=D, history_sessions=400)

    assert result.critical_failures == ("no_nan_after_warmup",)
    with pytest.raises(DataQualityError, match=r"no_nan_after_warmup \(2024-11-27: sma_50\)"):
        result.raise_for_failure()


@pytest.mark.parametrize("nan_row", [None, 0, 5])
def test_a_history_counted_up_to_the_gates_cap_judges_as_the_full_count(nan_row):
    # validate_indicators counts a symbol's history no further than its window plus the
    # longest warm-up (stages.validate_indicators): every row is then past every warm-up,
    # as with the full count, so the verdict is the same.
    window = 6
    ind = clean_indicators(window)
    if nan_row is not None:  # a NaN in the window's oldest row, or on D
        ind = _set(ind, nan_row, sma_200=np.nan)
    cap = history_cap(window)

    full = quality.validate_indicators(ind, symbol="T", trade_date=D, history_sessions=3000)
    capped = quality.validate_indicators(ind, symbol="T", trade_date=D, history_sessions=cap)

    assert (capped.success, capped.critical_failures, capped.not_ready) == (
        full.success,
        full.critical_failures,
        full.not_ready,
    )
    assert capped.success == (nan_row is None)


def test_short_history_marks_sma200_not_ready_instead_of_failing():
    ind = clean_indicators().assign(sma_200=np.nan)

    result = quality.validate_indicators(ind, symbol="NEW", trade_date=D, history_sessions=150)

    assert result.success
    assert list(result.not_ready) == ["sma_200"]


def test_nan_inside_the_warm_up_of_a_young_symbol_is_accepted():
    ind = clean_indicators()
    ind.loc[:20, "sma_50"] = np.nan  # with 60 sessions of history, rows 0..20 are positions 20..40

    result = quality.validate_indicators(ind, symbol="NEW", trade_date=D, history_sessions=60)

    assert result.success


def test_an_out_of_range_rsi_fails_the_indicator_gate():
    ind = _set(clean_indicators(), 39, rsi_14=101.0)

    result = quality.validate_indicators(ind, symbol="TEST", trade_date=D, history_sessions=400)

    assert result.critical_failures == ("rsi_in_range",)


def test_disordered_bollinger_bands_fail_the_indicator_gate():
    ind = _set(clean_indicators(), 39, bb_lower=200.0)

    result = quality.validate_indicators(ind, symbol="TEST", trade_date=D, history_sessions=400)

    assert result.critical_failures == ("bollinger_ordered",)


def test_indicators_a_session_behind_are_stale():
    ind = clean_indicators(end=calendar.previous_session(D))

    result = quality.validate_indicators(ind, symbol="TEST", trade_date=D, history_sessions=400)

    assert result.critical_failures == ("indicators_for_session_present", "not_stale")
    assert "not_stale (" in result.failure_message()


def test_every_symbol_of_a_mixed_indicator_batch_gets_the_verdict_it_gets_alone():
    young = clean_indicators()
    young.loc[:20, "sma_50"] = np.nan
    cases = {
        "CLEAN": (clean_indicators(), 400),
        "NAN": (_set(clean_indicators(), 39, sma_50=np.nan), 400),
        "YOUNG": (young, 60),  # right after a mature symbol: positions must restart
        "SHORT": (clean_indicators().assign(sma_200=np.nan), 150),
        "RSI": (_set(clean_indicators(), 39, rsi_14=101.0), 400),
        "BANDS": (_set(clean_indicators(), 39, bb_lower=200.0), 400),
        "BEHIND": (clean_indicators(end=calendar.previous_session(D)), 400),
        "SHUFFLED": (clean_indicators().sample(frac=1, random_state=5), None),
    }
    frames = {s: frame for s, (frame, _) in cases.items()}
    histories = {s: n for s, (_, n) in cases.items()}

    batch = quality.validate_indicators_many(frames, trade_date=D, history_sessions=histories)

    for symbol, (frame, history) in cases.items():
        alone = quality.validate_indicators(
            frame, symbol=symbol, trade_date=D, history_sessions=history
        )
        got = batch[symbol]
        assert (got.critical_failures, got.not_ready) == (alone.critical_failures, alone.not_ready)
        assert got.result["expectations"] == alone.result["expectations"], symbol
    assert batch["CLEAN"].success and batch["YOUNG"].success and batch["SHORT"].success
    assert list(batch["SHORT"].not_ready) == ["sma_200"]
    assert batch["NAN"].critical_failures == ("no_nan_after_warmup",)
    assert batch["BEHIND"].critical_failures == ("indicators_for_session_present", "not_stale")


def test_indicators_computed_from_real_bars_pass_with_sma200_not_ready_when_young():
    from market_pipeline.indicators import compute_frame

    bars = real_bars("IBM").head(700)
    ind = compute_frame(bars, engine="python")
    young, mature = bars["trade_date"].iloc[149], bars["trade_date"].iloc[649]

    r_young = quality.validate_indicators(
        ind[ind["trade_date"] <= young].tail(60),
        symbol="IBM",
        trade_date=young,
        history_sessions=150,
    )
    r_mature = quality.validate_indicators(
        ind[ind["trade_date"] <= mature].tail(60),
        symbol="IBM",
        trade_date=mature,
        history_sessions=650,
    )

    assert (r_young.success, list(r_young.not_ready)) == (True, ["sma_200"])
    assert (r_mature.success, r_mature.not_ready) == (True, {})


# ------------------------------------------------------------------------- cost design


def test_importing_the_module_does_not_import_great_expectations():
    code = "import sys, market_pipeline.quality; print('great_expectations' in sys.modules)"

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"


def test_warm_up_builds_the_context_once():
    before = quality.engine.default()

    quality.warm_up()

    assert quality.engine.default() is before
