# Two commands for a newcomer: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint install kafka-jars redis-server libfaketime docker-compose bench clean

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

# Debian's libfaketime, for the client clock-skew scenario (tests/reliability/test_client_faults.py).
libfaketime:
	@test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime; }

# Docker Compose v2 (the docker CLI plugin), for the `docker compose config` checks of docker/:
# when `docker compose` is missing, it is built from its Go module (proxy.golang.org, Go >= 1.24)
# into ~/.docker/cli-plugins (a few minutes, once; the Go caches make a rebuild fast). No engine
# is needed. Without a docker client there is nothing to plug into: the docker file tests skip.
COMPOSE_VERSION ?= v2.40.3
COMPOSE_PLUGIN_DIR ?= $(or $(DOCKER_CONFIG),$(HOME)/.docker)/cli-plugins
docker-compose:
	@if ! command -v docker >/dev/null; then \
		echo "docker-compose: no docker client, nothing to do"; \
	elif ! docker compose version >/dev/null 2>&1; then \
		command -v go >/dev/null || { echo "docker-compose: building Compose $(COMPOSE_VERSION) needs Go (>= 1.24)" >&2; exit 1; }; \
		echo "docker-compose: building Docker Compose $(COMPOSE_VERSION) from its Go module..."; \
		go mod download github.com/docker/compose/v2@$(COMPOSE_VERSION) && \
		mkdir -p "$(COMPOSE_PLUGIN_DIR)" && \
		cd "$$(go env GOMODCACHE)/github.com/docker/compose/v2@$(COMPOSE_VERSION)" && \
		CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
			-X github.com/docker/compose/v2/internal.Version=$(COMPOSE_VERSION)" \
			-o "$(COMPOSE_PLUGIN_DIR)/docker-compose.tmp" ./cmd && \
		mv "$(COMPOSE_PLUGIN_DIR)/docker-compose.tmp" "$(COMPOSE_PLUGIN_DIR)/docker-compose" && \
		docker compose version; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) kafka-jars redis-server libfaketime docker-compose lint
	$(BIN)/pytest $(PYTEST_ARGS)

run: $(STAMP)
	scripts/run-local.sh

bench: $(STAMP) kafka-jars
	$(BIN)/python -m benchmarks.ingest

clean:
	rm -rf $(VENV) .cache var .mypy_cache .ruff_cache .pytest_cache
