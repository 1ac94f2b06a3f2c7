"""Build benchmark variants of market_daily from the project's own DAG file (no copy).

:func:`load_market_daily` executes ``dags/market_daily.py`` with its last statement (the
``market_daily()`` factory call) held back, under another ``dag_id``, and returns the DAG
the factory builds. The caller's module is the one the DAG processor is importing, so the
DAG is registered against (and its ``fileloc`` is) the bench file, and every task process
parses the bench file again, exactly as it parses the real one.

Not a DAG file itself (``.airflowignore`` keeps the DAG processor out of it).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "market_daily.py"


class DagFileShapeError(RuntimeError):
    """``dags/market_daily.py`` no longer ends with a bare call of its DAG factory."""


def load_market_daily(dag_id: str | None, *, module_name: str) -> Any:
    """The DAG ``dags/market_daily.py`` builds, with ``dag_id`` instead of config.DAG_ID."""
    from market_pipeline import config

    tree = ast.parse(DAG_FILE.read_text(), filename=str(DAG_FILE))
    last = tree.body[-1] if tree.body else None
    if not (
        isinstance(last, ast.Expr)
        and isinstance(last.value, ast.Call)
        and isinstance(last.value.func, ast.Name)
        and not last.value.args
    ):
        raise DagFileShapeError(
            f"expected {DAG_FILE} to end with a bare factory call such as `market_daily()`, "
            f"found {ast.unparse(last) if last else 'an empty file'}"
        )
    factory = last.value.func.id
    tree.body = tree.body[:-1]
    namespace: dict[str, Any] = {
        "__name__": module_name,
        "__file__": str(DAG_FILE),
        "__doc__": ast.get_docstring(tree, clean=False),
    }
    original = config.DAG_ID
    if dag_id:
        config.DAG_ID = dag_id  # read by the file's `from market_pipeline.config import ...`
    try:
        exec(compile(tree, str(DAG_FILE), "exec"), namespace)
    finally:
        config.DAG_ID = original
    return namespace[factory]()
