# The commands the README shows. Each sets up what it needs by itself.
PYTHON ?= python3
# pytest-xdist workers for make test-fast (0: one process, no xdist).
TEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast test-faults lint format venv services services-down up down status bench clean

demo: venv ## run market_daily end to end for the sample trading day
	bash scripts/demo.sh

test: venv ## the whole suite: unit, DAG integrity, integration, DAG runs, e2e
	bash scripts/test.sh --lanes

test-fast: venv ## the edit-test loop: every test that starts no Airflow process
	bash scripts/test.sh --fast -n $(TEST_WORKERS) --dist loadfile

test-faults: venv ## the fault tier: database stopped, Redis frozen or restarted (private servers), and the fault suite against a make-up deployment (~5 min)
	bash scripts/test.sh tests/faults -m faults -p no:cacheprovider

up: venv ## a persistent local Airflow: UI, scheduler, dag-processor, triggerer (LocalExecutor)
	@bash -c 'source scripts/airflow_env.sh >/dev/null && exec $(BIN)/python scripts/local_airflow.py up'

down: ## stop it (runs, history, logs and the login stay under .local/airflow-up)
	@$(BIN)/python scripts/local_airflow.py down

status:
	@$(BIN)/python scripts/local_airflow.py status

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-celery.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv || \
		($(BIN)/python -m ensurepip >/dev/null && $(BIN)/python -m pip install -q uv)
	$(BIN)/uv pip install -q --compile-bytecode -p $(BIN)/python -r requirements-dev.txt -e .
	@# numba's on-disk cache of the indicator kernel (~8 s once): the scheduler's preload loads it
	$(BIN)/python -c "from market_pipeline import indicators; indicators.warm_jit()"
	@touch $@

services: venv ## start local Postgres/Redis when no AIRFLOW_CONN_* is set; print their URIs
	$(BIN)/python scripts/services.py up

services-down: ## stop the local Postgres/Redis started under .local/
	-$(BIN)/python scripts/services.py down

bench: venv
	$(BIN)/python bench/bench_indicators.py
	$(BIN)/python bench/bench_publish.py
	$(BIN)/python bench/bench_bootstrap.py
	$(BIN)/python bench/bench_daily_run.py --symbols 200
	$(BIN)/python bench/bench_gates.py --symbols 50

clean: services-down
	rm -rf .local .pytest_cache .ruff_cache
