"""One symbol's verdict from a (possibly multi-symbol) GX result; acknowledgements.

Nothing here names a rule: severities, report order and failure messages come from the
:class:`~.rules.Suite` being judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from market_pipeline.errors import EVENT_RULES, DataQualityError
from market_pipeline.quality.frames import INDEX_COLUMNS, Run, as_date
from market_pipeline.quality.rules import CRITICAL, Suite, row_text, row_value, short
from market_pipeline.verdicts import Verdict

_ROW_COUNT = "expect_table_row_count_to_be_between"
# Expectations judged row by row: their result lists the unexpected rows (COMPLETE).
_ROW_LEVEL_TYPES = frozenset(
    {
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_compound_columns_to_be_unique",
    }
)
#: Value sets longer than this are abbreviated in stored results (a history's session list).
_MAX_STORED_VALUES = 50


@dataclass(frozen=True)
class GateResult(Verdict):
    """The outcome of one gate for one symbol and session (its rules as tuples)."""

    acknowledged: tuple[str, ...] = ()
    not_ready: dict[str, str] = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    #: Hash of the judged input (``quality.gates.input_hash``); None when not computed.
    input_hash: str | None = None
    #: True when the verdict is a stored one reused for an unchanged input (no GX run).
    reused: bool = False

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

    def event_sessions(self) -> dict[str, list[str]]:
        """``{rule: [session, …]}`` when every failed critical rule can be a true market event
        (``errors.EVENT_RULES``, acknowledgeable), else ``{}``: only a new delivery helps."""
        if not self.critical_failures or not set(self.critical_failures) <= EVENT_RULES:
            return {}
        sessions = self.result.get("critical_sessions", {})
        return {r: list(sessions.get(r) or []) for r in self.critical_failures}

    def raise_for_failure(self, action: str | None = None) -> None:
        """Raise :class:`DataQualityError` naming the failed critical rules, if any
        (``action``: the one next action, which ends the message)."""
        if not self.success:
            raise DataQualityError(
                self.failure_message(),
                failed_expectations=list(self.critical_failures),
                symbol=self.symbol,
                session=self.trade_date,
                action=action,
            )


# --------------------------------------------------------------------------- acknowledgements


@dataclass(frozen=True)
class Acks:
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


def check_acks(
    acknowledged: Iterable[str] | Mapping[Any, Iterable[str]], rules: Mapping[str, str]
) -> Acks:
    """Acknowledgements parsed and checked against the suite's rule names (a typo raises)."""
    if isinstance(acknowledged, Acks):
        return acknowledged
    if isinstance(acknowledged, Mapping):
        by_session: dict[str, frozenset[str]] = {}
        for day, names in acknowledged.items():
            parsed = as_date(day)
            if parsed is None:
                raise ValueError(f"expected session dates as acknowledgement keys, found {day!r}")
            key = parsed.isoformat()
            by_session[key] = by_session.get(key, frozenset()) | frozenset(names)
        acks = Acks(by_session=by_session)
        names = set().union(*by_session.values()) if by_session else set()
    else:
        if isinstance(acknowledged, str):
            acknowledged = [acknowledged]
        names = set(acknowledged)
        acks = Acks(everywhere=frozenset(names))
    unknown = names - set(rules)
    if unknown:
        raise ValueError(
            f"unknown rule names acknowledged: {sorted(unknown)}; expected some of {list(rules)}"
        )
    return acks


# --------------------------------------------------------------------------- grouping


def _well_formed(frame: pd.DataFrame, required: Iterable[str]) -> bool:
    """Whether a frame can share a batched GX run (schema checks pass trivially there)."""
    if frame is None or frame.empty or not set(required) <= set(frame.columns):
        return False
    # The dtypes in one read: a column lookup per rule column cost ~1 ms per frame.
    dtypes = dict(zip(frame.columns.tolist(), frame.dtypes.tolist(), strict=True))
    for col in (c for c in required if c != "trade_date"):
        dtype = dtypes[col]
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            return False
    return all(type(d) is date for d in frame["trade_date"].tolist())


def groups(frames: Mapping[str, pd.DataFrame], required: Iterable[str]) -> list[list[str]]:
    """Symbols grouped into GX runs: the well-formed together, the rest one by one."""
    required = list(required)
    good = [s for s in frames if _well_formed(frames[s], required)]
    bad = [[s] for s in frames if s not in set(good)]
    return ([good] if good else []) + bad


# --------------------------------------------------------------------------- splitting


