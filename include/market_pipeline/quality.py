"""Great Expectations quality gates for raw bars and indicators.

Two GX Core 1.x suites defined as code: ``raw_bars`` (``validate_bars``) and ``indicators``
(``validate_indicators``). Every expectation carries ``meta = {"rule", "severity"}``; a rule
is one stable name (the acknowledgement workflow refers to it) backed by one or more
expectations, and it fails when any of them fails.

Cost design: ``import great_expectations`` takes seconds, so this module imports it only inside
functions. The GX context, datasource and suites are built once per process (``warm_up``, or
lazily on first use) and reused. The ``*_many`` functions validate a whole universe in one GX
run over the concatenated frames (a ``symbol`` column identifies rows) and split the result
per symbol; the single-symbol functions are the same path with one symbol.

Rules that compare rows (gaps, moves, repeats, presence of D, warm-up) run on derived columns
computed here in pandas (``session``, ``sessions_since_prev``, ``unexplained_move``, ...);
GX evaluates them and reports the offending rows with their symbol and session.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from market_pipeline import calendar
from market_pipeline.errors import DataQualityError
from market_pipeline.indicators import INDICATOR_COLUMNS, WARMUP
from market_pipeline.sources.base import BAR_COLUMNS

log = logging.getLogger(__name__)

BARS_SUITE_NAME = "raw_bars"
INDICATORS_SUITE_NAME = "indicators"
SUITE_VERSION = "1.1.0"

CRITICAL = "critical"
WARNING = "warning"

DEFAULT_MAX_MOVE = 0.5
#: Identical OHLCV on this many consecutive sessions is a stale-repeat warning.
STALE_REPEAT_SESSIONS = 3

#: Raw-bar rules and their severity, in report order.
BAR_RULES: dict[str, str] = {
    "schema": CRITICAL,
    "not_null": CRITICAL,
    "positive_prices": CRITICAL,
    "high_ge_open_close": CRITICAL,
    "low_le_open_close": CRITICAL,
    "volume_non_negative_integral": CRITICAL,
    "unique_dates": CRITICAL,
    "dates_are_sessions": CRITICAL,
    "no_missing_sessions": CRITICAL,
    "bar_for_session_present": CRITICAL,
    "max_close_move": CRITICAL,
    "stale_repeats": WARNING,
}

#: Indicator rules and their severity, in report order.
INDICATOR_RULES: dict[str, str] = {
    "schema": CRITICAL,
    "indicators_for_session_present": CRITICAL,
    "not_stale": CRITICAL,
    "no_nan_after_warmup": CRITICAL,
    "rsi_in_range": CRITICAL,
    "bollinger_ordered": CRITICAL,
}

_PRICE_COLUMNS = ("open", "high", "low", "close")
_NUMERIC_TYPES = frozenset({"float64", "float32", "int64", "int32", "Float64", "Int64", "Int32"})
_VOLUME_TYPES = frozenset({"int64", "int32", "uint64", "uint32", "Int64", "float64", "Float64"})
#: The dtypes each bar column may have (``trade_date``: every value a ``datetime.date``).
_COLUMN_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys(_PRICE_COLUMNS, _NUMERIC_TYPES),
    "volume": _VOLUME_TYPES,
}
# Row identity in GX results: every unexpected row is reported with these columns.
_INDEX_COLUMNS = ["symbol", "session"]
_RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": _INDEX_COLUMNS}
_ROW_COUNT = "expect_table_row_count_to_be_between"
# The first pass over a batch: pass/fail per expectation only, about half of COMPLETE's cost.
_QUICK_FORMAT = {"result_format": "BOOLEAN_ONLY"}
# Expectations judged row by row: their result lists the unexpected rows (COMPLETE).
_ROW_LEVEL_TYPES = frozenset(
    {
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_compound_columns_to_be_unique",
    }
)


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate for one symbol and session."""

    gate: str
    symbol: str
    trade_date: date
    suite_name: str
    suite_version: str
    success: bool
    critical_failures: tuple[str, ...]
    warnings: tuple[str, ...]
    acknowledged: tuple[str, ...] = ()
    not_ready: dict[str, str] = field(default_factory=dict)
    result: dict = field(default_factory=dict)

    def failure_message(self) -> str:
        """The message a failed gate raises with (rules and what was found)."""
        label = "raw bar" if self.gate == "bars" else "indicator"
        details = self.result.get("details", {})
        named = ", ".join(
            f"{rule} ({details[rule]})" if details.get(rule) else rule
            for rule in self.critical_failures
        )
        return (
            f"{label} gate failed for {self.symbol} on {self.trade_date.isoformat()}: "
            f"critical expectations failed: {named}"
        )

    def raise_for_failure(self) -> None:
        """Raise :class:`DataQualityError` naming the failed critical rules, if any."""
        if not self.success:
            raise DataQualityError(
                self.failure_message(),
                failed_expectations=list(self.critical_failures),
                symbol=self.symbol,
                session=self.trade_date,
            )


# --------------------------------------------------------------------------- GX engine


