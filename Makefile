# The README's two commands: `make run` (demo pipeline) and `make test`.
# Both create .venv and install the project into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
# pytest-xdist workers of `make test` (the tests that share the tiny workflow run keep to one)
TEST_WORKERS ?= 2
HOST ?= 127.0.0.1
PORT ?= 5000
MLFLOW_DIR ?= results
MLFLOW_WORKERS ?= 4
CONFIG ?= config/config.yaml
ALLOWED_HOSTS ?=

.PHONY: run report test lint ui mlflow-server clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tensorflow,pytorch,jax,test]'
	touch $@

## run: the whole pipeline on the synthetic demo corpus, on the CPU, then its HTML report
run: $(STAMP)
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES)
	$(MAKE) report CONFIG=config/demo.yaml
	@echo "Results: results/report.html (tables and plots), results/aggregate/summary.md; MLflow runs: make ui"

## report: Snakemake's self-contained HTML report of the last run of CONFIG
report: $(STAMP)
	$(BIN)/snakemake --configfile $(CONFIG) --report results/report.html

## test: lint, then the whole test suite (the end-to-end tests run the real workflow)
test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks workflow/scripts
	$(BIN)/snakemake --lint --configfile config/demo.yaml

## ui: the MLflow UI on the local store, on loopback only
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db \
		--default-artifact-root results/mlartifacts --host $(HOST) --port $(PORT)

## mlflow-server: a tracking server for jobs on other machines: results/mlflow.db and
## results/mlartifacts behind HTTP, on loopback unless HOST is set; jobs find it through
## MLFLOW_TRACKING_URI. To share it: HOST=0.0.0.0 ALLOWED_HOSTS=<this host's name>:$(PORT)
mlflow-server: $(STAMP)
	mkdir -p $(MLFLOW_DIR)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db \
		--artifacts-destination $(abspath $(MLFLOW_DIR))/mlartifacts \
		--host $(HOST) --port $(PORT) --workers $(MLFLOW_WORKERS) \
		$(if $(ALLOWED_HOSTS),--allowed-hosts $(ALLOWED_HOSTS))

clean:
	rm -rf results logs .snakemake
