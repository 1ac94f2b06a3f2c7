"""Technical indicators equal to TA-Lib, vectorised over a symbols × sessions array.

One kernel computes the whole set for every row in a single pass over time. The same
source runs in two engines:

* ``python`` — the kernel interpreted over Python lists. No import beyond numpy; a few
  milliseconds for one symbol's 600-session window, so a per-symbol task pays nothing
  for a JIT.
* ``numba`` — the kernel compiled with ``numba.njit(cache=True)``. Used for bulk history
  rebuilds (a whole universe at once), where it beats a TA-Lib per-symbol loop.

``engine="auto"`` (the default, overridable with ``MARKET_INDICATORS_ENGINE``) picks
numba when the kernel is already compiled in this process (:func:`warm_jit`), or for
inputs of at least :data:`NUMBA_MIN_CELLS` cells when numba is installed, and the
interpreter otherwise. Both engines perform the same IEEE operations in the same
order, so their results agree bit for bit. Conventions (seeding, smoothing, population
standard deviation) follow TA-Lib's C code; see ``docs/indicators.md``.

Rows may start at different sessions: leading NaNs mark sessions before a symbol's
history begins, and each row's warm-up counts from its own first bar. A NaN after a
row's first bar propagates (as it would in TA-Lib); the frame builders reject such input.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from market_pipeline.errors import DataQualityError

INDICATOR_COLUMNS: tuple[str, ...] = (
    "ema_9",
    "ema_21",
    "sma_50",
    "sma_200",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "atr_14",
    "bb_upper",
    "bb_middle",
    "bb_lower",
)

#: Index of the first bar with a value (= leading bars without one), as in TA-Lib.
WARMUP: dict[str, int] = {
    "ema_9": 8,
    "ema_21": 20,
    "sma_50": 49,
    "sma_200": 199,
    "rsi_14": 14,
    "macd": 33,
    "macd_signal": 33,
    "macd_hist": 33,
    "atr_14": 14,
    "bb_upper": 19,
    "bb_middle": 19,
    "bb_lower": 19,
}

#: Sessions a daily recompute reads: its last bar equals the full-history value (the
#: exponential state exactly, running sums to the last bits, ≤ 1e-12 relative).
EXACT_WINDOW_SESSIONS = 600

#: ``engine="auto"`` uses numba from this many cells (symbols × sessions) up, unless the
#: kernel is already compiled in the process: the interpreter needs 1-3.5 µs a cell,
#: numba ~1 s to import and load its cached kernel in a fresh process.
NUMBA_MIN_CELLS = 500_000

ENGINE_ENV = "MARKET_INDICATORS_ENGINE"
ENGINES = ("auto", "python", "numba")

_PRICE_COLUMNS = ("high", "low", "close")


# TA-Lib's EMA smoothing factors, k = 2 / (p + 1).
_K9 = 2.0 / 10.0
_K12 = 2.0 / 13.0
_K21 = 2.0 / 22.0
_K26 = 2.0 / 27.0
# Wilder's '/ 14' as a multiplication: a division on the loop-carried chain is the
# kernel's critical path; the difference is an ulp, far inside TA-Lib's 1e-9.
_INV14 = 1.0 / 14.0
_NAN = math.nan
#: Bar index past every warm-up. The steady-state loop passes it as ``j`` so that, once
#: the steps are inlined, the compiler folds their warm-up branches away.
_STEADY = 1 << 30

# Update steps, one per indicator: each takes its state and the new bar (``j`` = bars
# since the row's first one) and returns the new state and the value to emit (NaN during
# warm-up). Plain Python functions: the interpreted engine calls them; the numba engine
# compiles them into the kernel, inlined (``_STEPS``).


def _first_bar(h: Any, lo: Any, c: Any) -> int:
    """Index of the row's first bar with high, low and close (``len(c)`` if none)."""
    s = 0
    # x != x is the NaN test that works on Python floats and in numba alike.
    while s < len(c) and (c[s] != c[s] or h[s] != h[s] or lo[s] != lo[s]):
        s += 1
    return s


def _ema(e: float, x: float, j: int, p: int, k: float) -> tuple[float, float]:
    """EMA(p), TA-Lib seed: the first p inputs summed, their mean at j = p-1, then e + k·(x-e)."""
    if j < p - 1:
        return e + x, _NAN
    e = (e + x) / p if j == p - 1 else ((x - e) * k) + e
    return e, e


