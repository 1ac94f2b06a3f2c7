"""Structure: no module builds SQL text by pasting a name into it.

Every statement in ``include/`` and ``plugins/`` names its schema and tables through
``market_pipeline.store.sql`` (``psycopg2.sql.Identifier``) inside ``sql.SQL(...).format``;
values are parameters. The checker reads the source (AST) and flags the ways SQL text was
built by interpolation: an f-string, ``%``/``+`` or ``str.format`` on SQL text, a
``{schema}`` replaced by hand, ``sql.SQL`` of a computed string, and a hard-coded
schema-qualified table name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("include", "plugins")

_SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|JOIN|INTO|CREATE|DROP|ALTER|TRUNCATE|COPY|WHERE|"
    r"SCHEMA|TABLE)\b"
)
_QUALIFIED = re.compile(  # ``IS DISTINCT FROM a.x`` compares columns, names no table
    r"(?<!DISTINCT )\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+[a-z_][a-z0-9_]*\.[a-z_]"
)
#: ``sql.SQL`` of a computed string, where the string is SQL by construction.
ALLOWED_DYNAMIC_SQL = {
    # The migration files are SQL text; their {schema} placeholders become an Identifier.
    ("market_pipeline/migrate.py", "statement"),
}


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _fstring_text(node: ast.JoinedStr) -> str:
    return "".join(_text(v) or "{}" for v in node.values)


def _is_sql_call(func: ast.AST) -> bool:
    """``sql.SQL(...)``, ``psycopg2.sql.SQL(...)`` or a bare ``SQL(...)``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "SQL"
    return isinstance(func, ast.Name) and func.id == "SQL"


def violations(source: str, name: str) -> list[str]:
    """Each place in ``source`` (a module called ``name``) that builds SQL by interpolation."""
    found: list[str] = []
    functions: dict[ast.AST, str] = {}
    tree = ast.parse(source)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(fn):
                functions.setdefault(inner, fn.name)

    def flag(node: ast.AST, why: str) -> None:
        found.append(f"{name}:{node.lineno}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = _fstring_text(node)
            if any(isinstance(v, ast.FormattedValue) for v in node.values) and _SQL_WORDS.search(
                text
            ):
                flag(node, f"f-string SQL {text[:60]!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            for side in (node.left, node.right):
                text = _text(side)
                if text and _SQL_WORDS.search(text):
                    flag(node, f"SQL text joined with {type(node.op).__name__}: {text[:60]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = _text(node.func.value)
            if node.func.attr == "format" and owner and _SQL_WORDS.search(owner):
                flag(node, f"str.format on SQL text {owner[:60]!r}")
            if node.func.attr == "replace" and any(
                "{schema}" in (_text(a) or "") for a in node.args
            ):
                flag(node, "'{schema}' replaced by hand")
        if (
            isinstance(node, ast.Call)
            and _is_sql_call(node.func)
            and node.args
            and _text(node.args[0]) is None
            and (name, functions.get(node)) not in ALLOWED_DYNAMIC_SQL
        ):
            flag(node, "sql.SQL of a computed string")
        text = _text(node)
        if text and _QUALIFIED.search(text):
            flag(node, f"hard-coded schema-qualified name {text[:60]!r}")
    return found


def _modules():
    for folder in SCANNED:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_module_builds_sql_text_by_interpolating_a_name():
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        name = str(rel.relative_to(rel.parts[0]))
        found += violations(path.read_text(), name)
    assert found == [], "SQL built by interpolation:\n" + "\n".join(found)


# The checker itself, on the patterns the code base used before every name went through
# store.sql (so a checker that stops seeing them fails here, not silently).
@pytest.mark.parametrize(
    "snippet",
    [
        'cur.execute(f"SELECT count(*) FROM {schema}.symbols WHERE active")',
        'q = {"raw": f"SELECT count(DISTINCT symbol) FROM {schema}.raw_bars"}',
        'cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")',
        'cur.execute(migration.sql.replace("{schema}", schema))',
        'sql = f"SELECT {cols} FROM {schema}.dlq"\nsql += " WHERE " + " AND ".join(where)',
        'cur.execute("SELECT * FROM %s.dlq" % schema)',
        'cur.execute("SELECT * FROM {}.dlq".format(schema))',
        'cur.execute(sql.SQL("SELECT * FROM " + name))',
        'cur.execute("SELECT symbol FROM market.symbols")',
        'def _q(schema, table):\n    return f"{schema}.{table}"\n'
        'cur.execute(f"INSERT INTO {_q(schema, t)} (a) VALUES (%s)")',
    ],
)
def test_the_checker_flags_sql_built_by_interpolation(snippet):
    assert violations(snippet, "snippet.py"), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        'cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE active").format(table("s", schema)))',
        'cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))',
        'log.info(f"applied {len(versions)} migration(s) to schema {schema}")',
        'raise ValueError(f"expected a layer in {LAYERS}, found {layer!r}")',
    ],
)
def test_the_checker_passes_composed_sql_and_plain_messages(snippet):
    assert violations(snippet, "snippet.py") == []
