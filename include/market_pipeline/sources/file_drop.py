"""Bars delivered as files into a drop folder: ``<path>/<SYMBOL>.csv`` or ``.parquet``.

A file holds one symbol's bars with at least the columns ``date, open, high, low,
close, volume`` (dates as :data:`DATE_RULE` says, any range of dates; extra columns such
as ``adj_close`` are ignored). A missing file means the vendor has not delivered it yet:
``fetch`` returns an empty frame and the quality gate keeps waiting. A file that is there
but cannot be read *right now* (an ``OSError`` from the file system, an empty file still
being written) is a transient error, retried; a file that reads but is not bars is a
permanent source error naming the file, the row and the value.
"""

from __future__ import annotations

import re
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from market_pipeline.config import SYMBOL_PATTERN
from market_pipeline.errors import PermanentSourceError, TransientSourceError
from market_pipeline.sources.base import BAR_COLUMNS, empty_bars, normalise_bars

#: The header a delivered file must carry (in any order; more columns are allowed).
FILE_COLUMNS = ("date", "open", "high", "low", "close", "volume")
EXPECTED_HEADER = ",".join(FILE_COLUMNS)
_PRICE_COLUMNS = ("open", "high", "low", "close")

#: The one rule for the ``date`` column (docs/sources.md), quoted in every date error.
DATE_RULE = (
    "a session date YYYY-MM-DD, or that date at midnight (YYYY-MM-DDT00:00:00) "
    "with no UTC offset or time zone"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]00:00(?::00(?:\.0+)?)?)?$")
_WITH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?|\s*[A-Za-z][A-Za-z_/+-]*)$")


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

        def unreadable(what: str, cause: str, exc: BaseException | None = None):
            return TransientSourceError(
                f"{file}: {what}" + (f": {type(exc).__name__}: {exc}" if exc else ""),
                symbol=symbol,
                session=session,
                cause=cause,
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
        except OSError as exc:  # the file system failed us (I/O error, stale handle, a race)
            raise unreadable("could not be read now", "file read error", exc) from exc
        except Exception as exc:  # the reader failed on the content
            if _size(file) == 0:  # created, not written yet: a writer that does not rename
                raise unreadable("the file is empty (still being written?)", "empty file") from exc
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


def _size(file: Path) -> int | None:
    try:
        return file.stat().st_size
    except OSError:
        return None


def _parse_dates(values: pd.Series, fail) -> pd.Series:
    """The ``date`` column as dates, under :data:`DATE_RULE`; else a source error naming the
    first offending data row and its value."""

    def reject(row: int, why: str):
        return fail(
            f"expected {DATE_RULE} in column date, found {values.iloc[row]!r} at data row "
            f"{row + 1} ({why})",
            "malformed date",
        )

    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is not None:
            raise reject(0, f"a timestamp in time zone {values.dt.tz}")
        off_midnight = (values != values.dt.normalize()).to_numpy().nonzero()[0]
        if len(off_midnight):
            raise reject(int(off_midnight[0]), "a time of day")
        missing = values.isna().to_numpy().nonzero()[0]
        if len(missing):
            raise reject(int(missing[0]), "no date")
        return values.dt.date

    text = values.astype(str).str.strip()
    parsed = pd.to_datetime(text.str[:10], format="%Y-%m-%d", errors="coerce")
    bad = (~text.str.match(_DATE)) | parsed.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        value = text.iloc[row]
        if _DATE.match(value):
            why = "not a calendar date"
        elif _WITH_TIME.match(value) and _OFFSET.search(value[16:]):
            why = "a UTC offset or time zone: the session's date must not depend on it"
        elif _WITH_TIME.match(value):
            why = "a time of day: a daily bar is one session, not a moment"
        else:
            why = "not an ISO date"
        raise reject(row, why)
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
