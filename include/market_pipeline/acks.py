"""Acknowledgements: an operator marks one failed gate rule, for one symbol and session, as true.

A gate that stops a symbol on a real event (AAPL fell 51.9 % on 2000-09-29) is right to stop
it; an operator who has checked the event records that in ``acknowledgements``::

    recovery ack AAPL 2000-09-29 --rule max_close_move --reason "profit warning, -51.9 %"
    recovery acks [--all] [--symbol AAPL]
    recovery revoke AAPL 2000-09-29 --rule max_close_move

On the next attempt the raw-bar gate reads the active acknowledgements for the sessions in its
window (:func:`active_rules`) and reports that rule for that symbol and session as a warning
(``validation_reports.acknowledged``). Nothing else is waived: another rule, another session or
another symbol still fails. Rows are never deleted; a revoke stamps ``revoked_at``.

``add_subcommands(subparsers)`` adds the three commands to a CLI (``market_pipeline.recovery``
calls it); ``python -m market_pipeline.acks ...`` runs them on their own.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime

from psycopg2 import sql

from market_pipeline import calendar
from market_pipeline.config import SCHEMA, SYMBOL_PATTERN
from market_pipeline.errors import ConfigurationError
from market_pipeline.store.sql import table

GATES = ("bars", "indicators")


@dataclass(frozen=True)
class Acknowledgement:
    """One row of ``acknowledgements``."""

    id: int
    gate: str
    symbol: str
    trade_date: date
    rule: str
    reason: str
    acknowledged_by: str
    acknowledged_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


_COLUMNS = (
    "id",
    "gate",
    "symbol",
    "trade_date",
    "rule",
    "reason",
    "acknowledged_by",
    "acknowledged_at",
    "revoked_at",
    "revoked_by",
)


def _table(schema: str) -> sql.Identifier:
    return table("acknowledgements", schema)


_SELECT = sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS)


def current_user() -> str:
    """Who is acting: ``$USER``, else the login name, else ``unknown``."""
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "unknown"


def _rules(gate: str) -> dict[str, str]:
    from market_pipeline import quality

    if gate == "bars":
        return quality.BAR_RULES
    if gate == "indicators":
        return quality.INDICATOR_RULES
    raise ConfigurationError(f"expected a gate in {GATES}, found {gate!r}")


def _check(symbol: str, session: date, rule: str, gate: str, exchange: str) -> None:
    if not SYMBOL_PATTERN.match(symbol):
        raise ConfigurationError(
            f"expected a ticker matching {SYMBOL_PATTERN.pattern}, found {symbol!r}"
        )
    rules = _rules(gate)
    if rule not in rules:
        raise ConfigurationError(
            f"expected a {gate} gate rule, one of {sorted(rules)}; found {rule!r}"
        )
    if not calendar.is_session(session, exchange):
        raise ConfigurationError(f"expected an {exchange} session, found {session} (not one)")


def acknowledge(
    conn,
    symbol: str,
    session: date,
    rule: str,
    reason: str,
    *,
    by: str | None = None,
    gate: str = "bars",
    exchange: str = "XNYS",
    schema: str = SCHEMA,
) -> tuple[Acknowledgement, bool]:
    """Record an acknowledgement; returns it and whether it is new.

    Acknowledging a rule that is already actively acknowledged for that symbol and session
    changes nothing and returns the existing row (``False``).
    """
    _check(symbol, session, rule, gate, exchange)
    if not reason or not reason.strip():
        raise ConfigurationError("expected a reason (why the failure is a true event), found none")
    acks_table = _table(schema)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """INSERT INTO {} (gate, symbol, trade_date, rule, reason, acknowledged_by)
                   VALUES (%s, %s, %s, %s, %s, %s)
                   ON CONFLICT (gate, symbol, trade_date, rule) WHERE revoked_at IS NULL
                   DO NOTHING RETURNING {}"""
            ).format(acks_table, _SELECT),
            (gate, symbol, session, rule, reason.strip(), by or current_user()),
        )
        row = cur.fetchone()
        if row is not None:
            return Acknowledgement(*row), True
        cur.execute(
            sql.SQL(
                """SELECT {} FROM {} WHERE gate = %s AND symbol = %s
                   AND trade_date = %s AND rule = %s AND revoked_at IS NULL"""
            ).format(_SELECT, acks_table),
            (gate, symbol, session, rule),
        )
        return Acknowledgement(*cur.fetchone()), False


def revoke(
    conn,
    symbol: str,
    session: date,
    rule: str,
    *,
    by: str | None = None,
    gate: str = "bars",
    schema: str = SCHEMA,
) -> int:
    """Revoke the active acknowledgement; returns rows revoked (raises when there is none)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """UPDATE {} SET revoked_at = now(), revoked_by = %s
                   WHERE gate = %s AND symbol = %s AND trade_date = %s AND rule = %s
                     AND revoked_at IS NULL"""
            ).format(_table(schema)),
            (by or current_user(), gate, symbol, session, rule),
        )
        count = cur.rowcount
    if count == 0:
        raise LookupError(
            f"expected an active acknowledgement of {gate}/{rule} for {symbol} on {session}, "
            "found none"
        )
    return count


def list_acks(
    conn,
    *,
    include_revoked: bool = False,
    symbol: str | None = None,
    schema: str = SCHEMA,
) -> list[Acknowledgement]:
    """Acknowledgements, newest session first (only active ones unless ``include_revoked``)."""
    where, params = [], []
    if not include_revoked:
        where.append(sql.SQL("revoked_at IS NULL"))
    if symbol:
        where.append(sql.SQL("symbol = %s"))
        params.append(symbol)
    clause = sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} {} ORDER BY trade_date DESC, symbol, rule, id").format(
                _SELECT, _table(schema), clause
            ),
            params,
        )
        return [Acknowledgement(*row) for row in cur.fetchall()]


