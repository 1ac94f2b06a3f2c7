"""Bar sources: one interface, implementations chosen by the ``market_source`` variable."""

from market_pipeline.sources.base import BAR_COLUMNS, BarSource, empty_bars, normalise_bars

__all__ = ["BAR_COLUMNS", "BarSource", "empty_bars", "normalise_bars"]