class _Engine:
    """The per-process GX objects: ephemeral context, one dataframe batch definition, suites."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _install_configuration_memo()
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        asset = self.context.data_sources.add_pandas("market_pipeline").add_dataframe_asset(
            "frames"
        )
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
        self.suites = {
            BARS_SUITE_NAME: self._add_suite(gx, BARS_SUITE_NAME, _bar_expectations()),
            INDICATORS_SUITE_NAME: self._add_suite(
                gx, INDICATORS_SUITE_NAME, _indicator_expectations()
            ),
        }

    def _add_suite(self, gx: Any, name: str, expectations: list) -> Any:
        suite = gx.ExpectationSuite(name=name, meta={"suite_version": SUITE_VERSION})
        for expectation in expectations:
            suite.add_expectation(expectation)
        return self.context.suites.add(suite)

    def validate(self, suite_name: str, frame: pd.DataFrame, params: dict) -> dict:
        """The suite's GX result for the frame, in two passes.

        A pass/fail-only run first (``BOOLEAN_ONLY``). Only when an expectation fails is the
        suite run again with ``COMPLETE`` results, which name every unexpected row (the
        per-symbol split needs them). A passing batch, the common case, pays for the cheap
        pass only; its row-level results are rebuilt as "0 unexpected of n rows" by
        :func:`_split`.
        """
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        suite = self.suites[suite_name]
        with _configurations_memoised():
            quick = batch.validate(
                suite, result_format=_QUICK_FORMAT, expectation_parameters=params
            )
        if quick.success:  # the suite passes only when every expectation passed
            return quick.to_json_dict()
        with _configurations_memoised():
            result = batch.validate(
                suite, result_format=_RESULT_FORMAT, expectation_parameters=params
            )
        return result.to_json_dict()


# GX's Expectation.configuration is a property that rebuilds an ExpectationConfiguration
# (a pydantic .dict() and a regex over the class name) on every read, and one validation
# reads it ~70 times per expectation: half of GX's CPU for our suites. While one of our
# batch.validate calls runs, the memo below returns the first build for the rest of that
# call. The objects read during a validation are not changed by GX in between (it deep-copies
# configurations before it substitutes parameters into them); the memo ends with the call,
# it holds each object (so an id is never reused within it), and it is per thread. Tested:
# results are identical with and without it (tests/unit/test_quality.py).
_MEMO = threading.local()
#: Set False to validate with GX's own (rebuilding) property, e.g. to compare.
CONFIGURATION_MEMO = True


def _install_configuration_memo() -> bool:
    """Wrap ``Expectation.configuration`` once per process; False when GX's shape differs."""
    from great_expectations.expectations.expectation import Expectation

    prop = Expectation.__dict__.get("configuration")
    if not isinstance(prop, property) or prop.fget is None:
        log.warning("GX Expectation.configuration is not a property; validating without memo")
        return False
    if getattr(prop.fget, "market_memo", False):
        return True
    build = prop.fget

    def configuration(self: Any) -> Any:
        memo = getattr(_MEMO, "entries", None)
        if memo is None:
            return build(self)
        entry = memo.get(id(self))
        if entry is None or entry[0] is not self:
            entry = memo[id(self)] = (self, build(self))
        return entry[1]

    configuration.market_memo = True  # type: ignore[attr-defined]
    Expectation.configuration = property(configuration, doc=prop.__doc__)
    return True


@contextmanager
def _configurations_memoised() -> Iterator[None]:
    _MEMO.entries = {} if CONFIGURATION_MEMO else None
    try:
        yield
    finally:
        _MEMO.entries = None


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_LOCK:
            if _ENGINE is None:
                _ENGINE = _Engine()
    return _ENGINE


def warm_up() -> None:
    """Import GX and build the context and both suites now (idempotent, once per process)."""
    _engine()


def _tag(rule: str, severity: str, expectation_cls: Any, **kwargs: Any) -> Any:
    return expectation_cls(meta={"rule": rule, "severity": severity}, **kwargs)