def _sma(total: float, x: float, c: Any, t: int, j: int, p: int) -> tuple[float, float]:
    """SMA(p), TA-Lib's running total: add close t, emit total / p from j = p-1, drop the oldest."""
    total += x
    if j < p - 1:
        return total, _NAN
    value = total / p
    return total - c[t - p + 1], value


def _window_sums(c: Any, t: int, anchor: float) -> tuple[float, float]:
    """Sum and sum of squares of the deviations of closes t-19..t from ``anchor``."""
    s1 = 0.0
    s2 = 0.0
    for q in range(t - 19, t + 1):
        d = c[q] - anchor
        s1 += d
        s2 += d * d
    return s1, s2


def _bollinger_sums(
    anchor: float, renew: int, s1: float, s2: float, peak: float, c: Any, t: int, mid: float
) -> tuple[float, int, float, float, float]:
    """Bollinger's window sums at bar t: deviations of closes t-19..t from an ``anchor``.

    TA-Lib 0.6+ gives a band of exactly 0 on a flat window, where "mean of squares minus
    squared mean" leaves a ~1e-12 residue (a 1e-6 band after ``sqrt``). So the sums run on
    deviations from the middle band taken as anchor at session ``renew`` (every 20 bars),
    and ``peak`` keeps the largest ``s2`` they carried since. Returns the new state.
    """
    if t >= renew:
        w1, w2 = _window_sums(c, t, mid)
        return mid, t + 20, w1, w2, w2
    dn = c[t] - anchor
    do = c[t - 20] - anchor
    n1 = s1 + dn
    n2 = s2 + dn * dn
    if n2 > peak:
        return anchor, renew, n1 - do, n2 - do * do, n2
    return anchor, renew, n1 - do, n2 - do * do, peak


def _bollinger_width(s1: float, s2: float, peak: float, c: Any, t: int, mid: float) -> float:
    """Bollinger(20, 2) half-width, 2 population stddevs; recomputed in two passes when the
    variance is small against ``peak``, where the sums' rounding could show."""
    m1 = s1 * 0.05
    var = s2 * 0.05 - m1 * m1
    if var > peak * 0.00005:
        return math.sqrt(var) * 2.0
    exact = _window_sums(c, t, mid)[1] / 20.0
    if exact > 0.0:
        return math.sqrt(exact) * 2.0
    return 0.0


def _rsi(gain: float, loss: float, diff: float, j: int) -> tuple[float, float, float]:
    """RSI(14), Wilder (j ≥ 1): mean gain and loss of the first 14 changes at j = 14, then
    (prev·13 + x) / 14; 0 when gain + loss is exactly 0 (TA-Lib 0.6+ has no epsilon)."""
    if j > 14:
        loss *= 13.0
        gain *= 13.0
    if diff < 0.0:
        loss -= diff
    else:
        gain += diff
    if j < 14:
        return gain, loss, _NAN
    loss *= _INV14
    gain *= _INV14
    both = gain + loss
    return gain, loss, 0.0 if both == 0.0 else 100.0 * (gain / both)


def _true_range(h: float, lo: float, prev_close: float) -> float:
    """max(h - lo, |prev_close - h|, |prev_close - lo|), in TA-Lib's order."""
    tr = h - lo
    v2 = abs(prev_close - h)
    if v2 > tr:
        tr = v2
    v3 = abs(prev_close - lo)
    if v3 > tr:
        tr = v3
    return tr


def _atr(atr: float, tr: float, j: int) -> tuple[float, float]:
    """ATR(14), Wilder (j ≥ 1): the mean of TR[1..14] at j = 14, then (prev·13 + tr) / 14."""
    if j < 14:
        return atr + tr, _NAN
    atr = (atr + tr) / 14.0 if j == 14 else ((atr * 13.0) + tr) * _INV14
    return atr, atr


def _macd(
    fast: float, slow: float, sig: float, x: float, j: int
) -> tuple[float, float, float, float, float, float]:
    """MACD(12, 26, 9), TA-Lib seed: both EMAs seeded at j = 25 (EMA12 on closes 14..25), the
    signal EMA9 of the line from j = 25; line, signal and histogram NaN before j = 33."""
    slow = _ema(slow, x, j, 26, _K26)[0]
    if j >= 14:
        fast = _ema(fast, x, j - 14, 12, _K12)[0]
    if j < 25:
        return fast, slow, sig, _NAN, _NAN, _NAN
    line = fast - slow
    sig = _ema(sig, line, j - 25, 9, _K9)[0]
    if j < 33:
        return fast, slow, sig, _NAN, _NAN, _NAN
    return fast, slow, sig, line, sig, line - sig


