#!/usr/bin/env bash
# make test: the whole suite against real Postgres and Redis (configured or local).
# make test-fast (--fast): only the tests that start no Airflow process (no cluster, no
# `airflow dags test`), the edit-test loop; any test that tries to start one fails there.
#
# `scripts/test.sh --lanes` (make test) runs the suite as two pytest processes at once:
# the "cluster" lane (every test that runs a whole Airflow deployment: `-m cluster`, set at
# collection by tests/conftest.py) one test after the other, so two deployments never compete
# for the cores, and the "rest" lane beside it. A deployment spends much of its time waiting
# on its own loops, so the two lanes overlap well on two cores. Each lane's output is printed
# when it ends; the exit code is non-zero when either lane failed or collected nothing.
# Other arguments go to pytest as they are (`scripts/test.sh tests/unit -q`).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mode=plain
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  export MARKET_TEST_TIER=fast
  tier=(-m "not airflow")
elif [ "${1:-}" = "--lanes" ]; then
  shift
  mode=lanes
fi
source scripts/airflow_env.sh || exit 1
# Tests build their own Airflow homes; this one is only the default for ad-hoc CLI calls.
export AIRFLOW_HOME="$ROOT/.local/airflow-test"

checked() { # exit status of one pytest run, with "no tests collected" (5) as a failure
  if [ "$1" -eq 5 ]; then
    echo "make test: pytest collected no tests in the $2 lane — treating that as a failure" >&2
    echo 1
  else
    echo "$1"
  fi
}

if [ "$mode" = plain ]; then
  .venv/bin/python -m pytest "${tier[@]}" "$@"
  exit "$(checked $? all)"
fi

logs="$ROOT/.local/test-lanes"
mkdir -p "$logs"
# Each lane lists its slowest tests (what to look at when the run grows).
.venv/bin/python -m pytest -m cluster --durations=15 "$@" >"$logs/cluster.log" 2>&1 &
cluster_pid=$!
.venv/bin/python -m pytest -m "not cluster" --durations=25 "$@" >"$logs/rest.log" 2>&1 &
rest_pid=$!
wait "$rest_pid"
rest=$(checked $? rest)
echo "== rest lane (every test but the whole-deployment ones) — $logs/rest.log"
cat "$logs/rest.log"
wait "$cluster_pid"
cluster=$(checked $? cluster)
echo "== cluster lane (whole Airflow deployments, one at a time) — $logs/cluster.log"
cat "$logs/cluster.log"
summary() { grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$1" | tail -1 | tr -d '='; }
echo "== make test: rest lane:$(summary "$logs/rest.log") (exit $rest); cluster lane:$(summary "$logs/cluster.log") (exit $cluster)"
count() { summary "$1" | grep -oE "[0-9]+ $2" | grep -oE '[0-9]+' || echo 0; }
passed=$(($(count "$logs/rest.log" passed) + $(count "$logs/cluster.log" passed)))
failed=$(($(count "$logs/rest.log" failed) + $(count "$logs/cluster.log" failed) \
  + $(count "$logs/rest.log" error) + $(count "$logs/cluster.log" error)))
echo "make test: $passed passed, $failed failed"
[ "$rest" -eq 0 ] && [ "$cluster" -eq 0 ]
