# tally — developer entry points. `make` (or `make help`) lists them.
#
# The local stack is plain processes on this machine (no Docker, no systemd):
#   deploy/local/services.sh  PostgreSQL + RabbitMQ (+ installs nginx), shared, long-lived
#   deploy/local/stack.sh     API replicas + workers + nginx, state under .run/
# `make down` stops only the stack; PostgreSQL/RabbitMQ keep running (`make services-down`).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Stack size and port (overridable: make up API_REPLICAS=5 WORKERS=3 PORT=9090).
API_REPLICAS ?= 3
WORKERS ?= 2
PORT ?= 8080
# API keys: on (the first start writes an admin and a read/write key to .run/keys.env) or off.
AUTH ?= on
export API_REPLICAS WORKERS PORT AUTH

CARGO ?= cargo
# Where `cargo build --release` puts the binaries (respects CARGO_TARGET_DIR).
BIN_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))/release
export BIN_DIR

# Run through bash so that a lost exec bit in a checkout does not matter.
SERVICES := bash deploy/local/services.sh
STACK := bash deploy/local/stack.sh

# Database the tests connect to (they create their own tally_test_* databases in it).
TEST_DB_URL ?= $(or $(TALLY_TEST_DATABASE_URL),postgres://tally:tally@127.0.0.1:5432/tally)

.PHONY: help up down status logs services services-down build migrate test alerts-test bench bench-settlement chaos fuzz openapi test-db-clean fmt lint check

help: ## list the targets
	@echo "usage: make <target> [API_REPLICAS=$(API_REPLICAS)] [WORKERS=$(WORKERS)] [PORT=$(PORT)] [AUTH=$(AUTH)]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "Note: 'make down' stops the API replicas, workers and nginx only; PostgreSQL and"
	@echo "RabbitMQ keep running (shared with 'make test'). Stop them with 'make services-down'."

# ---------------------------------------------------------------- local stack
# Sequential on purpose (not prerequisites): the order matters even under make -j.
up: ## services, release build, migrate, API keys (.run/keys.env; AUTH=off: none), then (re)start API_REPLICAS api + WORKERS workers + nginx on PORT
	$(SERVICES)
	$(CARGO) build --release --bins
	$(BIN_DIR)/tally-worker migrate
	$(STACK) start

down: ## stop the stack started by 'make up' (NOT PostgreSQL/RabbitMQ)
	$(STACK) stop

status: ## which stack processes are alive, and the backing services
	@rc=0; $(STACK) status || rc=$$?; $(SERVICES) status || rc=1; exit $$rc

logs: ## follow the stack's logs (.run/logs/*.log and nginx's error log)
	@$(STACK) logs

services: ## install if needed and start PostgreSQL + RabbitMQ, create role/db tally
	$(SERVICES)

services-down: ## stop PostgreSQL and RabbitMQ
	$(SERVICES) stop

build: ## cargo build --release of the binaries
	$(CARGO) build --release --bins

migrate: ## apply the database migrations (release binary)
	$(BIN_DIR)/tally-worker migrate

# ---------------------------------------------------------------- quality
test: ## services, drop leftover test databases, the workspace's tests, the alert rules, the API fuzzer, then chaos SEEDS=9 (every fault kind once)
	WITH_TEST_TOOLS=1 $(SERVICES)
	$(MAKE) test-db-clean
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  echo "$(CARGO) nextest run --workspace --no-fail-fast"; \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  echo "cargo-nextest not found: falling back to cargo test"; \
	  echo "$(CARGO) test --workspace --no-fail-fast"; \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(MAKE) alerts-test
	$(MAKE) fuzz
	$(MAKE) chaos SEEDS=9

# The Prometheus alert rules (deploy/prometheus): syntax, the scrape config, and the fixtures
# that show each rule firing and staying silent. promtool comes with Debian's prometheus
# package (installed by `make test`, or WITH_TEST_TOOLS=1 deploy/local/services.sh).
alerts-test: ## promtool: check the alert rules and scrape config, run their unit tests
	promtool check config deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/alerts.test.yml

# Benchmarks (crates/tally-bench; results and how to read them: BENCHMARKS.md). Baselines,
# worker drain, then HTTP load against `make up` stacks of its own: nginx on BENCH_PORT,
# replicas from BENCH_API_BASE_PORT, database tally_bench and broker prefix bench, recreated
# for each configuration and stopped at the end (it refuses to stop a stack that is already
# running under .run/). About 5 minutes once built. Figures mean something only on a quiet machine:
# BENCH_FLAGS="--wait-quiet 25m" waits for cargo/nextest/tally-chaos to finish first;
# BENCH_FLAGS=--quick tries the whole set out in ~3 minutes. Results: target/bench/.
BENCH_PORT ?= 8090
BENCH_API_BASE_PORT ?= 8201
BENCH_FLAGS ?=
bench: ## benchmark set: baselines, worker drain, HTTP load, scaling -> target/bench/ (BENCHMARKS.md)
	$(SERVICES)
	$(CARGO) build --release --bins
	$(BIN_DIR)/tally-bench suite --port $(BENCH_PORT) --api-base-port $(BENCH_API_BASE_PORT) --bin-dir $(BIN_DIR) $(BENCH_FLAGS)

# One settlement job over 1,000,000 seeded transactions (30 days, 100k accounts), run by one
# release worker in a database and broker prefix of its own: wall time and the worker's peak
# RSS (also a phase of `make bench`). Add e.g. SETTLEMENT_FLAGS="--transactions 200000".
SETTLEMENT_FLAGS ?=
bench-settlement: ## settlement over 1M seeded transactions: wall time + worker peak RSS (BENCHMARKS.md)
	$(SERVICES)
	$(CARGO) build --release -p tally-worker -p tally-bench
	$(BIN_DIR)/tally-bench settlement --bin-dir $(BIN_DIR) --out target/bench/settlement.json $(SETTLEMENT_FLAGS)

# Fault suite (crates/tally-chaos): per seed a fresh database and queue prefix, 2 API
# replicas + 2 workers (debug builds) behind nginx, a modelled workload (clients that retry
# with the same id, give up, or retry with a new id), and the seed's faults (kill -9
# worker/API, all workers restarted, a worker paused past its lease or run with a skewed
# clock, RabbitMQ stop_app/start_app or paused past the confirm timeout, PostgreSQL
# restart, poison message); then every answer is scored against the ledger. It restarts
# and pauses the SHARED RabbitMQ and PostgreSQL: never run it beside `cargo nextest`
# (`test` runs it after). Logs and a report per seed under target/chaos/<seed>/; a table of
# faults per kind and the wall time at the end. CHAOS_FLAGS="--kinds K,K" narrows the kinds.
SEEDS ?= 5
SEED_START ?= 0
DEBUG_BIN_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))/debug
chaos: ## fault suite: seeds SEED_START..SEED_START+SEEDS (default 0..5); SEED=n replays one
	$(SERVICES)
	$(CARGO) build --bins
	$(DEBUG_BIN_DIR)/tally-chaos $(if $(SEED),--seed $(SEED),--seeds $(SEED_START)..$(shell echo $$(($(SEED_START) + $(SEEDS))))) $(CHAOS_FLAGS)

