# isletfit: two commands on a fresh machine (`make demo`, `make test`); only the system python3 is needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Two workers on the 2-core CI machine; override with `make test PYTEST_WORKERS=0`.
# The tests of a module run on one worker (`--dist loadscope`), so its module-scoped
# fixtures (a simulated cohort, a population fit) and compiled programs are built once.
PYTEST_WORKERS ?= 2
PYTEST_DIST := $(if $(filter 0,$(PYTEST_WORKERS)),,--dist loadscope)
# The slowest tests are listed at the end of each run, to keep CI inside its budget.
PYTEST_DURATIONS ?= --durations=15

.PHONY: demo test test-slow test-gpu bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/isletfit demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -n $(PYTEST_WORKERS) $(PYTEST_DIST) $(PYTEST_DURATIONS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -n $(PYTEST_WORKERS) $(PYTEST_DIST) $(PYTEST_DURATIONS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m "gpu"

bench: $(STAMP)
	$(BIN)/python benchmarks/simulate.py --quick
	$(BIN)/python benchmarks/grid.py --quick

lint: $(STAMP)
	$(BIN)/ruff check isletfit tests examples benchmarks
	$(BIN)/ruff format --check isletfit tests examples benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix isletfit tests examples benchmarks
	$(BIN)/ruff format isletfit tests examples benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
