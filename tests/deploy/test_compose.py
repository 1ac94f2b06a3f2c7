"""docker-compose.yaml and the Dockerfile, checked without a Docker engine.

Each test names one promise of docs/deploy.md: the commands the stack runs exist in the
installed Airflow, the settings every machine must share are set once for every Airflow
service, secrets have no defaults, each long-running service restarts and has a health check,
task logs and reports sit on volumes every container mounts, and the image carries the whole
project (package, DAGs, plugins, preload, bytecode).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
AIRFLOW = {name: s for name, s in SERVICES.items() if name.startswith("airflow-")}
LONG_RUNNING = {name for name in SERVICES if name != "airflow-init"}
AIRFLOW_HOME = "/opt/airflow"
SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
#: What every Airflow container must agree on (docs/deploy.md, "Every machine").
SHARED_SETTINGS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__SCHEDULER__MP_START_METHOD",
    *SECRETS,
    "AIRFLOW_CONN_MARKET_DB",
    "AIRFLOW_CONN_MARKET_CACHE",
    "MARKET_SCHEMA",
    "MARKET_CACHE_PREFIX",
    "MARKET_GATE_POKE_SECONDS",
    "MARKET_GATE_TIMEOUT_SECONDS",
    "MARKET_RETRY_BASE_SECONDS",
    "MARKET_REPORT_DIR",
)


def _dockerfile() -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


DOCKERFILE = _dockerfile()


def _runs() -> str:
    return "\n".join(args for instruction, args in DOCKERFILE if instruction == "RUN")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s#]+)", line)
        if found:
            pins[found[1].lower()] = found[3]
    return pins


# --------------------------------------------------------------------------- commands


def _airflow_commands() -> list[tuple[str, list[str]]]:
    """Every Airflow CLI call the stack makes: service commands, init steps, health checks."""
    calls: list[tuple[str, list[str]]] = []
    for name, service in AIRFLOW.items():
        command = service["command"]
        if command.startswith("bash -c "):
            for step in shlex.split(command)[2].split("&&"):
                args = shlex.split(step)
                if args[0] == "airflow":
                    calls.append((name, args[1:]))
        else:
            # The image's entrypoint runs `airflow <command>` for an Airflow subcommand.
            calls.append((name, shlex.split(command)))
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] == "CMD-SHELL":
            args = shlex.split(test[1].replace("$${HOSTNAME}", "host-1"))
            if args[0] == "airflow":
                calls.append((f"{name} healthcheck", args[1:]))
    return calls


PARSE_PROBE = """
import json, sys
from airflow.cli import cli_parser
parser = cli_parser.get_parser()
bad = {}
for name, args in json.loads(sys.argv[1]):
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        bad[name] = [args, exc.code]
print("BAD" + json.dumps(bad))
"""


def test_every_airflow_command_of_the_stack_is_a_subcommand_of_the_installed_airflow():
    calls = _airflow_commands()
    env = {**os.environ, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}

    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )

    assert {name for name, _ in calls} >= set(AIRFLOW), calls
    assert any(args[:2] == ["celery", "worker"] for _, args in calls)
    bad = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("BAD"))[3:])
    assert bad == {}, f"commands the installed airflow rejects: {bad}\n{out.stderr[-2000:]}"


def test_the_init_service_runs_the_market_migrations_module_that_exists():
    steps = [
        shlex.split(s) for s in shlex.split(SERVICES["airflow-init"]["command"])[2].split("&&")
    ]
    modules = [args[2] for args in steps if args[:2] == ["python", "-m"]]

    assert modules == ["market_pipeline.migrate"]
    assert (ROOT / "include" / "market_pipeline" / "migrate.py").is_file()


def test_the_worker_health_check_pings_the_celery_app_airflow_provides():
    test = SERVICES["airflow-worker"]["healthcheck"]["test"]
    args = shlex.split(test[1])
    app = args[args.index("--app") + 1]
    module, _, attr = app.rpartition(".")
    probe = f"import importlib; print(type(getattr(importlib.import_module({module!r}), {attr!r})))"

    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"},
    )

    assert args[:1] == ["celery"] and "ping" in args
    assert out.returncode == 0 and "Celery" in out.stdout, out.stderr[-2000:]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("name", sorted(AIRFLOW))
def test_every_airflow_service_has_the_settings_every_machine_must_share(name):
    env = AIRFLOW[name]["environment"]
    reference = AIRFLOW["airflow-worker"]["environment"]

    missing = [k for k in SHARED_SETTINGS if k not in env]
    assert missing == [], f"{name}: missing {missing}"
    assert {k: env[k] for k in SHARED_SETTINGS} == {k: reference[k] for k in SHARED_SETTINGS}
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "fork"


@pytest.mark.parametrize("key", SECRETS)
def test_secrets_have_no_default_so_compose_refuses_to_start_without_them(key):
    value = AIRFLOW["airflow-worker"]["environment"][key]

    assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{key}: expected ${{VAR:?message}}"
    assert "change-me" not in (ROOT / "docker-compose.yaml").read_text()


def test_metadata_and_market_data_live_on_separate_database_servers():
    env = AIRFLOW["airflow-worker"]["environment"]
    metadata_host = re.search(r"@([^:/]+)", env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])[1]
    market_host = re.search(r"@([^:/]+)", env["AIRFLOW_CONN_MARKET_DB"])[1]

    assert metadata_host != market_host
    assert {metadata_host, market_host} <= set(SERVICES)
    for host in (metadata_host, market_host):
        assert any(a.startswith("max_connections=") for a in SERVICES[host]["command"]), host


def test_the_broker_is_a_redis_of_its_own_and_results_go_to_the_metadata_database():
    env = AIRFLOW["airflow-worker"]["environment"]
    broker = re.match(r"redis://([^:/]+)", env["AIRFLOW__CELERY__BROKER_URL"])[1]
    cache = re.match(r"redis://([^:/]+)", env["AIRFLOW_CONN_MARKET_CACHE"])[1]

    assert broker != cache and broker in SERVICES
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == (
        "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) >= 3600


# --------------------------------------------------------------------------- resilience


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_every_long_running_service_restarts_and_has_a_health_check(name):
    service = SERVICES[name]

    assert service.get("restart") in ("always", "unless-stopped"), name
    assert service.get("healthcheck", {}).get("test"), name


def test_the_init_service_runs_once_and_the_others_wait_for_it_and_for_healthy_servers():
    assert SERVICES["airflow-init"]["restart"] == "no"
    for name, service in SERVICES.items():
        for dep, rule in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep}'s health"
    for name in set(AIRFLOW) - {"airflow-init"}:
        depends = AIRFLOW[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"


def test_the_scheduler_health_endpoint_is_enabled():
    env = AIRFLOW["airflow-scheduler"]["environment"]

    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    assert "8974/health" in " ".join(SERVICES["airflow-scheduler"]["healthcheck"]["test"])


# --------------------------------------------------------------------------- shared storage


def _mounts(service: dict) -> dict[str, str]:
    """``{container path: source}`` of a service's volumes."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[target] = source
    return out


