"""Cutting the universe into chunks: the unit one mapped task instance works on.

With ``market_symbols_per_task`` = k the sorted universe is cut into consecutive chunks of
k symbols, so chunk *i* always holds the same symbols for the same universe, and a chunk's
label (its map index label in the UI) names its first and last symbol. k = 1 gives one chunk
per symbol, labelled with the symbol: the layout of a per-symbol DAG.

The default, ``auto`` (:func:`per_task_for`), keeps one symbol per map index up to
:data:`AUTO_MAP_INDEXES` symbols and past that picks the smallest k that keeps the run at
:data:`AUTO_MAP_INDEXES` map indexes per stage (docs/batching.md says why 32).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from market_pipeline.errors import ConfigurationError

#: Separates the first and last symbol of a chunk's label ("B0000..B0009").
LABEL_SEPARATOR = ".."

#: The ``market_symbols_per_task`` value that sizes chunks from the universe (the default).
AUTO = "auto"

#: ``auto``'s bound on map indexes per stage (and its threshold: up to this many symbols,
#: one symbol per map index). Four waves of the 8 task slots (``parallelism`` =
#: ``max_active_tasks_per_dag`` = 8, ``config/airflow.env``): 5 x 32 + 6 = 166 task
#: instances a run, whose Airflow cost was ~0.3 s each on the reference box (the empty DAG
#: of 506 task instances took 157.8 s), against 78.6 min for 500 symbols at one per task
#: and 64 s at 20 map indexes (docs/batching.md, docs/benchmarks.md).
AUTO_MAP_INDEXES = 32


def parse_per_task(raw: object) -> int | str:
    """A ``market_symbols_per_task`` value: ``"auto"`` or a positive integer.

    :raises ConfigurationError: anything else, naming what was found.
    """
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in ("", AUTO):
            return AUTO
        if text.isdigit() and int(text) >= 1:
            return int(text)
    elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return raw
    raise ConfigurationError(
        f"expected market_symbols_per_task to be 'auto' or a positive integer, found {raw!r}"
    )


def per_task_for(
    n_symbols: int, setting: int | str = AUTO, *, max_chunks: int | None = None
) -> int:
    """Symbols per map index for a universe of ``n_symbols``.

    An integer setting is returned as it is (``chunk_symbols`` then checks it against
    ``max_chunks``). ``auto``: 1 up to :data:`AUTO_MAP_INDEXES` symbols, else the smallest k
    giving at most :data:`AUTO_MAP_INDEXES` chunks, and never more chunks than
    ``max_chunks`` (Airflow's ``[core] max_map_length``) whatever its value.
    """
    setting = parse_per_task(setting)
    if setting != AUTO:
        return int(setting)
    bound = AUTO_MAP_INDEXES if max_chunks is None else max(1, min(AUTO_MAP_INDEXES, max_chunks))
    return max(1, math.ceil(n_symbols / bound))


def chunk_symbols(
    symbols: Sequence[str], per_task: int | str, *, max_chunks: int | None = None
) -> list[list[str]]:
    """The sorted ``symbols`` cut into chunks of ``per_task`` (the last one may be shorter);
    ``per_task`` = ``"auto"`` sizes them with :func:`per_task_for`.

    :raises ConfigurationError: ``per_task`` is not a positive integer, or the chunks would
        exceed ``max_chunks`` (Airflow's ``[core] max_map_length``).
    """
    if per_task == AUTO:
        per_task = per_task_for(len(symbols), AUTO, max_chunks=max_chunks)
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise ConfigurationError(
            f"expected market_symbols_per_task to be 'auto' or a positive integer, "
            f"found {per_task!r}"
        )
    ordered = sorted(symbols)
    if len(set(ordered)) != len(ordered):
        dupes = sorted(s for s, n in Counter(ordered).items() if n > 1)
        raise ConfigurationError(f"expected unique symbols, found duplicates: {dupes[:10]}")
    chunks = [ordered[i : i + per_task] for i in range(0, len(ordered), per_task)]
    if max_chunks is not None and len(chunks) > max_chunks:
        need = math.ceil(len(ordered) / max_chunks)
        raise ConfigurationError(
            f"expected at most {max_chunks} map indexes ([core] max_map_length), found "
            f"{len(chunks)}: {len(ordered)} symbols at market_symbols_per_task={per_task}; "
            f"set market_symbols_per_task to at least {need} or raise max_map_length"
        )
    return chunks


def chunk_label(symbols: Sequence[str]) -> str:
    """The map index label of a chunk: the symbol itself, or ``FIRST..LAST``."""
    if not symbols:
        raise ValueError("expected a chunk with at least one symbol, found none")
    if len(symbols) == 1:
        return symbols[0]
    return f"{symbols[0]}{LABEL_SEPARATOR}{symbols[-1]}"
