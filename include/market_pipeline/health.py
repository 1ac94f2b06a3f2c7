"""Read-only views of a session's health: what the market UI plugin and its metrics show.

Pure reads (no Airflow import, no writes): the symbols × stages grid of one session from the
tables and, when the caller knows them, the task-instance states of its run; the DLQ rows with
the one command that acts on each; the acknowledgements the gates applied; the stored GX
verdicts as :class:`~market_pipeline.quality.GateResult` objects (so ``report.render_html``
renders them from Postgres, on any machine); the served Redis version and its age.

Every statement names its tables through :func:`market_pipeline.store.sql.table`; every value
travels as a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from psycopg2 import sql

from market_pipeline import store
from market_pipeline.config import CACHE_PREFIX, SCHEMA, SYMBOL_PATTERN
from market_pipeline.run_report import STAGES, STATE_LABEL, Grid
from market_pipeline.stages.states import GATES, state_from_tables
from market_pipeline.store.sql import fetch, records, table

#: The per-symbol stages in chain order (task ids inside the ``per_symbol`` group).
STAGE_IDS = tuple(stage for stage, _ in STAGES)
GROUP_ID = "per_symbol"
#: Bounds of the read-only scores API.
MAX_TOP_N = 500

# Task-instance state → the cell a person reads (the run report's vocabulary); an instance
# that has not run is "not run" here, where the health page shows runs still going.
_STATE_LABEL = {**STATE_LABEL, "none": "not run"}
#: Every cell value the grid can hold, worst first (metrics label values).
CELL_STATES = (
    "stopped",
    "not delivered",
    "upstream",
    "waiting",
    "not run",
    "warned",
    "passed",
    "skipped",
    "—",
)


# --------------------------------------------------------------------------- task states


def symbol_states(
    chunks: Sequence[Sequence[str]],
    ti_states: Mapping[tuple[str, int], str | None],
    open_rows: Sequence[Mapping[str, Any]] = (),
) -> dict[str, dict[str, str]]:
    """``{symbol: {stage: task-instance state}}`` of one run.

    ``chunks`` is the ``universe`` task's output (map index *i* carries ``chunks[i]``),
    ``ti_states`` maps ``(stage, map_index)`` to the instance's state (``None`` when it has not
    run). A symbol takes its chunk's states; a symbol dropped inside a chunk that went on (an
    open DLQ row of the run for that stage) is ``failed`` there and ``upstream_failed`` after.
    """
    out: dict[str, dict[str, str]] = {}
    for index, chunk in enumerate(chunks):
        for symbol in chunk:
            out[symbol] = {
                stage: str(ti_states.get((stage, index)) or "none") for stage in STAGE_IDS
            }
    for row in open_rows:
        symbol, stage = row.get("symbol"), row.get("stage")
        if symbol not in out or stage not in STAGE_IDS:
            continue
        if out[symbol][stage] != "success":
            continue  # the instance itself failed (or has not finished): its state says so
        out[symbol][stage] = "failed"
        for later in STAGE_IDS[STAGE_IDS.index(stage) + 1 :]:
            out[symbol][later] = "upstream_failed"
    return out


def map_indexes(chunks: Sequence[Sequence[str]]) -> dict[str, int]:
    """``{symbol: map index}``: what the Clear dialog and never-run instances show instead."""
    return {symbol: i for i, chunk in enumerate(chunks) for symbol in chunk}


def trade_date_of_run(
    interval_start: datetime | None,
    interval_end: datetime | None,
    logical_date: datetime | None,
    run_after: datetime | None,
    exchange: str = "XNYS",
) -> date | None:
    """The session a DAG run stands for, as its tasks compute it (``calendar``)."""
    from market_pipeline import calendar

    if interval_start is not None and interval_end is not None:
        return calendar.session_for_interval(interval_start, interval_end, exchange)
    moment = logical_date or run_after
    if moment is None:
        return None
    return calendar.session_on_or_before(calendar.calendar_date(moment, exchange), exchange)


# --------------------------------------------------------------------------- one session


@dataclass
class SessionHealth(Grid):
    """One session as the health page shows it."""

    map_index: dict[str, int]
    open_dlq: list[dict]
    resolved_dlq: list[dict]
    verdicts: dict[tuple[str, str], dict]
    acknowledged: list[dict]
    scored: int
    run_id: str | None = None
    from_task_states: bool = False
    commands: dict[int, list[str]] = field(default_factory=dict)

    def counts(self, stage: str) -> dict[str, int]:
        """How many symbols are in each cell state at ``stage``."""
        out: dict[str, int] = {}
        for symbol in self.symbols:
            value = self.cells[symbol][stage]
            out[value] = out.get(value, 0) + 1
        return out

    def failed_symbols(self) -> list[str]:
        """Symbols with a stopped (or not delivered) cell, sorted."""
        bad = {"stopped", "not delivered"}
        return [s for s in self.symbols if bad & set(self.cells[s].values())]


def session_health(
    conn,
    trade_date: date,
    *,
    schema: str = SCHEMA,
    chunks: Sequence[Sequence[str]] | None = None,
    ti_states: Mapping[tuple[str, int], str | None] | None = None,
    run_id: str | None = None,
) -> SessionHealth:
    """Gather one session's grid, DLQ rows, verdicts and acknowledgements.

    With ``chunks`` and ``ti_states`` (what Airflow knows about the run) a cell is the task
    instance's state; without them it is derived from the tables alone (a verdict, a DLQ row,
    a row in the stage's output table).
    """
    day = trade_date
    if chunks is None:
        symbols = store.active_symbols(conn, schema)
    else:
        symbols = [s for chunk in chunks for s in chunk]
    verdicts = store.verdicts_on(conn, day, schema)
    dlq = store.dlq_on(conn, day, schema)
    present = {
        name: store.symbols_on(conn, name, day, schema)
        for name in ("raw_bars", "clean_bars", "indicators", "signals", "scores")
    }
    acknowledged = _acknowledgements_applied(conn, verdicts, day, schema)

    open_rows = [r for r in dlq if r["resolved_at"] is None]
    by_stage = {(r["symbol"], r["stage"]): r for r in open_rows}
    states = None
    if chunks is not None and ti_states is not None:
        run_rows = [r for r in open_rows if run_id is None or r["run_id"] == run_id]
        states = symbol_states(chunks, ti_states, run_rows)
    cells: dict[str, dict[str, str]] = {}
    notes: dict[str, dict[str, str]] = {}
    for symbol in symbols:
        row, note = {}, {}
        for stage in STAGE_IDS:
            if states is not None:
                state = states.get(symbol, {}).get(stage, "none")
                value = _STATE_LABEL.get(state, state)
            else:
                value = state_from_tables(symbol, stage, present, verdicts, by_stage) or "not run"
            failure = by_stage.get((symbol, stage))
            if value == "stopped" and failure and failure["kind"] == "not_delivered":
                value = "not delivered"
            verdict = verdicts.get((GATES[stage], symbol)) if stage in GATES else None
            if (
                value == "passed"
                and verdict
                and (verdict["warning_failures"] or verdict["acknowledged"])
            ):
                value = "warned"
                acked = verdict["acknowledged"] or []
                note[stage] = ", ".join(
                    f"{rule} (acknowledged)" if rule in acked else rule
                    for rule in verdict["failed_rules"]
                )
            elif value in ("stopped", "not delivered") and failure:
                note[stage] = f"{failure['kind']}: {failure['error_message'][:200]}"
            elif value == "stopped" and verdict and not verdict["success"]:
                note[stage] = ", ".join(_critical_rules(verdict))
            row[stage] = value
        cells[symbol], notes[symbol] = row, note
    health = SessionHealth(
        trade_date=day,
        symbols=symbols,
        cells=cells,
        notes=notes,
        map_index=map_indexes(chunks) if chunks is not None else {},
        open_dlq=open_rows,
        resolved_dlq=[r for r in dlq if r["resolved_at"] is not None],
        verdicts=verdicts,
        acknowledged=acknowledged,
        scored=len(present["scores"]),
        run_id=run_id,
        from_task_states=states is not None,
    )
    health.commands = {r["id"]: recovery_commands(r, verdicts) for r in open_rows}
    return health


def _critical_rules(verdict: Mapping[str, Any]) -> list[str]:
    # validation_reports.failed_rules holds the critical rules first, then the warnings.
    return list(verdict["failed_rules"][: verdict["critical_failures"]])


def _acknowledgements_applied(conn, verdicts, day: date, schema: str) -> list[dict]:
    wanted = [
        (gate, symbol, rule)
        for (gate, symbol), v in sorted(verdicts.items())
        for rule in v["acknowledged"] or []
    ]
    if not wanted:
        return []
    found = records(
        conn,
        sql.SQL(
            """SELECT DISTINCT ON (a.gate, a.symbol, a.rule) a.gate, a.symbol, a.rule,
                      a.trade_date, a.acknowledged_by, a.acknowledged_at, a.reason
               FROM unnest(%s::text[], %s::text[], %s::text[]) AS w(gate, symbol, rule)
               JOIN {} a ON a.gate = w.gate AND a.symbol = w.symbol AND a.rule = w.rule
               WHERE a.trade_date <= %s AND a.revoked_at IS NULL
               ORDER BY a.gate, a.symbol, a.rule, a.trade_date DESC"""
        ).format(table("acknowledgements", schema)),
        ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted], day),
    )
    by_key = {(r["gate"], r["symbol"], r["rule"]): r for r in found}
    return [
        {"gate": g, "symbol": s, "rule": rule, **by_key.get((g, s, rule), {})}
        for g, s, rule in wanted
    ]


def recovery_commands(row: Mapping[str, Any], verdicts: Mapping[tuple[str, str], Any]) -> list[str]:
    """The commands that act on one open DLQ row: replay it, or acknowledge a true event."""
    day = row["trade_date"].isoformat() if row.get("trade_date") else None
    symbol = row.get("symbol")
    replay = "market-recovery replay"
    if day:
        replay += f" --trade-date {day}"
    if symbol:
        replay += f" --symbol {symbol}"
    else:
        replay += f" --stage {row['stage']}"
    commands = [replay + " --dry-run", replay]
    gate = GATES.get(str(row.get("stage")))
    verdict = verdicts.get((gate, symbol)) if gate and symbol else None
    if row.get("kind") == "data_quality" and verdict is not None and day:
        for rule in _critical_rules(verdict):
            commands.append(
                f'market-recovery ack {symbol} {day} --gate {gate} --rule {rule} --reason "..."'
            )
    return commands


# --------------------------------------------------------------------------- sessions


def open_dlq_by_session(conn, trade_dates: Sequence[date], *, schema: str = SCHEMA) -> dict:
    """``{trade_date: open DLQ rows}`` for the given sessions (0 when none)."""
    found = dict(
        fetch(
            conn,
            sql.SQL(
                "SELECT trade_date, count(*) FROM {} WHERE resolved_at IS NULL "
                "AND trade_date = ANY(%s) GROUP BY trade_date"
            ).format(table("dlq", schema)),
            (list(trade_dates),),
        )
    )
    return {d: int(found.get(d, 0)) for d in trade_dates}


def open_dlq(conn, *, run_id: str, schema: str = SCHEMA) -> list[dict]:
    """The open DLQ rows of one run, oldest first."""
    return records(
        conn,
        sql.SQL(
            "SELECT id, run_id, task_id, map_index, symbol, stage, kind, failures FROM {} "
            "WHERE resolved_at IS NULL AND run_id = %s ORDER BY created_at, id"
        ).format(table("dlq", schema)),
        (run_id,),
    )


def open_dlq_by_kind(conn, *, schema: str = SCHEMA) -> dict[tuple[str, str], int]:
    """``{(kind, stage): open rows}`` over every session."""
    return {
        (kind, stage): rows
        for (kind, stage, status), (rows, _) in _dlq_by_kind(conn, schema).items()
        if status == "open"
    }


def failed_tries_by_kind(conn, *, schema: str = SCHEMA) -> dict[tuple[str, str, str], int]:
    """``{(kind, stage, status): failed tries}`` over every session, ``status`` being
    ``open`` (still failing) or ``resolved`` (a retry, a clear or a later run cured it).

    Each DLQ row counts the failed tries of its instance (``failures``; a retried try is
    recorded by the retry callback), so a failure that recovered stays counted.
    """
    return {key: tries for key, (_, tries) in _dlq_by_kind(conn, schema).items()}


def _dlq_by_kind(conn, schema: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """``{(kind, stage, status): (rows, failed tries)}`` of the whole DLQ, sorted by key:
    the one grouping both counts above read."""
    statement = sql.SQL(
        "SELECT kind, stage, CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END, "
        "count(*), sum(failures) FROM {} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    return {
        (kind, stage, status): (int(rows), int(tries))
        for kind, stage, status, rows, tries in fetch(conn, statement.format(table("dlq", schema)))
    }


def gate_failures_by_rule(
    conn, trade_date: date, *, schema: str = SCHEMA
) -> dict[tuple[str, str, str], int]:
    """``{(gate, rule, severity): symbols}`` of the session's stored verdicts.

    ``severity`` is ``critical`` (the gate stopped the symbol), ``warning`` or
    ``acknowledged`` (a critical rule an operator acknowledged as a true event).
    """
    rows = store.verdicts_on(conn, trade_date, schema).values()
    out: dict[tuple[str, str, str], int] = {}
    for r in rows:
        acked = set(r["acknowledged"] or [])
        for i, rule in enumerate(r["failed_rules"] or []):
            if rule in acked:
                severity = "acknowledged"
            else:
                severity = "critical" if i < r["critical_failures"] else "warning"
            key = (r["gate"], rule, severity)
            out[key] = out.get(key, 0) + 1
    return out


# --------------------------------------------------------------------------- GX verdicts


def gate_results(conn, gate: str, symbols: Sequence[str], trade_date: date, *, schema=SCHEMA):
    """The stored verdicts of ``gate`` for ``symbols`` on ``trade_date``, as ``GateResult``s,
    each with the run and try that produced it: ``[(GateResult, {run_id, try_number,
    created_at})]`` sorted by symbol. Symbols without a verdict are left out."""
    from market_pipeline.quality import GateResult

    rows = records(
        conn,
        sql.SQL(
            """SELECT gate, symbol, trade_date, suite_name, suite_version, success,
                          critical_failures, failed_rules, acknowledged, result, run_id,
                          try_number, created_at
                   FROM {} WHERE gate = %s AND trade_date = %s AND symbol = ANY(%s)
                   ORDER BY symbol"""
        ).format(table("validation_reports", schema)),
        (gate, trade_date, list(symbols)),
    )
    out = []
    for r in rows:
        rules = list(r["failed_rules"] or [])
        result = r["result"] or {}
        out.append(
            (
                GateResult(
                    gate=r["gate"],
                    symbol=r["symbol"],
                    trade_date=r["trade_date"],
                    suite_name=r["suite_name"],
                    suite_version=r["suite_version"],
                    success=r["success"],
                    critical_failures=tuple(rules[: r["critical_failures"]]),
                    warnings=tuple(rules[r["critical_failures"] :]),
                    acknowledged=tuple(r["acknowledged"] or ()),
                    not_ready=dict(result.get("not_ready") or {}),
                    result=result,
                ),
                {k: r[k] for k in ("run_id", "try_number", "created_at")},
            )
        )
    return out


# --------------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class Serving:
    """What the Redis pointer serves: the version, its session and how old that session is."""

    version: str
    trade_date: date
    run_id: str
    symbol_count: int
    session_close: datetime
    session_age_seconds: float


def serving(
    client, *, prefix: str = CACHE_PREFIX, exchange: str = "XNYS", now: datetime | None = None
) -> Serving | None:
    """The served version (None when nothing is published), read through the pointer."""
    from market_pipeline import cache, calendar

    manifest = cache.latest_manifest(client, prefix)
    if manifest is None:
        return None
    close = calendar.session_close(manifest.trade_date, exchange)
    now = now or datetime.now(UTC)
    return Serving(
        version=manifest.version,
        trade_date=manifest.trade_date,
        run_id=manifest.run_id,
        symbol_count=manifest.symbol_count,
        session_close=close,
        session_age_seconds=max((now - close).total_seconds(), 0.0),
    )


class InvalidRequest(ValueError):
    """A read-API argument outside what the API accepts (the message says what is expected)."""


def top_scores(client, n: int, *, prefix: str = CACHE_PREFIX) -> list[dict]:
    """The served day's ``n`` best scores, highest first (1 ≤ n ≤ ``MAX_TOP_N``)."""
    from market_pipeline import cache

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TOP_N:
        raise InvalidRequest(f"expected n between 1 and {MAX_TOP_N}, found {n!r}")
    return [
        {"rank": i + 1, "symbol": symbol, "score": score}
        for i, (symbol, score) in enumerate(cache.latest_scores(client, n, prefix))
    ]


def snapshot(client, symbol: str, *, prefix: str = CACHE_PREFIX) -> dict | None:
    """The served day's snapshot of ``symbol`` (None when the day has none)."""
    from market_pipeline import cache

    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise InvalidRequest(
            f"expected a ticker matching {SYMBOL_PATTERN.pattern}, found {symbol!r}"
        )
    return cache.symbol_snapshot(client, symbol, prefix)