def _bar_expectations() -> list:
    import great_expectations.expectations as gxe

    c, w = CRITICAL, WARNING
    between, in_set = gxe.ExpectColumnValuesToBeBetween, gxe.ExpectColumnValuesToBeInSet
    pair_ge = gxe.ExpectColumnPairValuesAToBeGreaterThanB
    either_missing = "either_value_is_missing"
    return [
        _tag(
            "schema",
            c,
            gxe.ExpectTableColumnsToMatchSet,
            column_set=list(BAR_COLUMNS),
            exact_match=False,
        ),
        # wrong_types names, per row, the bar columns whose value has the wrong type.
        _tag("schema", c, in_set, column="wrong_types", value_set=[""]),
        # null_columns names, per row, the bar columns holding a null.
        _tag("not_null", c, in_set, column="null_columns", value_set=[""]),
        # min_price is the smallest of open/high/low/close on the row.
        _tag("positive_prices", c, between, column="min_price", min_value=0, strict_min=True),
        _tag(
            "high_ge_open_close",
            c,
            pair_ge,
            column_A="high",
            column_B="open_close_max",
            or_equal=True,
            ignore_row_if=either_missing,
        ),
        _tag(
            "low_le_open_close",
            c,
            pair_ge,
            column_A="open_close_min",
            column_B="low",
            or_equal=True,
            ignore_row_if=either_missing,
        ),
        _tag("volume_non_negative_integral", c, between, column="volume", min_value=0),
        _tag(
            "volume_non_negative_integral", c, in_set, column="volume_is_integral", value_set=[True]
        ),
        _tag(
            "unique_dates",
            c,
            gxe.ExpectCompoundColumnsToBeUnique,
            column_list=["symbol", "session"],
        ),
        _tag(
            "dates_are_sessions", c, in_set, column="session", value_set={"$PARAMETER": "sessions"}
        ),
        _tag("no_missing_sessions", c, between, column="sessions_since_prev", max_value=1),
        _tag("bar_for_session_present", c, gxe.ExpectTableRowCountToBeBetween, min_value=1),
        _tag(
            "bar_for_session_present",
            c,
            in_set,
            column="bar_for_session",
            value_set={"$PARAMETER": "session_d"},
        ),
        _tag(
            "max_close_move",
            c,
            between,
            column="unexplained_move",
            min_value={"$PARAMETER": "min_move"},
            max_value={"$PARAMETER": "max_move"},
        ),
        _tag(
            "stale_repeats", w, between, column="identical_run", max_value=STALE_REPEAT_SESSIONS - 1
        ),
    ]


def _indicator_expectations() -> list:
    import great_expectations.expectations as gxe

    c = CRITICAL
    between, pair_ge = (
        gxe.ExpectColumnValuesToBeBetween,
        gxe.ExpectColumnPairValuesAToBeGreaterThanB,
    )
    either_missing = "either_value_is_missing"
    return [
        _tag(
            "schema",
            c,
            gxe.ExpectTableColumnsToMatchSet,
            column_set=["trade_date", *INDICATOR_COLUMNS],
            exact_match=False,
        ),
        _tag("indicators_for_session_present", c, gxe.ExpectTableRowCountToBeBetween, min_value=1),
        _tag(
            "indicators_for_session_present",
            c,
            gxe.ExpectColumnValuesToBeInSet,
            column="row_for_session",
            value_set={"$PARAMETER": "session_d"},
        ),
        _tag("not_stale", c, between, column="sessions_behind", min_value=0, max_value=0),
        # nan_after_warmup names, per row, the indicators that are NaN past their warm-up.
        _tag(
            "no_nan_after_warmup",
            c,
            gxe.ExpectColumnValuesToBeInSet,
            column="nan_after_warmup",
            value_set=[""],
        ),
        _tag("rsi_in_range", c, between, column="rsi_14", min_value=0, max_value=100),
        _tag(
            "bollinger_ordered",
            c,
            pair_ge,
            column_A="bb_upper",
            column_B="bb_middle",
            or_equal=True,
            ignore_row_if=either_missing,
        ),
        _tag(
            "bollinger_ordered",
            c,
            pair_ge,
            column_A="bb_middle",
            column_B="bb_lower",
            or_equal=True,
            ignore_row_if=either_missing,
        ),
    ]


# --------------------------------------------------------------------------- derived frames


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(ts) else ts.date()


def _dates(frame: pd.DataFrame) -> pd.Series:
    """trade_date coerced to ``datetime.date`` (None where unparseable)."""
    if "trade_date" not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    column = frame["trade_date"]
    if pd.api.types.infer_dtype(column, skipna=False) == "date" and not any(
        isinstance(d, datetime) for d in column
    ):
        # Every cell already a datetime.date (the usual case): no per-row parsing. pandas
        # infers "date" for dates mixed with datetimes (a date subclass), hence the check.
        return column.astype(object)
    return column.map(_as_date).astype(object)


def _iso(dates: pd.Series) -> pd.Series:
    """ISO strings of ``_dates`` output ("unparseable" for None), vectorised when possible."""
    if len(dates) and dates.notna().all():
        days = np.array(dates.tolist(), dtype="datetime64[D]")
        return pd.Series(np.datetime_as_string(days, unit="D"), index=dates.index, dtype=object)
    return dates.map(lambda d: d.isoformat() if d else "unparseable").astype(object)


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")


def has_bar(bars: pd.DataFrame, trade_date: date) -> bool:
    """Whether ``bars`` holds a row for session ``trade_date``."""
    if bars is None or bars.empty or "trade_date" not in bars.columns:
        return False
    return bool((_dates(bars) == _as_date(trade_date)).any())


def _names_where(frame: pd.DataFrame, checked: Mapping[str, Any]) -> pd.Series:
    """Per row, the comma-joined names of present columns that are null where ``checked``."""
    names = pd.Series("", index=frame.index, dtype=object)
    for col, mask in checked.items():
        if col in frame.columns:
            hit = frame[col].isna().to_numpy() & np.broadcast_to(mask, len(frame))
            if not hit.any():
                continue
            names[hit] = names[hit].map(lambda v, c=col: f"{v},{c}" if v else c)
    return names


