"""What a use case is told about its run: the settings, and which attempt is writing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from market_pipeline.config import (
    CACHE_PREFIX,
    DAG_ID,
    EXCHANGE,
    HISTORY_SESSIONS,
    SCHEMA,
    VARIABLE_DEFAULTS,
)


def _text(name: str, raw: str) -> str:
    return raw


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"Variable {name} must be a number, found {raw!r}") from None


def _integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"Variable {name} must be an integer, found {raw!r}") from None


def _per_task(name: str, raw: str) -> int | str:
    from market_pipeline.chunks import parse_per_task

    return parse_per_task(raw)  # "auto" or a positive integer


def _history(name: str, raw: str) -> int:
    return _integer(name, raw) or HISTORY_SESSIONS  # 0: the default history


class _Setting:
    """One setting: read from its Variable and checked on first use, then kept."""

    def __init__(self, variable: str, parse: Callable[[str, str], Any]) -> None:
        self.variable = variable
        self.parse = parse

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        values = obj.__dict__.setdefault("_values", {})
        if self.name not in values:
            values[self.name] = self.parse(self.variable, obj._read(self.variable))
        return values[self.name]


class Settings:
    """The run's settings (the ``market_*`` Airflow Variables; README "Variables").

    Each is read through ``read(variable_name) -> str`` and checked on first use, so a stage
    reads only the Variables it needs and a bad value fails only the stages that use it. In
    tests and tools: ``Settings(exchange="XNYS", max_move=0.5)`` — values given by name,
    the rest from the documented defaults. ``exchange`` (``MARKET_EXCHANGE``, the one the
    DAG's timetable schedules), ``schema`` (Postgres) and ``cache_prefix`` (Redis) are
    parse-time settings of a deployment, not Variables.
    """

    universe = _Setting("market_universe", _text)
    symbols_per_task = _Setting("market_symbols_per_task", _per_task)
    history_sessions = _Setting("market_history_sessions", _history)
    max_move = _Setting("market_max_move", _number)
    late_grace_seconds = _Setting("market_late_grace_seconds", _number)
    quorum = _Setting("market_quorum", _number)
    cache_ttl_days = _Setting("market_cache_ttl_days", _integer)

    def __init__(
        self,
        read: Callable[[str], str] | None = None,
        *,
        exchange: str = EXCHANGE,
        schema: str = SCHEMA,
        cache_prefix: str = CACHE_PREFIX,
        **values: Any,
    ) -> None:
        unknown = sorted(set(values) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown settings {unknown}; known: {self.names()}")
        self._read = read or VARIABLE_DEFAULTS.__getitem__
        self._values = dict(values)
        self.exchange = exchange
        self.schema = schema
        self.cache_prefix = cache_prefix

    @classmethod
    def names(cls) -> list[str]:
        return [name for name, value in vars(cls).items() if isinstance(value, _Setting)]

    def __repr__(self) -> str:
        known = ", ".join(f"{k}={v!r}" for k, v in sorted(self._values.items()))
        return f"Settings({known}, exchange={self.exchange!r}, schema={self.schema!r})"


@dataclass(frozen=True)
class Attempt:
    """Which try of which run writes: stamped on fetch audits, verdicts and DLQ rows."""

    run_id: str
    try_number: int = 1
    dag_id: str = DAG_ID
    logical_date: datetime | None = None

    def dlq_entry(self, session: date, task_id: str, map_index: int, symbol: str | None, **what):
        """A DLQ row of this run for ``task_id`` (``what``: ``kind``, ``error_class``,
        ``error_message``, and ``try_number`` when it is not this attempt's)."""
        from market_pipeline import store

        return store.DlqEntry(
            dag_id=self.dag_id,
            run_id=self.run_id,
            logical_date=self.logical_date,
            trade_date=session,
            task_id=task_id,
            map_index=map_index,
            symbol=symbol,
            stage=task_id.rsplit(".", 1)[-1],
            **{"try_number": self.try_number, **what},
        )
