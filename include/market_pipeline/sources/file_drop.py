"""Bars delivered as files into a drop folder: ``<path>/<SYMBOL>.csv`` or ``.parquet``.

A file holds one symbol's bars with at least the columns ``date, open, high, low,
close, volume`` (ISO dates, any range of dates; extra columns such as ``adj_close``
are ignored). A missing file means the vendor has not delivered it yet: ``fetch``
returns an empty frame and the quality gate keeps waiting. A file that is there but
cannot be read as bars is a permanent source error naming the file and what was wrong.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from market_pipeline.config import SYMBOL_PATTERN
from market_pipeline.errors import PermanentSourceError
from market_pipeline.sources.base import BAR_COLUMNS, empty_bars, normalise_bars

#: The header a delivered file must carry (in any order; more columns are allowed).
FILE_COLUMNS = ("date", "open", "high", "low", "close", "volume")
EXPECTED_HEADER = ",".join(FILE_COLUMNS)
_PRICE_COLUMNS = ("open", "high", "low", "close")


class FileDropSource:
    """Reads one CSV or Parquet file per symbol from a vendor drop folder.

    :param path: the folder the vendor drops ``<SYMBOL>.csv`` / ``<SYMBOL>.parquet`` into.

    After each ``fetch``, :attr:`last_request` describes what was read (for the audit row):
    ``{"status": "delivered" | "missing", "latency_ms": float, "url": file path, "rows": int}``.
    """

    name = "file_drop"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last_request: dict | None = None

    def __repr__(self) -> str:
        return f"FileDropSource(path={str(self.path)!r})"

    def fetch(self, symbol: str, start: date, end: date) -> pd.DataFrame:
        """Bars of ``symbol`` in [start, end] from its file; empty when not delivered yet."""
        started = time.perf_counter()
        file = self._file_for(symbol, end)
        if file is None:
            self._record("missing", started, self.path / f"{symbol}.csv", 0)
            return empty_bars()
        bars = self._read(file, symbol, end)
        in_range = bars[(bars["trade_date"] >= start) & (bars["trade_date"] <= end)]
        in_range = in_range.reset_index(drop=True)
        self._record("delivered", started, file, len(in_range))
        return in_range

    def _record(self, status: str, started: float, file: Path, rows: int) -> None:
        self.last_request = {
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
            "url": str(file),
            "rows": rows,
        }

    def _file_for(self, symbol: str, session: date) -> Path | None:
        # The symbol becomes part of a path: refuse anything that is not a ticker.
        if not SYMBOL_PATTERN.match(symbol):
            raise PermanentSourceError(
                f"expected a ticker matching {SYMBOL_PATTERN.pattern}, found {symbol!r}",
                symbol=symbol,
                session=session,
                cause="invalid symbol",
            )
        if not self.path.is_dir():
            raise PermanentSourceError(
                f"expected a drop folder at {self.path}, found none "
                "(check the market_source_path variable)",
                symbol=symbol,
                session=session,
                cause="drop folder missing",
            )
        found = [
            self.path / f"{symbol}{suffix}"
            for suffix in (".csv", ".parquet")
            if (self.path / f"{symbol}{suffix}").is_file()
        ]
        if len(found) > 1:
            raise PermanentSourceError(
                f"expected one file for {symbol}, found both {found[0].name} and "
                f"{found[1].name} in {self.path}; remove the stale one",
                symbol=symbol,
                session=session,
                cause="ambiguous delivery",
            )
        return found[0] if found else None

    def _read(self, file: Path, symbol: str, session: date) -> pd.DataFrame:
        def fail(what: str, cause: str) -> PermanentSourceError:
            return PermanentSourceError(
                f"{file}: {what}", symbol=symbol, session=session, cause=cause
            )

        try:
            if file.suffix == ".parquet":
                raw = pd.read_parquet(file)
            else:
                raw = pd.read_csv(
                    file,
                    dtype=str,
                    keep_default_na=False,
                    skipinitialspace=True,
                    encoding="utf-8-sig",  # tolerate a byte-order mark from spreadsheet exports
                )
        except Exception as exc:  # any reader failure means the file is unusable
            raise fail(
                f"cannot be read as {file.suffix[1:].upper()} "
                f"(expected header {EXPECTED_HEADER}): {type(exc).__name__}: {exc}",
                "unreadable file",
            ) from exc

        raw.columns = [str(c).strip().lower() for c in raw.columns]
        missing = [c for c in FILE_COLUMNS if c not in raw.columns]
        if missing:
            raise fail(
                f"expected header {EXPECTED_HEADER} (extra columns allowed), found "
                f"{','.join(raw.columns) or '(no columns)'}; missing {', '.join(missing)}",
                "missing columns",
            )
        if raw.empty:
            return empty_bars()

        frame = pd.DataFrame(index=raw.index)
        frame["trade_date"] = _parse_dates(raw["date"], fail)
        for col in (*_PRICE_COLUMNS, "volume"):
            frame[col] = _parse_numbers(raw[col], col, fail)
        volume = frame["volume"]
        if not (volume == volume.round()).all():
            bad = raw.index[volume != volume.round()][0]
            raise fail(
                f"expected whole-number volume, found {raw['volume'].iloc[bad]!r} "
                f"at data row {bad + 1}",
                "malformed volume",
            )

        duplicated = frame["trade_date"].duplicated(keep=False)
        if duplicated.any():
            dates = sorted({d.isoformat() for d in frame.loc[duplicated, "trade_date"]})
            raise fail(
                f"expected one row per date, found duplicates for {', '.join(dates[:5])}"
                + (f" and {len(dates) - 5} more" if len(dates) > 5 else ""),
                "duplicate dates",
            )
        return normalise_bars(frame.loc[:, list(BAR_COLUMNS)])


def _parse_dates(values: pd.Series, fail) -> pd.Series:
    """ISO dates (``YYYY-MM-DD``, a midnight timestamp, or date/timestamp cells) as dates."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(values.astype(str).str.strip(), format="ISO8601", errors="coerce")
    bad = parsed.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise fail(
            f"expected ISO dates (YYYY-MM-DD) in column date, found {values.iloc[row]!r} "
            f"at data row {row + 1}",
            "malformed date",
        )
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.dt.date


def _parse_numbers(values: pd.Series, column: str, fail) -> pd.Series:
    if not pd.api.types.is_numeric_dtype(values):
        values = values.astype(str).str.strip()
    parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = parsed.isna() | np.isinf(parsed)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise fail(
            f"expected a number in column {column}, found {values.iloc[row]!r} "
            f"at data row {row + 1}",
            f"malformed {column}",
        )
    return parsed