def _wrong_types(frame: pd.DataFrame) -> pd.Series:
    """Per row, the bar columns whose value has the wrong type, with the type found
    (``"volume (object)"``, comma-joined; "" when every type is right).

    ``trade_date`` must hold ``datetime.date`` values (a ``datetime`` or a string is wrong);
    a price or volume column must have a numeric dtype of ``_COLUMN_TYPES``, else each of
    its non-null values is wrong. Nulls and missing columns are other rules' business
    (``not_null``, the column set). One derived column, so one GX expectation checks the
    types of all six columns (each expectation costs GX ~10-20 ms per run, whatever the rows).
    """
    names = pd.Series("", index=frame.index, dtype=object)

    def add(hit: np.ndarray, labels: pd.Series | str) -> None:
        if hit.any():
            found = labels[hit] if isinstance(labels, pd.Series) else labels
            before = names[hit]
            names[hit] = before.where(before == "", before + ",") + found

    if "trade_date" in frame.columns:
        kinds = frame["trade_date"].map(type)
        hit = (~kinds.isin([date]) & frame["trade_date"].notna()).to_numpy()
        add(hit, "trade_date (" + kinds.map(lambda k: k.__name__) + ")")
    for col, allowed in _COLUMN_TYPES.items():
        if col in frame.columns and frame[col].dtype.name not in allowed:
            add(frame[col].notna().to_numpy(), f"{col} ({frame[col].dtype.name})")
    return names


class _Sessions:
    """Session lookups over one calendar range, shared by all symbols of a run."""

    def __init__(self, dates: Iterable[date | None], trade_date: date, exchange: str) -> None:
        cal = calendar.get_calendar(exchange)
        known = [d for d in dates if d is not None]
        first = min([*known, trade_date])
        last = max([*known, trade_date])
        lo = max(pd.Timestamp(first), cal.first_session)
        hi = min(pd.Timestamp(last), cal.last_session)
        index = cal.sessions_in_range(lo, hi) if lo <= hi else pd.DatetimeIndex([])
        self.index = pd.DatetimeIndex(index).tz_localize(None)
        self.iso = [ts.date().isoformat() for ts in self.index]

    def positions(self, dates: pd.Series) -> np.ndarray:
        """Position of each date in the session index (NaN for unknown dates)."""
        stamps = pd.to_datetime(dates, errors="coerce")
        out = self.index.searchsorted(stamps).astype("float64")
        out[stamps.isna().to_numpy()] = np.nan
        return out


def _stacked(frames: Mapping[str, pd.DataFrame]) -> tuple:
    """Every symbol's rows one after the other, each sorted by session, with ``symbol`` and
    ``session`` columns; also the dates, each row's symbol position in ``frames``, the mask
    of each symbol's first row (nothing before it to compare with) and the row bounds of
    each symbol (``bounds[i]:bounds[i + 1]``)."""
    sizes = [len(f) for f in frames.values()]
    frame = pd.concat(list(frames.values()), ignore_index=True) if frames else pd.DataFrame()
    frame["symbol"] = np.repeat(np.array(list(frames), dtype=object), sizes)
    frame["_order"] = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    dates = _dates(frame)
    frame = frame.assign(_sort=pd.to_datetime(dates, errors="coerce"))
    frame = frame.sort_values(["_order", "_sort"], kind="stable").reset_index(drop=True)
    order = frame["_order"].to_numpy()
    frame = frame.drop(columns=["_sort", "_order"])
    dates = _dates(frame)
    frame["session"] = _iso(dates)
    first = np.ones(len(frame), dtype=bool)
    first[1:] = order[1:] != order[:-1]
    bounds = [*np.flatnonzero(first), len(frame)]
    return frame, dates, order, first, bounds


