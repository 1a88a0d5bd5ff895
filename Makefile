# `make demo` and `make test` work on a fresh clone: the first run creates .venv, installs
# the pinned dependencies and fetches the pinned Delta and s3a jars into ~/.cache once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test unit bench clean

$(INSTALLED): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(INSTALLED)
	$(BIN)/gaming-pipeline fetch-jars

demo: setup
	$(BIN)/gaming-pipeline demo

# Two workers, a test module each at a time (module fixtures stay in one process), the
# minutes-long tests first (conftest.py) so that both workers end together.
test: setup
	$(BIN)/ruff check gaming_pipeline gaming_pipeline_tests bench
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# The fast tier: pure logic only (no Spark, no processes), well under a minute.
unit: $(INSTALLED)
	$(BIN)/pytest -m unit

# Ours side by side with Structured Streaming, Polars + deltalake and bare Spark; writes
# bench/results/side-by-side-<date>.json and .png, and BENCHMARKS.md (about three to four hours: the latency load runs 20 minutes, the sustainable-rate search up to ten loads of 10 minutes, about 12 minutes each with start-up and catch-up, day growth at 8x pre-fills 2,000,000 events, idle cost runs 10 minutes, the games' own parameters' cost two loads of 20 minutes).
bench: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/side_by_side.py

clean:
	rm -rf $(VENV) .pytest_cache
