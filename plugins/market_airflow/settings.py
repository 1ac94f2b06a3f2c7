"""Runtime settings: Airflow Variables with documented defaults (never read at parse time)."""

from __future__ import annotations

from market_pipeline.config import VARIABLE_DEFAULTS


def var(name: str) -> str:
    """The Variable ``name`` (or ``AIRFLOW_VAR_<NAME>``), else its default from config."""
    from airflow.sdk import Variable

    if name not in VARIABLE_DEFAULTS:
        raise KeyError(f"unknown market variable {name!r}; known: {sorted(VARIABLE_DEFAULTS)}")
    value = Variable.get(name, default=None)
    return VARIABLE_DEFAULTS[name] if value in (None, "") else str(value)


def float_var(name: str) -> float:
    raw = var(name)
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"Variable {name} must be a number, found {raw!r}") from None


def int_var(name: str) -> int:
    raw = var(name)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"Variable {name} must be an integer, found {raw!r}") from None
