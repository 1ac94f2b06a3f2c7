"""DAG integrity: market_daily imports cleanly, has the designed shape and safe defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from market_pipeline.stages import GROUP_ID, SYMBOL_TASKS

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = str(ROOT / "dags" / "market_daily.py")
GROUP = GROUP_ID
TAIL = ["quorum_gate", "score_universe", "publish_cache", "verify_cache", "run_health"]


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="session")
def dag(dagbag):
    return dagbag.dags["market_daily"]


def test_dag_folder_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_market_daily_has_every_stage_in_order(dag):
    ids = set(dag.task_ids)
    expected = {"universe", *TAIL, *(f"{GROUP}.{t}" for t in SYMBOL_TASKS)}
    assert ids == expected


@pytest.mark.parametrize(
    ("upstream", "downstream"),
    [
        ("universe", f"{GROUP}.ingest_bars"),
        (f"{GROUP}.ingest_bars", f"{GROUP}.wait_for_bars"),
        (f"{GROUP}.wait_for_bars", f"{GROUP}.validate_bars"),
        (f"{GROUP}.validate_bars", f"{GROUP}.compute_indicators"),
        (f"{GROUP}.compute_indicators", f"{GROUP}.validate_indicators"),
        (f"{GROUP}.validate_indicators", f"{GROUP}.generate_signals"),
        (f"{GROUP}.generate_signals", "quorum_gate"),
        ("quorum_gate", "score_universe"),
        ("score_universe", "publish_cache"),
        ("publish_cache", "verify_cache"),
        ("verify_cache", "run_health"),
    ],
)
def test_edges_follow_the_design(dag, upstream, downstream):
    assert downstream in dag.get_task(upstream).downstream_task_ids


def test_per_symbol_is_one_mapped_task_group_labelled_by_symbol(dag):
    group = dag.task_group_dict[GROUP]
    assert type(group).__name__ == "MappedTaskGroup"
    for task_id in SYMBOL_TASKS:
        task = dag.get_task(f"{GROUP}.{task_id}")
        assert task.map_index_template == "{{ symbol }}"


def test_tail_runs_after_partial_failures(dag):
    assert dag.get_task("quorum_gate").trigger_rule == "all_done"
    assert dag.get_task("run_health").trigger_rule == "all_done"


def test_the_wait_for_the_bar_is_a_rescheduling_sensor_and_the_gate_a_plain_task(dag):
    from airflow.sdk.bases.sensor import BaseSensorOperator
    from market_airflow.links import GxReportLink

    sensor = dag.get_task(f"{GROUP}.wait_for_bars")
    gate = dag.get_task(f"{GROUP}.validate_bars")
    assert isinstance(sensor, BaseSensorOperator)
    assert sensor.mode == "reschedule"
    assert 0 < sensor.timeout <= 24 * 3600
    assert not isinstance(gate, BaseSensorOperator)  # judging holds no slot while waiting
    assert [type(link) for link in gate.operator_extra_links] == [GxReportLink]
    assert not sensor.operator_extra_links  # it judges nothing: no report


#: The per-symbol tasks whose code may call the bar source.
VENDOR_TASKS = {"ingest_bars", "wait_for_bars", "validate_bars"}


def test_every_task_that_may_call_the_source_is_in_the_vendor_pool(dag):
    pooled = {
        t.task_id.removeprefix(f"{GROUP}.") for t in dag.tasks if t.pool == "market_source_api"
    }

    assert pooled == VENDOR_TASKS


def test_only_the_pooled_tasks_open_the_source():
    # Tripwire for the test above: a task body in market_airflow.tasks that starts opening the
    # source (runtime.make_source) must join the pool (and VENDOR_TASKS) first.
    import ast

    tree = ast.parse((ROOT / "plugins" / "market_airflow" / "tasks.py").read_text())
    opening = {
        fn.name
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef)
        and any(isinstance(n, ast.Attribute) and n.attr == "make_source" for n in ast.walk(fn))
    }

    assert opening == VENDOR_TASKS


def test_tags_owner_and_docs(dag):
    assert {"market", "eod"} <= set(dag.tags)
    assert dag.owner == "market-data"
    assert "market_daily" in (dag.doc_md or "")


@pytest.mark.parametrize("task_id", ["universe", *TAIL, *(f"{GROUP}.{t}" for t in SYMBOL_TASKS)])
def test_every_task_retries_and_reports_to_the_dlq(dag, task_id):
    from market_airflow import callbacks

    task = dag.get_task(task_id)
    if task_id != "run_health":  # it only judges; retrying it changes nothing
        assert task.retries >= 2
    assert task.retry_policy is not None
    assert callbacks.record_failure in _as_list(task.on_failure_callback)
    # A failed try that is retried is recorded too (it stays visible once a retry cures it).
    assert callbacks.record_failure in _as_list(task.on_retry_callback)
    assert callbacks.resolve_success in _as_list(task.on_success_callback)


def test_airflows_own_backoff_is_the_retry_policys_so_there_is_one_to_configure(dag):
    # Used only for tries no exception ended (a killed process); the policy decides the rest.
    for task in dag.tasks:
        policy = task.retry_policy
        assert task.retry_delay == policy.base_delay, task.task_id
        assert float(task.retry_exponential_backoff) == policy.multiplier, task.task_id
        assert task.max_retry_delay == policy.max_delay, task.task_id


def test_run_failure_sends_an_alert(dag):
    from market_airflow import callbacks

    assert callbacks.alert_on_failure in _as_list(dag.on_failure_callback)


def test_dag_uses_the_exchange_session_timetable(dag):
    assert type(dag.timetable).__name__ == "ExchangeSessionTimetable"
    assert dag.max_active_runs == 1


#: What parsing the DAG folder must not import: the dag-processor parses every few seconds,
#: so these would be paid at every parse (pandas and exchange_calendars ~1 s, GX ~3 s).
PARSE_FORBIDDEN = (
    "pandas",
    "numpy",
    "exchange_calendars",
    "psycopg2",
    "redis",
    "great_expectations",
    "talib",
    "numba",
    "market_pipeline.store",
    "market_pipeline.quality",
    "market_pipeline.calendar",
)


def test_parsing_the_dag_file_opens_no_file_connects_nowhere_and_imports_no_new_library():
    """What a parse costs beyond Airflow itself (already imported in a worker), counted, not
    timed: Python's audit hooks see every file opened and every socket connected while the
    file executes, and ``sys.modules`` every module it pulls in."""
    code = (
        "import sys, importlib.util, airflow.sdk, market_airflow.timetable;"
        "before = set(sys.modules); events = [];"
        "sys.addaudithook(lambda e, a: events.append((e, str(a[0])))"
        " if e in ('open', 'socket.connect') else None);"
        f"spec = importlib.util.spec_from_file_location('m', {DAG_FILE!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "io = [f'{e}:{a}' for e, a in events"
        " if e != 'open' or not a.endswith(('.py', '.pyc', '.so'))];"
        "new = {x.split('.')[0] for x in set(sys.modules) - before};"
        "print('IO', ','.join(io)); print('NEW', ','.join(sorted(new)))"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT / 'include'}")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert _marked(out.stdout, "IO") == ""
    # Airflow's own modules (operators, decorators and their `packaging` dependency) and the
    # project's light modules; never a library such as pandas, GX or a database driver.
    new = set(_marked(out.stdout, "NEW").split(","))
    assert new <= {"airflow", "market_airflow", "market_pipeline", "packaging"}, new


def test_parsing_the_dag_folder_as_the_dag_processor_does_imports_nothing_heavy(tmp_path):
    # A fresh interpreter, as the dag-processor's parsing process: DagBag imports the DAG
    # file and validates the timetable (ExchangeSessionTimetable.validate).
    code = (
        "import sys;"
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r});"
        "assert not bag.import_errors, bag.import_errors;"
        "assert 'market_daily' in bag.dags;"
        "bag.dags['market_daily'].timetable.validate();"
        f"heavy = [x for x in {PARSE_FORBIDDEN!r} if x in sys.modules];"
        "print('HEAVY', ','.join(heavy))"
    )
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT / 'include'}",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert _marked(out.stdout, "HEAVY") == ""


def _marked(stdout: str, marker: str) -> str:
    # Airflow may log to stdout too; read only our own line.
    line = next(ln for ln in stdout.splitlines() if ln.startswith(marker))
    return line[len(marker) :].strip()


def _as_list(callback):
    if callback is None:
        return []
    return list(callback) if isinstance(callback, list | tuple) else [callback]


def test_only_verify_cache_announces_the_served_day_and_the_example_consumer_waits_for_it(dag):
    from airflow.dag_processing.dagbag import DagBag

    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets}
    assert outlets == {"verify_cache": ["market_scores"]}
    consumers = DagBag(dag_folder=str(ROOT / "tests" / "dags" / "consumer"))
    assert consumers.import_errors == {}
    consumer = consumers.dags["market_scores_consumer"]
    assert [a.name for a in consumer.timetable.asset_condition.objects] == ["market_scores"]
