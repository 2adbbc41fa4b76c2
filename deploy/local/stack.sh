#!/usr/bin/env bash
# The local tally stack: API replicas + workers + nginx, as background processes.
#
#   deploy/local/stack.sh start     (re)start: stop what runs, start everything, wait until ready
#   deploy/local/stack.sh stop      stop exactly what `start` started (by pid files)
#   deploy/local/stack.sh restart   same as start
#   deploy/local/stack.sh status    which tracked processes are alive (exit 1 if one died)
#   deploy/local/stack.sh logs      tail -F every log of the stack
#
# Normally driven by the Makefile (`make up`, `make down`, `make status`, `make logs`),
# which first starts PostgreSQL/RabbitMQ (services.sh), builds and migrates. This
# script never touches PostgreSQL or RabbitMQ.
#
# Env (all optional):
#   API_REPLICAS=3   API replicas, api-i listens on 127.0.0.1:$((API_BASE_PORT+i-1))
#   API_BASE_PORT=8001
#   WORKERS=2        worker processes (tally-worker run)
#   WORKER_METRICS_BASE_PORT=9101  worker-i serves GET /metrics on
#                    127.0.0.1:$((WORKER_METRICS_BASE_PORT+i-1)) (the API replicas serve
#                    theirs on their own port, and nginx's /metrics reaches one of them)
#   PORT=8080        nginx listen port (127.0.0.1)
#   BIN_DIR          where tally-api / tally-worker are (default target/release, or
#                    $CARGO_TARGET_DIR/release); API_BIN / WORKER_BIN override each binary
#   NGINX=nginx      nginx binary
#   RATE_LIMIT=5000r/s, RATE_BURST=10000
#                    nginx's per-client-address rate limit (limit_req; over it: 429)
#   KEY_RATE_LIMIT=2000r/s, KEY_RATE_BURST=4000
#                    nginx's per-API-key rate limit, in addition (keyed by the key's id)
#   TLS_CERT, TLS_KEY  PEM certificate (chain) and key: nginx then serves HTTPS on PORT
#                    (TLS 1.2/1.3); unset: plain HTTP
#   AUTH=on          API keys (auth.enabled). On: the first start creates an admin key and a
#                    read/write key (transactions:write, ledger:read) with `tally keys create`
#                    and writes them to .run/keys.env (mode 600); later starts keep them while
#                    they are valid in the database. off: TALLY_AUTH__ENABLED=false, no key
#                    needed (the API warns at start and on /status).
#   TALLY_BIN        the `tally` operator binary (default $BIN_DIR/tally)
#   READY_TIMEOUT=30 seconds to wait for every replica's /health/ready
#   STOP_TIMEOUT=10  seconds between SIGTERM and SIGKILL when stopping
#   TALLY_PROFILE=local, TALLY_DATABASE__URL, TALLY_BROKER__URL, RUST_LOG ... are passed
#   through to the processes unchanged; each API replica gets TALLY_API__HOST=127.0.0.1
#   and TALLY_API__PORT, each worker TALLY_WORKER__METRICS_ADDR; NO_COLOR=1 unless set
#   (logs are files).
#
# Layout (all under .run/, git-ignored):
#   .run/pids/<name>.pid    api-1..N, worker-1..M (plain pid, one line)
#   .run/logs/<name>.log    stdout+stderr of each process (previous run: <name>.log.prev)
#   .run/nginx/             nginx prefix: nginx.conf (rendered), nginx.pid, logs/, tmp/
#   .run/keys.env           TALLY_ADMIN_KEY=… and TALLY_API_KEY=… (AUTH=on), readable by its
#                           owner only: `. .run/keys.env` in a shell
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN=$ROOT/.run
PIDS=$RUN/pids
LOGS=$RUN/logs
NGX=$RUN/nginx
TEMPLATE=$ROOT/nginx/local.conf.template