def strict_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, dates ISO strings, numpy scalars Python ones."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
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
        sample = "; ".join(row_text(row) for row in rows[:3])
        more = f" (+{len(rows) - 3} more)" if len(rows) > 3 else ""
        return f"{len(rows)} unexpected rows: {sample}{more}"
    if "details" in result or isinstance(result.get("observed_value"), list):
        # Table-columns check: extra (derived) columns are expected, only missing ones matter.
        missing = result.get("details", {}).get("mismatched", {}).get("missing")
        return f"missing columns: {missing}" if missing else "required columns present"
    return f"observed {short(result.get('observed_value'))}"


def _abbreviated(config: dict) -> dict:
    """The expectation config with long value lists summarised (first, last, count)."""
    kwargs = config.get("kwargs") or {}
    long = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) > _MAX_STORED_VALUES}
    if not long:
        return config
    short_ = {k: f"{len(v)} values: {v[0]} … {v[-1]}" for k, v in long.items()}
    return {**config, "kwargs": {**kwargs, **short_}}


def split(
    gx_json: dict, suite: Suite, symbol: str, run: Run, acknowledged: Acks, n_rows: int
) -> tuple[dict, list[str], list[str], list[str], dict]:
    """One symbol's view of a (possibly multi-symbol) GX result.

    Row-level expectations keep only this symbol's unexpected rows and are re-judged on them;
    table-level ones (schema, row count) are taken as they are. Returns the GX view, the
    critical, warned and acknowledged rules, and the report rows, details and sessions.
    """
    severities = suite.severities
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
                "unexpected_list": [row_value(r) for r in mine],
                "unexpected_index_list": mine,
                "unexpected_index_column_names": list(INDEX_COLUMNS),
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
                "severity": severities.get(rule, CRITICAL),
                "acknowledged": False,  # set below, once every row of the rule is known
                "success": success,
                "expectation": item["expectation_config"].get("type"),
                "column": (item["expectation_config"].get("kwargs") or {}).get("column"),
                "observed": _observed(result, exception, success, kind),
            }
        )
    order = list(severities)
    rows_out.sort(key=lambda r: order.index(r["rule"]) if r["rule"] in order else len(order))
    failed = sorted(failed_rules, key=lambda r: order.index(r) if r in order else len(order))
    d_iso = run.trade_date.isoformat()
    acked = [r for r in failed if acknowledged.covers(r, failed_rules[r], d_iso)]
    critical = [r for r in failed if severities.get(r) == CRITICAL and r not in acked]
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
    messages = suite.messages
    details = {
        r: errored.get(r) or (messages[r](failed_rules[r], run) if failed_rules[r] else "")
        for r in failed
    }
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


def gate_result(
    suite: Suite,
    symbol: str,
    run: Run,
    gx_json: dict,
    acknowledged: Acks,
    *,
    not_ready: dict[str, str] | None = None,
    batch_size: int = 1,
    n_rows: int = 0,
) -> GateResult:
    """The symbol's :class:`GateResult` from the batch's (strict JSON) GX result."""
    view, critical, warned, acked, extra = split(gx_json, suite, symbol, run, acknowledged, n_rows)
    # gx_json is strict JSON already (converted once per batch, not once per symbol), and
    # split adds only strings, ints and finite floats.
    result = {
        "gx": view,
        "expectations": extra["rows"],
        "details": extra["details"],
        "critical_sessions": extra["critical_sessions"],
        "acknowledged_sessions": acknowledged.as_json(),
        "suite_name": suite.name,
        "suite_version": suite.version,
        "symbol": symbol,
        "trade_date": run.trade_date.isoformat(),
        "batch_symbols": batch_size,
        "critical_failure_count": len(critical),
        "warning_count": len(warned),
        "not_ready": dict(not_ready or {}),
    }
    return verdict(suite, symbol, run, critical, warned, acked, result)


def verdict(
    suite: Suite,
    symbol: str,
    run: Run,
    critical: Iterable[str],
    warnings: Iterable[str],
    acknowledged: Iterable[str],
    result: dict,
    **flags: Any,
) -> GateResult:
    """``suite``'s :class:`GateResult` for ``symbol`` on ``run``'s session: failed when any
    rule is ``critical``; ``result`` is the stored JSON (its ``not_ready`` included)."""
    critical = tuple(critical)
    return GateResult(
        gate=suite.gate,
        symbol=symbol,
        trade_date=run.trade_date,
        suite_name=suite.name,
        suite_version=suite.version,
        success=not critical,
        critical_failures=critical,
        warnings=tuple(warnings),
        acknowledged=tuple(acknowledged),
        not_ready=dict(result.get("not_ready") or {}),
        result=result,
        **flags,
    )
