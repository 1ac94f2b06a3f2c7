"""The gate rules, each declared once: name, severity, GX expectations, derived columns, message.

A :class:`Rule` is a stable name (operators acknowledge rules by it) with its severity, the GX
expectations that judge it (:class:`Expect`: one rule fails when any of them fails), the
derived columns those expectations read (computed in pandas over a :class:`~.frames.Stack`,
for the checks that compare rows: gaps, moves, repeats, presence of D) and the short "what was
found" of its failure message. A :class:`Suite` is the ordered rules of one gate; the order is
the report's order. :mod:`~.engine` builds the GX suites from these declarations and
:mod:`~.results` splits a GX result per symbol; neither names a rule.

No GX import here: an :class:`Expect` names a class of ``great_expectations.expectations`` and
its keyword arguments; a :class:`Param` is a value supplied per call (GX suite parameter).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from market_pipeline import calendar
from market_pipeline.indicators import INDICATOR_COLUMNS, WARMUP
from market_pipeline.quality.frames import (
    INDEX_COLUMNS,
    PRICE_COLUMNS,
    Run,
    Stack,
)
from market_pipeline.sources.base import BAR_COLUMNS

#: Bump when a rule, bound or severity changes; stored with every verdict.
SUITE_VERSION = "1.1.0"
BARS_SUITE_NAME = "raw_bars"
INDICATORS_SUITE_NAME = "indicators"

CRITICAL = "critical"
WARNING = "warning"

#: Identical OHLCV on this many consecutive sessions is a stale-repeat warning.
STALE_REPEAT_SESSIONS = 3


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Param:
    """A GX suite parameter: its name and its value for a call (from the call's :class:`Run`)."""

    name: str
    value: Callable[[Run], Any]


@dataclass(frozen=True)
class Expect:
    """One GX expectation: a class of ``great_expectations.expectations`` and its arguments
    (a :class:`Param` where the value is given per call)."""

    type: str
    kwargs: Mapping[str, Any]

    def params(self) -> list[Param]:
        return [v for v in self.kwargs.values() if isinstance(v, Param)]


def columns_present(columns: Iterable[str]) -> Expect:
    """The table has these columns (others may be there too)."""
    return Expect(
        "ExpectTableColumnsToMatchSet", {"column_set": list(columns), "exact_match": False}
    )


def in_set(column: str, values: list | Param) -> Expect:
    return Expect("ExpectColumnValuesToBeInSet", {"column": column, "value_set": values})


def between(column: str, **bounds: Any) -> Expect:
    """``min_value``/``max_value`` (a number or a :class:`Param`), ``strict_min``, ..."""
    return Expect("ExpectColumnValuesToBeBetween", {"column": column, **bounds})


def at_least(column_a: str, column_b: str) -> Expect:
    """``column_a >= column_b`` on every row where both are present."""
    return Expect(
        "ExpectColumnPairValuesAToBeGreaterThanB",
        {
            "column_A": column_a,
            "column_B": column_b,
            "or_equal": True,
            "ignore_row_if": "either_value_is_missing",
        },
    )


def unique(columns: Iterable[str]) -> Expect:
    return Expect("ExpectCompoundColumnsToBeUnique", {"column_list": list(columns)})


def row_count_at_least(n: int) -> Expect:
    return Expect("ExpectTableRowCountToBeBetween", {"min_value": n})


def row_value(row: Mapping[str, Any]) -> Any:
    """The checked value(s) of one unexpected row of a GX result (its index columns left out;
    ``{}`` when the checked column is an index column)."""
    values = {k: v for k, v in row.items() if k not in INDEX_COLUMNS}
    return next(iter(values.values())) if len(values) == 1 else values


def short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def row_text(row: Mapping[str, Any]) -> str:
    """``"<session>: <value>"``, or the session alone when the row has no other value."""
    value = row_value(row)
    return f"{row.get('session')}: {short(value)}" if value != {} else str(row.get("session"))


def first_rows(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    """The default failure detail: the first failing row and how many more."""
    more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
    return f"{row_text(rows[0])}{more}"


@dataclass(frozen=True)
class Rule:
    """One gate rule, declared once.

    ``expect``: the GX expectations judging it. ``columns``: derived column name -> how it is
    computed from the stacked rows (added to the validation frame in rule order; the
    expectations read them). ``message``: the "what was found" of a failure, from the
    symbol's failing rows (never called without rows) and the call's :class:`Run`.
    """

    name: str
    severity: str
    expect: tuple[Expect, ...]
    columns: Mapping[str, Callable[[Stack], Any]] = field(default_factory=dict)
    message: Callable[[Sequence[Mapping[str, Any]], Run], str] = first_rows

    def __post_init__(self) -> None:
        if self.severity not in (CRITICAL, WARNING):
            raise ValueError(f"expected severity {CRITICAL} or {WARNING}, found {self.severity!r}")
        if not self.expect:
            raise ValueError(f"rule {self.name!r} has no expectation")


@dataclass(frozen=True)
class Suite:
    """One gate's ordered rules (the report's order) and how its frames are checked.

    ``required``: the columns a frame needs to share a batched GX run with other symbols
    (:func:`~.results.groups`). ``not_ready``: per symbol, the columns whose warm-up is not
    over at D (column -> reason), for gates that report it.
    """

    name: str
    gate: str
    rules: tuple[Rule, ...]
    required: tuple[str, ...]
    version: str = SUITE_VERSION
    not_ready: Callable[[Stack], Mapping[str, dict[str, str]]] | None = None

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        if twice:
            raise ValueError(f"rules declared twice in suite {self.name!r}: {twice}")

    @cached_property
    def severities(self) -> dict[str, str]:
        """Rule name -> severity, in report order."""
        return {r.name: r.severity for r in self.rules}

    @cached_property
    def messages(self) -> dict[str, Callable[[Sequence[Mapping[str, Any]], Run], str]]:
        """Rule name -> its failure message."""
        return {r.name: r.message for r in self.rules}

    def parameters(self, run: Run) -> dict[str, Any]:
        """The GX suite parameters of a call: every :class:`Param` the expectations use."""
        return {
            p.name: p.value(run) for rule in self.rules for e in rule.expect for p in e.params()
        }


# --------------------------------------------------------------------------- raw bars

_NUMERIC_TYPES = frozenset({"float64", "float32", "int64", "int32", "Float64", "Int64", "Int32"})
_VOLUME_TYPES = frozenset({"int64", "int32", "uint64", "uint32", "Int64", "float64", "Float64"})
#: The dtypes each bar column may have (``trade_date``: every value a ``datetime.date``).
_COLUMN_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys(PRICE_COLUMNS, _NUMERIC_TYPES),
    "volume": _VOLUME_TYPES,
}


def wrong_types(frame: pd.DataFrame) -> pd.Series:
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


def names_where(frame: pd.DataFrame, checked: Mapping[str, Any]) -> pd.Series:
    """Per row, the comma-joined names of present columns that are null where ``checked``."""
    names = pd.Series("", index=frame.index, dtype=object)
    for col, mask in checked.items():
        if col in frame.columns:
            hit = frame[col].isna().to_numpy() & np.broadcast_to(mask, len(frame))
            if not hit.any():
                continue
            names[hit] = names[hit].map(lambda v, c=col: f"{v},{c}" if v else c)
    return names


def _volume_is_integral(stack: Stack) -> np.ndarray:
    values = stack.volume.to_numpy()
    integral = np.empty(len(values), dtype=object)
    integral[:] = values == np.floor(values)
    integral[np.isnan(values)] = None
    return integral


def _for_session(stack: Stack, what: str) -> np.ndarray:
    """Per row, D's ISO date where the symbol has a row for D, else why not."""
    d_iso = stack.run.trade_date.isoformat()
    out = np.empty(len(stack.frame), dtype=object)
    for _, lo, hi, latest, has_d in stack.latest:
        out[lo:hi] = d_iso if has_d else f"no {what} for {d_iso}, latest is {latest}"
    return out


def _unexplained_move(stack: Stack) -> pd.Series:
    """Close-to-close move, blank where the row's move is explained (a corporate action, or
    a date the caller explains) and on each symbol's first row."""
    frame = stack.frame
    explained = np.zeros(len(frame), dtype=bool)
    for symbol, lo, hi in stack.spans():
        wanted = stack.run.explained.get(symbol)
        if wanted:
            explained[lo:hi] = stack.dates.iloc[lo:hi].isin(wanted).to_numpy()
    if "corporate_action" in frame.columns:
        explained |= frame["corporate_action"].fillna(False).astype(bool).to_numpy()
    move = stack.prices["close"].pct_change(fill_method=None).mask(stack.first)
    return move.mask(explained)


def _identical_run(stack: Stack) -> pd.Series:
    """Per row, how many consecutive sessions (this one included) had identical OHLCV."""
    ohlcv = pd.concat([*stack.prices.values(), stack.volume], axis=1)
    same = ohlcv.eq(ohlcv.shift()).all(axis=1) & ~stack.first
    run_id = (~same).cumsum()
    return same.groupby(run_id).cumsum() + 1


def _not_sessions(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    found = [str(r.get("session")) for r in rows]
    days = sorted(set(found) - {"unparseable"})
    unparseable = found.count("unparseable")
    parts = []
    if len(days) == 1:
        parts.append(f"{days[0]} is not a session of {run.exchange}")
    elif days:
        listed = ", ".join(days[:3]) + (f" and {len(days) - 3} more" if len(days) > 3 else "")
        parts.append(f"{len(days)} dates are not sessions of {run.exchange}: {listed}")
    if unparseable:
        parts.append(f"{unparseable} unparseable date{'s' if unparseable != 1 else ''}")
    return "; ".join(parts)


def _duplicates(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    counts = Counter(str(r.get("session")) for r in rows)
    listed = [
        f"{day} has {n} rows" if day != "unparseable" else f"{n} rows have unparseable dates"
        for day, n in sorted(counts.items())
    ]
    more = f" and {len(listed) - 3} more sessions" if len(listed) > 3 else ""
    return ", ".join(listed[:3]) + more


def _missing_sessions(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    """The sessions with no bar between two consecutive bars (every gap of the symbol)."""
    iso = run.sessions.iso
    missing: list[str] = []
    for row in rows:
        # The row is the bar after a gap of ``sessions_since_prev`` sessions; a date that is
        # no session sits where the next session would be.
        at = bisect_left(iso, str(row.get("session")))
        gap = int(row.get("sessions_since_prev") or 0)
        missing.extend(iso[max(at - gap + 1, 0) : at])
    if not missing:
        return first_rows(rows, run)
    if len(missing) == 1:
        text = f"missing session {missing[0]}"
    elif len(missing) <= 5:
        text = f"missing sessions {', '.join(missing)}"
    else:
        text = f"missing {len(missing)} sessions: {', '.join(missing[:3])} … {missing[-1]}"
    return text + (f" in {len(rows)} gaps" if len(rows) > 1 else "")


def _worst_move(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    worst = max(rows, key=lambda r: abs(r.get("unexplained_move") or 0.0))
    move = worst.get("unexplained_move") or 0.0
    return f"|move| {move * 100:.1f}% > {run.max_move * 100:g}% on {worst.get('session')}"


def _first_value(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    return str(row_value(rows[0]))


def _present_for_session(name: str, what: str) -> Rule:
    """Critical: each symbol has a ``what`` (a bar, an indicator row) for session D."""
    column = f"{what}_for_session"
    return Rule(
        name,
        CRITICAL,
        (
            row_count_at_least(1),
            in_set(column, Param("session_d", lambda run: [run.trade_date.isoformat()])),
        ),
        {column: lambda s: _for_session(s, what)},
        message=_first_value,
    )


_BAR_RULES: tuple[Rule, ...] = (
    Rule(
        "schema",
        CRITICAL,
        # wrong_types names, per row, the bar columns whose value has the wrong type.
        (columns_present(BAR_COLUMNS), in_set("wrong_types", [""])),
        {"wrong_types": lambda s: wrong_types(s.frame)},
    ),
    Rule(
        "not_null",
        CRITICAL,
        # null_columns names, per row, the bar columns holding a null.
        (in_set("null_columns", [""]),),
        {"null_columns": lambda s: names_where(s.frame, dict.fromkeys(BAR_COLUMNS, True))},
    ),
    Rule(
        "positive_prices",
        CRITICAL,
        (between("min_price", min_value=0, strict_min=True),),
        {"min_price": lambda s: pd.concat(s.prices.values(), axis=1).min(axis=1)},
    ),
    Rule(
        "high_ge_open_close",
        CRITICAL,
        (at_least("high", "open_close_max"),),
        {"open_close_max": lambda s: np.fmax(s.prices["open"], s.prices["close"])},
    ),
    Rule(
        "low_le_open_close",
        CRITICAL,
        (at_least("open_close_min", "low"),),
        {"open_close_min": lambda s: np.fmin(s.prices["open"], s.prices["close"])},
    ),
    Rule(
        "volume_non_negative_integral",
        CRITICAL,
        (between("volume", min_value=0), in_set("volume_is_integral", [True])),
        {"volume_is_integral": _volume_is_integral},
    ),
    Rule("unique_dates", CRITICAL, (unique(INDEX_COLUMNS),), message=_duplicates),
    Rule(
        "dates_are_sessions",
        CRITICAL,
        (in_set("session", Param("sessions", lambda run: run.sessions.iso)),),
        message=_not_sessions,
    ),
    Rule(
        "no_missing_sessions",
        CRITICAL,
        (between("sessions_since_prev", max_value=1),),
        {"sessions_since_prev": lambda s: s.session_positions.diff().mask(s.first)},
        message=_missing_sessions,
    ),
    _present_for_session("bar_for_session_present", "bar"),
    Rule(
        "max_close_move",
        CRITICAL,
        (
            between(
                "unexplained_move",
                min_value=Param("min_move", lambda run: -run.max_move),
                max_value=Param("max_move", lambda run: run.max_move),
            ),
        ),
        {"unexplained_move": _unexplained_move},
        message=_worst_move,
    ),
    Rule(
        "stale_repeats",
        WARNING,
        (between("identical_run", max_value=STALE_REPEAT_SESSIONS - 1),),
        {"identical_run": _identical_run},
    ),
)


# --------------------------------------------------------------------------- indicators


def _sessions_behind(stack: Stack) -> np.ndarray:
    """Per row, how many sessions the symbol's latest row is behind D (negative: after)."""
    run = stack.run
    behind = np.full(len(stack.frame), np.nan)
    for _, lo, hi, latest, _ in stack.latest:
        if latest:
            behind[lo:hi] = calendar.sessions_apart(latest, run.trade_date, run.exchange)
    return behind if np.isnan(behind).any() else behind.astype(np.int64)


def _nan_after_warmup(stack: Stack) -> pd.Series:
    position = stack.history_positions[0]
    return names_where(stack.frame, {col: position >= warm for col, warm in WARMUP.items()})


def _behind(rows: Sequence[Mapping[str, Any]], run: Run) -> str:
    behind = rows[0].get("sessions_behind")
    if behind is None:
        return "no dated rows"
    n = abs(int(behind))
    where = "behind" if behind > 0 else "after"
    return f"latest row is {n} session{'s' if n != 1 else ''} {where} the gate's session"


def warmup_not_ready(stack: Stack) -> dict[str, dict[str, str]]:
    """Per symbol, the indicators whose warm-up is not over at D (column -> reason)."""
    return {
        s: {
            col: f"warm-up needs {warm + 1} sessions, {s} has {history}"
            for col, warm in WARMUP.items()
            if history - 1 < warm
        }
        for s, history in stack.history_positions[1].items()
    }


_INDICATOR_RULES: tuple[Rule, ...] = (
    Rule("schema", CRITICAL, (columns_present(["trade_date", *INDICATOR_COLUMNS]),)),
    _present_for_session("indicators_for_session_present", "row"),
    Rule(
        "not_stale",
        CRITICAL,
        (between("sessions_behind", min_value=0, max_value=0),),
        {"sessions_behind": _sessions_behind},
        message=_behind,
    ),
    Rule(
        "no_nan_after_warmup",
        CRITICAL,
        # nan_after_warmup names, per row, the indicators that are NaN past their warm-up
        # (history_pos: the row's position in the symbol's clean history).
        (in_set("nan_after_warmup", [""]),),
        {
            "history_pos": lambda s: s.history_positions[0],
            "nan_after_warmup": _nan_after_warmup,
        },
    ),
    Rule("rsi_in_range", CRITICAL, (between("rsi_14", min_value=0, max_value=100),)),
    Rule(
        "bollinger_ordered",
        CRITICAL,
        (at_least("bb_upper", "bb_middle"), at_least("bb_middle", "bb_lower")),
    ),
)


BARS = Suite(BARS_SUITE_NAME, "bars", _BAR_RULES, required=BAR_COLUMNS)
INDICATORS = Suite(
    INDICATORS_SUITE_NAME,
    "indicators",
    _INDICATOR_RULES,
    required=("trade_date", *INDICATOR_COLUMNS),
    not_ready=warmup_not_ready,
)
#: The suites the default engine builds.
SUITES: tuple[Suite, ...] = (BARS, INDICATORS)
