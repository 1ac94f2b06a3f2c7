"""A deterministic synthetic source: realistic daily bars without a vendor.

Every number is a pure function of (seed, symbol, session): rerunning, or fetching any
sub-range, yields identical bars. Prices follow a geometric random walk from the
calendar's first session, so bars of adjacent sessions are consistent. Defects can be
injected per symbol for demos and tests (see :data:`DEFECTS`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from datetime import date

import numpy as np
import pandas as pd

from market_pipeline import calendar
from market_pipeline.errors import PermanentSourceError, TransientSourceError
from market_pipeline.sources.base import BAR_COLUMNS, empty_bars, normalise_bars

#: Defects that can be injected per symbol, and what each does to the bar for the end date.
DEFECTS = {
    "unknown_symbol": "fetch raises PermanentSourceError (the vendor does not know it)",
    "unavailable": "fetch raises TransientSourceError (vendor down; retried, then fails)",
    "late": "the bar for the requested end session is not delivered yet",
    "negative_price": "the last bar's low is negative",
    "high_below_close": "the last bar's high is below its close",
    "spike": "the last bar's close jumps +80% (with a consistent high)",
    "duplicate_day": "the last bar is delivered twice",
}

_U64 = np.uint64
_MASK = (1 << 64) - 1
#: The session ordinals (0..3, stream 99) that key a symbol's constants.
_CONSTANTS = np.arange(4)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64: a strong, fast integer hash (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _uniform(key: int, ordinals: np.ndarray, *streams: int) -> np.ndarray:
    """Uniform (0, 1) draws keyed by (symbol key, session ordinal, stream): one row per
    stream (one stream: a flat array). The streams are drawn in one pass (element-wise, so a
    draw does not depend on which others are drawn with it)."""
    bases = np.array(
        [(key ^ (stream * 0xD1B54A32D192ED03)) & _MASK for stream in streams], dtype=np.uint64
    )
    bits = _splitmix64(_splitmix64(ordinals.astype(np.uint64)[None, :] ^ bases[:, None]))
    draws = ((bits >> _U64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    return draws[0] if len(streams) == 1 else draws


def _normal(key: int, ordinals: np.ndarray, *streams: int) -> np.ndarray:
    """Standard normal draws (Box-Muller over the uniform streams ``s`` and ``s + 1``), one
    row per stream (one stream: a flat array)."""
    u = _uniform(key, ordinals, *(t for s in streams for t in (s, s + 1)))
    z = np.sqrt(-2.0 * np.log(u[0::2])) * np.cos(2.0 * np.pi * u[1::2])
    return z[0] if len(streams) == 1 else z


@functools.lru_cache(maxsize=64)
def _sessions(exchange: str, end: date) -> tuple[list[date], np.ndarray]:
    """The exchange's sessions from the calendar's start to ``end``, and their ordinals
    (``date.toordinal``; the calendar is pure, so a chunk's symbols share one list)."""
    sessions = calendar.sessions_between(calendar.CALENDAR_START, end, exchange)
    days = np.array(sessions, dtype="datetime64[D]").astype(np.int64)
    return sessions, days + date(1970, 1, 1).toordinal()


class SyntheticSource:
    """Deterministic bars for any symbol; ``defects`` maps symbol -> a key of :data:`DEFECTS`."""

    name = "synthetic"

    def __init__(
        self,
        *,
        seed: int = 7,
        exchange: str = "XNYS",
        defects: dict[str, str] | None = None,
    ) -> None:
        unknown = {d for d in (defects or {}).values() if d not in DEFECTS}
        if unknown:
            raise ValueError(
                f"unknown synthetic defect(s) {sorted(unknown)}; known: {sorted(DEFECTS)}"
            )
        self.seed = seed
        self.exchange = exchange
        self.defects = dict(defects or {})

    @staticmethod
    def parse_defects(spec: str) -> dict[str, str]:
        """Parse ``"AAPL:spike,MSFT:late"`` into ``{"AAPL": "spike", "MSFT": "late"}``."""
        out: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            symbol, sep, defect = item.partition(":")
            if not sep:
                raise ValueError(f"expected SYMBOL:DEFECT in synthetic defects, found {item!r}")
            out[symbol.strip().upper()] = defect.strip()
        return out

    def _key(self, symbol: str) -> int:
        digest = hashlib.sha256(f"{self.seed}:{symbol}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def history(self, symbol: str, end: date) -> pd.DataFrame:
        """All bars from the calendar's first session to ``end`` (no defects applied)."""
        return self._bars(symbol, end, None)[0]

    def _bars(self, symbol: str, end: date, start: date | None) -> tuple[pd.DataFrame, float]:
        """Bars of the sessions in [start, end] (all to ``end`` when ``start`` is None), and
        the close of the session before the last one (the open of the first, alone).

        Every draw is keyed by (symbol, session), so the columns of a window are computed
        over the window only; the close is a walk from the first session, computed whole.
        """
        sessions, ordinals = _sessions(self.exchange, end)
        if not sessions:
            return empty_bars(), float("nan")
        first = 0 if start is None else bisect.bisect_left(sessions, start)
        key = self._key(symbol)
        # The symbol's constants (volatility profile, drift, start price, volume level).
        profile, drift_u, price_u, volume_u = _uniform(key, _CONSTANTS, 99)
        vol = 0.012 + 0.018 * profile  # daily volatility 1.2%..3%
        drift = 0.0001 + 0.0002 * drift_u
        start_price = 20.0 + 280.0 * price_u

        returns = drift - 0.5 * vol**2 + vol * _normal(key, ordinals, 10)
        walk = start_price * np.exp(np.cumsum(returns))
        window = ordinals[first:]
        close = walk[first:]
        gap, wick_hi, wick_lo, volume_z = _normal(key, window, 20, 30, 40, 50)
        gap = 0.25 * vol * gap
        prev_close = np.concatenate(([start_price], walk[:-1]))[first:]
        open_ = prev_close * np.exp(gap)
        wick_hi = np.abs(wick_hi) * 0.5 * vol
        wick_lo = np.abs(wick_lo) * 0.5 * vol
        high = np.maximum(open_, close) * (1.0 + wick_hi)
        low = np.minimum(open_, close) * (1.0 - wick_lo)
        base_volume = 2e5 + 5e6 * volume_u
        volume = np.round(base_volume * np.exp(0.35 * volume_z)).astype(np.int64)
        open_, high, low, close = (np.round(a, 4) for a in (open_, high, low, close))
        # Rounding may break high >= max(open, close) by a hair: restore it.
        high = np.maximum(np.maximum(open_, high), close)
        low = np.minimum(np.minimum(open_, low), close)
        # Already canonical (BAR_COLUMNS in order, plain dates ascending, float64 prices,
        # int64 volume): a clean window is handed out as built, not normalised again.
        frame = pd.DataFrame(
            {
                "trade_date": sessions[first:],
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
            }
        )
        if len(walk) > 1:
            before = float(np.round(walk[-2], 4))
        else:
            before = float(open_[-1]) if len(open_) else float("nan")
        return frame, before

    def fetch(self, symbol: str, start: date, end: date) -> pd.DataFrame:
        """Bars for sessions in [start, end] (see :class:`~market_pipeline.sources.BarSource`)."""
        defect = self.defects.get(symbol)
        if defect == "unknown_symbol":
            raise PermanentSourceError(
                "synthetic vendor does not know this symbol (injected defect unknown_symbol)",
                symbol=symbol,
                session=end,
                cause="unknown_symbol",
            )
        if defect == "unavailable":
            raise TransientSourceError(
                "synthetic vendor unavailable (injected defect unavailable)",
                symbol=symbol,
                session=end,
                cause="unavailable",
                retry_after=1.0,
            )
        # ``before``: the session before the last bar, even when the window holds only it.
        frame, before = self._bars(symbol, end, start)
        if frame.empty:
            return empty_bars()
        if defect is None:
            return frame
        last = frame.index[-1]
        is_end = frame.at[last, "trade_date"] == end
        if defect == "late" and is_end:
            frame = frame.drop(index=last)
        elif defect == "negative_price" and is_end:
            frame.at[last, "low"] = -abs(frame.at[last, "low"])
        elif defect == "high_below_close" and is_end:
            frame.at[last, "high"] = frame.at[last, "close"] * 0.98
        elif defect == "spike" and is_end:
            frame.at[last, "close"] = round(before * 1.8, 4)
            frame.at[last, "high"] = max(frame.at[last, "high"], frame.at[last, "close"])
        elif defect == "duplicate_day" and is_end:
            frame = pd.concat([frame, frame.iloc[[-1]]], ignore_index=True)
        return normalise_bars(frame[list(BAR_COLUMNS)])