#: The helpers the kernel calls. The numba engine compiles each as a function that LLVM
#: inlines into the kernel, except those with a loop (LLVM unrolls the 20-bar loop and then
#: finds them too large to inline; a call left in the loop costs a reference count of the
#: close array on every bar): numba inlines these itself (``inline="always"``). They
#: reassign no variable across branches (early returns instead), without which numba's
#: inliner warns (``NumbaIRAssumptionWarning``).
_STEPS = (
    _first_bar,
    _ema,
    _sma,
    _window_sums,
    _bollinger_sums,
    _bollinger_width,
    _rsi,
    _true_range,
    _atr,
    _macd,
)
_LOOPS = (_window_sums, _bollinger_sums, _bollinger_width)


def _kernel(high: Any, low: Any, close: Any, out: Any) -> None:
    """Fill ``out[k][i][t]`` for every indicator k, row i and session t.

    One pass over time per row, calling each indicator's update step. Runs unchanged on
    nested Python lists (interpreted) and on numpy arrays (compiled by numba). Seeding and
    update order follow TA-Lib's C code; the Wilder division and the Bollinger variance
    differ from it only in the last bits.
    """
    for i in range(len(close)):
        h = high[i]
        lo = low[i]
        c = close[i]
        o_ema9 = out[0][i]
        o_ema21 = out[1][i]
        o_sma50 = out[2][i]
        o_sma200 = out[3][i]
        o_rsi = out[4][i]
        o_macd = out[5][i]
        o_sig = out[6][i]
        o_hist = out[7][i]
        o_atr = out[8][i]
        o_bbu = out[9][i]
        o_bbm = out[10][i]
        o_bbl = out[11][i]
        n = len(c)
        s = _first_bar(h, lo, c)
        for t in range(s):  # before the row's history
            o_ema9[t] = o_ema21[t] = o_sma50[t] = o_sma200[t] = o_rsi[t] = o_macd[t] = _NAN
            o_sig[t] = o_hist[t] = o_atr[t] = o_bbu[t] = o_bbm[t] = o_bbl[t] = _NAN
        e9 = e21 = tot50 = tot200 = tot20 = 0.0
        anchor = s1 = s2 = peak = 0.0
        renew = s + 19
        gain = loss = atr = fast = slow = sig = 0.0
        prev_c = 0.0

        # Warm-up: the first 200 bars, where the indicators start one by one.
        for t in range(s, min(n, s + 200)):
            j = t - s
            x = c[t]
            e9, o_ema9[t] = _ema(e9, x, j, 9, _K9)
            e21, o_ema21[t] = _ema(e21, x, j, 21, _K21)
            tot50, o_sma50[t] = _sma(tot50, x, c, t, j, 50)
            tot200, o_sma200[t] = _sma(tot200, x, c, t, j, 200)
            tot20, mid = _sma(tot20, x, c, t, j, 20)
            o_bbm[t] = mid
            if j < 19:
                o_bbu[t] = _NAN
                o_bbl[t] = _NAN
            else:
                anchor, renew, s1, s2, peak = _bollinger_sums(
                    anchor, renew, s1, s2, peak, c, t, mid
                )
                dev = _bollinger_width(s1, s2, peak, c, t, mid)
                o_bbu[t] = mid + dev
                o_bbl[t] = mid - dev
            if j == 0:
                o_rsi[t] = _NAN
                o_atr[t] = _NAN
            else:
                gain, loss, o_rsi[t] = _rsi(gain, loss, x - prev_c, j)
                atr, o_atr[t] = _atr(atr, _true_range(h[t], lo[t], prev_c), j)
            fast, slow, sig, o_macd[t], o_sig[t], o_hist[t] = _macd(fast, slow, sig, x, j)
            prev_c = x

        # Steady state: the same steps with j past every warm-up (_STEADY), so that the
        # compiled loop carries no warm-up branches (the kernel's cost is per-bar
        # instructions, so it shows).
        for t in range(s + 200, n):
            x = c[t]
            e9, o_ema9[t] = _ema(e9, x, _STEADY, 9, _K9)
            e21, o_ema21[t] = _ema(e21, x, _STEADY, 21, _K21)
            tot50, o_sma50[t] = _sma(tot50, x, c, t, _STEADY, 50)
            tot200, o_sma200[t] = _sma(tot200, x, c, t, _STEADY, 200)
            tot20, mid = _sma(tot20, x, c, t, _STEADY, 20)
            anchor, renew, s1, s2, peak = _bollinger_sums(anchor, renew, s1, s2, peak, c, t, mid)
            dev = _bollinger_width(s1, s2, peak, c, t, mid)
            o_bbm[t] = mid
            o_bbu[t] = mid + dev
            o_bbl[t] = mid - dev
            gain, loss, o_rsi[t] = _rsi(gain, loss, x - prev_c, _STEADY)
            atr, o_atr[t] = _atr(atr, _true_range(h[t], lo[t], prev_c), _STEADY)
            fast, slow, sig, o_macd[t], o_sig[t], o_hist[t] = _macd(fast, slow, sig, x, _STEADY)
            prev_c = x


