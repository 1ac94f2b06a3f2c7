"""P8: the cost growth the daily-run bench prints (bench/bench_daily_run.py --growth-from)."""

from __future__ import annotations

import pytest

from tests.support.bench_scripts import load


@pytest.fixture
def bench():
    return load("bench_daily_run", "bench_daily_run_growth")


def _raw(symbols: int, *walls: float) -> dict:
    runs = [{"variant": "real", "wall_seconds": w} for w in walls]
    runs.append({"variant": "empty", "wall_seconds": 1.0})  # another DAG: not counted
    return {"symbols": symbols, "runs": runs}


def test_growth_is_the_larger_universes_median_wall_over_the_smallers(bench):
    printed = []
    out = bench.growth(_raw(5000, 150.0, 170.0, 160.0), _raw(500, 60.0, 80.0), log=printed.append)

    assert out["walls"] == {"500": 70.0, "5000": 160.0}
    assert out["ratio"] == pytest.approx(160.0 / 70.0)
    assert out["target_met"] is True
    assert "5000 symbols 160.0 s / 500 symbols 70.0 s = 2.29x" in printed[0]


def test_growth_past_the_target_is_reported_not_met(bench):
    printed = []
    out = bench.growth(_raw(5000, 900.0), _raw(500, 60.0), log=printed.append)

    assert out["ratio"] == 15.0
    assert out["target_met"] is False
    assert "NOT met" in printed[0]
