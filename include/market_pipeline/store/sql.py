"""The one way an SQL identifier reaches a statement.

Every statement names its tables through :func:`table` (schema-qualified
``psycopg2.sql.Identifier``); values always travel as parameters, never in the text.
"""

from __future__ import annotations

from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.errors import ConfigurationError


def schema_name(schema: str = SCHEMA) -> str:
    """``schema`` when it is a plain identifier (letters, digits, underscores), else an error."""
    if not schema or not schema.replace("_", "").isalnum() or schema[0].isdigit():
        raise ConfigurationError(
            f"expected a plain schema name (letters, digits, underscores), found {schema!r}"
        )
    return schema


def table(name: str, schema: str = SCHEMA) -> sql.Identifier:
    """``schema.name`` as a quoted identifier, for ``sql.SQL(...).format(...)``."""
    return sql.Identifier(schema_name(schema), name)


def schema(schema: str = SCHEMA) -> sql.Identifier:
    """The schema itself as a quoted identifier (``CREATE SCHEMA``, ``SET search_path``)."""
    return sql.Identifier(schema_name(schema))
