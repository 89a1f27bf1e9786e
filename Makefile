# The two commands: `make run` starts the whole embedded system, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint system-packages clean admin seed user

# A fresh Debian has Python without the venv module's pip ($(PYTHON)-venv): installed as root,
# else named. A .venv left without pip by a failed try is made again.
$(BIN)/pip:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(notdir $(PYTHON))-venv; \
	  else \
	    echo "missing Debian package: $(notdir $(PYTHON))-venv (sudo apt-get install $(notdir $(PYTHON))-venv)"; exit 1; \
	  fi; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/pip pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/twofa up

# Helpers for a second shell while `make run` is going; with non-default ports or data dir, give
# that shell the same TWOFA_* variables. `twofa` itself is $(BIN)/twofa (not on PATH).
ROLE ?= admin
N ?= 200
admin: $(STAMP)  # a dashboard operator: make admin EMAIL=you@example.com [ROLE=auditor]
	$(BIN)/twofa admin create --email '$(EMAIL)' --role '$(ROLE)'

seed: $(STAMP)  # demo accounts in every 2FA state: make seed [N=200]
	$(BIN)/twofa seed --accounts $(N)

# Without PASSWORD, twofa asks for it (and a PASSWORD given here shows in `ps` while it runs).
user: $(STAMP)  # an end user for the pages: make user EMAIL=ann@example.com [PASSWORD='correct horse']
	@$(if $(PASSWORD),printf '%s\n' '$(subst ','\'',$(PASSWORD))' |) $(BIN)/twofa user create --email '$(EMAIL)'

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
	$(BIN)/mypy twofa bench tests
	$(BIN)/pytest
	TWOFA_TEST_DATABASE=postgresql $(BIN)/pytest -m "not single_backend"

lint: $(STAMP)
	$(BIN)/ruff check .

# Benchmarks against the engine floor (README "Benchmarks"; not part of `make test`, ~17 min).
# Options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick" or "--only journey --profile".
.PHONY: bench
bench: $(STAMP)  # the test extra pulls in the bench extra (psutil, py-spy)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Record the workflow histories of a release (run on the release's commit; see tests/workflows/record_histories.py).
.PHONY: record-histories
record-histories: $(STAMP)
	@test -n "$(RELEASE)" || { echo "usage: make record-histories RELEASE=<name>"; exit 1; }
	TWOFA_HISTORY_RELEASE=$(RELEASE) $(BIN)/pytest -q tests/workflows/record_histories.py

clean:
	rm -rf $(VENV) .data
