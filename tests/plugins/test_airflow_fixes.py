"""The workarounds of ``market_airflow.airflow_fixes`` stay only while Airflow needs them.

The behaviour each one restores is tested end to end (``tests/e2e/test_local_airflow.py``:
a red run cleared within its publish deadline resumes); here, the tripwire.
"""

from __future__ import annotations

from market_airflow import airflow_fixes


def test_the_installed_airflow_still_reads_a_stored_deadline_interval_as_seconds():
    # When this fails, Airflow has fixed apache/airflow#70368: delete the workaround
    # (airflow_fixes, its call in market_ui.app.create_app) and this test.
    assert airflow_fixes.needed()


def test_the_workaround_is_installed_once_and_then_not_needed():
    from airflow.models import taskinstance

    original = taskinstance._recalculate_dagrun_queued_at_deadlines
    try:
        assert airflow_fixes.apply() is True
        assert taskinstance._recalculate_dagrun_queued_at_deadlines is (
            airflow_fixes._recalculate_dagrun_queued_at_deadlines
        )
        assert airflow_fixes.needed() is False
        assert airflow_fixes.apply() is False
    finally:
        taskinstance._recalculate_dagrun_queued_at_deadlines = original
