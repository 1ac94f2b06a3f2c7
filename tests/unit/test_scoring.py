"""Cross-sectional scores: formula, ranking, ties and determinism."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from market_pipeline import scoring
from market_pipeline.errors import DataQualityError
from market_pipeline.signals import RULES


def latest_row(symbol: str, close: float = 100.0, close_20: float = 95.0, sma_50: float = 98.0):
    return {"symbol": symbol, "close": close, "close_20": close_20, "sma_50": sma_50}


def signal_rows(symbol: str, direction: str = "flat", strength: float = 0.0, ready: bool = True):
    return [
        {
            "symbol": symbol,
            "rule": rule,
            "direction": direction if ready else "n/a",
            "strength": strength if ready else 0.0,
            "ready": ready,
        }
        for rule in RULES
    ]


def frames(latest: list[dict], sigs: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(latest), pd.DataFrame(sigs)


def test_empty_input_gives_an_empty_frame_with_the_columns():
    out = scoring.score_universe(pd.DataFrame(), pd.DataFrame())

    assert out.empty
    assert list(out.columns) == ["symbol", "score", "rank", "percentile", "components"]


def test_equal_scores_are_ranked_by_symbol():
    latest, sigs = frames(
        [latest_row("MSFT"), latest_row("AAPL"), latest_row("KO")],
        signal_rows("MSFT") + signal_rows("AAPL") + signal_rows("KO"),
    )

    out = scoring.score_universe(latest, sigs)

    assert out["score"].nunique() == 1
    assert out["symbol"].tolist() == ["AAPL", "KO", "MSFT"]
    assert out["rank"].tolist() == [1, 2, 3]


def test_scores_do_not_depend_on_the_input_row_order():
    rows = [latest_row(s, close=100 + i, close_20=90 + 3 * i) for i, s in enumerate("ABCDEFG")]
    sigs = [r for i, s in enumerate("ABCDEFG") for r in signal_rows(s, "long", i / 7)]
    latest, signals = frames(rows, sigs)

    first = scoring.score_universe(latest, signals)
    second = scoring.score_universe(latest.iloc[::-1], signals.sample(frac=1.0, random_state=3))

    pd.testing.assert_frame_equal(first, second)


def test_a_stronger_long_signal_scores_higher():
    latest, sigs = frames(
        [latest_row("AAA"), latest_row("BBB")],
        signal_rows("AAA", "long", 0.9) + signal_rows("BBB", "long", 0.2),
    )

    out = scoring.score_universe(latest, sigs)

    assert out["symbol"].tolist() == ["AAA", "BBB"]
    assert out["score"].iloc[0] > out["score"].iloc[1]


def test_short_signals_lower_the_score():
    latest, sigs = frames(
        [latest_row("AAA"), latest_row("BBB")],
        signal_rows("AAA", "short", 1.0) + signal_rows("BBB"),
    )

    out = scoring.score_universe(latest, sigs).set_index("symbol")

    assert out.loc["AAA", "score"] == pytest.approx(-50.0)
    assert out.loc["BBB", "score"] == 0.0


def test_percentile_is_100_for_the_best_and_above_0_for_the_worst():
    rows = [latest_row(s, close_20=80 + i) for i, s in enumerate("ABCD")]
    latest, sigs = frames(rows, [])

    out = scoring.score_universe(latest, sigs)

    assert out["percentile"].tolist() == [100.0, 75.0, 50.0, 25.0]


def test_higher_momentum_ranks_higher_when_signals_are_equal():
    latest, sigs = frames(
        [latest_row("AAA", close_20=99.0), latest_row("BBB", close_20=80.0), latest_row("CCC")],
        [],
    )

    out = scoring.score_universe(latest, sigs)

    assert out["symbol"].tolist() == ["BBB", "CCC", "AAA"]


def test_only_symbols_in_latest_are_scored():
    latest, sigs = frames([latest_row("AAA")], signal_rows("AAA") + signal_rows("ZZZ", "long", 1))

    out = scoring.score_universe(latest, sigs)

    assert out["symbol"].tolist() == ["AAA"]


def test_a_not_ready_rule_counts_zero_and_is_shown_as_none():
    latest, sigs = frames([latest_row("AAA")], signal_rows("AAA", ready=False))

    out = scoring.score_universe(latest, sigs)

    components = out["components"].iloc[0]
    assert components["signal"] == 0.0
    assert set(components["rules"].values()) == {None}


def test_a_missing_close_20_scores_the_universe_median_momentum():
    rows = [latest_row("AAA", close_20=math.nan), latest_row("BBB", close_20=90.0)]
    latest, sigs = frames(rows, [])

    out = scoring.score_universe(latest, sigs).set_index("symbol")

    assert out.loc["AAA", "components"]["momentum_raw"] is None
    assert out.loc["AAA", "components"]["momentum_z"] == 0.0


def test_components_are_json_serialisable():
    rows = [latest_row(s, close_20=90 + i) for i, s in enumerate("ABC")]
    latest, sigs = frames(rows, signal_rows("A", "long", 0.5))

    out = scoring.score_universe(latest, sigs)

    for components in out["components"]:
        json.dumps(components, allow_nan=False)


def test_duplicate_symbols_in_latest_raise_a_data_quality_error():
    latest, sigs = frames([latest_row("AAA"), latest_row("AAA")], [])

    with pytest.raises(DataQualityError, match="one latest row per symbol"):
        scoring.score_universe(latest, sigs)


def test_a_latest_frame_without_close_20_is_rejected():
    latest = pd.DataFrame([latest_row("AAA")]).drop(columns="close_20")

    with pytest.raises(DataQualityError, match="close_20"):
        scoring.score_universe(latest, pd.DataFrame())
