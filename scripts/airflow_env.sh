# Sourced by the Makefile's targets: a project-local Airflow home and the market services.
# Uses AIRFLOW_CONN_MARKET_DB / AIRFLOW_CONN_MARKET_CACHE when set; otherwise starts local
# servers (scripts/services.py) and exports their URIs.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.local/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-WARNING}"
export PYTHONPATH="$ROOT/plugins:$ROOT/include:$ROOT/config${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
mkdir -p "$AIRFLOW_HOME"
# Byte-compile the project's own modules (only what changed). Where PYTHONDONTWRITEBYTECODE
# is set, as in many CI and container environments, Python never writes .pyc files, and every
# task process would compile the DAG's modules from source again. `make venv` compiles the
# dependencies (uv --compile-bytecode) for the same reason.
"$ROOT/.venv/bin/python" -m compileall -q "$ROOT/include" "$ROOT/plugins" "$ROOT/dags" \
  "$ROOT/config" >/dev/null || true
eval "$("$ROOT/.venv/bin/python" "$ROOT/scripts/services.py" up)"
