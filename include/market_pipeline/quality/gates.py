"""The two gates' entry points, and :func:`run_suite`, the flow they share.

The ``*_many`` functions validate a whole universe in one GX run over the concatenated frames
(a ``symbol`` column identifies rows) and split the result per symbol; the single-symbol
functions are the same path with one symbol. A malformed frame (missing columns, non-numeric
dtypes, non-``date`` dates, empty) is validated on its own, so its failure stays its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import pandas as pd

from market_pipeline.quality import engine as _engine
from market_pipeline.quality.frames import DEFAULT_MAX_MOVE, Run, Stack, as_date, validation_frame
from market_pipeline.quality.results import (
    Acks,
    GateResult,
    check_acks,
    gate_result,
    groups,
    strict_json,
)
from market_pipeline.quality.rules import BARS, INDICATORS, Suite

_NO_ACKS = Acks()


def run_suite(
    suite: Suite,
    frames: Mapping[str, pd.DataFrame],
    run: Run,
    *,
    acknowledged: Mapping[str, Acks] | None = None,
    engine: _engine.Engine | None = None,
) -> dict[str, GateResult]:
    """Validate every symbol's frame with ``suite`` (on ``engine``, else the process's
    default); results keyed by symbol, in the order of ``frames``."""
    engine = engine or _engine.default()
    acknowledged = acknowledged or {}
    params = suite.parameters(run)
    out: dict[str, GateResult] = {}
    for group in groups(frames, suite.required):
        stack = Stack({s: frames[s] for s in group}, run)
        vframe = validation_frame(stack, suite.rules)
        gx_json = strict_json(engine.validate(suite.name, vframe, params))
        ready = suite.not_ready(stack) if suite.not_ready else {}
        counts = vframe["symbol"].value_counts()
        for s in group:
            out[s] = gate_result(
                suite,
                s,
                run,
                gx_json,
                acknowledged.get(s, _NO_ACKS),
                not_ready=ready.get(s),
                batch_size=len(group),
                n_rows=int(counts.get(s, 0)),
            )
    return {s: out[s] for s in frames}


def _per_symbol(value: Any, symbol: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(symbol, ())
    return value


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
    trade_date = as_date(trade_date)
    engine = _engine.default()
    acks = {s: check_acks(_per_symbol(acknowledged, s), BARS.severities) for s in frames}
    explained = {s: {as_date(d) for d in _per_symbol(explained_dates, s)} for s in frames}
    run = Run(trade_date, exchange, frames, max_move=abs(max_move), explained=explained)
    return run_suite(BARS, frames, run, acknowledged=acks, engine=engine)


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
    trade_date = as_date(trade_date)
    engine = _engine.default()
    run = Run(trade_date, exchange, frames, history_sessions=history_sessions)
    return run_suite(INDICATORS, frames, run, engine=engine)


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
