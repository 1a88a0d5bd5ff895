# `make demo` and `make test` work on a fresh clone: the first run creates .venv, installs
# the pinned dependencies and fetches the pinned Delta and s3a jars into ~/.cache once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test clean

$(INSTALLED): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(INSTALLED)
	$(BIN)/gaming-pipeline fetch-jars

demo: setup
	$(BIN)/gaming-pipeline demo

test: setup
	$(BIN)/ruff check gaming_pipeline gaming_pipeline_tests bench
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache
