#!/usr/bin/env bash
# Local backing services for tally: PostgreSQL + RabbitMQ (+ the nginx binary, and
# faketime: the fault suite runs a worker with a shifted clock through libfaketime).
#
#   deploy/local/services.sh          install if missing, start, wait until ready, create role/db
#   deploy/local/services.sh status   report; exit 0 only when both services answer
#   deploy/local/services.sh stop     stop RabbitMQ and PostgreSQL (for fault tests)
#
# Written for a Debian 12 box WITHOUT systemd (containers/VMs, running as root):
# daemons are started directly, never through service/systemctl. Idempotent; a
# second run when everything is up only does cheap probes (no rabbitmqctl).
# Env: TALLY_DB_USER / TALLY_DB_PASSWORD / TALLY_DB_NAME (default tally),
#      WITH_BENCH_TOOLS=1 to also install wrk, WITH_TEST_TOOLS=1 (make test) promtool
#      (prometheus), chromium and chromium-driver.
set -euo pipefail

DB_USER=${TALLY_DB_USER:-tally}
DB_PASSWORD=${TALLY_DB_PASSWORD:-tally}
DB_NAME=${TALLY_DB_NAME:-tally}
PG_WAIT=30 RMQ_WAIT=60
RMQ_NODE=rabbit@localhost
RMQ_LOG=/var/log/rabbitmq/$RMQ_NODE.log

say() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root (installs packages, starts daemons)"

# ---------------------------------------------------------------- probes
# PostgreSQL cluster to use: the highest-version cluster named "main".
# Sets PG_VER PG_PORT PG_STATUS PG_LOG (PG_VER empty when there is none).
pg_cluster() {
  PG_VER='' PG_PORT=5432 PG_STATUS=down PG_LOG=''
  command -v pg_lsclusters >/dev/null || return 0
  read -r PG_VER PG_PORT PG_STATUS PG_LOG < <(pg_lsclusters -h 2>/dev/null |
    awk '$2 == "main" { print $1, $3, $4, $7 }' | sort -V | tail -n 1) || true
  PG_PORT=${PG_PORT:-5432} PG_STATUS=${PG_STATUS:-down}
}
pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }

# RabbitMQ is "ready" only when it speaks AMQP: `rabbitmq-diagnostics ping`
# answers long before the listener is up. Send the 0-9-1 protocol header and
# expect a byte back (Connection.Start frame). Pure bash /dev/tcp: no python
# startup cost; `timeout` bounds a peer that accepts but never answers.
amqp_ready() {
  timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 &&
    printf "AMQP\x00\x00\x09\x01" >&3 && IFS= read -r -t 2 -N 1 _ <&3' 2>/dev/null
}
# Is a RabbitMQ Erlang VM alive (booting, serving, or app stopped)? Cheap pgrep
# instead of rabbitmqctl (~0.7 s per call). -r skips zombies: PID 1 on this
# machine reaps killed daemons lazily.
rmq_vm_alive() { id rabbitmq >/dev/null 2>&1 && pgrep -u rabbitmq -x -r R,S,D,T,I beam.smp >/dev/null; }

