"""The GX engine: an ephemeral context, one dataframe batch definition, suites built from rules.

``import great_expectations`` takes seconds, so GX is imported only inside functions. The
default engine (both gates' suites) is built once per process (:func:`warm_up`, or lazily on
first use) and reused; :class:`Engine` builds one from any suites (tests do).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from market_pipeline.quality.frames import INDEX_COLUMNS
from market_pipeline.quality.rules import SUITES, Expect, Param, Rule, Suite

log = logging.getLogger(__name__)

# Row identity in GX results: every unexpected row is reported with these columns.
_RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": list(INDEX_COLUMNS)}
# The first pass over a batch: pass/fail per expectation only, about half of COMPLETE's cost.
_QUICK_FORMAT = {"result_format": "BOOLEAN_ONLY"}


def _expectation(gxe: Any, rule: Rule, spec: Expect) -> Any:
    """The GX expectation of one declared check, tagged with its rule and severity."""
    kwargs = {
        k: {"$PARAMETER": v.name} if isinstance(v, Param) else v for k, v in spec.kwargs.items()
    }
    cls = getattr(gxe, spec.type)
    return cls(meta={"rule": rule.name, "severity": rule.severity}, **kwargs)


class Engine:
    """The GX objects of a process: ephemeral context, one dataframe batch definition, and one
    GX suite per :class:`~.rules.Suite`, built from its rules' declarations."""

    def __init__(self, suites: Iterable[Suite] = SUITES) -> None:
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _install_configuration_memo()
        #: GX validations run on this engine (one per batch of symbols): what a reused
        #: verdict saves, and what tests and benches count.
        self.validations = 0
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        asset = self.context.data_sources.add_pandas("market_pipeline").add_dataframe_asset(
            "frames"
        )
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
        self.suites = {}
        for suite in suites:
            gx_suite = gx.ExpectationSuite(name=suite.name, meta={"suite_version": suite.version})
            for rule in suite.rules:
                for spec in rule.expect:
                    gx_suite.add_expectation(_expectation(gxe, rule, spec))
            self.suites[suite.name] = self.context.suites.add(gx_suite)

    def validate(self, suite_name: str, frame: pd.DataFrame, params: dict) -> dict:
        """The suite's GX result for the frame, in two passes.

        A pass/fail-only run first (``BOOLEAN_ONLY``). Only when an expectation fails is the
        suite run again with ``COMPLETE`` results, which name every unexpected row (the
        per-symbol split needs them). A passing batch, the common case, pays for the cheap
        pass only; its row-level results are rebuilt as "0 unexpected of n rows" by
        :func:`~.results.split`.
        """
        self.validations += 1
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        suite = self.suites[suite_name]
        with _configurations_memoised():
            quick = batch.validate(
                suite, result_format=_QUICK_FORMAT, expectation_parameters=params
            )
        if quick.success:  # the suite passes only when every expectation passed
            return quick.to_json_dict()
        with _configurations_memoised():
            result = batch.validate(
                suite, result_format=_RESULT_FORMAT, expectation_parameters=params
            )
        return result.to_json_dict()


# GX's Expectation.configuration is a property that rebuilds an ExpectationConfiguration
# (a pydantic .dict() and a regex over the class name) on every read, and one validation
# reads it ~70 times per expectation: half of GX's CPU for our suites. While one of our
# batch.validate calls runs, the memo below returns the first build for the rest of that
# call. The objects read during a validation are not changed by GX in between (it deep-copies
# configurations before it substitutes parameters into them); the memo ends with the call,
# it holds each object (so an id is never reused within it), and it is per thread. Tested:
# results are identical with and without it (tests/unit/test_quality.py). The switch is the
# package's public ``quality.CONFIGURATION_MEMO`` (False: GX's own rebuilding property).
_MEMO = threading.local()


def _memo_wanted() -> bool:
    return bool(getattr(sys.modules[__package__], "CONFIGURATION_MEMO", True))


def _install_configuration_memo() -> bool:
    """Wrap ``Expectation.configuration`` once per process; False when GX's shape differs."""
    from great_expectations.expectations.expectation import Expectation

    prop = Expectation.__dict__.get("configuration")
    if not isinstance(prop, property) or prop.fget is None:
        log.warning("GX Expectation.configuration is not a property; validating without memo")
        return False
    if getattr(prop.fget, "market_memo", False):
        return True
    build = prop.fget

    def configuration(self: Any) -> Any:
        memo = getattr(_MEMO, "entries", None)
        if memo is None:
            return build(self)
        entry = memo.get(id(self))
        if entry is None or entry[0] is not self:
            entry = memo[id(self)] = (self, build(self))
        return entry[1]

    configuration.market_memo = True  # type: ignore[attr-defined]
    Expectation.configuration = property(configuration, doc=prop.__doc__)
    return True


@contextmanager
def _configurations_memoised() -> Iterator[None]:
    _MEMO.entries = {} if _memo_wanted() else None
    try:
        yield
    finally:
        _MEMO.entries = None


_DEFAULT: Engine | None = None
_DEFAULT_LOCK = threading.Lock()


def default() -> Engine:
    """The process's engine with both gates' suites (built on first use, then shared)."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = Engine()
    return _DEFAULT


def built() -> bool:
    """Whether this process's default engine exists (built here or inherited by a fork)."""
    return _DEFAULT is not None


def warm_up() -> None:
    """Import GX and build the context and both suites now (idempotent, once per process)."""
    default()