API_REPLICAS=${API_REPLICAS:-3}
API_BASE_PORT=${API_BASE_PORT:-8001}
WORKERS=${WORKERS:-2}
WORKER_METRICS_BASE_PORT=${WORKER_METRICS_BASE_PORT:-9101}
PORT=${PORT:-8080}
READY_TIMEOUT=${READY_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
NGINX=${NGINX:-nginx}
RATE_LIMIT=${RATE_LIMIT:-5000r/s}
RATE_BURST=${RATE_BURST:-10000}
KEY_RATE_LIMIT=${KEY_RATE_LIMIT:-2000r/s}
KEY_RATE_BURST=${KEY_RATE_BURST:-4000}
TLS_CERT=${TLS_CERT:-}
TLS_KEY=${TLS_KEY:-}
SCHEME=http
[[ -z $TLS_CERT ]] || SCHEME=https
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR # cargo resolves it from the workspace root
BIN_DIR=${BIN_DIR:-$TARGET_DIR/release}
API_BIN=${API_BIN:-$BIN_DIR/tally-api}
TALLY_BIN=${TALLY_BIN:-$BIN_DIR/tally}
AUTH=${AUTH:-on}
KEYS_FILE=$RUN/keys.env
WORKER_BIN=${WORKER_BIN:-$BIN_DIR/tally-worker}

say() { echo "stack: $*"; }
warn() { echo "stack: $*" >&2; }
die() { echo "stack: ERROR: $*" >&2; exit 1; }

# ------------------------------------------------------------------ process identity
# A pid file can outlive its process (machine restart, kill -9, .run copied around)
# and the pid can meanwhile belong to an unrelated process. So before signalling a
# pid we check that it is really ours: every process we start carries the marker
# STACK_PROC=<abs .run>/<name> in its environment (/proc/<pid>/environ is fixed at
# exec). The name deliberately does not start with TALLY_: the binaries read
# TALLY_* variables as configuration. A zombie has an empty environ, so a process
# that died but was not reaped yet (PID 1 here reaps lazily) counts as gone.
marker() { echo "STACK_PROC=$RUN/$1"; }
# Exists and is not a zombie. (The state follows the last ")" in /proc/<pid>/stat:
# the command name before it may contain spaces.)
running() {
  local st; { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  [[ ${st:0:1} != [ZX] ]]
}
is_ours() { # pid name
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  local m env try; m=$(marker "$2")
  for try in 1 2 3 4 5; do
    running "$1" || return 1
    env=$(tr '\0' '\n' 2>/dev/null <"/proc/$1/environ") || return 1
    # (return $?, not a bare return: a bare one inside a trap handler -- fail on
    # Ctrl-C -- would return the status from before the trap.)
    if [[ -n $env ]]; then grep -qxF -- "$m" <<<"$env"; return $?; fi
    # A running process with an empty environ is in the middle of an execve
    # (bash -> the binary, or a wrapper script's chain of execs): look again.
    sleep 0.02
  done
  return 1
}
# nginx rewrites its environ area for its process title, so identify the master by
# its title instead: "nginx: master process nginx -p <abs .run/nginx>/ ...".
nginx_is_ours() { # pid
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  local cmd; cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
  [[ $cmd == "nginx: master process"* && $cmd == *" -p $NGX/ "* ]]
}
read_pid() { [[ -f $1 ]] && head -c 32 "$1" | tr -dc 0-9 || true; }
nginx_pid() { read_pid "$NGX/nginx.pid"; }
nginx_alive() { local p; p=$(nginx_pid); [[ -n $p ]] && nginx_is_ours "$p"; }

# Signal the process group (each process is a session/group leader thanks to
# setsid), so anything it may have spawned goes too; fall back to the pid alone.
signal() { kill -s "$1" -- "-$2" 2>/dev/null || kill -s "$1" "$2" 2>/dev/null || true; }

port_in_use() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
api_port() { echo $((API_BASE_PORT + ${1#api-} - 1)); }
worker_metrics_port() { echo $((WORKER_METRICS_BASE_PORT + ${1#worker-} - 1)); }

# ------------------------------------------------------------------ stop
# Stop the processes named by the given pid files: SIGTERM to all at once, wait up
# to STOP_TIMEOUT for all of them, SIGKILL the rest. Removes the pid files.
stop_group() { # label pidfile...
  local label=$1; shift
  local f name pid names=() pids=()
  for f in "$@"; do
    [[ -f $f ]] || continue
    name=$(basename "$f" .pid) pid=$(read_pid "$f")
    if is_ours "$pid" "$name"; then
      names+=("$name") pids+=("$pid")
      signal TERM "$pid"
    else
      say "$name: not running (removing stale pid file)"
      rm -f "$f"
    fi
  done
  ((${#pids[@]})) || return 0
  say "stopping $label: ${names[*]} (SIGTERM)"
  local i j alive
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive=0
    for j in "${!pids[@]}"; do is_ours "${pids[j]}" "${names[j]}" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for j in "${!pids[@]}"; do
    if is_ours "${pids[j]}" "${names[j]}"; then
      warn "${names[j]} (pid ${pids[j]}) still running after ${STOP_TIMEOUT}s: SIGKILL"
      signal KILL "${pids[j]}"
    fi
    rm -f "$PIDS/${names[j]}.pid"
  done
}

stop_nginx() {
  local pid; pid=$(nginx_pid)
  [[ -n $pid ]] || return 0
  if ! nginx_is_ours "$pid"; then
    say "nginx: not running (removing stale pid file)"
    rm -f "$NGX/nginx.pid"
    return 0
  fi
  # SIGQUIT = graceful shutdown (what `nginx -s quit` sends), by pid so that it
  # works even if nginx.conf was edited into an invalid state since.
  say "stopping nginx (pid $pid, graceful quit)"
  kill -s QUIT "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do nginx_is_ours "$pid" || break; sleep 0.1; done
  if nginx_is_ours "$pid"; then
    warn "nginx (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL (master and workers)"
    signal KILL "$pid"
  fi
  rm -f "$NGX/nginx.pid" # nginx removes it on a clean exit, not after SIGKILL
}

cmd_stop() {
  # Order matters: nginx first (no new traffic), then the API replicas (they finish
  # in-flight requests; a withdraw_request waits for a worker's reply, so workers
  # must still run), then the workers. The globs also catch replicas/workers of an
  # earlier run with larger API_REPLICAS/WORKERS. Other files under .run/pids are
  # not ours and left alone.
  local any=0
  compgen -G "$PIDS/api-*.pid" >/dev/null && any=1
  compgen -G "$PIDS/worker-*.pid" >/dev/null && any=1
  [[ -f $NGX/nginx.pid ]] && any=1
  if ((!any)); then say "nothing running"; return 0; fi
  stop_nginx
  shopt -s nullglob
  stop_group "API replicas" "$PIDS"/api-*.pid
  stop_group "workers" "$PIDS"/worker-*.pid
  shopt -u nullglob
  say "stopped (PostgreSQL and RabbitMQ left running)"
}

# ------------------------------------------------------------------ API keys
# The local stack's two keys (`tally keys init`): kept while valid in the database, else
# created (a first start, a new database, a revoked key) and written to $KEYS_FILE, mode 600.
ensure_keys() {
  [[ -x $TALLY_BIN ]] || die "$TALLY_BIN not found or not executable (build first: make build)"
  "$TALLY_BIN" keys init --out "$KEYS_FILE" --name-prefix local ||
    die "could not set up the API keys ($TALLY_BIN keys init; is the database migrated?)"
}

# ------------------------------------------------------------------ start
validate() {
  local v
  for v in API_REPLICAS WORKERS PORT API_BASE_PORT WORKER_METRICS_BASE_PORT READY_TIMEOUT STOP_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
  done
  ((API_REPLICAS >= 1)) || die "API_REPLICAS must be at least 1"
  ((PORT >= 1 && PORT <= 65535)) || die "PORT must be a TCP port (got $PORT)"
  ((API_BASE_PORT >= 1 && API_BASE_PORT + API_REPLICAS - 1 <= 65535)) || die "API ports out of range"
  ((WORKER_METRICS_BASE_PORT >= 1 && WORKER_METRICS_BASE_PORT + WORKERS - 1 <= 65535)) ||
    die "worker metrics ports out of range"
  local w=$WORKER_METRICS_BASE_PORT
  if ((WORKERS > 0 && w < API_BASE_PORT + API_REPLICAS && API_BASE_PORT < w + WORKERS)) ||
    ((WORKERS > 0 && PORT >= w && PORT < w + WORKERS)); then
    die "worker metrics ports $w..$((w + WORKERS - 1)) collide with PORT or the API replica ports"
  fi
  if ((PORT >= API_BASE_PORT && PORT < API_BASE_PORT + API_REPLICAS)); then
    die "PORT=$PORT collides with the API replica ports $API_BASE_PORT..$((API_BASE_PORT + API_REPLICAS - 1))"
  fi
  [[ -x $API_BIN ]] || die "$API_BIN not found or not executable (build first: make build)"
  ((WORKERS == 0)) || [[ -x $WORKER_BIN ]] || die "$WORKER_BIN not found or not executable (build first: make build)"
  command -v "$NGINX" >/dev/null || die "nginx not found (deploy/local/services.sh installs it)"
  [[ -f $TEMPLATE ]] || die "$TEMPLATE missing"
  [[ $AUTH == on || $AUTH == off ]] || die "AUTH must be on or off (got '$AUTH')"
}

# Start one process in the background, detached from the caller: setsid gives it
# its own session and process group, so it has no controlling terminal (no SIGHUP
# when the terminal closes, no SIGINT from a Ctrl-C aimed at make) and we can
# signal its whole group later. stdin from /dev/null: it must never wait on a
# terminal. The child writes its own pid file (bash's $$ becomes the binary's pid
# through exec), which stays right even if setsid has to fork.
launch() { # name cmd...
  local name=$1; shift
  local pidf=$PIDS/$name.pid log=$LOGS/$name.log
  rm -f "$pidf"
  echo "=== $(date -Is) stack.sh starting $name: $*" >"$log"
  env "$(marker "$name")" setsid bash -c 'echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' \
    "$pidf" "$@" </dev/null >>"$log" 2>&1 &
  local i
  for ((i = 0; i < 250; i++)); do [[ -s $pidf ]] && return 0; sleep 0.02; done
  fail "$name did not start (no pid file); see $log"
}

# Give up: show the culprit's log, stop whatever was started, exit 1.
fail() { # message [logfile]
  trap - INT TERM
  echo "stack: ERROR: $1" >&2
  if [[ -n ${2:-} && -f $2 ]]; then
    echo "---- last lines of $2 ----" >&2
    tail -n 25 "$2" >&2
    echo "----" >&2
  fi
  warn "stopping the partially started stack (logs kept in ${LOGS#"$ROOT"/})"
  cmd_stop >&2 || true
  exit 1
}

alive() { is_ours "$(read_pid "$PIDS/$1.pid")" "$1"; }

# Wait until every API replica answers 200 on /health/ready, failing fast when one
# exits, and after READY_TIMEOUT seconds otherwise.
wait_ready() {
  local pending=() name code still i deadline=$((SECONDS + READY_TIMEOUT))
  for ((i = 1; i <= API_REPLICAS; i++)); do pending+=("api-$i"); done
  say "waiting up to ${READY_TIMEOUT}s for /health/ready on ${#pending[@]} replicas"
  declare -A last=()
  while ((${#pending[@]})); do
    still=()
    for name in "${pending[@]}"; do
      code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 \
        "http://127.0.0.1:$(api_port "$name")/health/ready" 2>/dev/null) || true
      if [[ $code == 200 ]]; then
        say "$name ready on 127.0.0.1:$(api_port "$name")"
        continue
      fi
      alive "$name" || fail "$name exited during startup; see ${LOGS#"$ROOT"/}/$name.log" "$LOGS/$name.log"
      last[$name]=$code
      still+=("$name")
    done
    pending=("${still[@]+"${still[@]}"}")
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      name=${pending[0]}
      code=${last[$name]:-000}
      [[ $code == 000 ]] && code="no answer" || code="last answer HTTP $code"
      fail "$name not ready on 127.0.0.1:$(api_port "$name")/health/ready after ${READY_TIMEOUT}s ($code; also pending: ${pending[*]:1}); see ${LOGS#"$ROOT"/}/$name.log" "$LOGS/$name.log"
    fi
    sleep 0.25
  done
}

render_nginx() {
  local servers='' i conf
  [[ $RATE_LIMIT =~ ^[0-9]+r/[sm]$ ]] || die "RATE_LIMIT must look like 50r/s or 600r/m, not '$RATE_LIMIT'"
  [[ $RATE_BURST =~ ^[0-9]+$ ]] || die "RATE_BURST must be a whole number, not '$RATE_BURST'"
  [[ $KEY_RATE_LIMIT =~ ^[0-9]+r/[sm]$ ]] || die "KEY_RATE_LIMIT must look like 50r/s or 600r/m, not '$KEY_RATE_LIMIT'"
  [[ $KEY_RATE_BURST =~ ^[0-9]+$ ]] || die "KEY_RATE_BURST must be a whole number, not '$KEY_RATE_BURST'"
  for ((i = 0; i < API_REPLICAS; i++)); do
    # max_fails=0: see the comment in the upstream block of the template.
    servers+="        server 127.0.0.1:$((API_BASE_PORT + i)) max_fails=0;"$'\n'
  done
  servers=${servers%$'\n'}
  conf=$(<"$TEMPLATE")
  conf=${conf//@PORT@/$PORT}
  conf=${conf//@UPSTREAM_SERVERS@/$servers}
  # The KEY_ placeholders first: @RATE_LIMIT@ is not a substring of them, but keep the
  # order obvious.
  conf=${conf//@KEY_RATE_LIMIT@/$KEY_RATE_LIMIT}
  conf=${conf//@KEY_RATE_BURST@/$KEY_RATE_BURST}
  conf=${conf//@RATE_LIMIT@/$RATE_LIMIT}
  local listen='' certificate=''
  if [[ -n $TLS_CERT || -n $TLS_KEY ]]; then
    [[ -n $TLS_CERT && -n $TLS_KEY ]] || die "TLS_CERT and TLS_KEY go together"
    local f
    for f in "$TLS_CERT" "$TLS_KEY"; do
      [[ $f == /* && -r $f ]] || die "TLS_CERT / TLS_KEY must be readable absolute paths ('$f')"
    done
    listen=' ssl'
    certificate="        ssl_certificate $TLS_CERT;"$'\n'"        ssl_certificate_key $TLS_KEY;"$'\n'"        ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  conf=${conf//@TLS_LISTEN@/$listen}
  conf=${conf//@TLS_CERTIFICATE@/$certificate}
  conf=${conf//@RATE_BURST@/$RATE_BURST}
  # A placeholder left over means the template and this script disagree.
  if grep -qE '@[A-Z_]+@' <<<"$conf"; then
    die "unknown placeholder in $TEMPLATE: $(grep -oE '@[A-Z_]+@' <<<"$conf" | sort -u | tr '\n' ' ')"
  fi
  mkdir -p "$NGX/logs" "$NGX/tmp"
  printf '%s\n' "$conf" >"$NGX/nginx.conf"
}

start_nginx() {
  render_nginx
  # -e: errors raised before nginx.conf is read go to our prefix too, not to
  # /var/log/nginx (which needs root).
  local out
  if ! out=$("$NGINX" -p "$NGX/" -c nginx.conf -e logs/error.log 2>&1); then
    echo "$out" >&2
    fail "nginx failed to start (config ${NGX#"$ROOT"/}/nginx.conf)" "$NGX/logs/error.log"
  fi
  [[ -z $out ]] || echo "$out"
  # -k: this only asks whether nginx is up; whom the certificate names is the clients' check.
  local i url=$SCHEME://127.0.0.1:$PORT
  for ((i = 0; i < 100; i++)); do
    curl -kfsS -o /dev/null --max-time 2 "$url/health/live" 2>/dev/null && return 0
    sleep 0.1
  done
  curl -kfsS -o /dev/null --max-time 2 "$url/health/live" ||
    fail "nginx started but $url/health/live does not answer" "$NGX/logs/error.log"
}

cmd_start() {
  validate
  # Ctrl-C while waiting: do not leave a half-started stack behind.
  trap 'fail "interrupted"' INT TERM
  mkdir -p "$PIDS" "$LOGS" "$NGX"
  # A second `make up` restarts cleanly instead of duplicating processes.
  cmd_stop
  # Anything still listening on our ports now is not ours: say so instead of
  # letting a replica die with "address in use" (or nginx proxy to a stranger).
  local p
  for ((p = API_BASE_PORT; p < API_BASE_PORT + API_REPLICAS; p++)); do
    port_in_use "$p" && die "127.0.0.1:$p is already in use by another process (see: ss -ltnp 'sport = :$p')"
  done
  for ((p = WORKER_METRICS_BASE_PORT; p < WORKER_METRICS_BASE_PORT + WORKERS; p++)); do
    port_in_use "$p" && die "127.0.0.1:$p (worker metrics) is already in use by another process (see: ss -ltnp 'sport = :$p'); choose another: WORKER_METRICS_BASE_PORT=..."
  done
  port_in_use "$PORT" && die "127.0.0.1:$PORT is already in use by another process (see: ss -ltnp 'sport = :$PORT'); choose another: make up PORT=..."

  # Keep the previous run's logs for post-mortems (<name>.log.prev) and start fresh
  # ones; all of them, so that `make logs` does not follow the log of a replica that
  # an earlier, larger run had.
  local f
  for f in "$LOGS"/*.log; do [[ -f $f ]] && mv -f "$f" "$f.prev"; done

  export TALLY_PROFILE=${TALLY_PROFILE:-local}
  if [[ $AUTH == off ]]; then
    export TALLY_AUTH__ENABLED=false
    warn "AUTH=off: the API asks for no key; anyone who can reach 127.0.0.1:$PORT can move money"
  else
    ensure_keys
  fi
  # Logs go to files: no ANSI colour codes in them (tracing honours NO_COLOR).
  # `NO_COLOR= make up` keeps the colours.
  export NO_COLOR=${NO_COLOR-1}
  say "starting $API_REPLICAS API replicas ($API_BIN) and $WORKERS workers ($WORKER_BIN), profile $TALLY_PROFILE"
  local i
  for ((i = 1; i <= API_REPLICAS; i++)); do
    TALLY_API__HOST=127.0.0.1 TALLY_API__PORT=$((API_BASE_PORT + i - 1)) launch "api-$i" "$API_BIN"
  done
  for ((i = 1; i <= WORKERS; i++)); do
    TALLY_WORKER__METRICS_ADDR=127.0.0.1:$(worker_metrics_port "worker-$i") \
      launch "worker-$i" "$WORKER_BIN" run
  done

  wait_ready
  # Workers have no health endpoint; they had as long as the replicas to fail on
  # bad configuration, an unmigrated database, a shard-count mismatch...
  for ((i = 1; i <= WORKERS; i++)); do
    alive "worker-$i" || fail "worker-$i exited during startup; see ${LOGS#"$ROOT"/}/worker-$i.log" "$LOGS/worker-$i.log"
  done

  start_nginx
  say "nginx (pid $(nginx_pid)) on 127.0.0.1:$PORT -> ${API_REPLICAS} replicas"
  trap - INT TERM
  ((WORKERS == 0)) || say "worker metrics: http://127.0.0.1:$WORKER_METRICS_BASE_PORT/metrics .. :$((WORKER_METRICS_BASE_PORT + WORKERS - 1))/metrics"
  say "up: $SCHEME://127.0.0.1:$PORT   (logs: make logs, status: make status, stop: make down)"
  [[ $AUTH == off ]] || say "API keys in ${KEYS_FILE#"$ROOT"/}: . ${KEYS_FILE#"$ROOT"/}; curl -H \"Authorization: Bearer \$TALLY_API_KEY\" $SCHEME://127.0.0.1:$PORT/account/acc-1"
}

# ------------------------------------------------------------------ status / logs
cmd_status() {
  shopt -s nullglob
  local files=("$PIDS"/api-*.pid "$PIDS"/worker-*.pid) f name pid state dead=0 extra port
  shopt -u nullglob
  if ((${#files[@]} == 0)) && [[ ! -f $NGX/nginx.pid ]]; then
    say "not running"
    return 0
  fi
  printf '%-10s %-8s %-6s %s\n' NAME PID STATE DETAIL
  # Sort api-2 before api-10.
  while IFS= read -r f; do
    name=$(basename "$f" .pid) pid=$(read_pid "$f") extra=''
    if is_ours "$pid" "$name"; then
      state=alive
      if [[ $name == api-* ]]; then
        # The port it was started with (not today's API_BASE_PORT): from its environment.
        port=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | sed -n 's/^TALLY_API__PORT=//p') || true
        extra="127.0.0.1:$port ready=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 1 \
          "http://127.0.0.1:$port/health/ready" 2>/dev/null || true) metrics=http://127.0.0.1:$port/metrics"
      elif [[ $name == worker-* ]]; then
        port=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | sed -n 's/^TALLY_WORKER__METRICS_ADDR=//p') || true
        extra="metrics=http://$port/metrics"
      fi
    else
      state=DEAD dead=1 extra="see ${LOGS#"$ROOT"/}/$name.log"
    fi
    printf '%-10s %-8s %-6s %s\n' "$name" "${pid:-?}" "$state" "$extra"
  done < <(printf '%s\n' "${files[@]}" | sort -V)
  if [[ -f $NGX/nginx.pid ]]; then
    pid=$(nginx_pid)
    if nginx_alive; then
      port=$(grep -oE 'listen 127\.0\.0\.1:[0-9]+' "$NGX/nginx.conf" | head -n 1 | cut -d: -f2)
      printf '%-10s %-8s %-6s %s\n' nginx "$pid" alive "$SCHEME://127.0.0.1:$port live=$(curl -ksS -o /dev/null \
        -w '%{http_code}' --max-time 1 "$SCHEME://127.0.0.1:$port/health/live" 2>/dev/null || true)"
    else
      printf '%-10s %-8s %-6s %s\n' nginx "${pid:-?}" DEAD "see ${NGX#"$ROOT"/}/logs/error.log"
      dead=1
    fi
  fi
  return $dead
}

cmd_logs() {
  shopt -s nullglob
  local files=("$LOGS"/*.log)
  shopt -u nullglob
  [[ -f $NGX/logs/error.log ]] && files+=("$NGX/logs/error.log")
  ((${#files[@]})) || die "no logs under ${LOGS#"$ROOT"/} (start the stack: make up)"
  # -F follows by name: keeps working across a restart (the log is re-created).
  # The access log is left out (one line per request); see .run/nginx/logs/access.log.
  exec tail -n 20 -F "${files[@]}"
}

case ${1:-} in
  start | restart) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  *) echo "usage: $0 start|stop|restart|status|logs" >&2; exit 2 ;;
esac
