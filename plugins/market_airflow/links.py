"""The "GX report" operator extra link on the quality-gate tasks.

Airflow 3.3 computes operator extra links on the worker: when a task instance finishes
(success or failure) the task runner calls ``get_link`` of every link in the operator's
``operator_extra_links`` and stores the URL as the XCom ``_link_<LinkClass>``; the DAG's
serialization keeps only ``{name: xcom_key}`` and the UI reads the URL from that XCom. So no
plugin registration is needed, but the link must be a class attribute of the operator class.
``@task`` takes no ``operator_extra_links`` argument, so the gates use :func:`gate_task`:
the same TaskFlow decorator over an operator subclass that carries the link (mapped tasks
take the links from that class too). The raw gate's wait for D's bar is a plain
``@task.sensor`` (``wait_for_bars``): it judges nothing, so it has no report.

``@task``'s operator class, ``_PythonDecoratedOperator``, has no public name; this module is
the one place that imports it, and ``tests/plugins/test_runtime.py`` fails if ``@task`` stops
building it (docs/decisions.md, "Code shape").
"""

from __future__ import annotations

import functools

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import BaseOperatorLink, BaseXCom
from airflow.sdk.bases.decorator import task_decorator_factory

#: XCom key under which a gate task pushes the URL of its HTML report.
GX_REPORT_XCOM_KEY = "gx_report_url"


class GxReportLink(BaseOperatorLink):
    """Opens the gate's per-symbol HTML report (empty until the gate has judged the data)."""

    name = "GX report"

    def get_link(self, operator, *, ti_key) -> str:
        url = BaseXCom.get_value(ti_key=ti_key, key=GX_REPORT_XCOM_KEY)
        return str(url) if url else ""


class GateTaskOperator(_PythonDecoratedOperator):
    """``@task`` with the "GX report" link."""

    operator_extra_links = (GxReportLink(),)


#: ``@gate_task(...)``: like ``@task(...)``, plus the "GX report" link.
gate_task = functools.partial(task_decorator_factory, decorated_operator_class=GateTaskOperator)
