# One entry point each for set-up, run, test and lint. Every target creates .venv and
# installs what it needs when missing, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint schema-doc install-service clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

## run: start the daemon in the foreground on the default (XDG) directories and paths.
run: $(STAMP)
	$(BIN)/jobvault run

## test: set up and run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff (lint + format check) and mypy strict on the package.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## install-service: run jobvault as a systemd user service (Linux) or launchd agent (macOS).
install-service: $(STAMP)
	$(BIN)/jobvault service install

## schema-doc: regenerate docs/schema.md from the migrated schema.
schema-doc: $(STAMP)
	$(BIN)/python -m jobvault.store.schema_doc > docs/schema.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
