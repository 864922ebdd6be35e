# make run   : venv + install + init ./var (if absent) + start the system on loopback
# make test  : install test dependencies (Python and, as root, Debian's postfix/swaks) and run every test
# make bench : run the benchmarks
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ROOT ?= ./var

.PHONY: run test bench install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@./.ci/debian-deps

run: install
	@test -d $(ROOT)/control || $(BIN)/mta --root $(ROOT) init || { \
	  echo "make run: per-role users are not possible here (see above); running every component as $$(id -un)"; \
	  $(BIN)/mta --root $(ROOT) init --no-privsep; }
	$(BIN)/mta --root $(ROOT) start

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python -m pytest -q benchmarks --benchmark-only
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
