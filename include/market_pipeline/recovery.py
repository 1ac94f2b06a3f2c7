"""List open dead-letter items and replay them by clearing their task instances in Airflow.

    market-recovery list   [--trade-date D] [--stage S] [--kind K] [--symbol SYM ...] [--all]
    market-recovery replay [same filters] [--dry-run] [--api-url URL] [--from-chain-start]
    market-recovery rebuild-cache [--session D ...] [--cache-prefix P] [--ttl-days N]

``replay`` maps each open DLQ row to the task instance that failed — ``(run, task, map
index)``; a tail task (map index -1) by its task id — and asks the Airflow REST API
(``POST /api/v2/dags/{dag_id}/clearTaskInstances``, one call per run) to clear it with
everything downstream: the symbol's chain and the tail (quorum, scores, publish, verify,
health) run again and the DLQ rows resolve when the instances succeed. The Airflow CLI
cannot target one map index; the REST API can.

The rule is the operator's in the UI: clear the instance that failed. A failed per-symbol
instance is cleared with what follows it; a cleared ``validate_bars`` asks the source for its
window again before it judges, so a corrected delivery is picked up without going back to
``ingest_bars``. ``--from-chain-start`` clears the symbol's whole chain
(``per_symbol.ingest_bars``) instead. Instances are
cleared whatever their state (``only_failed`` false): the tail succeeded on the good symbols
and must run again to score the replayed ones. ``--dry-run`` asks the server what it would
clear (``dry_run`` is sent explicitly every time: the server's default is ``true``).

Auth: ``--api-url`` / ``MARKET_API_URL`` (default ``http://127.0.0.1:8080``), then
``MARKET_API_TOKEN`` (a bearer token), or ``MARKET_API_USER`` + ``MARKET_API_PASSWORD``
exchanged for one at ``POST /auth/token``. The DLQ is read from ``AIRFLOW_CONN_MARKET_DB``
(or ``--dsn``) in schema ``MARKET_SCHEMA`` (or ``--schema``).

``rebuild-cache`` publishes the serving copy again from Postgres (the truth) after Redis lost
it (a restart without persistence, a flush): every scored session of the last ``--ttl-days``
days, oldest first, or the ``--session`` days given; the pointer never moves back
(``docs/operations.md``, "Redis restart"). Redis comes from ``AIRFLOW_CONN_MARKET_CACHE``.

This module is part of the domain package: no Airflow import, only ``requests``.
If ``market_pipeline.acks`` is installed its ``ack``/``acks``/``revoke`` commands join this CLI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from market_pipeline.config import CACHE_PREFIX, DAG_ID, SCHEMA, VARIABLE_DEFAULTS
from market_pipeline.errors import ConfigurationError

GROUP_ID = "per_symbol"
CHAIN_START = f"{GROUP_ID}.ingest_bars"
DEFAULT_API_URL = "http://127.0.0.1:8080"
KINDS = ("transient", "source", "data_quality", "not_delivered", "code", "upstream", "killed")
_COLUMNS = (
    "id",
    "dag_id",
    "run_id",
    "trade_date",
    "task_id",
    "map_index",
    "symbol",
    "stage",
    "try_number",
    "kind",
    "error_class",
    "error_message",
    "failures",
    "created_at",
    "resolved_at",
    "resolved_by_run_id",
)


class RecoveryError(Exception):
    """The REST API refused a call, or the CLI is missing a setting."""


@dataclass(frozen=True)
class DlqFilter:
    """Which DLQ rows a command works on (``None`` matches everything)."""

    trade_date: date | None = None
    stage: str | None = None
    kind: str | None = None
    symbols: tuple[str, ...] = ()
    run_id: str | None = None
    dag_id: str | None = None
    include_resolved: bool = False


@dataclass(frozen=True)
class ClearRequest:
    """One ``clearTaskInstances`` call: the instances to clear in one DAG run."""

    dag_id: str
    run_id: str
    targets: tuple[str | tuple[str, int], ...]
    symbols: tuple[str, ...]
    #: ``(map_index, symbol)`` pairs: labels for instances that never ran (no rendered label).
    labels: tuple[tuple[int, str], ...] = ()

    def body(self, *, dry_run: bool, only_failed: bool = False) -> dict:
        """The request body; ``dry_run`` is always explicit (the server defaults to true)."""
        return {
            "dag_run_id": self.run_id,
            "task_ids": [list(t) if isinstance(t, tuple) else t for t in self.targets],
            "only_failed": only_failed,
            "include_downstream": True,
            "include_upstream": False,
            "reset_dag_runs": True,
            "dry_run": dry_run,
        }


# --------------------------------------------------------------------------- DLQ


def dlq_rows(conn, flt: DlqFilter, schema: str = SCHEMA) -> list[dict]:
    """DLQ rows matching ``flt`` (open ones unless ``include_resolved``), oldest first."""
    from psycopg2 import sql

    from market_pipeline.store.sql import table

    dlq = table("dlq", schema)  # checks the name before anything runs
    where, params = [], []
    if not flt.include_resolved:
        where.append(sql.SQL("resolved_at IS NULL"))
    equal = {
        "trade_date": flt.trade_date,
        "stage": flt.stage,
        "kind": flt.kind,
        "run_id": flt.run_id,
        "dag_id": flt.dag_id,
    }
    for column, value in equal.items():
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if flt.symbols:
        where.append(sql.SQL("symbol = ANY(%s)"))
        params.append(list(flt.symbols))
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS), dlq
    )
    if where:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    with conn.cursor() as cur:
        cur.execute(query + sql.SQL(" ORDER BY created_at, id"), params)
        return [dict(zip(_COLUMNS, row, strict=True)) for row in cur.fetchall()]


def plan(rows: Iterable[dict], *, from_chain_start: bool = False) -> list[ClearRequest]:
    """Group open DLQ rows into one clear request per (dag, run), targets sorted."""
    grouped: dict[tuple[str, str], tuple[set, set, set]] = {}
    for row in rows:
        if row.get("resolved_at") is not None:
            continue
        key = (row["dag_id"], row["run_id"])
        targets, symbols, labels = grouped.setdefault(key, (set(), set(), set()))
        index = int(row["map_index"])
        if index < 0:
            targets.add(row["task_id"])
        else:
            task = CHAIN_START if from_chain_start else row["task_id"]
            if not str(row["task_id"]).startswith(f"{GROUP_ID}."):
                task = row["task_id"]
            targets.add((task, index))
        if row.get("symbol"):
            symbols.add(row["symbol"])
            if index >= 0:
                labels.add((index, row["symbol"]))
    return [
        ClearRequest(
            dag_id=dag_id,
            run_id=run_id,
            targets=tuple(sorted(targets, key=_target_key)),
            symbols=tuple(sorted(symbols)),
            labels=tuple(sorted(labels)),
        )
        for (dag_id, run_id), (targets, symbols, labels) in sorted(grouped.items())
    ]


def _target_key(target) -> tuple[str, int]:
    return (target, -1) if isinstance(target, str) else target


# --------------------------------------------------------------------------- REST


class AirflowApi:
    """The few Airflow REST calls replay needs (bearer-token auth).

    :param url: base URL of the api-server, e.g. ``http://127.0.0.1:8080``.
    :param token: a bearer token; else ``user``/``password`` are exchanged for one.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self._token = token
        self._user, self._password = user, password

    @classmethod
    def from_env(cls, url: str | None = None) -> AirflowApi:
        """Settings from ``MARKET_API_URL``/``_TOKEN``/``_USER``/``_PASSWORD``."""
        token = os.environ.get("MARKET_API_TOKEN") or None
        user = os.environ.get("MARKET_API_USER") or None
        password = os.environ.get("MARKET_API_PASSWORD") or None
        if not token and not (user and password):
            raise RecoveryError(
                "no Airflow API credentials: expected MARKET_API_TOKEN, or MARKET_API_USER and "
                "MARKET_API_PASSWORD, in the environment"
            )
        base = url or os.environ.get("MARKET_API_URL") or DEFAULT_API_URL
        return cls(base, token=token, user=user, password=password)

    def _post(self, path: str, **kwargs):
        import requests

        try:
            return self.session.post(f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise RecoveryError(
                f"cannot reach the Airflow API at {self.url} (POST {path}): {exc}"
            ) from exc

    def token(self) -> str:
        if self._token is None:
            resp = self._post(
                "/auth/token", json={"username": self._user, "password": self._password}
            )
            if resp.status_code not in (200, 201):
                raise RecoveryError(
                    f"POST {self.url}/auth/token: expected 200/201, found {resp.status_code}: "
                    f"{resp.text[:500]}"
                )
            self._token = resp.json()["access_token"]
        return self._token

    def clear(self, request: ClearRequest, *, dry_run: bool, only_failed: bool = False) -> list:
        """Clear (or, with ``dry_run``, list) the instances; returns them as the API does."""
        path = f"/api/v2/dags/{request.dag_id}/clearTaskInstances"
        resp = self._post(
            path,
            json=request.body(dry_run=dry_run, only_failed=only_failed),
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        if resp.status_code != 200:
            raise RecoveryError(
                f"POST {path} (run {request.run_id}): expected 200, found {resp.status_code}: "
                f"{resp.text[:1000]}"
            )
        return resp.json().get("task_instances", [])


# --------------------------------------------------------------------------- output


def error_text(error_class: str | None, message: str | None) -> str:
    """``Class: message`` as a person reads a failure (``KeyError: -1``, not ``-1``); the
    message alone when it already starts with its class."""
    message = " ".join(str(message or "").split())
    if not error_class or message.startswith(error_class):
        return message
    return f"{error_class}: {message}" if message else error_class


def _short(message: str, width: int = 80) -> str:
    """The message cut to ``width``, its ending next action kept whole (it is what to do)."""
    from market_pipeline.errors import NEXT

    head, sep, action = message.rpartition(NEXT)
    if not sep:
        return message[:width]
    return (head if len(head) <= width else head[: width - 1] + "…") + sep + action


def format_rows(rows: Sequence[dict]) -> str:
    """A fixed-width table of DLQ rows."""
    if not rows:
        return "no DLQ rows match"
    head = ("trade_date", "symbol", "stage", "kind", "try", "run_id", "task", "status", "error")
    lines = [head]
    for r in rows:
        status = "open" if r.get("resolved_at") is None else "resolved"
        message = error_text(r.get("error_class"), r["error_message"])
        lines.append(
            (
                str(r["trade_date"] or "-"),
                r["symbol"] or "-",
                r["stage"],
                r["kind"],
                str(r["try_number"]),
                r["run_id"],
                f"{r['task_id']}[{r['map_index']}]",
                status,
                _short(message),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(col.ljust(w) for col, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )


def _instance_key(ti: dict) -> tuple[str, int]:
    index = ti.get("map_index")
    return (ti["task_id"], -1 if index is None else int(index))


def format_cleared(
    request: ClearRequest,
    instances: Sequence[dict],
    *,
    dry_run: bool,
    previous: Sequence[dict] | None = None,
) -> str:
    """What a clear did (or would do): one line per task instance, sorted, with the state it
    was in. A real clear answers with the instances already cleared (state None): their
    states before come from ``previous``, the dry run asked just before."""
    was = {_instance_key(ti): ti.get("state") for ti in previous or ()}
    verb = "would clear" if dry_run else "cleared"
    lines = [
        f"{request.dag_id} run {request.run_id}: {verb} {len(instances)} task instance(s)"
        f" for {', '.join(request.symbols) or 'the tail'}"
    ]
    known = dict(request.labels)
    for ti in sorted(instances, key=lambda t: (t["task_id"], t.get("map_index", -1))):
        index = ti.get("map_index", -1)
        label = ti.get("rendered_map_index") or known.get(index)
        where = f"[{index}{' ' + str(label) if label and str(label) != str(index) else ''}]"
        state = (
            was.get(_instance_key(ti), ti.get("state")) if previous is not None else ti.get("state")
        )
        lines.append(f"  {ti['task_id']}{where if index >= 0 else ''}  (was {state})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trade-date", type=date.fromisoformat, help="session, YYYY-MM-DD")
    parser.add_argument("--stage", help="e.g. ingest_bars, validate_bars, quorum_gate")
    parser.add_argument("--kind", choices=KINDS)
    parser.add_argument("--symbol", action="append", default=[], help="repeatable")
    parser.add_argument("--run-id", help="one DAG run")
    parser.add_argument("--dag-id", default=None, help=f"default: every DAG (usually {DAG_ID})")


def _filter_of(args) -> DlqFilter:
    return DlqFilter(
        trade_date=args.trade_date,
        stage=args.stage,
        kind=args.kind,
        symbols=tuple(s.upper() for s in args.symbol),
        run_id=args.run_id,
        dag_id=args.dag_id,
        include_resolved=getattr(args, "all", False),
    )


def _connect(args):
    from market_pipeline import store
    from market_pipeline.connections import db_dsn

    return store.connect(getattr(args, "dsn", None) or db_dsn())


def _cmd_list(args) -> int:
    conn = _connect(args)
    try:
        rows = dlq_rows(conn, _filter_of(args), schema=args.schema)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
    else:
        print(format_rows(rows))
    return 0


def _cmd_replay(args) -> int:
    conn = _connect(args)
    try:
        rows = dlq_rows(conn, _filter_of(args), schema=args.schema)
    finally:
        conn.close()
    requests_ = plan(rows, from_chain_start=args.from_chain_start)
    if not requests_:
        print("no open DLQ rows match: nothing to replay")
        return 0
    api = AirflowApi.from_env(args.api_url)
    for request in requests_:
        # The clear answers with the instances as they are after it (state None): a dry run
        # first tells what each was.
        before = api.clear(request, dry_run=True, only_failed=args.only_failed)
        if args.dry_run:
            print(format_cleared(request, before, dry_run=True))
            continue
        instances = api.clear(request, dry_run=False, only_failed=args.only_failed)
        print(format_cleared(request, instances, dry_run=False, previous=before))
    return 0


def _cmd_rebuild_cache(args) -> int:
    from market_pipeline import cache
    from market_pipeline.connections import redis_params
    from market_pipeline.stages.rebuild_cache import rebuild_cache
    from market_pipeline.stages.settings import Settings

    settings = Settings(
        schema=args.schema, cache_prefix=args.cache_prefix, cache_ttl_days=args.ttl_days
    )
    conn = _connect(args)
    client = cache.client_from_params(**redis_params())
    try:
        before = cache.served_problem(client, settings.cache_prefix)
        manifests = rebuild_cache(conn, client, settings, sessions=args.session or None)
    finally:
        conn.close()
        client.close()
    print(f"serving copy before the rebuild: {before or 'complete'}")
    if not manifests:
        print("no servable session in Postgres to publish: nothing rebuilt")
        return 1 if args.session else 0
    for m in manifests:
        where = "served" if m.pointer_moved else "stored (a later day is served)"
        print(f"{m.trade_date}  {m.symbol_count} symbols  version {m.version}  {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="market-recovery", description="List and replay market_daily's dead letters."
    )
    parser.add_argument("--dsn", default=None, help="libpq URI (default: AIRFLOW_CONN_MARKET_DB)")
    parser.add_argument("--schema", default=SCHEMA, help=f"pipeline schema (default: {SCHEMA})")
    sub = parser.add_subparsers(dest="command", required=True)

    lst = sub.add_parser("list", help="open DLQ items (with --all: resolved ones too)")
    _filters(lst)
    lst.add_argument("--all", action="store_true", help="include resolved rows")
    lst.add_argument("--json", action="store_true", help="JSON instead of a table")
    lst.set_defaults(func=_cmd_list)

    rep = sub.add_parser("replay", help="clear the failed task instances (and downstream)")
    _filters(rep)
    rep.add_argument("--dry-run", action="store_true", help="show what would be cleared")
    rep.add_argument(
        "--api-url", default=None, help=f"default: $MARKET_API_URL or {DEFAULT_API_URL}"
    )
    rep.add_argument(
        "--from-chain-start",
        action="store_true",
        help="clear the symbol's whole chain (from ingest_bars), not only the failed instance",
    )
    # The default since clearing the failed instance is enough; kept so scripts still run.
    rep.add_argument("--from-failed-stage", action="store_true", help=argparse.SUPPRESS)
    rep.add_argument(
        "--only-failed",
        action="store_true",
        help="clear only failed instances (the tail then does not rescore)",
    )
    rep.set_defaults(func=_cmd_replay)

    reb = sub.add_parser(
        "rebuild-cache",
        help="publish the serving copy again from Postgres (after Redis lost it)",
    )
    reb.add_argument(
        "--session",
        action="append",
        type=date.fromisoformat,
        default=[],
        help="a session to publish, YYYY-MM-DD (repeatable; default: every scored session "
        "of the last --ttl-days days)",
    )
    reb.add_argument(
        "--cache-prefix",
        default=CACHE_PREFIX,
        help=f"Redis key prefix (default: $MARKET_CACHE_PREFIX or {CACHE_PREFIX})",
    )
    reb.add_argument(
        "--ttl-days",
        type=int,
        default=int(VARIABLE_DEFAULTS["market_cache_ttl_days"]),
        help="days kept (the Variable market_cache_ttl_days; default "
        f"{VARIABLE_DEFAULTS['market_cache_ttl_days']})",
    )
    reb.set_defaults(func=_cmd_rebuild_cache)

    if importlib.util.find_spec("market_pipeline.acks") is not None:
        importlib.import_module("market_pipeline.acks").add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RecoveryError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
