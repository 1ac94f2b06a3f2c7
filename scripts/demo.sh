#!/usr/bin/env bash
# make demo: run market_daily end to end for the sample trading day with `airflow dags test`,
# then print what went through each stage, the DLQ and the top scores read back from Redis.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/airflow_env.sh
TRADE_DATE="${DEMO_TRADE_DATE:-2024-11-29}"
AF=".venv/bin/airflow"
PY=".venv/bin/python"

echo "== Airflow home: $AIRFLOW_HOME (SQLite metadata)"
"$AF" db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
"$AF" pools set market_source_api 4 "Vendor API rate limit" >/dev/null
echo "== Market schema"
"$PY" -m market_pipeline.migrate
echo "== airflow dags test market_daily $TRADE_DATE"
set +e
"$AF" dags test market_daily "$TRADE_DATE" >"$AIRFLOW_HOME/dags-test.log" 2>&1
status=$?
set -e
grep -E "Marking run|ERROR|Traceback|failed" "$AIRFLOW_HOME/dags-test.log" | head -20 || true
echo "== Summary"
"$PY" -m market_pipeline.summary --trade-date "$TRADE_DATE" --dag-exit "$status"
