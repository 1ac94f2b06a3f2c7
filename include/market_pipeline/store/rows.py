"""Frames in and out of statements: typed-array row sources, per-symbol splits, JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date

import pandas as pd
from psycopg2 import sql

from market_pipeline.store.sql import columns as column_list

#: The element types a typed-array row source carries, as their array types.
_ARRAY_TYPES = {
    "date": sql.SQL("date[]"),
    "float8": sql.SQL("float8[]"),
    "bigint": sql.SQL("bigint[]"),
    "text": sql.SQL("text[]"),
    "bool": sql.SQL("bool[]"),
}


def unnest(
    frame: pd.DataFrame, columns: Sequence[tuple[str, str]], alias: str = "u"
) -> tuple[sql.Composed, dict]:
    """``frame`` as one FROM item ``unnest(...) AS alias(col, ...)`` plus its parameters.

    Each column travels as one typed array parameter (``sqltype`` is a type name such as
    ``date`` or ``float8``), so a write is a single statement: no temporary table (catalog
    churn on every call) and no extra COPY round trip — a daily run writes a few rows per
    symbol, thousands of times. NaN becomes NULL.
    """
    exprs, params = [], {}
    for name, sqltype in columns:
        values = frame[name].tolist()
        params[f"c_{name}"] = [None if isinstance(v, float) and v != v else v for v in values]
        exprs.append(sql.SQL("{}::{}").format(sql.Placeholder(f"c_{name}"), _ARRAY_TYPES[sqltype]))
    item = sql.SQL("unnest({}) AS {}({})").format(
        sql.SQL(", ").join(exprs), sql.Identifier(alias), column_list(n for n, _ in columns)
    )
    return item, params


def group_by_symbol(rows: list[tuple], symbols: Sequence[str]) -> dict[str, list[tuple]]:
    """Rows ``(symbol, *values)`` as ``{symbol: [values, …]}`` in row order; every symbol
    of ``symbols`` is a key, with an empty list when it has no row."""
    grouped: dict[str, list[tuple]] = {s: [] for s in symbols}
    for row in rows:
        grouped[row[0]].append(row[1:])
    return grouped


def json_safe(value):
    """``value`` with NaN/inf as None, dates as ISO text and numpy scalars as Python ones."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return value


def result_json(result, *, sort_keys: bool = False) -> str:
    """A verdict or a signal's reasons as JSON for a ``jsonb`` column. What is strict JSON
    already (``quality`` builds its results so) is serialised as it is, a fraction of the
    cost of walking it; anything else (NaN, dates, numpy scalars) goes through
    :func:`json_safe`."""
    try:
        return json.dumps(result, allow_nan=False, sort_keys=sort_keys)
    except (TypeError, ValueError):
        return json.dumps(json_safe(result), sort_keys=sort_keys)
