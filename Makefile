# The two commands: `make run` starts the whole embedded system, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/twofa up

# Debian packages the tests use: PostgreSQL (second database backend) and Chromium (browser tests).
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

test: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest
	TWOFA_TEST_DATABASE=postgresql $(BIN)/pytest -m "not single_backend"

lint: $(STAMP)
	$(BIN)/ruff check .

# Benchmarks against the engine floor (README "Benchmarks"; not part of `make test`, ~15 min).
# Options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick" or "--only journey --profile".
.PHONY: bench
bench: $(STAMP)  # the test extra pulls in the bench extra (psutil, py-spy)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Record the workflow histories of a release (run on the release's commit; see tests/record_histories.py).
.PHONY: record-histories
record-histories: $(STAMP)
	@test -n "$(RELEASE)" || { echo "usage: make record-histories RELEASE=<name>"; exit 1; }
	TWOFA_HISTORY_RELEASE=$(RELEASE) $(BIN)/pytest -q tests/record_histories.py

clean:
	rm -rf $(VENV) .data
