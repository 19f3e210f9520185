# Developer entry points. Needs only python3 (3.11+), node and npm; everything else is installed
# into .venv (PyPI) and node_modules (npm: Azurite) by `make setup`, which the other targets run
# first when needed (stamp files), so `make test` works on a fresh clone.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.requirements-installed
# checkov's pins conflict with the project's (requirements-checkers.txt): a venv of its own.
CHECKERS_VENV ?= .venv-checkers
CHECKERS_STAMP := $(CHECKERS_VENV)/.requirements-installed
NPM_STAMP := node_modules/.npm-ci-done
CHROMIUM := /usr/bin/chromium
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup runtime test lint check run stack bench clean distclean

help:
	@echo "make setup      create .venv (requirements-dev.txt) and .venv-checkers (checkov), install Azurite (npm ci) and Chromium (apt)"
	@echo "make test       ruff, mypy and the whole test suite (PYTEST_ARGS='-k name' to narrow it)"
	@echo "make lint       ruff check + mypy"
	@echo "make check      lint, then test"
	@echo "make run        the main job locally: stand-ins up, bootstrap an identity, run a job with it"
	@echo "make stack      only the stand-ins and Azurite (python -m devstack up), for func start"
	@echo "make bench      the benchmarks under bench/"
	@echo "make clean      caches and local state; 'make distclean' also removes .venv and node_modules"

setup: $(PIP_STAMP) $(CHECKERS_STAMP) $(NPM_STAMP) $(CHROMIUM)

# What running (not testing) needs: no browser.
runtime: $(PIP_STAMP) $(NPM_STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) is older than Python 3.11 (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(PIP_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet -r requirements-dev.txt
	@touch $@

$(CHECKERS_STAMP): requirements-checkers.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) is older than Python 3.11 (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(CHECKERS_VENV)
	$(CHECKERS_VENV)/bin/python -m pip install --disable-pip-version-check --quiet -r requirements-checkers.txt
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed for Azurite (install Node.js 20+)" >&2; exit 1; }
	npm ci --no-audit --no-fund
	@touch $@

# The status page is tested in a real headless browser: Debian's Chromium (no browser download).
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "error: install Chromium at $(CHROMIUM) (Debian: apt-get install chromium)" >&2; exit 1; }
	@if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# pytest exits 5 when it collected no test: a failure here, not a pass.
test: setup lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

lint: runtime
	$(PY) -m ruff check .
	$(PY) -m mypy

check: lint test

# The main job, locally: start the stand-ins, bootstrap an identity end to end, run a job with it.
run: runtime
	$(PY) -m devstack demo

# The stand-ins (and Azurite) alone, for `func start` or your own scripts; Ctrl-C stops them.
stack: runtime
	$(PY) -m devstack up

bench: runtime
	@if [ -f bench/__main__.py ]; then $(PY) -m bench $(BENCH_ARGS); \
		else echo "no benchmarks yet (bench/__main__.py)"; fi

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis .devstack test-artifacts bench/results
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './node_modules/*' -prune \
		-exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(CHECKERS_VENV) node_modules
