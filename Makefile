# Two commands for a newcomer: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint install kafka-jars redis-server bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Kafka broker jars from Maven Central, cached in .cache/ (and ~/.m2): a second run fetches nothing.
kafka-jars: $(STAMP)
	$(BIN)/python -m gateway.testing.kafka_broker fetch-jars

# Debian's redis-server, for the tests of fleet features (started by the fixtures, not as a service).
redis-server:
	@command -v redis-server >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) kafka-jars redis-server lint
	$(BIN)/pytest $(PYTEST_ARGS)

run: $(STAMP)
	scripts/run-local.sh

bench: $(STAMP) kafka-jars
	$(BIN)/python -m benchmarks.ingest

clean:
	rm -rf $(VENV) .cache var .mypy_cache .ruff_cache .pytest_cache
