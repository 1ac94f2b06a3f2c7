"""Cutting the universe into chunks: the unit one mapped task instance works on.

With ``market_symbols_per_task`` = k the sorted universe is cut into consecutive chunks of
k symbols, so chunk *i* always holds the same symbols for the same universe, and a chunk's
label (its map index label in the UI) names its first and last symbol. k = 1 gives one chunk
per symbol, labelled with the symbol: the layout of a per-symbol DAG.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from market_pipeline.errors import ConfigurationError

#: Separates the first and last symbol of a chunk's label ("B0000..B0009").
LABEL_SEPARATOR = ".."


def chunk_symbols(
    symbols: Sequence[str], per_task: int, *, max_chunks: int | None = None
) -> list[list[str]]:
    """The sorted ``symbols`` cut into chunks of ``per_task`` (the last one may be shorter).

    :raises ConfigurationError: ``per_task`` is not a positive integer, or the chunks would
        exceed ``max_chunks`` (Airflow's ``[core] max_map_length``).
    """
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise ConfigurationError(
            f"expected market_symbols_per_task to be a positive integer, found {per_task!r}"
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
