# One-command entry points (see README). `make demo` sets up and runs the main job on the
# built-in demo data; `make test` sets up and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines take the local CPU build of torch; set CONSTRAINTS= to use your own torch.
CONSTRAINTS ?= requirements/cpu-constraints.txt
PIP := $(BIN)/python -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: setup setup-test sysdeps demo test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.setup: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e ".[napari,distributed]"
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup
	$(PIP) -e ".[test]"
	touch $@

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

sysdeps:
	bash scripts/install-sysdeps.sh

demo: setup
	$(BIN)/alregions demo

test: setup-test sysdeps
	$(BIN)/python -m pytest

lint: setup
	$(PIP) -q -e ".[lint]"
	$(BIN)/ruff check src tests benchmarks docs

bench: setup-test
	$(BIN)/python benchmarks/bench_io.py
	$(BIN)/python benchmarks/bench_labels.py
	$(BIN)/python benchmarks/bench_selection.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_readers.py
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_pool.py
	$(BIN)/python benchmarks/bench_ui.py
	$(BIN)/python benchmarks/bench_learner.py all
	$(BIN)/python benchmarks/bench_priority_edges.py
