# vaegan-ops: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 300
# no usage telemetry from the servers the targets start (pipelines/__init__.py says why)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true

.DEFAULT_GOAL := help
.PHONY: help setup run repro check-champion reproduce test test-slow test-all lint format bench serve ui lock clean \
	serve-team team-down team-restart team-status worker

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv and install the locked dependencies and the project

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e '.[dev]'
	touch $@

run: setup ## run the whole retraining pipeline (PROFILE=quick on CPU, PROFILE=full on a GPU)
	$(BIN)/python -m pipelines.retrain --profile $(PROFILE)

repro: setup ## `dvc repro [STAGES=...]` with the venv on PATH (the stages call `vaegan`): what changed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro $(STAGES)

check-champion: setup ## score the registry's champion on the current test data (fails on drift)
	$(BIN)/python -m pipelines.check_champion

reproduce: setup ## rebuild MODEL (default the champion) from its registry record: identical / equivalent / different
	$(BIN)/vaegan reproduce $(MODEL) $(ARGS)

test: setup ## run the fast test suite (the tests not marked slow)
	$(BIN)/pytest -m "not slow" -q

test-slow: setup ## run only the slow tests (end to end: flows, DVC, bench, DDP, resume)
	$(BIN)/pytest -m slow -q --durations=20

test-all: setup ## run every test, slow ones included
	$(BIN)/pytest -q

lint: setup ## ruff and mypy
	$(BIN)/ruff check src pipelines bench tests tools
	$(BIN)/ruff format --check src pipelines bench tests tools
	$(BIN)/mypy

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src pipelines bench tests tools
	$(BIN)/ruff format src pipelines bench tests tools

bench: setup ## measure speed and memory of every stage (writes bench/results/<device>.json)
	$(BIN)/python -m bench.run

serve: setup ## start Prefect + MLflow servers on 127.0.0.1 and register the deployments
	$(BIN)/python -m pipelines.serve

serve-team: setup ## start the team stack in .team/ (PostgreSQL, S3, MLflow, Prefect, workers); then `source .team/env`
	$(BIN)/python -m vaegan.team up $(ARGS)

team-down: setup ## stop the team stack's workers and servers (the data stays in .team/)
	$(BIN)/python -m vaegan.team down

team-restart: setup ## restart one server of the team stack in place (SERVER=postgres|s3|mlflow|prefect)
	$(BIN)/python -m vaegan.team restart $(SERVER)

team-status: setup ## each server and worker of the team stack: up, stopped or not answering
	$(BIN)/python -m vaegan.team status

POOL ?= vaegan-cpu
worker: setup ## start one more process worker of the team stack on this machine (POOL=vaegan-cpu|vaegan-gpu)
	$(BIN)/python -m vaegan.team worker --pool $(POOL)

ui: setup ## MLflow UI on http://127.0.0.1:5000 over mlflow.db (runs, metrics, registered models)
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db

lock: ## rewrite requirements.lock from the current .venv
	$(BIN)/python tools/lock.py

clean: ## remove outputs that DVC can rebuild (keeps the venv, the DVC cache and mlflow.db)
	rm -rf data/raw data/prepared models/checkpoints reports metrics
