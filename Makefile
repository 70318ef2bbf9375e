# Every target bootstraps .venv itself on a fresh machine (Python >= 3.11 with venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench run clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e '.[pcsc-test]' || echo "pyscard did not build (needs swig, libpcsclite-dev): the PC/SC tests will skip"
	touch $(STAMP)

## demo: one whole charging session on simulated hardware (no config, no CSMS needed)
demo: $(STAMP)
	$(BIN)/evse demo

## test: lint, type check and the whole test suite (what CI runs)
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

## bench: reaction time and idle footprint (prints figures; never part of the tests)
bench: $(STAMP)
	$(BIN)/python bench/reaction.py
	$(BIN)/python bench/footprint.py

## run: the daemon with ./config.toml (on a non-Pi machine, simulated hardware)
run: $(STAMP)
	$(BIN)/evse run --config config.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