_compiled: Callable[..., None] | None = None
_steps_registered = False


def _numba_kernel() -> Callable[..., None]:
    """The kernel compiled by numba (loaded from its on-disk cache when warm)."""
    global _compiled, _steps_registered
    if _compiled is None:
        import numba  # deferred: ~0.3-0.6 s, paid only by callers that need it
        from numba.extending import register_jitable

        if not _steps_registered:  # once per process: numba keeps every registration
            for step in _STEPS:
                register_jitable(inline="always" if step in _LOOPS else "never")(step)
            _steps_registered = True
        _compiled = numba.njit(cache=True, nogil=True)(_kernel)
    return _compiled


def numba_available() -> bool:
    """True when numba can be imported in this environment."""
    if "numba" in sys.modules:
        return True
    from importlib.util import find_spec

    return find_spec("numba") is not None


def warm_jit() -> None:
    """Compile the numba kernel now and write its cache (run once per image/venv build)."""
    one = np.ones((1, 2))
    _run(one, one, one, "numba")


def _choose_engine(engine: str | None, cells: int) -> str:
    chosen = engine or os.environ.get(ENGINE_ENV, "auto")
    if chosen not in ENGINES:
        raise ValueError(f"indicator engine must be one of {ENGINES}, got {chosen!r}")
    if chosen == "auto":
        # A kernel already compiled in this process (warm_jit() in a worker's preload,
        # inherited by forked tasks) is free; otherwise numba's cold start (~1 s)
        # only pays off on large inputs.
        if _compiled is not None or (cells >= NUMBA_MIN_CELLS and numba_available()):
            return "numba"
        return "python"
    return chosen


def _run(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    engine: str,
    out: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, ...]:
    n_sym, n_ses = close.shape
    if out is None:
        # One array per column, not one 3-D block: blocks over malloc's mmap threshold
        # (32 MB) are fresh pages on every call, and faulting them in costs more than
        # the maths.
        out = tuple(np.empty((n_sym, n_ses)) for _ in INDICATOR_COLUMNS)
    if engine == "numba":
        _numba_kernel()(high, low, close, out)
        return out
    lists = [[[0.0] * n_ses for _ in range(n_sym)] for _ in INDICATOR_COLUMNS]
    _kernel(high.tolist(), low.tolist(), close.tolist(), lists)
    for target, rows in zip(out, lists, strict=True):
        target[...] = np.array(rows, dtype=np.float64).reshape(n_sym, n_ses)
    return out


def compute_arrays(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    *,
    engine: str | None = None,
    out: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Compute every indicator for a symbols × sessions array.

    Inputs are 2-D float64 arrays of equal shape; a row's leading NaNs mark sessions
    before its history starts. Returns one array of the same shape per column of
    :data:`INDICATOR_COLUMNS`, NaN where TA-Lib has no value. ``out`` (optional) holds
    C-contiguous float64 arrays of that shape to write into, so a bulk rebuild that
    works chunk by chunk can reuse them.
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (high, low, close)]
    shape = arrays[2].shape
    if arrays[2].ndim != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(
            "compute_arrays expects three 2-D arrays of one shape (symbols × sessions), "
            f"got shapes {[a.shape for a in arrays]}"
        )
    targets = None
    if out is not None:
        targets = tuple(out[c] for c in INDICATOR_COLUMNS)
        if any(
            t.shape != shape or t.dtype != np.float64 or not t.flags.c_contiguous for t in targets
        ):
            raise ValueError(f"out arrays must be C-contiguous float64 of shape {shape}")
    result = _run(*arrays, _choose_engine(engine, shape[0] * shape[1]), targets)
    return dict(zip(INDICATOR_COLUMNS, result, strict=True))


