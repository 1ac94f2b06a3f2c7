#!/usr/bin/env bash
# make test: the whole suite against real Postgres and Redis (configured or local).
# make test-fast (--fast): only the tests that start no Airflow process (no cluster, no
# `airflow dags test`), the edit-test loop; any test that tries to start one fails there.
set -uo pipefail
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  export MARKET_TEST_TIER=fast
  tier=(-m "not airflow")
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/airflow_env.sh || exit 1
# Tests build their own Airflow homes; this one is only the default for ad-hoc CLI calls.
export AIRFLOW_HOME="$ROOT/.local/airflow-test"
.venv/bin/python -m pytest "${tier[@]}" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "make test: pytest collected no tests — treating that as a failure" >&2
  exit 1
fi
exit "$status"
