#!/usr/bin/env bash
# Property-based API fuzzing from openapi.json with schemathesis (PyPI), against a
# throw-away API + worker on their own database and queue prefix.
#
#   deploy/local/fuzz.sh          (what `make fuzz` and `make test` run)
#
# Checks every answer for: no 5xx, a status code the spec lists for that operation, the
# documented content type and headers, and a body that matches the spec's schema — for
# valid and for invalid (negative) inputs, plus 405 for undocumented methods. Fails (exit 1)
# on any finding; schemathesis prints a curl command reproducing each one.
#
# One check is off: positive_data_acceptance ("a schema-valid request must not get a 4xx").
# Some of our rules span fields or state, which JSON Schema cannot say: `from` after `to`,
# `page` together with `cursor`, `requestId` on a deposit, an id reused with another payload.
# Those are 400/422 by design (README "HTTP contract"); every other check stays on.
#
# Env (all optional):
#   FUZZ_EXAMPLES=40   examples per operation and phase (bounded: the run's size is fixed)
#   FUZZ_SEED=1        schemathesis seed (same seed + same spec = same requests)
#   SCHEMATHESIS_VERSION  pinned below; the venv lives in target/fuzz-venv
#   TALLY_TEST_DATABASE_URL, TALLY_TEST_AMQP_URL  as for the tests
# Needs PostgreSQL and RabbitMQ up (make services) and python3 (installs python3-venv if
# missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
say() { echo "fuzz: $*"; }
die() { echo "fuzz: ERROR: $*" >&2; exit 1; }

EXAMPLES=${FUZZ_EXAMPLES:-40}
SEED=${FUZZ_SEED:-1}
# Pinned: a new schemathesis release may add checks; upgrade on purpose, not by accident.
SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
ADMIN_URL=${TALLY_TEST_DATABASE_URL:-postgres://tally:tally@127.0.0.1:5432/tally}
AMQP_URL=${TALLY_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=$TARGET/fuzz-venv

# ------------------------------------------------------------ schemathesis
# The distribution's python3 (what a fresh Debian/Ubuntu has, or gets from apt), not
# whatever a developer put first on PATH.
PY=/usr/bin/python3
if [[ ! -x $VENV/bin/st ]] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$"; then
  if [[ ! -x $PY ]] || ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    say "installing python3 + python3-venv (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$VENV"
  say "installing schemathesis $SCHEMATHESIS_VERSION into ${VENV#"$ROOT"/}"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# ------------------------------------------------------------ the system under test
cargo build -q --bins -p tally-api -p tally-worker -p tally-cli
BIN=$TARGET/debug
suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
DB=tally_test_fuzz_$suffix # tally_test_%: `make test-db-clean` sweeps a leftover
PREFIX=fuzz-$suffix
DB_URL=${ADMIN_URL%/*}/$DB
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOGS=$TARGET/fuzz-logs
mkdir -p "$LOGS"
pids=()

cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 ||
    say "could not drop $DB (make test-db-clean will)"
  # The run's quorum queues (prefix $PREFIX), so nothing is left in RabbitMQ.
  if command -v rabbitmqctl >/dev/null; then
    # `|| true`: no queue of ours on this node (a TALLY_TEST_AMQP_URL elsewhere) makes grep
    # fail, which under `set -e` would end the trap before `exit "$rc"` with status 1.
    rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX" | while read -r q; do
      rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done || true
  fi
  exit "$rc"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
export TALLY_PROFILE=local
export TALLY_DATABASE__URL=$DB_URL TALLY_BROKER__URL=$AMQP_URL TALLY_BROKER__PREFIX=$PREFIX
export TALLY_API__HOST=127.0.0.1 TALLY_API__PORT=$PORT
export TALLY_LOG__FORMAT=json NO_COLOR=1
"$BIN/tally-worker" migrate >"$LOGS/migrate.log" 2>&1 || die "migrate failed (see $LOGS/migrate.log)"
# An admin key: every operation is reachable. schemathesis also sends requests without it
# (its ignored_auth check): those must be 401.
KEY=$("$BIN/tally" keys create --name fuzz --scope admin 2>>"$LOGS/migrate.log") ||
  die "could not create an API key (see $LOGS/migrate.log)"
"$BIN/tally-worker" run >"$LOGS/worker.log" 2>&1 &
pids+=($!)
"$BIN/tally-api" >"$LOGS/api.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 200; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health/ready" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health/ready" || die "API not ready (see $LOGS/api.log)"

# ------------------------------------------------------------ the run
# One worker: hypothesis parses lambda sources with `ast`, and CPython 3.11 can fail that
# under threads ("AST constructor recursion depth mismatch"), an error in the fuzzer, not
# in tally. The run is small enough to stay sequential.
say "schemathesis against http://127.0.0.1:$PORT: $EXAMPLES examples per operation, seed $SEED"
"$VENV/bin/st" run openapi.json \
  --url "http://127.0.0.1:$PORT" \
  --header "Authorization: Bearer $KEY" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 10 \
  --no-color \
  --report junit --report-junit-path "$LOGS/junit.xml"
