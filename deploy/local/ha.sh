#!/usr/bin/env bash
# tally's highly available backing services on this one machine: a RabbitMQ cluster of three
# nodes (quorum queues replicated on all three) and PostgreSQL under pg_auto_failover (a
# monitor and two data nodes with synchronous replication). Every node is a plain process
# with its own name, ports and data directory under HA_DIR; the Debian packages provide the
# binaries.
#
#   deploy/local/ha.sh [up]          install what is missing, start every node that is down,
#                                    cluster the brokers, create role/db, write $HA_RUN/ha.env
#   deploy/local/ha.sh env           the TALLY_* exports that point tally at every node
#   deploy/local/ha.sh status        each node: port, state and role (queue leaders per broker
#                                    node, PostgreSQL primary/secondary); exit 1 if one is down
#   deploy/local/ha.sh stop          stop every node (data kept; `up` brings them back)
#   deploy/local/ha.sh kill rabbit N      kill -9 broker node N (1..3)
#   deploy/local/ha.sh kill rabbit-leader kill -9 the broker node leading the most shard queues
#   deploy/local/ha.sh kill pg-primary    kill -9 the PostgreSQL primary (keeper + postmaster)
#   deploy/local/ha.sh kill pg-standby    kill -9 a PostgreSQL standby (keeper + postmaster)
#   deploy/local/ha.sh kill pg N          kill -9 PostgreSQL data node N (1..2)
#   deploy/local/ha.sh restart rabbit N   stop, then start broker node N (a rolling restart step)
#   deploy/local/ha.sh primary            the port of the current PostgreSQL primary
#
# Every name, port and directory is a variable (defaults in brackets), so a second HA stack
# (tests, development) can run beside the first:
#   HA_DIR [/var/lib/tally-ha]       data, configuration and logs of every node
#   HA_RUN [<repo>/.run]             where ha.env is written (read by make status / make up)
#   HA_RABBIT_NODES ["rabbit@localhost rabbit2@localhost rabbit3@localhost"]
#   HA_RABBIT_PORTS ["5672 5673 5674"]       AMQP, 127.0.0.1
#   HA_RABBIT_DIST_PORTS ["25672 25673 25674"] Erlang distribution, 127.0.0.1
#   HA_PG_MONITOR_PORT [5601]        pg_auto_failover monitor
#   HA_PG_PORTS ["5602 5603"]        the data nodes
#   HA_PG_VERSION [15]
#   TALLY_DB_USER / TALLY_DB_PASSWORD / TALLY_DB_NAME [tally]
#   TALLY_BROKER__PREFIX [tally]     whose shard queues `status` counts leaders of
#
# Failover timing is tuned (see README, "Running highly available"): the monitor checks
# each node every second and declares it unhealthy after 5 s without news; a primary cut
# off from the monitor and its standby demotes itself after 5 s.
#
# Written for a Debian 12 box without systemd, run as root. RabbitMQ nodes run as the
# rabbitmq user, PostgreSQL as postgres. Idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HA_DIR=${HA_DIR:-/var/lib/tally-ha}
HA_RUN=${HA_RUN:-$ROOT/.run}
read -r -a RMQ_NODES <<<"${HA_RABBIT_NODES:-rabbit@localhost rabbit2@localhost rabbit3@localhost}"
read -r -a RMQ_PORTS <<<"${HA_RABBIT_PORTS:-5672 5673 5674}"
read -r -a RMQ_DIST <<<"${HA_RABBIT_DIST_PORTS:-25672 25673 25674}"
PG_MONITOR_PORT=${HA_PG_MONITOR_PORT:-5601}
read -r -a PG_PORTS <<<"${HA_PG_PORTS:-5602 5603}"
PG_VERSION=${HA_PG_VERSION:-15}
DB_USER=${TALLY_DB_USER:-tally}
DB_PASSWORD=${TALLY_DB_PASSWORD:-tally}
DB_NAME=${TALLY_DB_NAME:-tally}
PREFIX=${TALLY_BROKER__PREFIX:-tally}
RMQ_BASE=$HA_DIR/rabbitmq
PG_BASE=$HA_DIR/postgresql
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
BOOT_WAIT=120

