"""The Airflow settings that matter at size come from one file, config/airflow.env, read by
`make up` (scripts/local_airflow.py), the compose stack and the benches alike."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TUNING = ROOT / "config" / "airflow.env"
KEYS = {
    "AIRFLOW__CORE__PARALLELISM",
    "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG",
    "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME",
}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def local_airflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKET_LOCAL_AIRFLOW_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", "postgres://postgres@127.0.0.1:5432/test")
    monkeypatch.delenv("MARKET_PARALLELISM", raising=False)
    monkeypatch.delenv("MARKET_AIRFLOW_META_CONN", raising=False)
    monkeypatch.delenv("MARKET_SCHEDULED_RUNS", raising=False)
    return _load(ROOT / "scripts" / "local_airflow.py", "local_airflow_under_test")


@pytest.fixture
def bench_common():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return _load(ROOT / "bench" / "common.py", "bench_common_under_test")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_the_file_names_every_setting_that_matters_with_a_value_airflow_accepts(local_airflow):
    values = local_airflow.read_env_file(TUNING)

    assert set(values) == KEYS
    assert all(v.isdigit() and int(v) >= 1 for v in values.values())
    assert values["AIRFLOW__CORE__PARALLELISM"] == values["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"]


def test_make_up_runs_airflow_with_the_files_values(local_airflow):
    env = local_airflow.env()

    assert {k: env[k] for k in KEYS} == local_airflow.read_env_file(TUNING)


def test_make_up_lets_market_parallelism_override_both_slot_limits(local_airflow, monkeypatch):
    monkeypatch.setenv("MARKET_PARALLELISM", "3")

    env = local_airflow.env()

    assert (
        env["AIRFLOW__CORE__PARALLELISM"] == env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] == "3"
    )


def test_every_airflow_service_of_the_compose_stack_reads_the_file():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    airflow = {n: s for n, s in compose["services"].items() if n.startswith("airflow-")}

    assert airflow
    for name, service in airflow.items():
        assert service.get("env_file") == ["config/airflow.env"], name
        assert not KEYS & set(service.get("environment", {})), name  # nothing overrides it


def test_the_benches_run_airflow_with_the_files_values(bench_common, local_airflow):
    assert bench_common.tuning() == local_airflow.read_env_file(TUNING)
    assert int(bench_common.tuning()["AIRFLOW__CORE__PARALLELISM"]) == bench_common.PARALLELISM


def test_a_malformed_line_is_named(local_airflow, tmp_path):
    bad = tmp_path / "airflow.env"
    bad.write_text("# fine\nAIRFLOW__CORE__PARALLELISM 8\n")

    with pytest.raises(ValueError, match=r"airflow.env:2: expected KEY=VALUE"):
        local_airflow.read_env_file(bad)


def test_make_up_serves_each_extra_dags_folder_as_its_own_bundle(local_airflow, monkeypatch):
    consumer = ROOT / "tests" / "dags" / "consumer"
    monkeypatch.setenv("MARKET_EXTRA_DAGS", f"{consumer}:")

    bundles = json.loads(local_airflow.env()["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])

    # The project's DAGs keep the default bundle's name, so their runs keep their DAG.
    assert [(b["name"], b["kwargs"]["path"]) for b in bundles] == [
        ("dags-folder", str(ROOT / "dags")),
        ("extra-1-consumer", str(consumer)),
    ]


def test_an_extra_dags_entry_that_is_not_a_folder_is_named(local_airflow, monkeypatch, tmp_path):
    monkeypatch.setenv("MARKET_EXTRA_DAGS", str(tmp_path / "nowhere"))

    with pytest.raises(SystemExit, match=r"MARKET_EXTRA_DAGS: expected a folder.*nowhere"):
        local_airflow.dag_bundles()


def test_make_up_keeps_metadata_on_the_market_server_by_default(local_airflow):
    uri = local_airflow.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    assert uri == "postgresql+psycopg2://postgres@127.0.0.1:5432/market_airflow"


def test_make_up_puts_metadata_on_the_server_of_market_airflow_meta_conn(
    local_airflow, monkeypatch
):
    monkeypatch.setenv("MARKET_AIRFLOW_META_CONN", "postgres://meta@10.0.0.7:6543/ignored")
    monkeypatch.setenv("MARKET_AIRFLOW_META_DB", "afup_x")
    module = _load(ROOT / "scripts" / "local_airflow.py", "local_airflow_meta_conn")

    assert module.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        "postgresql+psycopg2://meta@10.0.0.7:6543/afup_x"
    )
    # A server on a Unix socket (the fault suite's private Postgres) too.
    monkeypatch.setenv("MARKET_AIRFLOW_META_CONN", "postgres://postgres@%2Ftmp%2Fpg%2Fsock/x")
    assert module.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        "postgresql+psycopg2://postgres@/afup_x?host=/tmp/pg/sock"
    )


def test_make_up_creates_scheduled_runs_unless_market_scheduled_runs_is_0(
    local_airflow, monkeypatch
):
    assert local_airflow.env()["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "True"

    monkeypatch.setenv("MARKET_SCHEDULED_RUNS", "0")

    assert local_airflow.env()["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "False"