# Tests create one database per test (tally_test_*) and drop it at the end; a crashed
# or interrupted run leaves some behind. Drop them here, best effort. Databases with a
# session open (a concurrent test run) are skipped: no WITH (FORCE), and not even
# attempted, since a plain DROP DATABASE waits up to 5 s for those sessions to end and
# would then pull the database from under that run's own cleanup.
# FUZZ_EXAMPLES per operation and phase, FUZZ_SEED: see deploy/local/fuzz.sh.
fuzz: ## schemathesis (PyPI) from openapi.json against a throw-away API + worker: no 5xx, answers match the spec
	$(SERVICES)
	bash deploy/local/fuzz.sh

# openapi.json is generated from the code (crates/tally-api/src/openapi.rs); the test
# `openapi_json_is_the_document_the_code_generates` fails when the committed file is stale.
openapi: ## regenerate openapi.json from the code (`tally-api openapi`)
	$(CARGO) run -q -p tally-api -- openapi > openapi.json.tmp
	mv openapi.json.tmp openapi.json

test-db-clean: ## drop leftover tally_test_% databases (best effort)
	@echo "dropping leftover tally_test_% databases"
	@printf '%s\n' "SELECT format('DROP DATABASE IF EXISTS %I', d.datname) FROM pg_database d WHERE d.datname LIKE 'tally\_test\_%' AND NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.datname = d.datname) ORDER BY 1 \gexec" \
	  | PGPASSWORD=tally PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=0 "$(TEST_DB_URL)" 2>&1 \
	  | sed 's/^/  (ignored) /' || true

fmt: ## format the code (cargo fmt --all)
	$(CARGO) fmt --all

lint: ## rustfmt check + clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: ## lint, then test
	$(MAKE) lint
	$(MAKE) test
