# The two set-up commands of the README: `make serve` and `make test`.
# Both create .venv on first use: the CPU build of torch first (pinned, so that pip does not
# pull a CUDA build), then the project with its test extra.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/kfac-lab serve

# Debian's chromium drives the browser tests; docker-compose only validates the compose file;
# the broker-outage tests start and kill redis-server processes of their own.
SYSTEM_TOOLS := chromium docker-compose redis-server

# The suite runs in one process per core (at most 4), a test file to a process (module
# fixtures start workers and servers once): most of its time is spent waiting on real worker
# processes, which another file's tests fill (docs/testing.md "Time budget").
PARALLEL := --numprocesses=auto --maxprocesses=4 --dist=loadfile

test: lint
	@for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	$(BIN)/pytest $(PARALLEL)

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
