# Serverless EHR — every command a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup local test test-unit test-integration test-infra test-e2e lint format typecheck contracts synth bench lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-17s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements/dev.lock
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed ## Create .venv (with the `ehr` command) and install the Node tools

local: setup ## Set everything up and run the platform on this machine (HOST, PORT)
	$(VENV)/bin/ehr local --host $(HOST) --port $(PORT)

test: setup lint typecheck contracts ## Set everything up and run the whole test suite
	$(PY) -m pytest tests

test-unit: setup ## Unit tests only (no network, fakes)
	$(PY) -m pytest tests/unit

test-integration: setup ## Handlers in-process against moto
	$(PY) -m pytest tests/integration

test-infra: setup ## CDK template assertions and cdk-nag
	$(PY) -m pytest tests/infra

test-e2e: setup ## `ehr local` as a subprocess, over real HTTP
	$(PY) -m pytest tests/e2e

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: setup ## mypy (strict) on the core package
	$(VENV)/bin/mypy

contracts: setup ## The core never imports functions/ or infra/ (import-linter)
	$(VENV)/bin/lint-imports

synth: setup ## Synthesize the CloudFormation template (ENV=dev|prod) with cdk-nag
	node_modules/.bin/cdk synth -q -c env=$(or $(ENV),dev)

bench: setup ## Run the quick benchmarks in tests/bench; results go to tests/bench/results/
	$(PY) tests/bench/bench_cold_import.py
	$(PY) tests/bench/bench_hl7v2.py

lock: ## Re-pin Python dependencies (dev lock and the Lambda layer's) after editing pyproject.toml
	$(VENV)/bin/uv pip compile pyproject.toml --extra local --extra infra --group dev --generate-hashes \
	  --universal --python-version 3.11 --no-header -q -o requirements/dev.lock
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.14 \
	  --python-platform aarch64-manylinux_2_28 --no-header -q -o layers/ehr/requirements.txt

clean: ## Remove the virtual environment, node_modules and build output
	rm -rf $(VENV) node_modules cdk.out build .pytest_cache .mypy_cache .ruff_cache
