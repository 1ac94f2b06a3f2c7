"""Benchmark: market_pipeline.indicators against a TA-Lib per-symbol loop, side by side.

Run from the repo root::

    .venv/bin/python bench/bench_indicators.py

Both sides produce the full indicator set for a symbols × sessions universe into 2-D
arrays (TA-Lib is called once per symbol and indicator, as a per-symbol loop would).
Prints, per shape, the median wall time of each, their ratio and the largest deviation
from TA-Lib, then the cold costs: numba import, kernel load from the warm on-disk cache,
a full compile with the cache bypassed, and a fresh process that imports the module
and computes one 600-bar frame (the per-symbol task path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import talib

from market_pipeline import indicators

SHAPES = ((500, 2520, 0.6), (5000, 260, 0.25))


def random_universe(n_sym: int, n_ses: int, seed: int = 7) -> tuple[np.ndarray, ...]:
    """Random-walk OHLC with ragged starts (leading NaNs), like a real universe."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, (n_sym, n_ses)), axis=1))
    high = close * (1.0 + rng.uniform(0.0, 0.02, close.shape))
    low = close * (1.0 - rng.uniform(0.0, 0.02, close.shape))
    starts = rng.integers(0, n_ses // 5, n_sym)
    starts[: n_sym // 2] = 0
    for i, s in enumerate(starts):
        high[i, :s] = low[i, :s] = close[i, :s] = np.nan
    return high, low, close


def talib_loop(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, out: dict | None = None
) -> dict[str, np.ndarray]:
    """The baseline: TA-Lib called per symbol, results gathered into 2-D arrays."""
    if out is None:
        out = {c: np.empty_like(close) for c in indicators.INDICATOR_COLUMNS}
    for i in range(close.shape[0]):
        h, lo, c = high[i], low[i], close[i]
        out["ema_9"][i] = talib.EMA(c, 9)
        out["ema_21"][i] = talib.EMA(c, 21)
        out["sma_50"][i] = talib.SMA(c, 50)
        out["sma_200"][i] = talib.SMA(c, 200)
        out["rsi_14"][i] = talib.RSI(c, 14)
        out["macd"][i], out["macd_signal"][i], out["macd_hist"][i] = talib.MACD(c, 12, 26, 9)
        out["atr_14"][i] = talib.ATR(h, lo, c, 14)
        out["bb_upper"][i], out["bb_middle"][i], out["bb_lower"][i] = talib.BBANDS(
            c, 20, 2.0, 2.0, 0
        )
    return out


def timed_pair(ours, ref, repeat: int) -> tuple[list[float], list[float]]:
    """Wall times of ``ours()`` and ``ref()``, run alternately so that a shared, noisy
    machine slows both sides alike. Each result is dropped before the next call, so
    both sides allocate their outputs from the same allocator state."""
    ours_t, ref_t = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        result = ours()
        ours_t.append(time.perf_counter() - start)
        del result
        start = time.perf_counter()
        result = ref()
        ref_t.append(time.perf_counter() - start)
        del result
    return ours_t, ref_t


def max_deviation(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, float]:
    """(largest absolute deviation, largest relative deviation on Bollinger)."""
    worst_abs, worst_rel = 0.0, 0.0
    for col, want in ref.items():
        got = ours[col]
        if not np.array_equal(np.isnan(got), np.isnan(want)):
            raise AssertionError(f"{col}: NaN pattern differs from TA-Lib")
        diff = np.abs(np.nan_to_num(got) - np.nan_to_num(want))
        if col.startswith("bb_"):
            scale = np.maximum(np.abs(np.nan_to_num(want)), 1e-300)
            worst_rel = max(worst_rel, float((diff / scale).max()))
        else:
            worst_abs = max(worst_abs, float(diff.max()))
    return worst_abs, worst_rel


COLD_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np, pandas as pd
t1 = time.perf_counter()
from market_pipeline import indicators
t2 = time.perf_counter()
n = 600
c = 50 + np.cumsum(np.random.default_rng(1).normal(0, 1, n))
bars = pd.DataFrame({"trade_date": pd.date_range("2022-01-03", periods=n).date,
    "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 1})
frame = indicators.compute_frame(bars)
t3 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f}")
"""


def cold_start(repeat: int) -> None:
    rows = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", COLD_SNIPPET], capture_output=True, text=True, check=True
        )
        total = time.perf_counter() - start
        rows.append([*map(float, out.stdout.split()), total])
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        "cold per-symbol task path (fresh process, median of "
        f"{repeat}): numpy+pandas import {med[0] * 1e3:.0f} ms, "
        f"import market_pipeline.indicators {med[1] * 1e3:.1f} ms, "
        f"compute_frame(600 bars, python engine) {med[2] * 1e3:.1f} ms, "
        f"whole process {med[3] * 1e3:.0f} ms"
    )


NUMBA_SNIPPET = """
import time
import numpy as np
from market_pipeline import indicators
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
x = np.ones((1, 2))
indicators.compute_arrays(x, x, x, engine="numba")
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def numba_cold(repeat: int) -> None:
    indicators.warm_jit()
    rows = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", NUMBA_SNIPPET], capture_output=True, text=True, check=True
        )
        rows.append(list(map(float, out.stdout.split())))
    imp, load = (statistics.median(col) for col in zip(*rows, strict=True))
    with tempfile.TemporaryDirectory() as empty_cache:
        out = subprocess.run(
            [sys.executable, "-c", NUMBA_SNIPPET],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "NUMBA_CACHE_DIR": empty_cache},
        )
    compile_s = float(out.stdout.split()[1])
    print(
        f"numba cold costs (fresh process, median of {repeat}): import numba "
        f"{imp * 1e3:.0f} ms, kernel from warm cache {load * 1e3:.0f} ms; "
        f"compile without cache ~{compile_s * 1e3:.0f} ms"
    )


def run_shape(n_sym: int, n_ses: int, target: float, engine: str, repeat: int) -> None:
    """Time one universe shape both ways and print ratios and the deviation."""
    high, low, close = random_universe(n_sym, n_ses)
    ref = talib_loop(high, low, close)
    dev_abs, dev_rel = max_deviation(
        indicators.compute_arrays(high, low, close, engine=engine), ref
    )
    ours_out = {c: np.empty_like(close) for c in indicators.INDICATOR_COLUMNS}
    modes = {
        "new outputs": (
            lambda: indicators.compute_arrays(high, low, close, engine=engine),
            lambda: talib_loop(high, low, close),
        ),
        "preallocated outputs": (
            lambda: indicators.compute_arrays(high, low, close, engine=engine, out=ours_out),
            lambda: talib_loop(high, low, close, out=ref),
        ),
    }
    print(
        f"{n_sym} symbols x {n_ses} sessions (target <= {target}): max deviation from "
        f"TA-Lib {dev_abs:.1e} abs, Bollinger {dev_rel:.1e} rel"
    )
    for mode, (ours, theirs) in modes.items():
        ours_t, ref_t = timed_pair(ours, theirs, repeat)
        med = statistics.median(ours_t) / statistics.median(ref_t)
        best = min(ours_t) / min(ref_t)
        verdict = "ok" if med <= target else "MISSED"
        print(
            f"  {mode:>20}: ours {statistics.median(ours_t) * 1e3:6.1f} ms, TA-Lib "
            f"{statistics.median(ref_t) * 1e3:6.1f} ms, ratio {med:.2f} (best {best:.2f}) "
            f"{verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--engine", default="numba", choices=("numba", "python"))
    args = parser.parse_args()

    indicators.warm_jit()
    print(
        f"compute_arrays (engine={args.engine}) vs TA-Lib per-symbol loop, full set, "
        f"{args.repeat} alternating rounds; ratio = ours / TA-Lib (median, best)"
    )
    for n_sym, n_ses, target in SHAPES:
        run_shape(n_sym, n_ses, target, args.engine, args.repeat)
    numba_cold(repeat=3)
    cold_start(repeat=5)


if __name__ == "__main__":
    main()
