# recast-bench: `make demo` and `make test` work on a fresh machine (they install first when needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pins in pyproject.toml keep pip on torch 2.14.1 from the registry, never the local 2.13.0+cpu wheel.
	# A plain PEP 660 editable install (setuptools >= 77, see pyproject.toml): no compat-mode deprecation warnings.
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install the project with dev tools

demo: $(STAMP) ## pretrain a tiny ViT, run several methods on the synthetic stream, print a table (offline, < 5 min)
	$(BIN)/recast-bench demo --out runs/demo

test: $(STAMP) ## run the test suite (CPU, includes the slow end-to-end tests)
	$(BIN)/pytest -q

test-fast: $(STAMP) ## run the tests not marked slow
	$(BIN)/pytest -q -m "not slow"

quality: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

perf: $(STAMP) ## measure speed and size figures into perf/perf.json and perf/perf.md
	$(BIN)/recast-bench perf --out perf

# gpu-check runs on this checkout's virtualenv when it is installed, else on $(PYTHON) when that already has torch (a
# CUDA image with the stack preinstalled: no virtualenv is built, and a missing package is one line saying how to
# install it), else it installs the virtualenv first.
gpu-check: ## GPU smoke test in < 8 min: preflight, every case, throughput and fixed costs -> gpu-check.json (CPU form without CUDA)
	@if [ -f $(STAMP) ]; then py=$(PY); \
	elif $(PYTHON) -m recast_bench.gpucheck.stack --has torch; then py=$(PYTHON); \
	else $(MAKE) --no-print-directory install && py=$(PY); fi; \
	echo "gpu-check: with $$py"; $$py -m recast_bench.gpucheck --out gpu-check.json $(GPU_CHECK_ARGS)

clean: ## remove run outputs (keeps data/ and the virtualenv)
	rm -rf runs bench perf outputs multirun

.PHONY: help install demo test test-fast quality format perf gpu-check clean

-include mk/bench.mk
