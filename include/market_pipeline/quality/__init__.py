"""Great Expectations quality gates for raw bars and indicators.

Two GX Core 1.x suites defined as code: ``raw_bars`` (:func:`validate_bars`) and
``indicators`` (:func:`validate_indicators`). The package is in four parts:

* :mod:`.rules` — every gate rule declared once (:class:`~.rules.Rule`: name, severity, GX
  expectations, derived columns, failure message) in the two ordered suites;
* :mod:`.frames` — the stacked validation frame the rules' derived columns are added to;
* :mod:`.engine` — the GX context and the suites built from the declarations (once per
  process; :func:`warm_up`), the two-pass validation and the configuration memo;
* :mod:`.results` — one symbol's verdict split from a batch's GX result, acknowledgements;

and :mod:`.gates`, the entry points below. Adding a rule is one :class:`~.rules.Rule` in
:mod:`.rules` (and a :data:`SUITE_VERSION` bump). ``import great_expectations`` takes seconds,
so nothing here imports it at module level.
"""

from __future__ import annotations

from market_pipeline.indicators import INDICATOR_COLUMNS
from market_pipeline.quality.engine import Engine, warm_up
from market_pipeline.quality.frames import DEFAULT_MAX_MOVE, Run
from market_pipeline.quality.gates import (
    result_json,
    run_suite,
    validate_bars,
    validate_bars_many,
    validate_indicators,
    validate_indicators_many,
)
from market_pipeline.quality.results import GateResult
from market_pipeline.quality.rules import (
    BARS,
    BARS_SUITE_NAME,
    CRITICAL,
    INDICATORS,
    INDICATORS_SUITE_NAME,
    STALE_REPEAT_SESSIONS,
    SUITE_VERSION,
    WARNING,
    Rule,
    Suite,
)

#: Raw-bar rule name -> severity, in report order.
BAR_RULES: dict[str, str] = BARS.severities
#: Indicator rule name -> severity, in report order.
INDICATOR_RULES: dict[str, str] = INDICATORS.severities
#: Set False to validate with GX's own (rebuilding) ``Expectation.configuration``, e.g. to
#: compare; read by :mod:`.engine` on every validation.
CONFIGURATION_MEMO = True

__all__ = [
    "BARS",
    "BARS_SUITE_NAME",
    "BAR_RULES",
    "CONFIGURATION_MEMO",
    "CRITICAL",
    "DEFAULT_MAX_MOVE",
    "INDICATORS",
    "INDICATORS_SUITE_NAME",
    "INDICATOR_COLUMNS",
    "INDICATOR_RULES",
    "STALE_REPEAT_SESSIONS",
    "SUITE_VERSION",
    "WARNING",
    "Engine",
    "GateResult",
    "Rule",
    "Run",
    "Suite",
    "result_json",
    "run_suite",
    "validate_bars",
    "validate_bars_many",
    "validate_indicators",
    "validate_indicators_many",
    "warm_up",
]
