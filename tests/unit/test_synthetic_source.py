"""The synthetic source: deterministic, realistic, session-aligned bars with injectable defects."""

from __future__ import annotations

from datetime import date

import pytest

from market_pipeline import calendar
from market_pipeline.errors import PermanentSourceError, TransientSourceError
from market_pipeline.sources.base import BAR_COLUMNS
from market_pipeline.sources.synthetic import SyntheticSource

START, END = date(2024, 10, 1), date(2024, 11, 29)


def test_rerunning_a_fetch_gives_identical_bars():
    assert (
        SyntheticSource()
        .fetch("AAPL", START, END)
        .equals(SyntheticSource().fetch("AAPL", START, END))
    )


def test_a_sub_range_equals_the_same_rows_of_a_longer_fetch():
    long = SyntheticSource().fetch("MSFT", START, END)
    short = SyntheticSource().fetch("MSFT", date(2024, 11, 1), date(2024, 11, 15))
    expected = long[
        (long.trade_date >= date(2024, 11, 1)) & (long.trade_date <= date(2024, 11, 15))
    ]
    assert short.reset_index(drop=True).equals(expected.reset_index(drop=True))


def test_bars_exist_only_for_exchange_sessions():
    bars = SyntheticSource().fetch("IBM", START, END)
    assert list(bars.trade_date) == calendar.sessions_between(START, END)
    assert tuple(bars.columns) == BAR_COLUMNS


def test_ohlcv_is_internally_consistent_and_moves_realistically():
    bars = SyntheticSource().fetch("KO", date(2023, 1, 3), END)
    assert (bars.high >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars.low <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars.low > 0).all() and (bars.volume > 0).all()
    assert bars.close.pct_change().abs().max() < 0.2


def test_different_symbols_get_different_series():
    a = SyntheticSource().fetch("AAA", START, END).close
    b = SyntheticSource().fetch("BBB", START, END).close
    assert not a.equals(b)


def test_unknown_symbol_defect_is_a_permanent_source_error_naming_symbol_and_session():
    source = SyntheticSource(defects={"XOM": "unknown_symbol"})
    with pytest.raises(PermanentSourceError, match=r"symbol=XOM, session=2024-11-29"):
        source.fetch("XOM", START, END)


def test_unavailable_defect_is_transient_with_a_retry_after():
    with pytest.raises(TransientSourceError) as info:
        SyntheticSource(defects={"XOM": "unavailable"}).fetch("XOM", START, END)
    assert info.value.retry_after == 1.0


def test_late_defect_withholds_only_the_requested_session():
    bars = SyntheticSource(defects={"SPY": "late"}).fetch("SPY", START, END)
    assert bars.trade_date.iloc[-1] == date(2024, 11, 27)


@pytest.mark.parametrize(
    ("defect", "broken"),
    [
        ("negative_price", lambda b: b.low.iloc[-1] < 0),
        ("high_below_close", lambda b: b.high.iloc[-1] < b.close.iloc[-1]),
        ("spike", lambda b: b.close.iloc[-1] / b.close.iloc[-2] > 1.5),
        ("duplicate_day", lambda b: b.trade_date.duplicated().any()),
    ],
)
def test_data_defects_break_only_the_last_bar(defect, broken):
    clean = SyntheticSource().fetch("JNJ", START, END)
    bars = SyntheticSource(defects={"JNJ": defect}).fetch("JNJ", START, END)
    assert broken(bars)
    assert bars.iloc[: len(clean) - 1].equals(clean.iloc[:-1])


def test_defect_spec_parses_and_rejects_garbage():
    assert SyntheticSource.parse_defects("aapl:spike, MSFT:late") == {
        "AAPL": "spike",
        "MSFT": "late",
    }
    with pytest.raises(ValueError, match="expected SYMBOL:DEFECT"):
        SyntheticSource.parse_defects("AAPL")
    with pytest.raises(ValueError, match="unknown synthetic defect"):
        SyntheticSource(defects={"AAPL": "meteor"})


def test_the_spike_defect_works_on_a_one_session_window():
    day = date(2024, 11, 29)
    history = SyntheticSource().fetch("JNJ", date(2024, 11, 27), day)

    bars = SyntheticSource(defects={"JNJ": "spike"}).fetch("JNJ", day, day)

    assert bars["trade_date"].tolist() == [day]
    assert bars["close"].iloc[0] == round(history["close"].iloc[-2] * 1.8, 4)
    assert bars["high"].iloc[0] >= bars["close"].iloc[0]


def test_a_clean_window_is_already_in_the_canonical_form_every_source_returns():
    from market_pipeline.sources.base import normalise_bars

    for start, end in ((date(2024, 1, 2), date(2024, 11, 29)), (date(2024, 11, 29),) * 2):
        bars = SyntheticSource().fetch("AAPL", start, end)

        assert list(bars.columns) == list(BAR_COLUMNS)
        assert bars.equals(normalise_bars(bars))
        assert bars.dtypes.astype(str).tolist() == ["object", *["float64"] * 4, "int64"]
        assert all(type(d) is date for d in bars["trade_date"])
        assert list(bars.index) == list(range(len(bars)))


def test_streams_drawn_together_equal_each_stream_drawn_alone():
    """The source draws a window's streams in one pass: each row must be exactly what that
    stream alone gives, or the series would depend on which streams are drawn together."""
    import numpy as np

    from market_pipeline.sources import synthetic

    key = SyntheticSource()._key("IBM")
    ordinals = np.arange(738000, 738040)
    together = synthetic._uniform(key, ordinals, 10, 20, 99)
    normals = synthetic._normal(key, ordinals, 20, 30)
    for row, stream in enumerate((10, 20, 99)):
        assert np.array_equal(together[row], synthetic._uniform(key, ordinals, stream))
    for row, stream in enumerate((20, 30)):
        assert np.array_equal(normals[row], synthetic._normal(key, ordinals, stream))
    assert not np.array_equal(together[0], together[1])  # the streams differ