def _bars_frames(
    frames: Mapping[str, pd.DataFrame],
    trade_date: date,
    sessions: _Sessions,
    explained: Mapping[str, set[date]],
) -> pd.DataFrame:
    """The validation frames of many symbols, one after the other, built in one pass.

    Row for row the same as each symbol's frame built alone and concatenated (tested):
    every derived column that looks at the previous row (session gap, move, identical run)
    restarts at each symbol's first row.
    """
    symbols = list(frames)
    frame, dates, order, first, bounds = _stacked(frames)

    frame["wrong_types"] = _wrong_types(frame)
    frame["null_columns"] = _names_where(frame, {col: True for col in BAR_COLUMNS})
    prices = {col: _numeric(frame, col) for col in _PRICE_COLUMNS}
    volume = _numeric(frame, "volume")
    frame["min_price"] = pd.concat(prices.values(), axis=1).min(axis=1)
    frame["open_close_max"] = np.fmax(prices["open"], prices["close"])
    frame["open_close_min"] = np.fmin(prices["open"], prices["close"])
    values = volume.to_numpy()
    integral = np.empty(len(values), dtype=object)
    integral[:] = values == np.floor(values)
    integral[np.isnan(values)] = None
    frame["volume_is_integral"] = integral

    pos = pd.Series(sessions.positions(dates), index=frame.index)
    frame["sessions_since_prev"] = pos.diff().mask(first)

    d_iso = trade_date.isoformat()
    is_d = (dates == trade_date).to_numpy()
    bar_for_session = np.empty(len(frame), dtype=object)
    explained_rows = np.zeros(len(frame), dtype=bool)
    day_list = dates.tolist()
    for lo, hi in itertools.pairwise(bounds):
        if is_d[lo:hi].any():
            bar_for_session[lo:hi] = d_iso
        else:
            latest = max((d for d in day_list[lo:hi] if d is not None), default=None)
            bar_for_session[lo:hi] = f"no bar for {d_iso}, latest is {latest}"
        wanted = explained.get(symbols[order[lo]])
        if wanted:
            explained_rows[lo:hi] = dates.iloc[lo:hi].isin(wanted).to_numpy()
    frame["bar_for_session"] = bar_for_session

    move = prices["close"].pct_change(fill_method=None).mask(first)
    if "corporate_action" in frame.columns:
        explained_rows |= frame["corporate_action"].fillna(False).astype(bool).to_numpy()
    frame["unexplained_move"] = move.mask(explained_rows)

    ohlcv = pd.concat([*prices.values(), volume], axis=1)
    same = ohlcv.eq(ohlcv.shift()).all(axis=1) & ~first
    run_id = (~same).cumsum()
    frame["identical_run"] = same.groupby(run_id).cumsum() + 1
    return frame


def _indicator_frames(
    frames: Mapping[str, pd.DataFrame],
    trade_date: date,
    exchange: str,
    history_sessions: Mapping[str, int | None] | int | None,
) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """The indicator gate's validation frame for many symbols (one pass) and each symbol's
    "not ready" rules; row for row what each symbol's frame built alone would be (tested)."""
    symbols = list(frames)
    frame, dates, order, _, bounds = _stacked(frames)

    def history_of(symbol: str, rows_up_to_d: int) -> int:
        given = (
            history_sessions.get(symbol)
            if isinstance(history_sessions, Mapping)
            else history_sessions
        )
        return rows_up_to_d if given is None else int(given)

    d_iso = trade_date.isoformat()
    position = np.zeros(len(frame), dtype=np.int64)
    row_for_session = np.empty(len(frame), dtype=object)
    behind = np.full(len(frame), np.nan)
    histories = {s: history_of(s, 0) for s in symbols}  # symbols without a row
    day_list = dates.tolist()
    for lo, hi in itertools.pairwise(bounds):
        symbol = symbols[order[lo]]
        known = [d for d in day_list[lo:hi] if d is not None]
        upto_d = sum(d <= trade_date for d in known)
        history = histories[symbol] = history_of(symbol, upto_d)
        position[lo:hi] = np.arange(hi - lo) + (history - upto_d)
        latest = max(known, default=None)
        present = trade_date in known
        row_for_session[lo:hi] = d_iso if present else f"no row for {d_iso}, latest is {latest}"
        if latest:
            behind[lo:hi] = calendar.sessions_apart(latest, trade_date, exchange)
    frame["history_pos"] = position
    frame["nan_after_warmup"] = _names_where(
        frame, {col: position >= warm for col, warm in WARMUP.items()}
    )
    frame["row_for_session"] = row_for_session
    frame["sessions_behind"] = behind if np.isnan(behind).any() else behind.astype(np.int64)

    not_ready = {
        s: {
            col: f"warm-up needs {warm + 1} sessions, {s} has {history}"
            for col, warm in WARMUP.items()
            if history - 1 < warm
        }
        for s, history in histories.items()
    }
    return frame, not_ready


# --------------------------------------------------------------------------- results


def _strict_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, dates ISO strings, numpy scalars Python ones."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _row_value(row: dict) -> Any:
    values = {k: v for k, v in row.items() if k not in _INDEX_COLUMNS}
    return next(iter(values.values())) if len(values) == 1 else values


def _observed(result: dict, exception: dict | None, success: bool, kind: str | None) -> str:
    if exception and exception.get("raised_exception"):
        return f"error: {exception.get('exception_message')}"
    if success and kind not in _ROW_LEVEL_TYPES and kind != _ROW_COUNT:
        # A table-level check (schema, dtypes) that passed. The quick pass observes nothing,
        # and a COMPLETE pass says the same, so a symbol reads alike whatever its neighbours.
        return "passed"
    if "unexpected_index_list" in result:
        rows = result["unexpected_index_list"]
        if not rows:
            return f"0 unexpected of {result.get('element_count', 0)} rows"
        sample = "; ".join(f"{row.get('session')}: {_short(_row_value(row))}" for row in rows[:3])
        more = f" (+{len(rows) - 3} more)" if len(rows) > 3 else ""
        return f"{len(rows)} unexpected rows: {sample}{more}"
    if "details" in result or isinstance(result.get("observed_value"), list):
        # Table-columns check: extra (derived) columns are expected, only missing ones matter.
        missing = result.get("details", {}).get("mismatched", {}).get("missing")
        return f"missing columns: {missing}" if missing else "required columns present"
    return f"observed {_short(result.get('observed_value'))}"