say() { echo "ha: $*"; }
die() { echo "ha: ERROR: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root (installs packages, starts daemons as rabbitmq and postgres)"
((${#RMQ_NODES[@]} == ${#RMQ_PORTS[@]} && ${#RMQ_NODES[@]} == ${#RMQ_DIST[@]})) ||
  die "HA_RABBIT_NODES, HA_RABBIT_PORTS and HA_RABBIT_DIST_PORTS must have as many entries"
((${#PG_PORTS[@]} >= 2)) || die "HA_PG_PORTS needs at least two data nodes"

# ---------------------------------------------------------------- install
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *'ok installed'* ]]; }
ensure_packages() {
  local want=() p
  for p in rabbitmq-server nginx "postgresql-$PG_VERSION" "postgresql-$PG_VERSION-auto-failover" pg-auto-failover-cli; do
    installed "$p" || want+=("$p")
  done
  ((${#want[@]})) || return 0
  say "installing ${want[*]} (apt)"
  # policy-rc.d keeps the packages from starting daemons; this script starts its own.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

# ---------------------------------------------------------------- rabbitmq
amqp_ready() { # port
  timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' &&
    printf "AMQP\x00\x00\x09\x01" >&3 && IFS= read -r -t 2 -N 1 _ <&3' 2>/dev/null
}
rmq_dir() { echo "$RMQ_BASE/${RMQ_NODES[$1]%%@*}"; }
rmq_pid() { # i -> pid of the node's VM when it runs: the beam.smp started with its env file
  # (RabbitMQ's own pid file is not written on every start, and a zombie has no environ).
  local p want
  want="RABBITMQ_CONF_ENV_FILE=$(rmq_dir "$1")/rabbitmq-env.conf"
  for p in $(pgrep -u rabbitmq -x beam.smp); do
    # -z: the environment is NUL-separated. (No pipe into grep -q: under pipefail the
    # writer's SIGPIPE would turn a match into a failure.)
    if grep -qzxF -- "$want" "/proc/$p/environ" 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
ctl() { # i args... : rabbitmqctl against node i
  local i=$1; shift
  rabbitmqctl -q -n "${RMQ_NODES[$i]}" "$@"
}

rmq_configure() { # i
  local dir; dir=$(rmq_dir "$1")
  mkdir -p "$dir/mnesia" "$dir/log"
  # Loopback only, and ports of its own: the global /etc/rabbitmq files pin 5672.
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:${RMQ_PORTS[$1]}
distribution.listener.interface = 127.0.0.1
distribution.listener.port_range.min = ${RMQ_DIST[$1]}
distribution.listener.port_range.max = ${RMQ_DIST[$1]}
loopback_users.guest = true
EOF
  echo '[].' >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq-env.conf" <<EOF
NODENAME=${RMQ_NODES[$1]}
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=${RMQ_PORTS[$1]}
DIST_PORT=${RMQ_DIST[$1]}
ERL_EPMD_ADDRESS=127.0.0.1
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
CONFIG_FILE=$dir/rabbitmq.conf
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
EOF
  chown -R rabbitmq:rabbitmq "$dir"
}

rmq_launch() { # i
  local port=${RMQ_PORTS[$1]}
  if amqp_ready "$port"; then return 0; fi
  if rmq_pid "$1" >/dev/null; then return 0; fi # booting
  # Something else on our port (the single-node broker of `make up`?) must not be mistaken
  # for a node of ours.
  if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    die "127.0.0.1:$port is taken by a process that is not node ${RMQ_NODES[$1]} of $HA_DIR (the single-node broker? stop it: make services-down)"
  fi
  rmq_configure "$1"
  say "starting ${RMQ_NODES[$1]} (AMQP 127.0.0.1:$port)"
  # HOME: the nodes share the Erlang cookie in /var/lib/rabbitmq (rabbitmqctl finds it too).
  runuser -u rabbitmq -- env RABBITMQ_CONF_ENV_FILE="$(rmq_dir "$1")/rabbitmq-env.conf" \
    HOME=/var/lib/rabbitmq rabbitmq-server -detached >/dev/null 2>&1 ||
    die "rabbitmq-server failed to launch ${RMQ_NODES[$1]}; see $(rmq_dir "$1")/log"
}

rmq_wait() { # i : AMQP served, then the node's own startup done
  local i deadline=$((SECONDS + BOOT_WAIT))
  until amqp_ready "${RMQ_PORTS[$1]}"; do
    ((SECONDS < deadline)) || die "${RMQ_NODES[$1]} not serving AMQP after ${BOOT_WAIT}s; see $(rmq_dir "$1")/log"
    sleep 0.5
  done
  ctl "$1" await_startup --timeout 60 >/dev/null || die "${RMQ_NODES[$1]} await_startup failed"
}

# Node i joins node 0's cluster unless it is in it already (a restarted member rejoins by
# itself). A node joining for the first time gets a replica of every existing shard queue
# (`rabbitmq-queues grow`): queues created before it joined, or by a version of tally that
# declared them without x-quorum-initial-group-size, would otherwise stay on fewer nodes.
rmq_join() { # i
  local me=${RMQ_NODES[$1]} seed=${RMQ_NODES[0]}
  local members
  members=$(ctl "$1" cluster_status --formatter json 2>/dev/null) || true
  if [[ $members == *"\"$seed\""* ]]; then return 0; fi
  say "$me joins $seed"
  ctl "$1" stop_app >/dev/null
  ctl "$1" join_cluster "$seed" >/dev/null || die "$me could not join $seed"
  ctl "$1" start_app >/dev/null
  rmq_wait "$1"
  rabbitmq-queues -q -n "$seed" grow "$me" all --queue-pattern "^$PREFIX\\.shard\\." >/dev/null 2>&1 ||
    say "(no queues to grow onto $me yet)"
}

start_rabbitmq() {
  local i cookie=/var/lib/rabbitmq/.erlang.cookie
  # The nodes (and rabbitmqctl) must share one Erlang cookie. On a fresh machine nobody has
  # made it yet, and three nodes booting at once would each make their own.
  if [[ ! -s $cookie ]]; then
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$cookie"
    chown rabbitmq:rabbitmq "$cookie"
    chmod 400 "$cookie"
  fi
  for i in "${!RMQ_NODES[@]}"; do rmq_launch "$i"; done
}
cluster_rabbitmq() {
  local i
  for i in "${!RMQ_NODES[@]}"; do rmq_wait "$i"; done
  for ((i = 1; i < ${#RMQ_NODES[@]}; i++)); do rmq_join "$i"; done
  # A node that comes back leads nothing (leadership moved away when it died): spread the
  # shard queues' leaders over every node again.
  rabbitmq-queues -q -n "${RMQ_NODES[0]}" rebalance quorum --queue-pattern "^$PREFIX\\.shard\\." >/dev/null 2>&1 ||
    say "(leader rebalance skipped)"
  say "rabbitmq cluster ready: ${RMQ_NODES[*]} (AMQP ${RMQ_PORTS[*]})"
}

# ---------------------------------------------------------------- postgresql
# pg_autoctl runs as postgres with its configuration, state and pid files under PG_BASE.
autoctl() {
  (cd /tmp && runuser -u postgres -- env PATH="$PG_BIN:$PATH" \
    XDG_CONFIG_HOME="$PG_BASE/config" XDG_DATA_HOME="$PG_BASE/data" \
    XDG_RUNTIME_DIR="$PG_BASE/run" pg_autoctl "$@")
}
pg_dir() { echo "$PG_BASE/$1"; } # monitor | node1 | node2 ...
monitor_url() { echo "postgres://autoctl_node@127.0.0.1:$PG_MONITOR_PORT/pg_auto_failover?sslmode=disable"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" 2>/dev/null; }
keeper_running() { autoctl status --pgdata "$(pg_dir "$1")" >/dev/null 2>&1; }

# Starts `pg_autoctl run` for an existing node in its own session (so that `kill` can take
# the keeper and its postgres together, like a machine that dies), logging under PG_BASE.
keeper_launch() { # name
  local dir; dir=$(pg_dir "$1")
  keeper_running "$1" && return 0
  say "starting pg_autoctl $1"
  # No shell of ours stays behind holding the caller's output open: the keeper's are its log.
  (cd /tmp && exec setsid runuser -u postgres -- env PATH="$PG_BIN:$PATH" \
    XDG_CONFIG_HOME="$PG_BASE/config" XDG_DATA_HOME="$PG_BASE/data" \
    XDG_RUNTIME_DIR="$PG_BASE/run" pg_autoctl run --pgdata "$dir") \
    </dev/null >>"$PG_BASE/log/$1.log" 2>&1 &
}

wait_for() { # seconds description command...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < deadline)) || die "$what not reached after ${limit}s; logs: $PG_BASE/log"
    sleep 1
  done
}

# The monitor's states, one line per data node: name port reported assigned.
pg_states() {
  (cd /tmp && runuser -u postgres -- "$PG_BIN/psql" -X -qAt -F ' ' -h 127.0.0.1 -p "$PG_MONITOR_PORT" \
    -d pg_auto_failover -c "SELECT nodename, nodeport, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid" 2>/dev/null)
}
monitor_answers() { pg_states >/dev/null; }
pg_node_state() { pg_states | awk -v n="$1" '$1 == n { print $3 "/" $4 }'; }
pg_has_state() { [[ $(pg_node_state "$1") == "$2/$2" ]]; }
pg_primary_port() { pg_states | awk '$3 == $4 && ($3 == "primary" || $3 == "wait_primary" || $3 == "single") { print $2; exit }'; }
pg_settled() { # a primary and every other node secondary
  local states; states=$(pg_states) || return 1
  grep -qE ' (primary|single) (primary|single)$' <<<"$states" &&
    (($(grep -cE ' secondary secondary$' <<<"$states") == ${#PG_PORTS[@]} - 1))
}

start_monitor() {
  local dir; dir=$(pg_dir monitor)
  mkdir -p "$PG_BASE/config" "$PG_BASE/data" "$PG_BASE/run" "$PG_BASE/log"
  chown -R postgres:postgres "$PG_BASE"
  if [[ ! -f $dir/PG_VERSION ]]; then
    say "creating the pg_auto_failover monitor (127.0.0.1:$PG_MONITOR_PORT)"
    autoctl create monitor --pgdata "$dir" --pgport "$PG_MONITOR_PORT" --hostname 127.0.0.1 \
      --auth trust --no-ssl >>"$PG_BASE/log/monitor.log" 2>&1 || die "creating the monitor failed; see $PG_BASE/log/monitor.log"
  fi
  keeper_launch monitor
  wait_for 60 "monitor on 127.0.0.1:$PG_MONITOR_PORT" pg_ready "$PG_MONITOR_PORT"
  wait_for 30 "monitor extension" monitor_answers
  tune_monitor
}

# Failover in seconds instead of about a minute: health checks every second, a node is
# unhealthy after 5 s without news, a demoted primary is waited for at most 10 s. Settings
# of the pgautofailover extension, reloaded live.
tune_monitor() {
  (cd /tmp && runuser -u postgres -- "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_MONITOR_PORT" -d pg_auto_failover -v ON_ERROR_STOP=1 >/dev/null) <<'SQL'
ALTER SYSTEM SET pgautofailover.health_check_period = 1000;
ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000;
ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1;
ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500;
ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 5000;
ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 10000;
SELECT pg_reload_conf();
SQL
}

# The keeper's side of the same bargain: a primary that hears from neither the monitor nor
# its standby for 5 s demotes itself (so the monitor may promote the standby 10 s in).
tune_keeper() { # name
  local dir; dir=$(pg_dir "$1")
  autoctl config set --pgdata "$dir" timeout.network_partition_timeout 5 >/dev/null
  autoctl config set --pgdata "$dir" timeout.prepare_promotion_catchup 10 >/dev/null
}

start_data_node() { # n (1-based)
  local name=node$1 port=${PG_PORTS[$1 - 1]} dir
  dir=$(pg_dir "$name")
  if [[ ! -f $dir/PG_VERSION ]]; then
    say "creating PostgreSQL data node $name (127.0.0.1:$port)"
    rm -rf "$dir"
    autoctl create postgres --pgdata "$dir" --pgport "$port" --hostname 127.0.0.1 \
      --listen 127.0.0.1 --auth trust --no-ssl --name "$name" --monitor "$(monitor_url)" \
      >>"$PG_BASE/log/$name.log" 2>&1 || die "creating $name failed; see $PG_BASE/log/$name.log"
    tune_keeper "$name"
  fi
  keeper_launch "$name"
}

start_postgres() {
  start_monitor
  local n
  # The first node becomes the primary; the next ones clone it (pg_basebackup), so each
  # waits for the one before to be up.
  for ((n = 1; n <= ${#PG_PORTS[@]}; n++)); do
    start_data_node "$n"
    wait_for 120 "node$n running" pg_ready "${PG_PORTS[$n - 1]}"
  done
  wait_for 120 "a primary with synchronous secondaries" pg_settled
  say "postgresql ready: primary on 127.0.0.1:$(pg_primary_port)"
}

ensure_db() {
  local port; port=$(pg_primary_port)
  (cd /tmp && runuser -u postgres -- "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -d postgres -v ON_ERROR_STOP=1 \
    -v u="$DB_USER" -v p="$DB_PASSWORD" -v d="$DB_NAME" >/dev/null) <<'SQL' || die "creating role/database failed"
SELECT format('CREATE ROLE %I', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'u', :'p') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d') \gexec
SQL
  say "role '$DB_USER' and database '$DB_NAME' ok (on the primary; replicated)"
}

# ---------------------------------------------------------------- what tally is given
database_url() {
  local hosts='' p
  for p in "${PG_PORTS[@]}"; do hosts+="127.0.0.1:$p,"; done
  echo "postgres://$DB_USER:$DB_PASSWORD@${hosts%,}/$DB_NAME?target_session_attrs=read-write"
}
broker_urls() {
  local urls='' p
  for p in "${RMQ_PORTS[@]}"; do urls+="amqp://guest:guest@127.0.0.1:$p/%2f,"; done
  echo "${urls%,}"
}
write_env() {
  mkdir -p "$HA_RUN"
  cat >"$HA_RUN/ha.env" <<EOF
export TALLY_DATABASE__URL='$(database_url)'
export TALLY_BROKER__URLS='$(broker_urls)'
EOF
}

# ---------------------------------------------------------------- faults
kill_group_of() { # pid : the process and its process group (a keeper with its postgres,
  # started by keeper_launch in a session of its own)
  local pgid; pgid=$(ps -o pgid= -p "$1" 2>/dev/null | tr -d ' ') || true
  if [[ -n $pgid && $pgid != 0 && $pgid != 1 && $pgid != "$(ps -o pgid= -p $$ | tr -d ' ')" ]]; then
    kill -9 -- "-$pgid" 2>/dev/null || true
  fi
  kill -9 "$1" 2>/dev/null || true
}

kill_rabbit() { # i
  local pid; pid=$(rmq_pid "$1") || die "${RMQ_NODES[$1]} is not running"
  kill -9 "$pid"
  say "killed ${RMQ_NODES[$1]} (pid $pid)"
}

# Index of the node leading the most shard queues of PREFIX (asked of a live node).
rabbit_leader_index() {
  local i asked='' leader
  for i in "${!RMQ_NODES[@]}"; do
    amqp_ready "${RMQ_PORTS[$i]}" && { asked=$i; break; }
  done
  [[ -n $asked ]] || die "no broker node is up"
  leader=$(ctl "$asked" list_queues name leader --no-table-headers 2>/dev/null |
    awk -v p="^$PREFIX\\\\.shard\\\\." '$1 ~ p { n[$2]++ } END { for (l in n) print n[l], l }' |
    sort -rn | awk 'NR == 1 { print $2 }')
  [[ -n $leader ]] || die "no shard queue of prefix $PREFIX found"
  for i in "${!RMQ_NODES[@]}"; do [[ ${RMQ_NODES[$i]} == "$leader" ]] && { echo "$i"; return; }; done
  die "leader $leader is not one of ${RMQ_NODES[*]}"
}

kill_pg() { # name
  local dir pid; dir=$(pg_dir "$1")
  pid=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null | tr -dc 0-9) || true
  local keeper
  keeper=$(find "$PG_BASE/run" -name pg_autoctl.pid -path "*$1*" -exec head -n 1 {} \; 2>/dev/null | tr -dc 0-9) || true
  [[ -n $pid || -n $keeper ]] || die "$1 is not running"
  [[ -z $keeper ]] || kill_group_of "$keeper"
  [[ -z $pid ]] || kill -9 "$pid" 2>/dev/null || true
  say "killed $1 (keeper ${keeper:-?}, postmaster ${pid:-?})"
}

pg_primary_name() { pg_states | awk '$3 == $4 && ($3 == "primary" || $3 == "wait_primary" || $3 == "single") { print $1; exit }'; }

# ---------------------------------------------------------------- commands
cmd_up() {
  ensure_packages
  mkdir -p "$HA_DIR"
  start_rabbitmq # boots in the background (CPU-bound, ~40 s for three nodes)
  start_postgres
  ensure_db
  cluster_rabbitmq
  write_env
  say "up. tally's settings: eval \"\$($0 env)\"  (written to $HA_RUN/ha.env)"
}

cmd_env() {
  echo "export TALLY_DATABASE__URL='$(database_url)'"
  echo "export TALLY_BROKER__URLS='$(broker_urls)'"
}

cmd_status() {
  local rc=0 i state leaders counts
  counts=''
  for i in "${!RMQ_NODES[@]}"; do
    if amqp_ready "${RMQ_PORTS[$i]}"; then
      counts=$(ctl "$i" list_queues name leader --no-table-headers 2>/dev/null |
        awk -v p="^$PREFIX\\\\.shard\\\\." '$1 ~ p { n[$2]++ } END { for (l in n) print l, n[l] }') || true
      break
    fi
  done
  printf '%-8s %-22s %-16s %-10s %s\n' TIER NODE ADDRESS STATE ROLE
  for i in "${!RMQ_NODES[@]}"; do
    if amqp_ready "${RMQ_PORTS[$i]}"; then state=up
    elif rmq_pid "$i" >/dev/null; then state=booting; rc=1
    else state=DOWN; rc=1; fi
    leaders=$(awk -v n="${RMQ_NODES[$i]}" '$1 == n { print $2 }' <<<"$counts")
    printf '%-8s %-22s %-16s %-10s %s\n' broker "${RMQ_NODES[$i]}" "127.0.0.1:${RMQ_PORTS[$i]}" "$state" \
      "leads ${leaders:-0} shard queues ($PREFIX)"
  done
  if pg_ready "$PG_MONITOR_PORT"; then state=up; else state=DOWN; rc=1; fi
  printf '%-8s %-22s %-16s %-10s %s\n' postgres monitor "127.0.0.1:$PG_MONITOR_PORT" "$state" "pg_auto_failover monitor"
  local n name port role
  for ((n = 1; n <= ${#PG_PORTS[@]}; n++)); do
    name=node$n port=${PG_PORTS[$n - 1]}
    if pg_ready "$port"; then state=up; else state=DOWN; rc=1; fi
    role=$(pg_node_state "$name" 2>/dev/null) || true
    printf '%-8s %-22s %-16s %-10s %s\n' postgres "$name" "127.0.0.1:$port" "$state" "${role:-unknown} (reported/assigned)"
  done
  return $rc
}

cmd_stop() {
  local n i
  for ((n = ${#PG_PORTS[@]}; n >= 1; n--)); do
    if keeper_running "node$n"; then autoctl stop --pgdata "$(pg_dir "node$n")" >/dev/null 2>&1 || true; fi
  done
  if keeper_running monitor; then autoctl stop --pgdata "$(pg_dir monitor)" >/dev/null 2>&1 || true; fi
  for n in monitor $(seq 1 ${#PG_PORTS[@]}); do
    [[ $n == monitor ]] || n=node$n
    wait_for 30 "pg_autoctl $n stopped" bash -c "! [[ -f '$(pg_dir "$n")/postmaster.pid' ]]" || true
  done
  say "postgresql nodes stopped"
  for ((i = ${#RMQ_NODES[@]} - 1; i >= 0; i--)); do
    if rmq_pid "$i" >/dev/null; then
      # `shutdown` waits for the VM to exit.
      ctl "$i" shutdown >/dev/null 2>&1 || kill_rabbit "$i"
    fi
  done
  say "rabbitmq nodes stopped"
  rm -f "$HA_RUN/ha.env"
}

cmd_kill() {
  case ${1:-} in
    rabbit) [[ ${2:-} =~ ^[0-9]+$ ]] || die "usage: $0 kill rabbit N"; kill_rabbit $(($2 - 1)) ;;
    rabbit-leader) kill_rabbit "$(rabbit_leader_index)" ;;
    pg-primary) local p; p=$(pg_primary_name); [[ -n $p ]] || die "no primary"; kill_pg "$p" ;;
    pg-standby) local p; p=$(pg_states | awk '$3 == "secondary" { print $1; exit }'); [[ -n $p ]] || die "no standby"; kill_pg "$p" ;;
    pg) [[ ${2:-} =~ ^[0-9]+$ ]] || die "usage: $0 kill pg N"; kill_pg "node$2" ;;
    *) die "usage: $0 kill rabbit N | rabbit-leader | pg-primary | pg-standby | pg N" ;;
  esac
}

cmd_restart() {
  [[ ${1:-} == rabbit && ${2:-} =~ ^[0-9]+$ ]] || die "usage: $0 restart rabbit N"
  local i=$(($2 - 1))
  ctl "$i" shutdown >/dev/null 2>&1 || true
  rmq_launch "$i"
  rmq_wait "$i"
  say "${RMQ_NODES[$i]} back"
}

case ${1:-up} in
  up | start) cmd_up ;;
  env) cmd_env ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  kill) shift; cmd_kill "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  primary) pg_primary_port ;;
  *) echo "usage: $0 [up|env|status|stop|kill ...|restart rabbit N|primary]" >&2; exit 2 ;;
esac
