#!/usr/bin/env bash
# make test: the whole suite against real Postgres and Redis (configured or local).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/airflow_env.sh || exit 1
# Tests build their own Airflow homes; this one is only the default for ad-hoc CLI calls.
export AIRFLOW_HOME="$ROOT/.local/airflow-test"
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "make test: pytest collected no tests — treating that as a failure" >&2
  exit 1
fi
exit "$status"