def _detail(rule: str, rows: list[dict], max_move: float) -> str:
    """Short 'what was found' for the failure message."""
    if rule == "max_close_move" and rows:
        worst = max(rows, key=lambda r: abs(r.get("unexplained_move") or 0.0))
        move = worst.get("unexplained_move") or 0.0
        return f"|move| {move * 100:.1f}% > {max_move * 100:g}% on {worst.get('session')}"
    if rule == "not_stale" and rows:
        behind = rows[0].get("sessions_behind")
        if behind is None:
            return "no dated rows"
        n = abs(int(behind))
        where = "behind" if behind > 0 else "after"
        return f"latest row is {n} session{'s' if n != 1 else ''} {where} the gate's session"
    if rule in ("bar_for_session_present", "indicators_for_session_present") and rows:
        return str(_row_value(rows[0]))
    if rows:
        first = rows[0]
        more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
        return f"{first.get('session')}: {_short(_row_value(first))}{more}"
    return ""


def _split(
    gx_json: dict,
    symbol: str,
    rules: Mapping[str, str],
    acknowledged: _Acks,
    max_move: float,
    n_rows: int,
    trade_date: date,
) -> tuple[dict, list[str], list[str], list[str], dict]:
    """One symbol's view of a (possibly multi-symbol) GX result.

    Row-level expectations keep only this symbol's unexpected rows and are re-judged on them;
    table-level ones (schema, row count) are taken as they are.
    """
    results = []
    rows_out = []
    failed_rules: dict[str, list[dict]] = {}
    errored: dict[str, str] = {}
    for item in gx_json["results"]:
        meta = item["expectation_config"].get("meta") or {}
        rule = meta.get("rule", "?")
        result = dict(item.get("result") or {})
        exception = item.get("exception_info") or {}
        success = bool(item["success"])
        kind = item["expectation_config"].get("type")
        if "unexpected_index_list" in result or (success and kind in _ROW_LEVEL_TYPES):
            # A passing expectation from the quick pass has no result: no row is unexpected.
            listed = result.get("unexpected_index_list") or []
            mine = [r for r in listed if r.get("symbol") == symbol]
            result = {
                "element_count": n_rows,
                "unexpected_count": len(mine),
                "unexpected_list": [_row_value(r) for r in mine],
                "unexpected_index_list": mine,
                "unexpected_index_column_names": list(_INDEX_COLUMNS),
            }
            success = not mine and not exception.get("raised_exception")
            if not success:
                failed_rules.setdefault(rule, []).extend(mine)
        elif kind == _ROW_COUNT:
            # Judged on the symbol's own rows: in a batch the table is every symbol's.
            result = {"observed_value": n_rows}
            success = n_rows >= 1
            if not success:
                failed_rules.setdefault(rule, [])
                errored[rule] = f"no rows for {symbol}"
        elif not success:
            failed_rules.setdefault(rule, [])
            if exception.get("raised_exception"):
                errored[rule] = str(exception.get("exception_message"))
        item = {**item, "expectation_config": _abbreviated(item["expectation_config"])}
        results.append({**item, "success": success, "result": result})
        rows_out.append(
            {
                "rule": rule,
                "severity": rules.get(rule, CRITICAL),
                "acknowledged": False,  # set below, once every row of the rule is known
                "success": success,
                "expectation": item["expectation_config"].get("type"),
                "column": (item["expectation_config"].get("kwargs") or {}).get("column"),
                "observed": _observed(result, exception, success, kind),
            }
        )
    order = list(rules)
    rows_out.sort(key=lambda r: order.index(r["rule"]) if r["rule"] in order else len(order))
    failed = sorted(failed_rules, key=lambda r: order.index(r) if r in order else len(order))
    d_iso = trade_date.isoformat()
    acked = [r for r in failed if acknowledged.covers(r, failed_rules[r], d_iso)]
    critical = [r for r in failed if rules.get(r) == CRITICAL and r not in acked]
    warned = [r for r in failed if r not in critical]
    for row in rows_out:
        row["acknowledged"] = row["rule"] in acked
    # Per critical rule, the sessions of its failing rows that no acknowledgement covers
    # (empty: a table-level failure). The bulk bootstrap promotes up to the first of them.
    critical_sessions = {
        r: sorted(
            {
                str(row.get("session"))
                for row in failed_rules[r]
                if not acknowledged.covers(r, [row], d_iso)
            }
        )
        for r in critical
    }
    details = {r: errored.get(r) or _detail(r, failed_rules[r], max_move) for r in failed}
    n_ok = sum(1 for r in results if r["success"])
    view = {
        **{k: v for k, v in gx_json.items() if k != "results"},
        "success": not critical,
        "results": results,
        "statistics": {
            "evaluated_expectations": len(results),
            "successful_expectations": n_ok,
            "unsuccessful_expectations": len(results) - n_ok,
            "success_percent": 100.0 * n_ok / len(results) if results else 100.0,
        },
    }
    extra = {"rows": rows_out, "details": details, "critical_sessions": critical_sessions}
    return view, critical, warned, acked, extra


