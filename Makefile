# Both targets build .venv themselves, so a fresh clone needs nothing but python3 (3.11+).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/relay.toml
# What `make lock` writes requirements/ with; pinned so that a refresh changes versions, not format.
UV_VERSION := 0.13.9
# e.g. LOCK_FLAGS=--upgrade (every pin to the newest allowed) or --upgrade-package aiohttp.
LOCK_FLAGS ?=

.PHONY: run test lint bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Dependencies come from the lock, exact versions checked against their hashes; relay itself is
# installed after them with --no-deps, since an editable path has no hash. The stamps depend on
# the lock files so that a refreshed lock reinstalls, and on pyproject.toml for relay's own
# entry points. pip check fails if pyproject.toml gained a dependency that the lock lacks.
$(VENV)/.installed: requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/runtime.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check || { echo "pyproject.toml changed? run: make lock"; exit 1; }
	touch $@

$(VENV)/.installed-test: requirements/test.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/test.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check || { echo "pyproject.toml changed? run: make lock"; exit 1; }
	touch $@

run: $(VENV)/.installed
	$(BIN)/relay serve --config $(CONFIG)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check relay tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two pytest workers (pytest-xdist): most tests wait on sockets, processes and timers, so two at
# once save about a third of the wall time on a 2-core machine; worksteal keeps one long test
# from leaving the other worker idle at the end. Each worker has its own PostgreSQL database.
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal

# bench/requirements.txt is not locked: only make bench uses it, and its numbers are compared
# within one run, never across installs.
bench: $(VENV)/.installed-test
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk"; exit 2; }
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run.py

# Rewrites requirements/ from pyproject.toml: exact versions with the hashes of every file the
# registry has for them, resolved for every platform and Python 3.11+ (--universal), so one lock
# serves make, CI and the container. Pins that still satisfy pyproject.toml are kept unless
# LOCK_FLAGS says otherwise. The test lock is constrained to the runtime one, so both agree.
LOCK = --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
	--quiet $(LOCK_FLAGS)

lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml $(LOCK) -o requirements/runtime.txt
	$(BIN)/uv pip compile pyproject.toml --extra test -c requirements/runtime.txt $(LOCK) \
		-o requirements/test.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
