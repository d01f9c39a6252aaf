# The README's two commands are `make demo` and `make test`. Both bootstrap .venv/ first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint ui sandbox clean

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

lint: $(STAMP)
	$(BIN)/ruff check finsync_pipeline finsync_tests
	$(BIN)/ruff format --check finsync_pipeline finsync_tests

ui: $(STAMP)
	$(BIN)/finsync ui

sandbox: $(STAMP)
	$(BIN)/finsync sandbox serve --state .finsync/sandbox-serve

clean:
	rm -rf .finsync