#: Value sets longer than this are abbreviated in stored results (a history's session list).
_MAX_STORED_VALUES = 50


def _abbreviated(config: dict) -> dict:
    """The expectation config with long value lists summarised (first, last, count)."""
    kwargs = config.get("kwargs") or {}
    long = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) > _MAX_STORED_VALUES}
    if not long:
        return config
    short = {k: f"{len(v)} values: {v[0]} … {v[-1]}" for k, v in long.items()}
    return {**config, "kwargs": {**kwargs, **short}}


def _gate_result(
    gate: str,
    suite_name: str,
    symbol: str,
    trade_date: date,
    gx_json: dict,
    rules: Mapping[str, str],
    acknowledged: _Acks,
    max_move: float = DEFAULT_MAX_MOVE,
    not_ready: dict[str, str] | None = None,
    batch_size: int = 1,
    n_rows: int = 0,
) -> GateResult:
    view, critical, warned, acked, extra = _split(
        gx_json, symbol, rules, acknowledged, max_move, n_rows, trade_date
    )
    # gx_json is strict JSON already (converted once per batch, not once per symbol), and
    # _split adds only strings, ints and finite floats.
    result = {
        "gx": view,
        "expectations": extra["rows"],
        "details": extra["details"],
        "critical_sessions": extra["critical_sessions"],
        "acknowledged_sessions": acknowledged.as_json(),
        "suite_name": suite_name,
        "suite_version": SUITE_VERSION,
        "symbol": symbol,
        "trade_date": trade_date.isoformat(),
        "batch_symbols": batch_size,
        "critical_failure_count": len(critical),
        "warning_count": len(warned),
        "not_ready": dict(not_ready or {}),
    }
    return GateResult(
        gate=gate,
        symbol=symbol,
        trade_date=trade_date,
        suite_name=suite_name,
        suite_version=SUITE_VERSION,
        success=not critical,
        critical_failures=tuple(critical),
        warnings=tuple(warned),
        acknowledged=tuple(acked),
        not_ready=dict(not_ready or {}),
        result=result,
    )


@dataclass(frozen=True)
class _Acks:
    """Acknowledged rules: for every session (a plain iterable) or per session (a mapping)."""

    everywhere: frozenset[str] = frozenset()
    by_session: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def covers(self, rule: str, rows: list[dict], d_iso: str) -> bool:
        """Whether the rule's failure is acknowledged: every failing row's session (or, for a
        table-level failure without rows, the gate's session) acknowledges it."""
        if rule in self.everywhere:
            return True
        if rows:
            return all(rule in self.by_session.get(str(r.get("session")), ()) for r in rows)
        return rule in self.by_session.get(d_iso, ())

    def as_json(self) -> dict:
        out = {"*": sorted(self.everywhere)} if self.everywhere else {}
        return {**out, **{d: sorted(r) for d, r in sorted(self.by_session.items())}}


def _check_ack(
    acknowledged: Iterable[str] | Mapping[Any, Iterable[str]], rules: Mapping[str, str]
) -> _Acks:
    if isinstance(acknowledged, _Acks):
        return acknowledged
    if isinstance(acknowledged, Mapping):
        by_session: dict[str, frozenset[str]] = {}
        for day, names in acknowledged.items():
            parsed = _as_date(day)
            if parsed is None:
                raise ValueError(f"expected session dates as acknowledgement keys, found {day!r}")
            key = parsed.isoformat()
            by_session[key] = by_session.get(key, frozenset()) | frozenset(names)
        acks = _Acks(by_session=by_session)
        names = set().union(*by_session.values()) if by_session else set()
    else:
        if isinstance(acknowledged, str):
            acknowledged = [acknowledged]
        names = set(acknowledged)
        acks = _Acks(everywhere=frozenset(names))
    unknown = names - set(rules)
    if unknown:
        raise ValueError(
            f"unknown rule names acknowledged: {sorted(unknown)}; expected some of {list(rules)}"
        )
    return acks


def _well_formed(frame: pd.DataFrame, required: Iterable[str]) -> bool:
    """Whether a frame can share a batched GX run (schema checks pass trivially there)."""
    if frame is None or frame.empty or not set(required) <= set(frame.columns):
        return False
    for col in (c for c in required if c != "trade_date"):
        dtype = frame[col].dtype
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            return False
    return all(type(d) is date for d in frame["trade_date"])


def _groups(frames: Mapping[str, pd.DataFrame], required: Iterable[str]) -> list[list[str]]:
    """Symbols grouped into GX runs: the well-formed together, the rest one by one."""
    required = list(required)
    good = [s for s in frames if _well_formed(frames[s], required)]
    bad = [[s] for s in frames if s not in set(good)]
    return ([good] if good else []) + bad


