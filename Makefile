# The README's two commands are `make demo` and `make test`. Both bootstrap .venv/ first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-daily-month test-deploy crash-storm lint ui sandbox clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/finsync demo

test: $(STAMP)
	$(BIN)/ruff check finsync_pipeline finsync_tests
	$(BIN)/mypy
	$(BIN)/pytest

# A month of nightly runs against one backfill of it, on SQLite and PostgreSQL (minutes).
test-daily-month: $(STAMP)
	$(BIN)/pytest -m slow finsync_tests/test_daily_month.py

# Hundreds of SIGKILLs of a real `finsync run` process group under NetSuite faults (minutes).
crash-storm: $(STAMP)
	$(BIN)/python -m finsync_tests.crash_storm --kills $(or $(KILLS),200)

# finsync deploy (daemon, webserver, PostgreSQL storage) posting a week, a run worker killed.
test-deploy: $(STAMP)
	$(BIN)/pytest -m slow finsync_tests/test_deploy.py

lint: $(STAMP)
	$(BIN)/ruff check finsync_pipeline finsync_tests
	$(BIN)/ruff format --check finsync_pipeline finsync_tests

ui: $(STAMP)
	$(BIN)/finsync ui

sandbox: $(STAMP)
	$(BIN)/finsync sandbox serve --state .finsync/sandbox-serve

clean:
	rm -rf .finsync
