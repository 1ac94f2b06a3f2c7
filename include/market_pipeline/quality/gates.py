"""The two gates' entry points, and :func:`run_suite`, the flow they share.

The ``*_many`` functions validate a whole universe in one GX run over the concatenated frames
(a ``symbol`` column identifies rows) and split the result per symbol; the single-symbol
functions are the same path with one symbol. A malformed frame (missing columns, non-numeric
dtypes, non-``date`` dates, empty) is validated on its own, so its failure stays its own.

Reuse: given ``reuse`` (a lookup of stored verdicts, ``store.verdict_lookup``), a symbol
whose :func:`input_hash` (its checked rows, acknowledgements and the gate's parameters) and
suite version equal its stored verdict's keeps that verdict and is not validated again:
a cleared task, a retry or a rerun of an unchanged session costs no GX run. :data:`COUNTS`
counts, per gate, the symbols validated and reused in this process.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from typing import Any

import numpy as np
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
    verdict,
)
from market_pipeline.quality.rules import BARS, INDICATORS, Suite

_NO_ACKS = Acks()

#: ``lookup(gate, trade_date, symbols) -> {symbol: stored verdict}``; a stored verdict has
#: ``input_hash``, ``suite_name``, ``suite_version``, ``success``, ``critical_failures``,
#: ``warnings``, ``acknowledged`` and ``result`` (``store.StoredVerdict``).
Lookup = Callable[[str, date, Sequence[str]], Mapping[str, Any]]

#: Symbols per (gate, "validated" | "reused") in this process: GX runs saved by reuse.
COUNTS: Counter = Counter()


def input_hash(suite: Suite, symbol: str, frame: pd.DataFrame, run: Run, acks: Acks) -> str:
    """SHA-256 of what the gate judges for ``symbol``: the frame's columns, dtypes and
    values, the acknowledgements and the parameters of its verdict (session, exchange, move
    bound, explained dates, history). The suite version is compared on its own."""
    history = run.history_sessions
    if isinstance(history, Mapping):
        history = history.get(symbol)
    meta = {
        "suite": suite.name,
        "symbol": symbol,
        "trade_date": run.trade_date.isoformat(),
        "exchange": run.exchange,
        "max_move": run.max_move,
        "explained": sorted(d.isoformat() for d in run.explained.get(symbol, ())),
        "history_sessions": history,
        "acks": acks.as_json(),
        "columns": [str(c) for c in frame.columns.tolist()],
        "dtypes": [str(t) for t in frame.dtypes.tolist()],
        "rows": len(frame),
    }
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    # One conversion of the whole frame (a lookup per column costs more than the hashing),
    # then the bytes of the float and integer columns (exact, NaN by its bit pattern) and
    # the repr of the others (dates, text).
    values = frame.to_numpy(dtype=object)
    kinds = [t.kind for t in frame.dtypes.tolist()]
    for group, as_type in (("f", np.float64), ("iub", np.int64)):
        where = [i for i, k in enumerate(kinds) if k in group]
        if where:
            digest.update(np.ascontiguousarray(values[:, where].astype(as_type)).tobytes())
    rest = [i for i, k in enumerate(kinds) if k not in "fiub"]
    if rest:
        digest.update(repr(values[:, rest].tolist()).encode())
    return digest.hexdigest()


def _reusable(stored: Any, suite: Suite, digest: str) -> bool:
    return (
        stored.input_hash == digest
        and stored.suite_name == suite.name
        and stored.suite_version == suite.version
    )


def _reused(suite: Suite, symbol: str, run: Run, stored: Any, digest: str) -> GateResult:
    """The stored verdict as this call's result (flagged ``reused``)."""
    return verdict(
        suite,
        symbol,
        run,
        stored.critical_failures,
        stored.warnings,
        stored.acknowledged,
        dict(stored.result),
        input_hash=digest,
        reused=True,
    )


def run_suite(
    suite: Suite,
    frames: Mapping[str, pd.DataFrame],
    run: Run,
    *,
    acknowledged: Mapping[str, Acks] | None = None,
    engine: _engine.Engine | None = None,
    reuse: Lookup | None = None,
) -> dict[str, GateResult]:
    """Validate every symbol's frame with ``suite`` (on ``engine``, else the process's
    default); results keyed by symbol, in the order of ``frames``.

    With ``reuse``, a symbol whose stored verdict has its input hash and suite version is
    given that verdict (``reused``) and left out of the GX run; every result carries its
    ``input_hash`` for the verdict to be stored with.
    """
    acknowledged = acknowledged or {}
    out: dict[str, GateResult] = {}
    hashes: dict[str, str] = {}
    if reuse is not None:
        hashes = {
            s: input_hash(suite, s, f, run, acknowledged.get(s, _NO_ACKS))
            for s, f in frames.items()
        }
        for s, stored in reuse(suite.gate, run.trade_date, list(frames)).items():
            if s in hashes and _reusable(stored, suite, hashes[s]):
                out[s] = _reused(suite, s, run, stored, hashes[s])
    todo = {s: f for s, f in frames.items() if s not in out}
    COUNTS[suite.gate, "reused"] += len(out)
    COUNTS[suite.gate, "validated"] += len(todo)
    if todo:
        engine = engine or _engine.default()
        if len(todo) < len(frames):
            run = replace(run, frames=todo)
        params = suite.parameters(run)
        for group in groups(todo, suite.required):
            stack = Stack({s: todo[s] for s in group}, run)
            vframe = validation_frame(stack, suite.rules)
            gx_json = strict_json(engine.validate(suite.name, vframe, params))
            ready = suite.not_ready(stack) if suite.not_ready else {}
            counts = vframe["symbol"].value_counts()
            for s in group:
                result = gate_result(
                    suite,
                    s,
                    run,
                    gx_json,
                    acknowledged.get(s, _NO_ACKS),
                    not_ready=ready.get(s),
                    batch_size=len(group),
                    n_rows=int(counts.get(s, 0)),
                )
                out[s] = replace(result, input_hash=hashes.get(s))
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
    reuse: Lookup | None = None,
) -> dict[str, GateResult]:
    """Run the raw-bar gate for many symbols in one GX run; results keyed by symbol.

    ``acknowledged`` and ``explained_dates`` are either one collection for every symbol or a
    mapping symbol -> collection. A symbol's acknowledgements are rule names (waived for every
    session) or a mapping session -> rule names (waived only where every failing row of the
    rule is on a session that acknowledges it), as :func:`validate_bars` describes.
    ``reuse``: stored verdicts to reuse for an unchanged input (:func:`run_suite`).
    """
    trade_date = as_date(trade_date)
    acks = {s: check_acks(_per_symbol(acknowledged, s), BARS.severities) for s in frames}
    explained = {s: {as_date(d) for d in _per_symbol(explained_dates, s)} for s in frames}
    run = Run(trade_date, exchange, frames, max_move=abs(max_move), explained=explained)
    return run_suite(BARS, frames, run, acknowledged=acks, reuse=reuse)


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
    reuse: Lookup | None = None,
) -> dict[str, GateResult]:
    """Run the indicator gate for many symbols in one GX run; results keyed by symbol.
    ``reuse``: stored verdicts to reuse for an unchanged input (:func:`run_suite`)."""
    trade_date = as_date(trade_date)
    run = Run(trade_date, exchange, frames, history_sessions=history_sessions)
    return run_suite(INDICATORS, frames, run, reuse=reuse)


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