def _per_symbol(value: Any, symbol: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(symbol, ())
    return value


# --------------------------------------------------------------------------- public API


def validate_bars_many(
    frames: Mapping[str, pd.DataFrame],
    *,
    trade_date: date,
    exchange: str = "XNYS",
    max_move: float = DEFAULT_MAX_MOVE,
    acknowledged: Mapping[str, Iterable[str] | Mapping[date, Iterable[str]]] | Iterable[str] = (),
    explained_dates: Mapping[str, Iterable[date]] | Iterable[date] = (),
) -> dict[str, GateResult]:
    """Run the raw-bar gate for many symbols in one GX run; results keyed by symbol.

    ``acknowledged`` and ``explained_dates`` are either one collection for every symbol or a
    mapping symbol -> collection. A symbol's acknowledgements are rule names (waived for every
    session) or a mapping session -> rule names (waived only where every failing row of the
    rule is on a session that acknowledges it), as :func:`validate_bars` describes.
    """
    trade_date = _as_date(trade_date)
    engine = _engine()
    acks = {s: _check_ack(_per_symbol(acknowledged, s), BAR_RULES) for s in frames}
    explained = {s: {_as_date(d) for d in _per_symbol(explained_dates, s)} for s in frames}
    all_dates = [d for f in frames.values() for d in _dates(f)] if frames else []
    sessions = _Sessions(all_dates, trade_date, exchange)
    params = {
        "sessions": sessions.iso,
        "session_d": [trade_date.isoformat()],
        "min_move": -abs(max_move),
        "max_move": abs(max_move),
    }
    out: dict[str, GateResult] = {}
    for group in _groups(frames, BAR_COLUMNS):
        vframe = _bars_frames({s: frames[s] for s in group}, trade_date, sessions, explained)
        gx_json = _strict_json(engine.validate(BARS_SUITE_NAME, vframe, params))
        counts = vframe["symbol"].value_counts()
        for s in group:
            out[s] = _gate_result(
                "bars",
                BARS_SUITE_NAME,
                s,
                trade_date,
                gx_json,
                BAR_RULES,
                acks[s],
                max_move=abs(max_move),
                batch_size=len(group),
                n_rows=int(counts.get(s, 0)),
            )
    return {s: out[s] for s in frames}


def validate_bars(
    bars: pd.DataFrame,
    *,
    symbol: str,
    trade_date: date,
    exchange: str = "XNYS",
    max_move: float = DEFAULT_MAX_MOVE,
    acknowledged: Iterable[str] | Mapping[date, Iterable[str]] = (),
    explained_dates: Iterable[date] = (),
) -> GateResult:
    """Run the raw-bar gate for one symbol's window of bars ending at session ``trade_date``.

    ``acknowledged``: rule names whose failure is reported as a warning, either for every
    session (a plain iterable) or per session (``{session: rules}``, as stored by
    :mod:`market_pipeline.acks`): a rule is then acknowledged only when every row it fails on
    is a session acknowledging it (a table-level failure: when ``trade_date`` acknowledges it).
    """
    if not isinstance(acknowledged, Mapping):
        acknowledged = list(acknowledged)
    return validate_bars_many(
        {symbol: bars},
        trade_date=trade_date,
        exchange=exchange,
        max_move=max_move,
        acknowledged={symbol: acknowledged},
        explained_dates={symbol: list(explained_dates)},
    )[symbol]


def validate_indicators_many(
    frames: Mapping[str, pd.DataFrame],
    *,
    trade_date: date,
    exchange: str = "XNYS",
    history_sessions: Mapping[str, int | None] | int | None = None,
) -> dict[str, GateResult]:
    """Run the indicator gate for many symbols in one GX run; results keyed by symbol."""
    trade_date = _as_date(trade_date)
    engine = _engine()
    params = {"session_d": [trade_date.isoformat()]}
    out: dict[str, GateResult] = {}
    for group in _groups(frames, ["trade_date", *INDICATOR_COLUMNS]):
        vframe, ready = _indicator_frames(
            {s: frames[s] for s in group}, trade_date, exchange, history_sessions
        )
        gx_json = _strict_json(engine.validate(INDICATORS_SUITE_NAME, vframe, params))
        counts = vframe["symbol"].value_counts()
        for s in group:
            out[s] = _gate_result(
                "indicators",
                INDICATORS_SUITE_NAME,
                s,
                trade_date,
                gx_json,
                INDICATOR_RULES,
                _Acks(),
                not_ready=ready[s],
                batch_size=len(group),
                n_rows=int(counts.get(s, 0)),
            )
    return {s: out[s] for s in frames}


def validate_indicators(
    ind: pd.DataFrame,
    *,
    symbol: str,
    trade_date: date,
    exchange: str = "XNYS",
    history_sessions: int | None = None,
) -> GateResult:
    """Run the indicator gate for one symbol's trailing indicator window ending at D.

    ``history_sessions`` is how many clean sessions the symbol has up to D (None: the frame is
    the whole history). Columns whose warm-up is not complete at D are ``not_ready``.
    """
    return validate_indicators_many(
        {symbol: ind},
        trade_date=trade_date,
        exchange=exchange,
        history_sessions={symbol: history_sessions},
    )[symbol]


def result_json(result: GateResult) -> str:
    """The report payload as a JSON string (strict: no NaN), for ``validation_reports``."""
    return json.dumps(result.result, allow_nan=False, sort_keys=True)
