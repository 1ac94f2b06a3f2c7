"""Cutting the universe into chunks (market_symbols_per_task)."""

from __future__ import annotations

import pytest

from market_pipeline.chunks import (
    AUTO,
    AUTO_MAP_INDEXES,
    chunk_label,
    chunk_symbols,
    parse_per_task,
    per_task_for,
)
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


# --------------------------------------------------------------------------- auto (the default)


def _universe(n: int) -> list[str]:
    return [f"S{i:05d}" for i in range(n)]


def test_the_default_setting_is_auto():
    from market_pipeline.stages.settings import Settings

    assert Settings().symbols_per_task == AUTO


@pytest.mark.parametrize("n", [1, 20, AUTO_MAP_INDEXES])
def test_auto_keeps_one_symbol_per_map_index_for_a_small_universe(n):
    chunks = chunk_symbols(_universe(n), AUTO)

    assert [len(c) for c in chunks] == [1] * n


@pytest.mark.parametrize(
    ("n", "per_task", "map_indexes"),
    [(AUTO_MAP_INDEXES + 1, 2, 17), (500, 16, 32), (5000, 157, 32), (20000, 625, 32)],
)
def test_auto_past_the_threshold_bounds_the_map_indexes(n, per_task, map_indexes):
    chunks = chunk_symbols(_universe(n), AUTO)

    assert per_task_for(n) == per_task
    assert len(chunks) == map_indexes <= AUTO_MAP_INDEXES
    assert sorted(s for c in chunks for s in c) == _universe(n)
    assert {len(c) for c in chunks[:-1]} == {per_task}


@pytest.mark.parametrize("setting", [1, 7, "7", " 50 "])
def test_an_explicit_integer_wins_over_auto(setting):
    assert per_task_for(5000, setting) == int(str(setting).strip())
    assert per_task_for(3, setting) == int(str(setting).strip())


def test_an_explicit_integer_past_max_map_length_is_still_rejected():
    with pytest.raises(ConfigurationError, match="expected at most 1024 map indexes"):
        chunk_symbols(_universe(5000), per_task_for(5000, "1"), max_chunks=1024)


def test_auto_never_exceeds_the_configured_max_map_length():
    from airflow.configuration import conf

    configured = conf.getint("core", "max_map_length")
    for limit in sorted({configured, 1, 2, 5, 31, 32, 33, 1024}):
        for n in [*range(1, 200), 999, 1000, 1001, 1024, 1025, 5000, 12345, 100_000]:
            chunks = chunk_symbols(_universe(n), AUTO, max_chunks=limit)
            assert len(chunks) <= min(limit, AUTO_MAP_INDEXES), (n, limit)
            assert sum(map(len, chunks)) == n


@pytest.mark.parametrize("raw", ["", "AUTO", " auto "])
def test_auto_is_spelled_loosely_and_empty_means_auto(raw):
    assert parse_per_task(raw) == AUTO


@pytest.mark.parametrize("raw", ["0", "-3", "2.5", "automatic", "ten", 0, True, 2.5])
def test_a_setting_that_is_neither_auto_nor_a_positive_integer_is_named(raw):
    with pytest.raises(
        ConfigurationError,
        match=r"expected market_symbols_per_task to be 'auto' or a positive integer, found",
    ):
        parse_per_task(raw)


def test_a_bad_variable_fails_when_the_setting_is_read():
    from market_pipeline.stages.settings import Settings

    settings = Settings(read={"market_symbols_per_task": "lots"}.__getitem__)
    with pytest.raises(ConfigurationError, match="found 'lots'"):
        _ = settings.symbols_per_task
