# Herald: `make run` starts the whole service locally, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install clients migrate run worker gateway delivery test test-deps test-fast lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

migrate: install
	$(BIN)/herald migrate

run: install clients  ## migrate, then a worker, a gateway, the HTTP API and herald-delivery in the foreground (Ctrl-C stops all)
	$(BIN)/herald dev

worker: install
	$(BIN)/herald-worker

gateway: install
	$(BIN)/herald-gateway

delivery: install
	$(BIN)/herald-delivery

clients:              ## the browser packages and the demo: npm ci, builds, JS tests, bundle size
	bash .ci/build-clients

test-deps: install    ## chromium, playwright, haproxy: what the suite needs beyond Python packages
	VENV=$(VENV) bash .ci/install-test-deps

# Tests run in TEST_WORKERS processes (pytest-xdist), a file per process at a time: every stack a
# test makes has its own vhost, database and ports. The fault tests, which stop RabbitMQ or Postgres,
# then run alone.
TEST_WORKERS ?= 3
PARALLEL_TESTS = $(BIN)/pytest -m "not fault" -n $(TEST_WORKERS) --dist loadfile

test: test-deps clients ## the whole suite against the local RabbitMQ and Postgres, nothing skipped
	$(PARALLEL_TESTS)
	$(BIN)/pytest -m fault

test-fast: test-deps clients ## everything but the fault tests
	$(PARALLEL_TESTS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/worker_throughput.py
	$(BIN)/python bench/gateway_fanout.py
	$(BIN)/python bench/requests.py
	$(BIN)/python bench/connect_storm.py
	$(BIN)/python bench/token_verify.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/broadcast.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
