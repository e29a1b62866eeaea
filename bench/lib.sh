# shellcheck shell=bash
# Shell helpers shared by bench/run.sh, bench/soak.sh and bench/ceiling.sh (sourced, not
# run). The caller defines `die`, `WORK`, `PIDS` and `SERVER_MAX_SECONDS`. Only `spawn`
# starts a process, and records it for the caller's cleanup.

# kill_tree PID: stop a process and its descendants (all started by the calling script)
kill_tree() {
  local c
  for c in $(pgrep -P "$1" || true); do kill_tree "$c"; done
  kill -TERM "$1" 2>/dev/null || true
}

# free_port: a loopback port no socket uses (listening, connected or as the local end
# of an outgoing connection), below the kernel's ephemeral range so that no outgoing
# connection takes it before a server binds it; never the same one twice in a run
USED_PORTS=" "
free_port() {
  local p _ lo
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
  for _ in $(seq 1 200); do
    # (an ephemeral range starting this low leaves only the check below)
    if [ "$lo" -gt 11000 ]; then p=$(( 10000 + RANDOM % (lo - 10000) )); else p=$(( 20000 + RANDOM % 40000 )); fi
    [[ $USED_PORTS == *" $p "* ]] && continue
    [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then USED_PORTS+="$p "; echo "$p"; return 0; fi
  done
  die "no free port found"
}

# child_of PID: the server under a `timeout` wrapper (for /proc/PID/stat)
child_of() {
  local parent=$1 c _
  for _ in $(seq 1 200); do
    c=$(pgrep -P "$parent" | head -1 || true)
    [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.05
  done
  die "could not find the child of pid $parent"
}

# spawn OUT ERR CMD...: runs a server in the background under `timeout`
# (SERVER_MAX_SECONDS), adds the wrapper to PIDS and sets SERVER_PID to the server itself;
# OUT and ERR may name the same file
spawn() {
  local out=$1 err=$2; shift 2
  if [ "$out" = "$err" ]; then
    timeout -k 5 "$SERVER_MAX_SECONDS" "$@" >"$out" 2>&1 &
  else
    timeout -k 5 "$SERVER_MAX_SECONDS" "$@" >"$out" 2>"$err" &
  fi
  PIDS+=($!); disown   # no "Killed" job notice from bash at cleanup
  SERVER_PID=$(child_of "${PIDS[-1]}")
}

# wait_http NAME PID URL: until URL answers anything but 000 (connection refused)
wait_http() {
  local name=$1 pid=$2 url=$3 i
  for i in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" != 000 ] && return 0
    kill -0 "$pid" 2>/dev/null || die "$name died (see logs in $WORK; KEEP_WORKDIR=1 keeps them)"
    sleep 0.1
  done
  die "$name not answering on $url after 10 s"
}

# utime+stime in clock ticks of one or more PIDs
cpu_ticks() {
  local p f sum=0
  for p in "$@"; do
    read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
    sum=$(( sum + f[11] + f[12] ))
  done
  echo "$sum"
}

# registry_config DIR PORT: a docker-registry configuration for the runs (filesystem
# storage under DIR/data, deletes on, logs and health checks quiet), written to
# DIR/config.yml
registry_config() {
  mkdir -p "$1/data"
  cat >"$1/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
  formatter: text
storage:
  filesystem:
    rootdirectory: $1/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$2
health:
  storagedriver:
    enabled: false
YML
}

# wait_ready PID OUT ERR: wait (up to 10 s) for scopegate's ready line in OUT; if the
# process dies first, show ERR and stop
wait_ready() {
  local i
  for i in $(seq 1 100); do
    grep -q '^scopegate ready' "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || { cat "$3" >&2; die "scopegate died"; }
    [ "$i" = 100 ] && die "scopegate not ready after 10 s"
    sleep 0.1
  done
}
