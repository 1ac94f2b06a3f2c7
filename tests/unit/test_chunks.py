"""Cutting the universe into chunks (market_symbols_per_task)."""

from __future__ import annotations

import pytest

from market_pipeline.chunks import chunk_label, chunk_symbols
from market_pipeline.errors import ConfigurationError


def test_chunks_are_consecutive_runs_of_the_sorted_universe_with_a_short_last_one():
    chunks = chunk_symbols(["XOM", "AAPL", "KO", "IBM", "BAC"], 2)

    assert chunks == [["AAPL", "BAC"], ["IBM", "KO"], ["XOM"]]


def test_one_symbol_per_task_gives_one_chunk_per_symbol_labelled_by_the_symbol():
    chunks = chunk_symbols(["KO", "AAPL"], 1)

    assert chunks == [["AAPL"], ["KO"]]
    assert [chunk_label(c) for c in chunks] == ["AAPL", "KO"]


def test_a_chunk_label_names_its_first_and_last_symbol():
    assert chunk_label(["B0000", "B0001", "B0009"]) == "B0000..B0009"


def test_the_same_universe_always_cuts_the_same_way_whatever_its_order():
    symbols = [f"S{i:04d}" for i in range(23)]

    assert chunk_symbols(symbols, 5) == chunk_symbols(list(reversed(symbols)), 5)


@pytest.mark.parametrize("per_task", [0, -3, 2.5, "10", True])
def test_a_per_task_size_that_is_not_a_positive_integer_is_rejected(per_task):
    with pytest.raises(ConfigurationError, match=r"expected market_symbols_per_task .* found"):
        chunk_symbols(["AAPL"], per_task)


def test_too_many_chunks_for_max_map_length_names_the_setting_that_fits():
    symbols = [f"S{i:04d}" for i in range(5000)]

    with pytest.raises(ConfigurationError) as info:
        chunk_symbols(symbols, 1, max_chunks=1024)

    message = str(info.value)
    assert "expected at most 1024 map indexes" in message
    assert "found 5000" in message
    assert "market_symbols_per_task to at least 5" in message
    assert len(chunk_symbols(symbols, 5, max_chunks=1024)) == 1000


def test_duplicate_symbols_are_named():
    with pytest.raises(ConfigurationError, match=r"duplicates: \['KO'\]"):
        chunk_symbols(["KO", "AAPL", "KO"], 2)
