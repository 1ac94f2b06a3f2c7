"""e2e wiring: each test item learns its own outcome (``item.rep_call``), so a fixture can act
on a failure in its teardown (the browser test saves a screenshot)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
