# roomcast: `make run` starts the server, `make test` runs every check.
# Both create .venv with a Python >= 3.11 found on PATH.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint types unit bench install dev clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "roomcast needs Python 3.11 or newer on PATH" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

run: install
	$(BIN)/roomcast serve $(ARGS)

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

types: dev
	$(BIN)/mypy

# No network, no services: tests/conftest.py refuses IP sockets under ROOMCAST_TEST_OFFLINE=1.
unit: dev
	ROOMCAST_TEST_OFFLINE=1 $(BIN)/pytest tests --ignore=tests/integration -m "not postgres and not redis"

# Three workers per two cores (pytest-xdist): the end-to-end tests mostly wait on
# servers. With one worker per core the suite used 61 % of two cores and took
# 10 min 31 s; with three, 8 min 46 s (docs/benchmarks.md, "The test suite").
TEST_WORKERS ?= $(shell $(BIN)/python -c 'import os; print(max(2, len(os.sched_getaffinity(0)) * 3 // 2))')

test: lint types
	$(BIN)/pytest -n $(TEST_WORKERS)

bench: dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