@pytest.mark.parametrize("name", sorted(AIRFLOW))
def test_task_logs_and_reports_are_on_volumes_every_airflow_container_mounts(name):
    mounts = _mounts(AIRFLOW[name])
    report_dir = AIRFLOW[name]["environment"]["MARKET_REPORT_DIR"]

    assert mounts.get(f"{AIRFLOW_HOME}/logs") == "airflow-logs"
    assert mounts.get(report_dir) == "market-reports"
    assert {"airflow-logs", "market-reports"} <= set(COMPOSE["volumes"])


def test_there_are_two_workers_each_with_a_hostname_of_its_own():
    worker = SERVICES["airflow-worker"]

    assert worker["deploy"]["replicas"] >= 2
    assert "hostname" not in worker and "container_name" not in worker


def test_the_code_comes_from_the_image_not_from_bind_mounts():
    for name, service in AIRFLOW.items():
        targets = set(_mounts(service))
        assert not targets & {f"{AIRFLOW_HOME}/{d}" for d in ("dags", "plugins", "config")}, name


# --------------------------------------------------------------------------- the image


def test_the_image_is_the_airflow_version_the_requirements_pin():
    base = next(args for instruction, args in DOCKERFILE if instruction == "FROM")
    pins = _pins(ROOT / "requirements.txt")

    assert base.startswith(f"apache/airflow:{pins['apache-airflow']}-python3.11"), base


def test_the_image_installs_the_pinned_requirements_with_the_celery_path():
    runs = _runs()

    for req in ("requirements.txt", "requirements-celery.txt"):
        assert f"-r /opt/market/{req}" in runs, req
    celery = _pins(ROOT / "requirements-celery.txt")
    assert {"apache-airflow-providers-celery", "celery", "kombu"} <= set(celery)
    # The environment the tests run in is the pinned one (celery 5.7.0 breaks the provider).
    assert {name: version(name) for name in celery} == celery


def test_the_image_installs_the_package_so_market_recovery_exists():
    copies = [args for instruction, args in DOCKERFILE if instruction == "COPY"]
    pyproject = (ROOT / "pyproject.toml").read_text()

    assert any("pyproject.toml /opt/market/src/" in c for c in copies)
    assert any(c.endswith("include /opt/market/src/include") for c in copies)
    assert re.search(r"pip install [^\n]*/opt/market/src(\s|$)", _runs())
    assert 'market-recovery = "market_pipeline.recovery:main"' in pyproject


def test_the_image_puts_the_preload_in_airflow_home_config_and_compiles_the_code():
    copies = [args.split() for instruction, args in DOCKERFILE if instruction == "COPY"]
    targets = {c[-1]: c[-2] for c in copies}
    compiled = re.search(r"python -m compileall[^\n]*", _runs())[0]

    assert targets[f"{AIRFLOW_HOME}/config/airflow_local_settings.py"] == (
        "config/airflow_local_settings.py"
    )
    assert targets[f"{AIRFLOW_HOME}/dags"] == "dags"
    assert targets[f"{AIRFLOW_HOME}/plugins"] == "plugins"
    for folder in ("dags", "plugins", "config"):
        assert f"{AIRFLOW_HOME}/{folder}" in compiled, folder


def test_every_file_the_image_copies_exists_and_the_build_context_leaves_out_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()

    for instruction, args in DOCKERFILE:
        if instruction == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            assert all((ROOT / s).exists() for s in sources), args
    assert {".venv", ".local", ".git"} <= set(ignored)