def _check_prices(bars: pd.DataFrame, what: str, symbol: str | None = None) -> None:
    missing = [c for c in ("trade_date", *_PRICE_COLUMNS) if c not in bars.columns]
    if missing:
        raise DataQualityError(
            f"{what}: expected columns trade_date, high, low, close; missing {missing}",
            symbol=symbol,
        )
    gaps = bars[list(_PRICE_COLUMNS)].isna().any(axis=1)
    if gaps.any():
        first = bars.loc[gaps, "trade_date"].iloc[0]
        raise DataQualityError(
            f"{what}: expected no missing high/low/close; found {int(gaps.sum())} bar(s) "
            f"with NaN, first on {first}",
            symbol=symbol,
            failed_expectations=["prices_not_null"],
        )


def compute_frame(bars: pd.DataFrame, *, engine: str | None = None) -> pd.DataFrame:
    """Indicators for one symbol's bars (sorted by trade_date, one row per session).

    Returns ``trade_date``, ``close`` and every column of :data:`INDICATOR_COLUMNS`
    (NaN during warm-up), one row per input bar.
    """
    symbol = str(bars["symbol"].iloc[0]) if "symbol" in bars.columns and len(bars) else None
    _check_prices(bars, "compute_frame", symbol)
    dates = bars["trade_date"]
    if len(bars) > 1 and not (dates.iloc[1:].to_numpy() > dates.iloc[:-1].to_numpy()).all():
        raise DataQualityError(
            "compute_frame: expected bars sorted by strictly increasing trade_date; "
            "found an out-of-order or duplicate date",
            symbol=symbol,
            failed_expectations=["trade_date_increasing"],
        )
    prices = [bars[c].to_numpy(dtype=np.float64).reshape(1, -1) for c in _PRICE_COLUMNS]
    values = compute_arrays(*prices, engine=engine)
    # One constructor call: inserting the columns one by one cost more than the maths.
    return pd.DataFrame(
        {
            "trade_date": dates.to_numpy(),
            "close": prices[2][0],
            **{col: values[col][0] for col in INDICATOR_COLUMNS},
        },
        index=pd.RangeIndex(len(bars)),
    )


def compute_universe(bars: pd.DataFrame, *, engine: str | None = None) -> pd.DataFrame:
    """Indicators for many symbols at once (the bulk history path).

    ``bars`` is a long frame with ``symbol``, ``trade_date``, ``high``, ``low``, ``close``;
    each symbol may cover any date range. Each symbol's own bars, in date order, form
    one row of a right-aligned symbols × sessions array (shorter histories NaN-padded at
    the start), so one :func:`compute_arrays` call serves the whole universe. Returns
    ``symbol``, ``trade_date``, ``close`` and :data:`INDICATOR_COLUMNS`, sorted by
    symbol then trade_date.
    """
    columns = ["symbol", "trade_date", "close", *INDICATOR_COLUMNS]
    if "symbol" not in bars.columns:
        raise DataQualityError("compute_universe: expected a 'symbol' column; found none")
    _check_prices(bars, "compute_universe")
    if bars.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}).astype(
            {"symbol": object, "trade_date": object}
        )
    ordered = bars.sort_values(["symbol", "trade_date"], kind="stable").reset_index(drop=True)
    dup = ordered.duplicated(["symbol", "trade_date"])
    if dup.any():
        row = ordered.loc[dup].iloc[0]
        raise DataQualityError(
            "compute_universe: expected one bar per (symbol, trade_date); found duplicates",
            symbol=str(row["symbol"]),
            failed_expectations=["symbol_trade_date_unique"],
        )
    symbols = ordered["symbol"].to_numpy()
    starts = np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
    counts = np.diff(np.r_[starts, len(ordered)])
    n_ses = int(counts.max())
    row_idx = np.repeat(np.arange(len(starts)), counts)
    pos_in_group = np.arange(len(ordered)) - np.repeat(starts, counts)
    col_idx = n_ses - np.repeat(counts, counts) + pos_in_group
    prices = []
    for c in _PRICE_COLUMNS:
        grid = np.full((len(starts), n_ses), np.nan)
        grid[row_idx, col_idx] = ordered[c].to_numpy(dtype=np.float64)
        prices.append(grid)
    values = compute_arrays(*prices, engine=engine)
    frame = pd.DataFrame(
        {
            "symbol": symbols,
            "trade_date": ordered["trade_date"].to_numpy(),
            "close": ordered["close"].to_numpy(dtype=np.float64),
        }
    )
    for col in INDICATOR_COLUMNS:
        frame[col] = values[col][row_idx, col_idx]
    return frame
