"""The one way an SQL identifier reaches a statement.

Every statement is a ``psycopg2.sql.SQL(...).format(...)`` whose tables come from
:func:`table` (schema-qualified ``psycopg2.sql.Identifier``) and whose columns come from
:func:`columns`; values always travel as parameters, never in the text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.errors import ConfigurationError

# Lower case only: a quoted identifier keeps its case, so "Market" would be another schema
# than the unquoted Market (folded to market) a deployment may already have.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

SQL = sql.SQL
Composable = sql.Composable


def schema_name(schema: str = SCHEMA) -> str:
    """``schema`` when it is a plain lower-case identifier, else a ``ConfigurationError``."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            "expected a plain schema name (lower-case letters, digits, underscores, at most "
            f"63 characters, not starting with a digit), found {schema!r}"
        )
    return schema


def table(name: str, schema: str = SCHEMA) -> sql.Identifier:
    """``schema.name`` as a quoted identifier, for ``sql.SQL(...).format(...)``."""
    return sql.Identifier(schema_name(schema), name)


def schema(schema: str = SCHEMA) -> sql.Identifier:
    """The schema itself as a quoted identifier (``CREATE SCHEMA``, ``SET search_path``)."""
    return sql.Identifier(schema_name(schema))


def ident(name: str) -> sql.Identifier:
    """One unqualified identifier (a column, a temporary table)."""
    return sql.Identifier(name)


def columns(names: Iterable[str], prefix: str | None = None) -> sql.Composed:
    """``a, b, c`` (or ``p.a, p.b, p.c``) as quoted identifiers."""
    if prefix is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)


def fetch(conn, statement: sql.Composable, params: Sequence[Any] | None = None) -> list[tuple]:
    """Every row of one statement, on a cursor of its own."""
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def copy_out(
    cur,
    query: sql.Composable,
    columns: Sequence[str],
    params: Sequence | Mapping | None = None,
    *,
    text: Sequence[str] = ("symbol",),
) -> pd.DataFrame:
    """The rows of ``query`` through ``COPY … TO STDOUT`` (CSV), floats read back exactly.

    ``params`` are bound as :meth:`cursor.execute` binds them (COPY takes no server-side
    parameters; psycopg2 binds client-side in both). Columns in ``text`` stay strings: a
    symbol such as ``NA`` or ``NULL`` is a symbol, not a missing value.
    """
    statement = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)
    buf = io.StringIO()
    cur.copy_expert(cur.mogrify(statement, params) if params else statement, buf)
    buf.seek(0)
    if not buf.getvalue():
        return pd.DataFrame({c: [] for c in columns})
    return pd.read_csv(
        buf,
        header=None,
        names=list(columns),
        dtype={c: str for c in text if c in columns},
        keep_default_na=False,
        na_values=[""],  # NULL; an empty text value is quoted ("") and stays ""
        # pandas 3 parses floats exactly by default (tested: tests/integration/test_store.py)
    )


def records(
    conn, statement: sql.Composable, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every row of one statement as ``{column: value}``, on a cursor of its own."""
    with conn.cursor() as cur:
        cur.execute(statement, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def session_counts(
    conn,
    layer: str,
    symbols: Sequence[str],
    end,
    schema: str = SCHEMA,
    *,
    at_most: int | None = None,
) -> dict[str, int]:
    """How many sessions each symbol has in the table ``layer`` up to ``end`` (0 for none),
    in one round trip; with ``at_most``, counted no further than that (a count that reaches
    it means "at least"), so the cost does not grow with the history kept."""
    # A count per symbol (an index-only range scan each): `symbol = ANY(...) GROUP BY`
    # scanned the whole table, ~0.3 s per 157-symbol chunk at 5000 symbols x 620 sessions.
    found = dict(
        fetch(
            conn,
            sql.SQL(
                """SELECT w.symbol, (SELECT count(*) FROM (
                                         SELECT 1 FROM {} t
                                         WHERE t.symbol = w.symbol AND t.trade_date <= %s
                                         LIMIT %s) n)
                   FROM unnest(%s::text[]) AS w(symbol)"""
            ).format(table(layer, schema)),
            (end, at_most, list(symbols)),
        )
    )
    return {s: int(found.get(s, 0)) for s in symbols}
