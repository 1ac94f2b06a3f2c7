"""The Airflow runtime helper, and tripwires on the two Airflow details it relies on that have
no public form: the key encoding of ``get_task_states`` and ``@task``'s operator class."""

from __future__ import annotations

import inspect
import re
from datetime import datetime

import pytest
from market_airflow import runtime


def test_airflow_still_names_a_mapped_instance_task_id_underscore_map_index_in_task_states():
    # Tripwire: runtime.task_states reads these keys. If this fails, Airflow changed the
    # encoding of GET /execution/task-instances/states: update runtime.split_task_state_key.
    from airflow.api_fastapi.execution_api.routes import task_instances

    source = inspect.getsource(task_instances.get_task_instance_states)

    assert "if task.map_index < 0" in source
    assert "{task.task_id: task.state}" in source
    assert 'f"{task.task_id}_{task.map_index}": task.state' in source


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("per_symbol.ingest_bars_0", ("per_symbol.ingest_bars", 0)),
        ("per_symbol.validate_bars_12", ("per_symbol.validate_bars", 12)),
        ("quorum_gate", ("quorum_gate", -1)),
    ],
)
def test_a_task_state_key_splits_into_task_id_and_map_index(key, expected):
    task_ids = ["per_symbol.ingest_bars", "per_symbol.validate_bars", "quorum_gate"]

    assert runtime.split_task_state_key(key, task_ids) == expected


def test_a_task_state_key_it_cannot_read_is_named():
    with pytest.raises(ValueError, match=r"found 'per_symbol\.ingest_bars_x'"):
        runtime.split_task_state_key("per_symbol.ingest_bars_x", ["per_symbol.ingest_bars"])


def test_task_still_builds_the_operator_class_the_gate_task_extends():
    # Tripwire: links.GateTaskOperator subclasses @task's (private) operator class so a gate is
    # exactly a @task plus the "GX report" link. If this fails, Airflow renamed or replaced it.
    from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
    from airflow.sdk import DAG, task
    from market_airflow.links import GateTaskOperator, GxReportLink, gate_task

    with DAG("tripwire", schedule=None, start_date=datetime(2024, 1, 1)):
        plain = task(lambda: None, task_id="plain")()
        gate = gate_task(python_callable=lambda: None, task_id="gate")()

    assert type(plain.operator) is _PythonDecoratedOperator
    assert type(gate.operator) is GateTaskOperator
    assert issubclass(GateTaskOperator, _PythonDecoratedOperator)
    assert gate.operator.custom_operator_name == plain.operator.custom_operator_name == "@task"
    assert [type(link) for link in gate.operator.operator_extra_links] == [GxReportLink]


def test_label_names_the_chunk_in_the_context_outside_a_running_task():
    context: dict = {}

    runtime.label(context, ["AAA", "ABC", "ACE"])

    assert context == {"symbol": "AAA..ACE", "symbols": ["AAA", "ABC", "ACE"]}


def test_window_starts_reads_each_passed_symbols_window_from_the_upstream_xcom():
    upstream = {
        "symbols": ["AAA", "BBB"],
        "results": {"AAA": {"window_start": "2024-11-20"}, "BBB": {"rows": 3}},
    }

    starts = runtime.window_starts(upstream)

    assert starts == {"AAA": datetime(2024, 11, 20).date(), "BBB": None}


def test_a_task_body_is_profiled_into_the_folder_when_asked(tmp_path, monkeypatch):
    import pstats

    @runtime.accounted
    def score_universe(n):
        return sum(range(n))

    monkeypatch.delenv(runtime.PROFILE_DIR_ENV, raising=False)
    assert score_universe(10) == 45
    assert list(tmp_path.iterdir()) == []  # not asked: no profile

    monkeypatch.setenv(runtime.PROFILE_DIR_ENV, str(tmp_path / "profiles"))
    assert score_universe(1000) == 499500

    (written,) = (tmp_path / "profiles").iterdir()
    assert written.name.startswith("score_universe-") and written.suffix == ".prof"
    functions = {name for _file, _line, name in pstats.Stats(str(written)).stats}
    assert "score_universe" in functions


def test_a_forked_child_reports_what_it_added_over_its_parent(caplog):
    import json
    import logging
    import os

    ballast = bytearray(32 * 1024 * 1024)  # the parent's own pages, inherited by the child
    ballast[::4096] = b"x" * len(ballast[::4096])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: touch 64 MiB of new pages, then report as a task body does
        try:
            with caplog.at_level(logging.INFO, logger=runtime.__name__):

                @runtime.accounted
                def validate_bars():
                    block = bytearray(64 * 1024 * 1024)
                    block[::4096] = b"y" * len(block[::4096])
                    return len(block)

                validate_bars()
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:")]
            os.write(
                write, json.dumps({"memory": runtime.process_memory(), "lines": lines}).encode()
            )
        finally:
            os._exit(0)
    os.close(write)
    child = json.loads(os.read(read, 1 << 20))
    os.waitpid(pid, 0)
    mine = runtime.process_memory()

    memory = child["memory"]
    # The 64 MiB the body touched are counted though freed when it returned; the 32 MiB the
    # parent holds and the child only reads are not.
    assert 64 <= memory["added"] < 64 + 16, memory
    assert memory["private"] < 16 <= memory["peak"] - memory["resident"], memory
    assert mine["private"] >= 32, mine  # not forked: everything it holds is its own
    (line,) = child["lines"]
    logged = re.match(
        r"memory: ([\d.]+) MiB over the parent at the peak \(.*\(validate_bars\)$", line
    )
    assert logged and abs(float(logged[1]) - memory["added"]) < 2, (line, memory)
    assert len(ballast) == 32 * 1024 * 1024
