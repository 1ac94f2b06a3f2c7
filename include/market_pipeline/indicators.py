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


def _kernel(high: Any, low: Any, close: Any, out: Any) -> None:
    """Fill ``out[k][i][t]`` for every indicator k, row i and session t.

    Written so that it runs unchanged on nested Python lists (interpreted) and on numpy
    arrays (compiled by numba). Seeding and update order follow TA-Lib's C code; the
    Wilder division and the Bollinger variance differ from it only in the last bits.
    """
    nan = math.nan
    k9 = 2.0 / 10.0
    k21 = 2.0 / 22.0
    k12 = 2.0 / 13.0
    k26 = 2.0 / 27.0
    # Wilder's '/ 14' as a multiplication: a division on the loop-carried chain is the
    # kernel's critical path; the difference is an ulp, far inside TA-Lib's 1e-9.
    inv14 = 1.0 / 14.0
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
        s = 0
        # x != x is the NaN test that works on Python floats and in numba alike.
        while s < n and (c[s] != c[s] or h[s] != h[s] or lo[s] != lo[s]):
            s += 1
        for t in range(min(s, n)):
            o_ema9[t] = nan
            o_ema21[t] = nan
            o_sma50[t] = nan
            o_sma200[t] = nan
            o_rsi[t] = nan
            o_macd[t] = nan
            o_sig[t] = nan
            o_hist[t] = nan
            o_atr[t] = nan
            o_bbu[t] = nan
            o_bbm[t] = nan
            o_bbl[t] = nan
        e9 = 0.0
        e21 = 0.0
        tot50 = 0.0
        tot200 = 0.0
        tot20 = 0.0
        anchor = 0.0
        next_anchor = 19
        s1 = 0.0
        s2 = 0.0
        peak = 0.0
        gain = 0.0
        loss = 0.0
        fast = 0.0
        slow = 0.0
        sig = 0.0
        atr = 0.0
        prev_c = 0.0
        # Warm-up: the first 200 bars, where indicators start one by one.
        for t in range(s, min(n, s + 200)):
            j = t - s
            x = c[t]

            # EMA(p): SMA of the first p closes at bar p-1, then prev + k * (x - prev).
            if j < 8:
                e9 += x
                o_ema9[t] = nan
            elif j == 8:
                e9 = (e9 + x) / 9.0
                o_ema9[t] = e9
            else:
                e9 = ((x - e9) * k9) + e9
                o_ema9[t] = e9
            if j < 20:
                e21 += x
                o_ema21[t] = nan
            elif j == 20:
                e21 = (e21 + x) / 21.0
                o_ema21[t] = e21
            else:
                e21 = ((x - e21) * k21) + e21
                o_ema21[t] = e21

            # SMA(p): TA-Lib's running total (add the new bar, emit, drop the oldest).
            tot50 += x
            if j >= 49:
                o_sma50[t] = tot50 / 50.0
                tot50 -= c[t - 49]
            else:
                o_sma50[t] = nan
            tot200 += x
            if j >= 199:
                o_sma200[t] = tot200 / 200.0
                tot200 -= c[t - 199]
            else:
                o_sma200[t] = nan

            # Bollinger(20, 2): SMA middle ± 2 population stddevs. Mean of squares minus
            # squared mean (TA-Lib before 0.6) cancels badly: its ~1e-12 residue becomes a
            # 1e-6 band on a flat window, where TA-Lib 0.6+ gives exactly 0. So the window
            # sums run on deviations from an anchor K (the middle, re-anchored every 20
            # bars), and when the variance is small against what those sums carried
            # (peak), where their rounding could show, it is recomputed in two passes.
            tot20 += x
            if j >= 19:
                mid = tot20 / 20.0
                tot20 -= c[t - 19]
                if j >= next_anchor:
                    next_anchor = j + 20
                    anchor = mid
                    s1 = 0.0
                    s2 = 0.0
                    for q in range(t - 19, t + 1):
                        d = c[q] - anchor
                        s1 += d
                        s2 += d * d
                    peak = s2
                else:
                    dn = x - anchor
                    do = c[t - 20] - anchor
                    s1 += dn
                    s2 += dn * dn
                    if s2 > peak:
                        peak = s2
                    s1 -= do
                    s2 -= do * do
                m1 = s1 * 0.05
                var = s2 * 0.05 - m1 * m1
                if not var > peak * 0.00005:
                    var = 0.0
                    for q in range(t - 19, t + 1):
                        d = c[q] - mid
                        var += d * d
                    var /= 20.0
                sd = math.sqrt(var) if var > 0.0 else 0.0
                dev = sd * 2.0
                o_bbm[t] = mid
                o_bbu[t] = mid + dev
                o_bbl[t] = mid - dev
            else:
                o_bbm[t] = nan
                o_bbu[t] = nan
                o_bbl[t] = nan

            # RSI(14), Wilder: mean gain/loss of the first 14 changes at bar 14; 0 when
            # gain + loss is exactly 0 (TA-Lib 0.6+ no longer rounds tiny sums to 0).
            if j == 0:
                o_rsi[t] = nan
            else:
                diff = x - prev_c
                if j > 14:
                    loss *= 13.0
                    gain *= 13.0
                if diff < 0.0:
                    loss -= diff
                else:
                    gain += diff
                if j < 14:
                    o_rsi[t] = nan
                else:
                    loss *= inv14
                    gain *= inv14
                    both = gain + loss
                    if both == 0.0:
                        o_rsi[t] = 0.0
                    else:
                        o_rsi[t] = 100.0 * (gain / both)

            # ATR(14): true range from bar 1, mean of TR[1..14] at bar 14, then Wilder.
            if j == 0:
                o_atr[t] = nan
            else:
                hi = h[t]
                lw = lo[t]
                tr = hi - lw
                v2 = abs(prev_c - hi)
                if v2 > tr:
                    tr = v2
                v3 = abs(prev_c - lw)
                if v3 > tr:
                    tr = v3
                if j < 14:
                    atr += tr
                    o_atr[t] = nan
                elif j == 14:
                    atr = (atr + tr) / 14.0
                    o_atr[t] = atr
                else:
                    atr = ((atr * 13.0) + tr) * inv14
                    o_atr[t] = atr

            # MACD(12, 26, 9): both EMAs seeded at bar 25 (fast = mean of closes 14..25),
            # signal = EMA9 of the MACD line seeded at bar 33; all three NaN before 33.
            if j < 25:
                slow += x
                if j >= 14:
                    fast += x
                o_macd[t] = nan
                o_sig[t] = nan
                o_hist[t] = nan
            else:
                if j == 25:
                    slow = (slow + x) / 26.0
                    fast = (fast + x) / 12.0
                else:
                    slow = ((x - slow) * k26) + slow
                    fast = ((x - fast) * k12) + fast
                line = fast - slow
                if j < 33:
                    sig += line
                    o_macd[t] = nan
                    o_sig[t] = nan
                    o_hist[t] = nan
                else:
                    sig = (sig + line) / 9.0 if j == 33 else ((line - sig) * k9) + sig
                    o_macd[t] = line
                    o_sig[t] = sig
                    o_hist[t] = line - sig
            prev_c = x

        # Steady state: every indicator has a value. The same updates as above without
        # the warm-up branches (the kernel's cost is per-bar instructions, so it shows).
        for t in range(s + 200, n):
            x = c[t]
            e9 = ((x - e9) * k9) + e9
            o_ema9[t] = e9
            e21 = ((x - e21) * k21) + e21
            o_ema21[t] = e21
            tot50 += x
            o_sma50[t] = tot50 / 50.0
            tot50 -= c[t - 49]
            tot200 += x
            o_sma200[t] = tot200 / 200.0
            tot200 -= c[t - 199]

            tot20 += x
            mid = tot20 / 20.0
            tot20 -= c[t - 19]
            j = t - s
            if j >= next_anchor:
                next_anchor = j + 20
                anchor = mid
                s1 = 0.0
                s2 = 0.0
                for q in range(t - 19, t + 1):
                    d = c[q] - anchor
                    s1 += d
                    s2 += d * d
                peak = s2
            else:
                dn = x - anchor
                do = c[t - 20] - anchor
                s1 += dn
                s2 += dn * dn
                if s2 > peak:
                    peak = s2
                s1 -= do
                s2 -= do * do
            m1 = s1 * 0.05
            var = s2 * 0.05 - m1 * m1
            if not var > peak * 0.00005:
                var = 0.0
                for q in range(t - 19, t + 1):
                    d = c[q] - mid
                    var += d * d
                var /= 20.0
            sd = math.sqrt(var) if var > 0.0 else 0.0
            dev = sd * 2.0
            o_bbm[t] = mid
            o_bbu[t] = mid + dev
            o_bbl[t] = mid - dev

            diff = x - prev_c
            loss *= 13.0
            gain *= 13.0
            if diff < 0.0:
                loss -= diff
            else:
                gain += diff
            loss *= inv14
            gain *= inv14
            both = gain + loss
            o_rsi[t] = 0.0 if both == 0.0 else 100.0 * (gain / both)

            hi = h[t]
            lw = lo[t]
            tr = hi - lw
            v2 = abs(prev_c - hi)
            if v2 > tr:
                tr = v2
            v3 = abs(prev_c - lw)
            if v3 > tr:
                tr = v3
            atr = ((atr * 13.0) + tr) * inv14
            o_atr[t] = atr

            slow = ((x - slow) * k26) + slow
            fast = ((x - fast) * k12) + fast
            line = fast - slow
            sig = ((line - sig) * k9) + sig
            o_macd[t] = line
            o_sig[t] = sig
            o_hist[t] = line - sig
            prev_c = x


_compiled: Callable[..., None] | None = None


def _numba_kernel() -> Callable[..., None]:
    """The kernel compiled by numba (loaded from its on-disk cache when warm)."""
    global _compiled
    if _compiled is None:
        import numba  # deferred: ~0.3-0.6 s, paid only by callers that need it

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
    frame = pd.DataFrame(
        {"trade_date": dates.to_numpy(), "close": prices[2][0]},
        index=pd.RangeIndex(len(bars)),
    )
    for col in INDICATOR_COLUMNS:
        frame[col] = values[col][0]
    return frame


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