# ---------------------------------------------------------------- install
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
ensure_packages() {
  local want=() p
  # The base image ships postgresql-15 without necessarily the "postgresql"
  # metapackage; what we need is a server binary plus postgresql-common.
  if ! command -v pg_ctlcluster >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    want+=(postgresql)
  fi
  for p in rabbitmq-server nginx faketime; do installed "$p" || want+=("$p"); done
  if [[ ${WITH_BENCH_TOOLS:-0} == 1 ]]; then installed wrk || want+=(wrk); fi
  # promtool (package prometheus) checks and unit-tests the alert rules in `make test`;
  # chromium + chromium-driver: the operator console's browser test (tally-e2e browser.rs)
  # drives headless Chromium through chromedriver; under CI it fails without them.
  if [[ ${WITH_TEST_TOOLS:-0} == 1 ]]; then
    for p in prometheus chromium chromium-driver; do installed "$p" || want+=("$p"); done
  fi
  ((${#want[@]})) || return 0
  say "installing ${want[*]} (apt)"
  # policy-rc.d blocks daemon starts during install; we start them ourselves below.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

# ---------------------------------------------------------------- postgresql
start_postgres() {
  pg_cluster
  if [[ -z $PG_VER ]]; then
    # Package postinst normally creates 15/main; recreate if someone dropped it.
    local ver; ver=$(basename "$(ls -d /usr/lib/postgresql/*/ | sort -V | tail -n 1)")
    say "no PostgreSQL cluster found: creating $ver/main"
    pg_createcluster "$ver" main >/dev/null
    pg_cluster
  fi
  [[ $PG_PORT == 5432 ]] || say "WARNING: cluster $PG_VER/main listens on $PG_PORT, not 5432"
  if pg_ready; then say "postgresql ready (127.0.0.1:$PG_PORT)"; return; fi
  if [[ $PG_STATUS != online* ]]; then
    say "starting postgresql $PG_VER/main"
    # pg_ctlcluster removes a stale postmaster.pid itself, but right after a
    # kill -9 the dead postmaster may linger as a zombie (PID 1 here reaps
    # lazily): the socket lock file's PID then looks alive and the start fails.
    # Retry for a few seconds instead of giving up.
    local try err
    for try in 1 2 3 4 5 6; do
      err=$(pg_ctlcluster "$PG_VER" main start 2>&1) && break
      ((try < 6)) || { echo "$err" >&2; die "postgresql failed to start; see $PG_LOG"; }
      sleep 1
    done
  fi
  local i
  for ((i = 0; i < PG_WAIT * 2; i++)); do pg_ready && break; sleep 0.5; done
  pg_ready || die "postgresql not ready on 127.0.0.1:$PG_PORT after ${PG_WAIT}s; see $PG_LOG"
  say "postgresql ready (127.0.0.1:$PG_PORT)"
}

ensure_db() {
  # Create role/db only if missing; ALTER keeps password/attributes/owner in line
  # with the env vars on every run (cheap, idempotent). CREATEDB: tests create a
  # database per test. psql runs from /tmp because postgres can't read $PWD.
  (cd /tmp && runuser -u postgres -- psql -X -q -p "$PG_PORT" -v ON_ERROR_STOP=1 \
    -v u="$DB_USER" -v p="$DB_PASSWORD" -v d="$DB_NAME" >/dev/null) <<'SQL' || die "creating role/database failed (see $PG_LOG)"
SELECT format('CREATE ROLE %I', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'u', :'p') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'d', :'u') \gexec
SQL
  say "postgresql role '$DB_USER' and database '$DB_NAME' ok"
}

# ---------------------------------------------------------------- rabbitmq
write_if_changed() { # path content -> returns 0 when the file was (re)written
  [[ -f $1 ]] && [[ $(<"$1") == "$2" ]] && return 1
  mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; return 0
}
configure_rabbitmq() {
  # Loopback only, and a node name that does not depend on the hostname (the
  # default rabbit@<hostname> breaks rabbitmqctl when the hostname changes).
  local changed=0
  write_if_changed /etc/rabbitmq/rabbitmq-env.conf "NODENAME=$RMQ_NODE
NODE_IP_ADDRESS=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1" && changed=1
  write_if_changed /etc/rabbitmq/rabbitmq.conf "listeners.tcp.default = 127.0.0.1:5672
distribution.listener.interface = 127.0.0.1" && changed=1
  if ((changed)) && rmq_vm_alive; then
    say "WARNING: /etc/rabbitmq changed while a broker runs; restart it: $0 stop && $0"
  fi
}

start_rabbitmq() {
  configure_rabbitmq
  # Fast path: AMQP answers -> nothing else to check (keeps the no-op run cheap).
  if amqp_ready; then say "rabbitmq ready (127.0.0.1:5672)"; return; fi
  if rmq_vm_alive; then
    if rabbitmq-diagnostics is_booting --formatter json 2>/dev/null | grep -q '"result":false'; then
      # Reachable, not booting, yet no AMQP: app stopped (`rabbitmqctl stop_app`),
      # or a node still shutting down. Not fatal: the loop below relaunches it.
      say "rabbitmq node up without AMQP: start_app"
      rabbitmqctl -q start_app >/dev/null 2>&1 || say "start_app failed; waiting"
    else
      say "rabbitmq node up but not answering yet (booting or exiting); waiting"
    fi
  fi
  # Boot is CPU-bound: 12-25 s on 2 cores. `await_startup` right after
  # -detached fails (node not registered yet), so poll AMQP first.
  # The VM is (re)launched from inside the loop so that a node that was still
  # exiting (`rabbitmqctl stop` returns before beam.smp is gone) gets restarted.
  local i launched=-1
  for ((i = 0; i < RMQ_WAIT * 2; i++)); do
    amqp_ready && break
    if ! rmq_vm_alive; then
      if ((launched < 0)); then
        # A leftover epmd (it survives `rabbitmqctl stop`) is fine: the node re-registers.
        say "starting rabbitmq ($RMQ_NODE)"
        rabbitmq-server -detached || die "rabbitmq-server failed to launch; see $RMQ_LOG"
        launched=$i
      elif ((i - launched > 10)); then
        die "rabbitmq exited during boot; see $RMQ_LOG and /var/log/rabbitmq/startup_err"
      fi
    fi
    sleep 0.5
  done
  amqp_ready || die "rabbitmq not serving AMQP on 127.0.0.1:5672 after ${RMQ_WAIT}s; see $RMQ_LOG"
  rabbitmqctl -q await_startup --timeout 30 >/dev/null || die "rabbitmq await_startup failed; see $RMQ_LOG"
  say "rabbitmq ready (127.0.0.1:5672, guest/guest from loopback)"
}

# ---------------------------------------------------------------- commands
cmd_up() {
  ensure_packages
  start_postgres
  ensure_db
  start_rabbitmq
  say "nginx binary: $(command -v nginx) (started by the Makefile, not here)"
}

cmd_stop() {
  pg_cluster
  if [[ -n $PG_VER && $PG_STATUS == online* ]]; then
    pg_ctlcluster "$PG_VER" main stop || die "postgresql stop failed; see $PG_LOG"
    say "postgresql stopped"
  else say "postgresql not running"; fi
  if rmq_vm_alive; then
    # `shutdown` (unlike `stop`) waits for the OS process to exit.
    rabbitmqctl -q shutdown >/dev/null || die "rabbitmq shutdown failed; see $RMQ_LOG"
    say "rabbitmq stopped"
  else say "rabbitmq not running"; fi
  # epmd outlives the node; drop it once nothing is registered so the next
  # start gets a fresh one bound per ERL_EPMD_ADDRESS.
  if command -v epmd >/dev/null && epmd -names 2>/dev/null | grep -q '^epmd: up' &&
     ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null; fi
}

cmd_status() {
  local rc=0
  pg_cluster
  if [[ -n $PG_VER ]] && pg_ready; then say "postgresql ready (127.0.0.1:$PG_PORT, $PG_VER/main)"
  else say "postgresql DOWN (${PG_VER:-no cluster}; log ${PG_LOG:-n/a})"; rc=1; fi
  if amqp_ready; then say "rabbitmq ready (127.0.0.1:5672)"
  elif rmq_vm_alive; then say "rabbitmq node running but AMQP not served (booting or app stopped; log $RMQ_LOG)"; rc=1
  else say "rabbitmq DOWN (log $RMQ_LOG)"; rc=1; fi
  if command -v nginx >/dev/null; then say "nginx installed ($(nginx -v 2>&1 | sed 's/.*: //'))"
  else say "nginx NOT installed"; rc=1; fi
  return $rc
}

case ${1:-up} in
  up | start) cmd_up ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 [up|stop|status]" >&2; exit 2 ;;
esac