def active_rules(
    conn,
    symbol: str,
    start: date,
    end: date,
    *,
    gate: str = "bars",
    schema: str = SCHEMA,
) -> dict[date, set[str]]:
    """``{session: {rule, ...}}`` actively acknowledged for ``symbol`` in [start, end]."""
    out = active_rules_many(conn, [symbol], start, end, gate=gate, schema=schema)
    return out.get(symbol, {})


def active_rules_many(
    conn,
    symbols: Sequence[str],
    start: date | None = None,
    end: date | None = None,
    *,
    gate: str = "bars",
    schema: str = SCHEMA,
) -> dict[str, dict[date, set[str]]]:
    """``{symbol: {session: {rule, ...}}}`` for many symbols (None bounds: any session)."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """SELECT symbol, trade_date, rule FROM {}
                   WHERE revoked_at IS NULL AND gate = %s AND symbol = ANY(%s)
                     AND (%s::date IS NULL OR trade_date >= %s::date)
                     AND (%s::date IS NULL OR trade_date <= %s::date)"""
            ).format(_table(schema)),
            (gate, list(symbols), start, start, end, end),
        )
        rows = cur.fetchall()
    out: dict[str, dict[date, set[str]]] = {}
    for symbol, day, rule in rows:
        out.setdefault(symbol, {}).setdefault(day, set()).add(rule)
    return out


# --------------------------------------------------------------------------- CLI


def _connect(args):
    from market_pipeline import migrate, store
    from market_pipeline.connections import db_dsn

    conn = store.connect(getattr(args, "dsn", None) or db_dsn())
    migrate.apply(conn, _schema(args))  # the table may be newer than the deployment
    return conn


def _schema(args) -> str:
    return getattr(args, "schema", None) or SCHEMA


def _by_gate_schema(args) -> dict:
    return {"by": args.by, "gate": args.gate, "schema": _schema(args)}


def _format(a: Acknowledgement) -> str:
    state = "active" if a.active else f"revoked {a.revoked_at:%Y-%m-%d %H:%M} by {a.revoked_by}"
    return (
        f"{a.symbol:<6} {a.trade_date}  {a.gate}/{a.rule:<22} by {a.acknowledged_by} "
        f"at {a.acknowledged_at:%Y-%m-%d %H:%M}  [{state}]  {a.reason}"
    )


def _cmd_ack(args) -> int:
    with closing(_connect(args)) as conn:
        ack, created = acknowledge(
            conn, args.symbol, args.session, args.rule, args.reason, **_by_gate_schema(args)
        )
    print(("acknowledged: " if created else "already acknowledged: ") + _format(ack))
    print("next: clear the symbol's failed validate_bars instance (with Downstream) or replay it")
    return 0


def _cmd_list(args) -> int:
    with closing(_connect(args)) as conn:
        rows = list_acks(conn, include_revoked=args.all, symbol=args.symbol, schema=_schema(args))
    for a in rows:
        print(_format(a))
    if not rows:
        print("no acknowledgements" + ("" if args.all else " (active; --all for revoked)"))
    return 0


def _cmd_revoke(args) -> int:
    try:
        with closing(_connect(args)) as conn:
            revoke(conn, args.symbol, args.session, args.rule, **_by_gate_schema(args))
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {args.gate}/{args.rule} for {args.symbol} on {args.session}")
    return 0


def _guarded(handler):
    """A handler that prints a refused ack (unknown rule, not a session, ...) and returns 2."""

    def run(args) -> int:
        try:
            return handler(args)
        except ConfigurationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a parent parser's --dsn/--schema value is not overwritten by these defaults.
    parser.add_argument(
        "--dsn", default=argparse.SUPPRESS, help="libpq URI (default: from AIRFLOW_CONN_MARKET_DB)"
    )
    parser.add_argument(
        "--schema", default=argparse.SUPPRESS, help=f"pipeline schema (default: {SCHEMA})"
    )


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("symbol")
    parser.add_argument("session", type=date.fromisoformat, help="YYYY-MM-DD")
    parser.add_argument("--rule", required=True, help="gate rule name, e.g. max_close_move")
    parser.add_argument("--gate", default="bars", choices=GATES)
    parser.add_argument("--by", default=None, help="who (default: $USER)")
    _common(parser)


def add_subcommands(subparsers) -> None:
    """Add ``ack``, ``acks`` and ``revoke`` to an argparse subparsers object.

    Each sets ``func``: call ``args.func(args)``, which returns the exit code.
    """
    ack = subparsers.add_parser("ack", help="acknowledge a failed gate rule as a true event")
    _target(ack)
    ack.add_argument("--reason", required=True, help="why the failure is a true event")
    ack.set_defaults(func=_guarded(_cmd_ack))

    lst = subparsers.add_parser("acks", help="list acknowledgements")
    lst.add_argument("--all", action="store_true", help="include revoked ones")
    lst.add_argument("--symbol", default=None)
    _common(lst)
    lst.set_defaults(func=_guarded(_cmd_list))

    rev = subparsers.add_parser("revoke", help="revoke an acknowledgement")
    _target(rev)
    rev.set_defaults(func=_guarded(_cmd_revoke))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Acknowledge gate failures that are true events.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
