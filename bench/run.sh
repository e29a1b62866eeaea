#!/usr/bin/env bash
# scopegate benchmark: the registry direct vs. through scopegate vs. through nginx.
#
# One run builds scopegate (release), then starts on free loopback ports in a temp dir:
#   - Debian's docker-registry (filesystem storage, no access log),
#   - scopegate in front of it, with a token `bench` (read/write on bench/img),
#   - nginx in front of it, set up like distribution's "nginx authentication" recipe
#     (bench/README.md lists the directives), on two ports: one without auth and
#     one with auth_basic against a bcrypt htpasswd file.
# It pushes a small image (for manifests) and uploads two random blobs (BIG_MIB and
# HUGE_MIB), then measures each path:
#   direct      docker-registry, no auth
#   bearer      scopegate, Authorization: Bearer <JWT from scopegate's /token>
#   basic       scopegate, Authorization: Basic bench:<token password>
#   nginx       nginx recipe without auth_basic
#   nginx_auth  nginx recipe with auth_basic (one bcrypt check per request)
# Measurements (each one first checks that its exact request answers 200/201):
#   HEAD manifest    oha   req/s, p50, p99            (MANIFEST_TARGETS)
#   GET  manifest    wrk   req/s, p50, p99            (MANIFEST_TARGETS)
#   token endpoint   oha   tokens/s, p50, p99 of GET /token?service=..&scope=..:pull (Basic)
#   blob GET         curl  MB/s, median of all samples, for BIG_MIB and HUGE_MIB (BLOB_TARGETS)
#   blob PUT         curl  MB/s: POST /blobs/uploads/ then one PUT ?digest= with the whole
#                          blob (monolithic); each must answer 201 with the digest
#   isolation        oha   HEAD through scopegate (bearer) and through nginx with keep-alive
#                          upstream connections, both in front of a static upstream (a second
#                          nginx serving the manifest), at full speed and paced at the
#                          registry's HEAD rate: what each proxy's own work costs per request
# Manifest and blob loads run in ROUNDS rounds, every path once per round, interleaved;
# values are those of the median round, ratios the median of the within-round ratios.
# And around every load: CPU time of registry, scopegate and nginx (/proc/PID/stat) per
# request / per MB, peak RSS (VmHWM, reset before each load via /proc/PID/clear_refs),
# and CPU used by unrelated processes. Prints the numbers, the ratios against direct and
# against nginx, the performance targets (reported only, never fatal), and writes
# bench/results/latest.json (+ raw tool output in bench/results/raw/).
#
# Env knobs (defaults in brackets):
#   DURATION [10s]      length of each oha/wrk load (Ns or Nm)
#   WARMUP [3s]         length of the unrecorded warm-up load per manifest path
#   CONCURRENCY [16]    connections for oha and wrk
#   THREADS [2]         wrk threads
#   ROUNDS [3]          rounds of the manifest and blob loads (paths interleaved)
#   BLOB_REPS [3]       timed transfers per path, size, direction and round (after 1
#                       warm-up in the first round)
#   ISOLATION [1]       0 skips the static-upstream loads
#   BIG_MIB [200]       size of the first blob (MiB)
#   HUGE_MIB [1024]     size of the second blob (MiB); 0 skips it
#   MANIFEST_TARGETS ["direct bearer basic nginx nginx_auth"]  paths for HEAD/GET
#   BLOB_TARGETS     ["direct bearer basic nginx nginx_auth"]  paths for blob GET/PUT
#   TOKEN_BENCH [1]     0 skips the token-endpoint load
#   NGINX_WORKERS [1]   nginx worker_processes (the recipe leaves nginx's default, 1)
#   HTPASSWD_COST [5]   bcrypt cost of the htpasswd entry (htpasswd -B's default, which
#                       is what the recipe's `htpasswd -Bbn` produces)
#   SKIP_BUILD [0]      1 = skip cargo build (uses an existing binary)
#   SCOPEGATE_BIN [${CARGO_TARGET_DIR:-<repo>/target}/release/scopegate]
#   KEEP_WORKDIR [0]    1 = keep the temp dir (logs, configs, data) after the run
#   QUIET_WAIT [0]      wait up to N s for the machine to be <15% busy before measuring
#   RETRIES [2]         redo a measurement during which other processes used more
#   OTHER_MAX [0.25]      than OTHER_MAX cores (after waiting QUIET_WAIT, or 5 s)
#   OHA [oha in PATH or ~/.cargo/bin/oha]
#   SERVER_MAX_SECONDS [3600]  hard lifetime of each server (if the script is SIGKILLed)
# Exit status: 0 ok, 1 setup failure, 2 measurements done but some responses were not
# 200/201 or had errors (see WARN lines and the JSON). Missed targets do not change it.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONCURRENCY=${CONCURRENCY:-16}
THREADS=${THREADS:-2}
BLOB_REPS=${BLOB_REPS:-3}
BIG_MIB=${BIG_MIB:-200}
HUGE_MIB=${HUGE_MIB:-1024}
MANIFEST_TARGETS=${MANIFEST_TARGETS:-direct bearer basic nginx nginx_auth}
BLOB_TARGETS=${BLOB_TARGETS:-direct bearer basic nginx nginx_auth}
TOKEN_BENCH=${TOKEN_BENCH:-1}
ISOLATION=${ISOLATION:-1}
ROUNDS=${ROUNDS:-3}
ROUND=1; RTAG=
NGINX_WORKERS=${NGINX_WORKERS:-1}
HTPASSWD_COST=${HTPASSWD_COST:-5}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_WAIT=${QUIET_WAIT:-0}
RETRIES=${RETRIES:-2}
OTHER_MAX=${OTHER_MAX:-0.25}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
SERVER_MAX_SECONDS=${SERVER_MAX_SECONDS:-3600}
REPO=bench/img
SERVICE=scopegate
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
ALL_TARGETS=(direct bearer basic nginx nginx_auth)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
RESULTS_DIR=$BENCH_DIR/results
SG=${SCOPEGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/scopegate}

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARN: %s\n' "$(date +%H:%M:%S)" "$*" >&2; WARNINGS+=("$*"); }
die()  { printf '[bench %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
WARNINGS=()

# ---------------------------------------------------------------- tools + knobs
OHA=${OHA:-$(command -v oha || true)}
if [ -z "$OHA" ] && [ -x "$HOME/.cargo/bin/oha" ]; then OHA=$HOME/.cargo/bin/oha; fi
if [ -z "$OHA" ] || [ ! -x "$OHA" ]; then die "oha not found (cargo install oha --locked)"; fi
for t in cargo /usr/bin/docker-registry wrk nginx htpasswd jq skopeo curl timeout awk base64 sha256sum ss; do
  command -v "$t" >/dev/null || die "missing tool: $t (apt-get install -y nginx wrk apache2-utils jq skopeo curl)"
done
# seconds for bounding the load tools themselves (DURATION + slack)
dur_seconds() {
  local d=$1
  case $d in
    *s) echo "${d%s}" ;; *m) echo $(( ${d%m} * 60 )) ;; *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "$d" ;;
  esac
}
DUR_S=$(dur_seconds "$DURATION")
[[ $DUR_S =~ ^[0-9]+$ ]] && [ "$DUR_S" -ge 1 ] || die "DURATION must be whole seconds or minutes, e.g. 10s / 1m (got $DURATION)"
LOAD_LIMIT=$(( DUR_S + 30 ))
for v in CONCURRENCY THREADS BLOB_REPS BIG_MIB HUGE_MIB RETRIES QUIET_WAIT NGINX_WORKERS HTPASSWD_COST TOKEN_BENCH ISOLATION ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got ${!v})"
done
[ "$BLOB_REPS" -ge 1 ] && [ "$BIG_MIB" -ge 1 ] && [ "$CONCURRENCY" -ge 1 ] && [ "$NGINX_WORKERS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] \
  || die "BLOB_REPS, BIG_MIB, CONCURRENCY, NGINX_WORKERS, ROUNDS must be >= 1"
[ "$HTPASSWD_COST" -ge 4 ] && [ "$HTPASSWD_COST" -le 17 ] || die "HTPASSWD_COST must be 4..17 (htpasswd -C)"
for v in MANIFEST_TARGETS BLOB_TARGETS; do
  for t in ${!v}; do [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "$v: unknown path '$t' (known: ${ALL_TARGETS[*]})"; done
done
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d /tmp/scopegate-bench.XXXXXX)
PIDS=()        # PIDs started by this script (timeout wrappers of the servers)
SERVER_PIDS=() # the servers under those wrappers
MEASURE_PID=   # running measurement job (a subshell of this script), if any
cleanup() {
  local rc=$? p i
  trap - EXIT INT TERM
  if [ -n "$MEASURE_PID" ]; then kill_tree "$MEASURE_PID"; fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  # still there after 5 s (scopegate drains for up to its grace period): the wrappers
  # and the servers themselves
  for p in "${PIDS[@]}" "${SERVER_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$KEEP_WORKDIR" = 1 ]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
# Subshells reset caught signals to default, and a bash waiting for a child that
# handles SIGINT itself (oha prints its report on Ctrl-C) would simply carry on;
# every measuring subshell calls exit_on_signals.
exit_on_signals() { trap 'exit 130' INT; trap 'exit 143' TERM; }
exit_on_signals

# ---------------------------------------------------------------- process helpers


# start_server NAME LOGFILE CMD...: runs CMD under `timeout`, records the wrapper in
# PIDS and prints the server's own PID
start_server() {
  local name=$1 logf=$2; shift 2
  spawn "$logf" "$logf" "$@"
  SERVER_PIDS+=("$SERVER_PID")
  log "$name started (pid $SERVER_PID)"
}

# Peak RSS: VmHWM (kB) from /proc/PID/status. `echo 5 > clear_refs` resets it to the
# current RSS, so a reset before a load and a read after it give the peak during that
# load. Every value read (after a load, and before each reset) is logged, and the
# whole-run peak is the largest of them (a later VmHWM has been seen below an earlier
# per-load read, so the last read alone can miss a peak).
vm_kib() { awk -v f="$2:" '$1 == f { print $2; exit }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_reset() { # pid...
  local p
  for p in "$@"; do
    vm_kib "$p" VmHWM >>"$WORK/hwm.$p"
    echo 5 2>/dev/null >"/proc/$p/clear_refs" || echo "$p" >>"$WORK/hwm-reset-failed"
  done
}
hwm_sum() { # pid... -> sum of VmHWM in kB (each value read is also logged)
  local p v s=0
  for p in "$@"; do v=$(vm_kib "$p" VmHWM); echo "$v" >>"$WORK/hwm.$p"; s=$(( s + v )); done
  echo "$s"
}
hwm_whole_run() { # pid -> largest VmHWM seen over the run, kB
  { cat "$WORK/hwm.$1" 2>/dev/null; vm_kib "$1" VmHWM; } | sort -n | tail -1
}

# ---------------------------------------------------------------- request helpers
# path -> base URL
base_for() {
  case $1 in
    direct) echo "$REG" ;; bearer|basic) echo "$GW" ;;
    nginx) echo "$NGX" ;; nginx_auth) echo "$NGXA" ;;
  esac
}
# path -> which proxy's CPU/RSS counts as "proxy" for it
proxy_of() { case $1 in bearer|basic|token) echo scopegate ;; nginx|nginx_auth) echo nginx ;; *) echo none ;; esac; }

bearer_token() { # actions (pull | pull,push)
  local t
  t=$(curl -sf --max-time 10 -u "bench:$PASSWORD" \
        "$GW/token?service=$SERVICE&scope=repository:$REPO:$1" | jq -r '.token // empty') || true
  [ -n "$t" ] || die "could not fetch a bearer token ($1) from $GW/token"
  echo "$t"
}
# Authorization header value for a path (a fresh bearer token each call: tokens live 300 s)
auth_for() { # path [actions]
  case $1 in
    direct|nginx) echo "" ;;
    bearer)     echo "Bearer $(bearer_token "${2:-pull}")" ;;
    basic)      echo "Basic $(printf 'bench:%s' "$PASSWORD" | base64 -w0)" ;;
    nginx_auth) echo "Basic $(printf 'bench:%s' "$NGX_PASSWORD" | base64 -w0)" ;;
  esac
}

# curl status check of the exact request about to be loaded.
#   expect_200 METHOD URL AUTH_HEADER_VALUE(or empty)
expect_200() {
  local method=$1 url=$2 auth=$3 code args=(-s -o /dev/null -w '%{http_code}' --max-time 30 -H "Accept: $OCI_MANIFEST")
  [ -n "$auth" ] && args+=(-H "Authorization: $auth")
  if [ "$method" = HEAD ]; then args+=(--head); fi
  code=$(curl "${args[@]}" "$url") || code="curl-failed"
  [ "$code" = 200 ] || die "pre-check $method $url (auth: ${auth%% *}) returned $code, not 200"
}

header_of() { # header-file name -> value of the last such header
  awk -v n="$(tr 'A-Z' 'a-z' <<<"$2")" -F': ' 'tolower($1) == n { v = $2 } END { sub(/\r$/, "", v); print v }' "$1"
}

# One monolithic blob upload: POST /v2/REPO/blobs/uploads/ (202 + Location), then
# PUT <Location>&digest=... with the whole file. Prints "status seconds_of_the_PUT".
# The status is "201" only if the registry also echoed the digest; anything else is
# a short reason. Fails hard (die) only on a Location that leaves the path under test.
blob_upload() { # path file digest size
  local tgt=$1 file=$2 digest=$3 size=$4 base auth code loc res secs args
  base=$(base_for "$tgt"); auth=$(auth_for "$tgt" pull,push)
  args=(-s --max-time 30 -D "$WORK/post.hdr" -o /dev/null -w '%{http_code}' -X POST)
  [ -n "$auth" ] && args+=(-H "Authorization: $auth")
  code=$(curl "${args[@]}" "$base/v2/$REPO/blobs/uploads/") || code=000
  [ "$code" = 202 ] || { echo "POST-$code 0"; return 0; }
  loc=$(header_of "$WORK/post.hdr" Location)
  case $loc in
    /*) loc=$base$loc ;;
    "$base"/*) ;;
    *) die "$tgt: upload Location '$loc' does not point at $base (the PUT would bypass the path under test)" ;;
  esac
  [[ $loc == *\?* ]] && loc+="&digest=$digest" || loc+="?digest=$digest"
  args=(-s --max-time "$(( 60 + size / 5000000 ))" -D "$WORK/put.hdr" -o "$WORK/put.body"
        -w '%{http_code} %{time_total} %{size_upload}' -T "$file"
        -H 'Expect:' -H 'Content-Type: application/octet-stream')
  [ -n "$auth" ] && args+=(-H "Authorization: $auth")
  res=$(curl "${args[@]}" "$loc") || res="000 0 0"
  local up
  read -r code secs up <<<"$res"
  if [ "$code" != 201 ]; then echo "PUT-$code $secs"; return 0; fi
  [ "$up" = "$size" ] || { echo "PUT-sent-$up-bytes $secs"; return 0; }
  [ "$(header_of "$WORK/put.hdr" Docker-Content-Digest)" = "$digest" ] || { echo "PUT-201-wrong-digest $secs"; return 0; }
  echo "201 $secs"
}

# ---------------------------------------------------------------- CPU + RSS accounting
# Around each load, in clock ticks / seconds:
#   registry, gateway (scopegate), nginx (master + workers): utime+stime, /proc/PID/stat
#   client   CPU of this shell's reaped children (`times`): the load tool (oha/wrk/curl)
#            plus a few ms of curl/jq helpers
#   other    whole-machine busy time (/proc/stat) minus all of the above: foreign
#            processes + unattributed kernel work. Well above ~0.1 cores = someone
#            else used the CPU.
#   "proxy"  = scopegate for bearer/basic/token, nginx for nginx/nginx_auth, none for direct
# plus the peak RSS of each server during the load.
# acct_begin/acct_end must run in the same shell as the load they bracket.
machine_busy_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
children_cpu_s() { # file written by `times`
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } }
       END { printf "%.3f", t }' "$1"
}
acct_begin() {
  hwm_reset "$REG_PID" "$GW_PID" "${NGX_PIDS[@]}"
  times >"$WORK/times0"
  ACCT_T0=$(date +%s.%N); ACCT_M0=$(machine_busy_ticks)
  ACCT_R0=$(cpu_ticks "$REG_PID"); ACCT_G0=$(cpu_ticks "$GW_PID"); ACCT_N0=$(cpu_ticks "${NGX_PIDS[@]}")
}
acct_end() { # path requests -> JSON in ACCT_JSON (not $(acct_end): `times` needs this shell)
  local tgt=$1 n=$2 t1 m1 r1 g1 n1
  r1=$(cpu_ticks "$REG_PID"); g1=$(cpu_ticks "$GW_PID"); n1=$(cpu_ticks "${NGX_PIDS[@]}")
  m1=$(machine_busy_ticks); t1=$(date +%s.%N)
  times >"$WORK/times1"
  ACCT_JSON=$(jq -n --argjson hz "$CLK_TCK" --argjson n "$n" --arg proxy "$(proxy_of "$tgt")" \
        --argjson wall "$(awk -v a="$ACCT_T0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        --argjson reg "$(( r1 - ACCT_R0 ))" --argjson gw "$(( g1 - ACCT_G0 ))" --argjson ngx "$(( n1 - ACCT_N0 ))" \
        --argjson mach "$(( m1 - ACCT_M0 ))" \
        --argjson c0 "$(children_cpu_s "$WORK/times0")" --argjson c1 "$(children_cpu_s "$WORK/times1")" \
        --argjson rss_reg "$(hwm_sum "$REG_PID")" --argjson rss_gw "$(hwm_sum "$GW_PID")" \
        --argjson rss_ngx "$(hwm_sum "${NGX_PIDS[@]}")" '
    ($reg / $hz) as $r | ($gw / $hz) as $g | ($ngx / $hz) as $x | ($c1 - $c0) as $c | ($mach / $hz) as $m |
    def per(v): if $n > 0 then v * 1e6 / $n else null end;
    {wall_s: $wall,
     registry_cpu_s: $r, gateway_cpu_s: $g, nginx_cpu_s: $x, client_cpu_s: $c, machine_busy_s: $m,
     registry_us_per_req: per($r),
     gateway_us_per_req: (if $proxy == "scopegate" then per($g) else null end),
     nginx_us_per_req: (if $proxy == "nginx" then per($x) else null end),
     client_us_per_req: per($c),
     registry_cores: ($r / $wall), gateway_cores: ($g / $wall), nginx_cores: ($x / $wall),
     client_cores: ($c / $wall), machine_busy_cores: ($m / $wall),
     other_cores: ((($m - $r - $g - $x - $c) / $wall) * 1000 | round / 1000),
     rss_peak_kib: {registry: $rss_reg, scopegate: $rss_gw, nginx: $rss_ngx}}
    | .proxy = $proxy
    | .proxy_us_per_req = (if $proxy == "scopegate" then .gateway_us_per_req
                           elif $proxy == "nginx" then .nginx_us_per_req else null end)
    | .proxy_cores = (if $proxy == "scopegate" then .gateway_cores
                      elif $proxy == "nginx" then .nginx_cores else null end)
    | .proxy_rss_peak_mib = (if $proxy == "none" then null
                             else .rss_peak_kib[$proxy] / 1024 end)')
}

# Established TCP connections to the registry port, sampled halfway through a load
# (direct: client connections; scopegate: its upstream pool; nginx: its per-request
# upstream connections). Runs in the background and ends on its own after DURATION/2.
conn_sample_start() { # outfile
  ( sleep "$(( (DUR_S + 1) / 2 ))"; ss -Htn state established "( dport = :$REG_PORT )" 2>/dev/null | wc -l >"$1" ) &
  SAMPLER_PID=$!
}
conn_sample_collect() { # outfile -> number or null
  local n; n=$(cat "$1" 2>/dev/null || true); echo "${n:-null}"
}

# ---------------------------------------------------------------- servers
build_scopegate() {
  if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release >&2)
  fi
  [ -x "$SG" ] || die "$SG not built (SCOPEGATE_BIN / CARGO_TARGET_DIR)"
}

start_registry() {
  registry_config "$WORK/registry" "$REG_PORT"
  start_server "docker-registry on $REG" "$WORK/registry.log" \
    /usr/bin/docker-registry serve "$WORK/registry/config.yml"
  REG_PID=$SERVER_PID
  wait_http docker-registry "$REG_PID" "$REG/v2/"
}

# launch_scopegate NAME LISTEN_PORT ADMIN_PORT UPSTREAM: starts scopegate with its own
# data dir and a token `bench` (read/write on bench/img); sets SG_PID and SG_PASSWORD
launch_scopegate() {
  local name=$1 port=$2 admin=$3 upstream=$4 dir=$WORK/$1 token
  mkdir -p "$dir"
  token=bench-admin-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  SCOPEGATE_ADMIN_TOKEN=$token spawn "$dir.out" "$dir.err" "$SG" serve \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --upstream "$upstream" --data-dir "$dir"
  SG_PID=$SERVER_PID
  SERVER_PIDS+=("$SG_PID")
  wait_ready "$SG_PID" "$dir.out" "$dir.err"
  log "$name on 127.0.0.1:$port in front of $upstream (pid $SG_PID): $(head -1 "$dir.out")"
  SCOPEGATE_ADMIN_TOKEN=$token timeout --foreground 30 "$SG" --server "http://127.0.0.1:$admin" token create --name bench \
    --repository "$REPO" content/read content/write metadata/read >"$dir-token.json"
  SG_PASSWORD=$(jq -r '.credentials.passwords[0].value' "$dir-token.json")
  [ -n "$SG_PASSWORD" ] && [ "$SG_PASSWORD" != null ] || die "$name: token create returned no password"
}

start_scopegate() {
  launch_scopegate scopegate "$GW_PORT" "$ADMIN_PORT" "$REG"
  GW_PID=$SG_PID; PASSWORD=$SG_PASSWORD
  GW_RSS_START_KIB=$(vm_kib "$GW_PID" VmRSS)
}

# nginx as distribution's "nginx authentication" recipe configures it, minus TLS (every
# path here is plain HTTP on loopback) and minus its user-agent check for docker <= 1.5.
# Two server blocks share the proxy settings: one with auth_basic, one without.
start_nginx() {
  local d=$WORK/nginx
  mkdir -p "$d"/{client_body,proxy,fastcgi,uwsgi,scgi}
  NGX_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  htpasswd -b -n -B -C "$HTPASSWD_COST" bench "$NGX_PASSWORD" | grep -v '^$' >"$d/htpasswd"
  cat >"$d/registry-proxy.conf" <<CONF
# shared by both server blocks: the proxy part of the recipe
add_header Docker-Distribution-Api-Version \$docker_distribution_api_version always;
proxy_pass                          http://docker-registry;
proxy_set_header Host               \$http_host;
proxy_set_header X-Real-IP          \$remote_addr;
proxy_set_header X-Forwarded-For    \$proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto  \$scheme;
proxy_read_timeout                  900;
CONF
  cat >"$d/nginx.conf" <<CONF
$([ "$(id -u)" = 0 ] && echo "user root;  # workers must read this temp dir")
worker_processes $NGINX_WORKERS;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;   # like the registry's access log in this benchmark
  client_body_temp_path $d/client_body;
  proxy_temp_path       $d/proxy;
  fastcgi_temp_path     $d/fastcgi;
  uwsgi_temp_path       $d/uwsgi;
  scgi_temp_path        $d/scgi;

  upstream docker-registry { server 127.0.0.1:$REG_PORT; }
  # the static upstream of the isolation loads, with keep-alive connections
  upstream static-upstream { server 127.0.0.1:$STATIC_PORT; keepalive 32; }

  # the registry sends this header itself; nginx's own 401s need it added
  map \$upstream_http_docker_distribution_api_version \$docker_distribution_api_version {
    '' 'registry/2.0';
  }

  server {   # the recipe: basic auth on /v2/
    listen 127.0.0.1:$NGXA_PORT;
    client_max_body_size 0;          # no limit on layer uploads
    chunked_transfer_encoding on;
    location /v2/ {
      auth_basic           "Registry realm";
      auth_basic_user_file $d/htpasswd;
      include $d/registry-proxy.conf;
    }
  }
  server {   # the same proxy without auth: what the proxying alone costs
    listen 127.0.0.1:$NGX_PORT;
    client_max_body_size 0;
    chunked_transfer_encoding on;
    location /v2/ {
      include $d/registry-proxy.conf;
    }
  }
  server {   # isolation loads: a tuned proxy (keep-alive upstream) in front of the static upstream
    listen 127.0.0.1:$NGXK_PORT;
    location /v2/ {
      proxy_pass         http://static-upstream;
      proxy_http_version 1.1;
      proxy_set_header   Connection "";
      proxy_set_header   Host \$http_host;
    }
  }
}
CONF
  nginx -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >&2 || die "nginx -t rejected $d/nginx.conf"
  start_server "nginx on $NGX (auth_basic on $NGXA, $NGINX_WORKERS worker(s), bcrypt cost $HTPASSWD_COST)" \
    "$WORK/nginx.out" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
  NGX_PID=$SERVER_PID
  wait_http nginx "$NGX_PID" "$NGX/v2/"
  wait_http nginx "$NGX_PID" "$NGXA/v2/"
  # master + workers, for CPU and RSS (the workers live as long as the master)
  read -r -a NGX_PIDS < <(echo "$NGX_PID" $(pgrep -P "$NGX_PID"))
}

# The static upstream of the isolation loads: a second nginx that answers the manifest
# (the registry's bytes and headers, copied once) and /v2/ from memory-cached files, at a
# small fraction of the registry's CPU. In front of it, what a proxy costs per request is
# its own work, not the contention of a registry that saturates the machine.
start_static() {
  local d=$WORK/static hdr=$WORK/static/manifest.hdr
  mkdir -p "$d"/{client_body,proxy,fastcgi,uwsgi,scgi,root/v2}
  curl -sf --max-time 10 -D "$hdr" -o "$d/root/manifest" -H "Accept: $OCI_MANIFEST" "$REG$MANIFEST_PATH" \
    || die "could not read the manifest from the registry for the static upstream"
  printf '{}' >"$d/root/v2/index.json"
  cat >"$d/nginx.conf" <<CONF
$([ "$(id -u)" = 0 ] && echo "user root;")
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/client_body;
  proxy_temp_path       $d/proxy;
  fastcgi_temp_path     $d/fastcgi;
  uwsgi_temp_path       $d/uwsgi;
  scgi_temp_path        $d/scgi;
  open_file_cache max=16;
  etag off;
  server {
    listen 127.0.0.1:$STATIC_PORT;
    add_header Docker-Distribution-Api-Version registry/2.0 always;
    location = /v2/ { default_type application/json; alias $d/root/v2/index.json; }
    location = $MANIFEST_PATH {
      default_type $OCI_MANIFEST;
      add_header Docker-Distribution-Api-Version registry/2.0 always;
      add_header Docker-Content-Digest "$(header_of "$hdr" Docker-Content-Digest)" always;
      alias $d/root/manifest;
    }
  }
}
CONF
  nginx -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >&2 || die "nginx -t rejected $d/nginx.conf"
  start_server "static upstream (nginx) on $STATIC" "$WORK/static.out" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
  STATIC_PID=$SERVER_PID
  wait_http "static upstream" "$STATIC_PID" "$STATIC/v2/"
  read -r -a STATIC_PIDS < <(echo "$STATIC_PID" $(pgrep -P "$STATIC_PID"))
  launch_scopegate scopegate-static "$GWS_PORT" "$ADMINS_PORT" "$STATIC"
  GWS_PID=$SG_PID; GWS_PASSWORD=$SG_PASSWORD
}

# ---------------------------------------------------------------- test data
declare -A BLOB_FILE BLOB_DIGEST BLOB_SIZE
BLOB_LABELS=()
make_blob() { # label MiB: random file, uploaded straight to the registry once
  local label=$1 mib=$2 file=$WORK/blob-$1 res
  log "blob $label: $mib MiB of random data"
  head -c $(( mib * 1048576 )) /dev/urandom >"$file"
  BLOB_FILE[$label]=$file
  BLOB_SIZE[$label]=$(( mib * 1048576 ))
  BLOB_DIGEST[$label]=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  res=$(blob_upload direct "$file" "${BLOB_DIGEST[$label]}" "${BLOB_SIZE[$label]}")
  [ "${res%% *}" = 201 ] || die "seeding blob $label into the registry: $res"
  BLOB_LABELS+=("$label")
}
prepare_data() {
  log "pushing bench/img:small (manifest target)"
  "$ROOT/tests/e2e/make-oci.sh" "$WORK/oci-small" v1 >/dev/null
  timeout --foreground 120 skopeo --insecure-policy copy -q --dest-tls-verify=false \
    "oci:$WORK/oci-small:v1" "docker://127.0.0.1:$REG_PORT/$REPO:small" >&2
  MANIFEST_PATH=/v2/$REPO/manifests/small
  make_blob "${BIG_MIB}MiB" "$BIG_MIB"
  if [ "$HUGE_MIB" -gt 0 ] && [ "$HUGE_MIB" != "$BIG_MIB" ]; then make_blob "${HUGE_MIB}MiB" "$HUGE_MIB"; fi
}

# ---------------------------------------------------------------- quiet machine
# % of all cores busy over 1 s (other processes compete with the benchmark on a
# small box; a cargo build in the background makes every number meaningless)
machine_busy_pct() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat); sleep 1; read -r -a b < <(grep '^cpu ' /proc/stat)
  awk -v u1="${a[1]}" -v n1="${a[2]}" -v s1="${a[3]}" -v i1="${a[4]}" -v w1="${a[5]}" -v q1="${a[6]}" -v sq1="${a[7]}" -v st1="${a[8]}" \
      -v u2="${b[1]}" -v n2="${b[2]}" -v s2="${b[3]}" -v i2="${b[4]}" -v w2="${b[5]}" -v q2="${b[6]}" -v sq2="${b[7]}" -v st2="${b[8]}" \
      'BEGIN { busy = (u2-u1)+(n2-n1)+(s2-s1)+(q2-q1)+(sq2-sq1)+(st2-st1); idle = (i2-i1)+(w2-w1);
               t = busy + idle; printf "%.1f", (t > 0) ? 100 * busy / t : 0 }'
}
# wait (up to QUIET_WAIT s) until the machine is <15% busy; prints the last busy %
wait_quiet() {
  local busy deadline=$(( SECONDS + QUIET_WAIT ))
  busy=$(machine_busy_pct)
  if [ "$QUIET_WAIT" -gt 0 ] && awk -v b="$busy" 'BEGIN { exit !(b > 15) }'; then
    log "machine ${busy}% busy; waiting up to ${QUIET_WAIT}s for it to go below 15%"
    while [ $SECONDS -lt $deadline ] && awk -v b="$busy" 'BEGIN { exit !(b > 15) }'; do
      sleep 2; busy=$(machine_busy_pct)
    done
  fi
  echo "$busy"
}

# ---------------------------------------------------------------- measurements
# Each prints one JSON object. Every one checks its exact request first and dies
# unless it answers as expected; status counts of the load itself are checked after.

# The paths, turned left by ROUND-1 places: round 2 of "a b c" runs "b c a".
turned() { # round path...
  local r=$1; shift
  local a=("$@") i
  for ((i = 0; i < ${#a[@]}; i++)); do printf '%s ' "${a[(i + r - 1) % ${#a[@]}]}"; done
}

# One short HEAD load per manifest path, not recorded: the first load of a run otherwise
# meets a cold registry (its first round ran up to 25% slower than the later ones).
warm_up_manifests() {
  local tgt url args
  for tgt in $MANIFEST_TARGETS; do
    url=$(base_for "$tgt")$MANIFEST_PATH
    head_args args "$WARMUP" "$(auth_for "$tgt")"
    log "$tgt: warm-up, oha -z $WARMUP (not recorded)"
    timeout --foreground -k 5 "$LOAD_LIMIT" "$OHA" "${args[@]}" "$url" >/dev/null 2>&1 || die "warm-up load failed for $tgt"
  done
}

# oha's arguments for a HEAD manifest load of DURATION, with AUTH unless empty, into the
# caller's array VAR
head_args() { # var duration auth
  local -n into=$1
  into=(-z "$2" -c "$CONCURRENCY" -m HEAD -H "Accept: $OCI_MANIFEST" --no-tui
        --output-format json --wait-ongoing-requests-after-deadline)
  if [ -n "$3" ]; then into+=(-H "Authorization: $3"); fi
}

measure_head() { # path
  exit_on_signals
  local tgt=$1 url auth out n cpu
  url=$(base_for "$tgt")$MANIFEST_PATH
  auth=$(auth_for "$tgt")
  expect_200 HEAD "$url" "$auth"
  local args
  head_args args "$DURATION" "$auth"
  log "$tgt: HEAD manifest, oha -z $DURATION -c $CONCURRENCY"
  conn_sample_start "$RAW/$tgt-head$RTAG.conns"
  acct_begin
  timeout --foreground -k 5 "$LOAD_LIMIT" "$OHA" "${args[@]}" "$url" >"$RAW/$tgt-head$RTAG.json" 2>"$RAW/$tgt-head$RTAG.err" \
    || die "oha failed for $tgt (see $RAW/$tgt-head.err): $(tail -3 "$RAW/$tgt-head$RTAG.err")"
  out=$RAW/$tgt-head$RTAG.json
  n=$(jq '[.statusCodeDistribution[]] | add // 0' "$out")
  acct_end "$tgt" "$n"; cpu=$ACCT_JSON
  wait "$SAMPLER_PID" || true
  oha_summary "$out" "$cpu" "$(conn_sample_collect "$RAW/$tgt-head$RTAG.conns")"
}

oha_summary() { # oha-json cpu-json connections
  jq --argjson cpu "$2" --argjson conns "$3" '{
      tool: "oha",
      rps: .summary.requestsPerSec,
      p50_ms: (.latencyPercentiles.p50 * 1000),
      p99_ms: (.latencyPercentiles.p99 * 1000),
      success_rate: .summary.successRate,
      status_codes: .statusCodeDistribution,
      errors: .errorDistribution,
      registry_connections_mid_run: $conns,
      cpu: $cpu}' "$1"
}

measure_get() { # path
  exit_on_signals
  local tgt=$1 url auth line n cpu
  url=$(base_for "$tgt")$MANIFEST_PATH
  auth=$(auth_for "$tgt")
  expect_200 GET "$url" "$auth"
  log "$tgt: GET manifest, wrk -t$THREADS -c$CONCURRENCY -d$DURATION"
  conn_sample_start "$RAW/$tgt-get$RTAG.conns"
  acct_begin
  WRK_METHOD=GET WRK_ACCEPT=$OCI_MANIFEST WRK_AUTH=$auth \
    timeout --foreground -k 5 "$LOAD_LIMIT" wrk -t"$THREADS" -c"$CONCURRENCY" -d"$DURATION" --timeout 10s \
      -s "$BENCH_DIR/wrk-report.lua" "$url" >"$RAW/$tgt-get$RTAG.txt" 2>&1 \
    || die "wrk failed for $tgt: $(tail -3 "$RAW/$tgt-get$RTAG.txt")"
  line=$(sed -n 's/^WRKJSON //p' "$RAW/$tgt-get$RTAG.txt")
  [ -n "$line" ] || die "wrk printed no summary for $tgt"
  n=$(jq .requests <<<"$line")
  acct_end "$tgt" "$n"; cpu=$ACCT_JSON
  wait "$SAMPLER_PID" || true
  # (status 200 is implied: non_2xx_3xx == 0 and the curl pre-check saw 200)
  jq --argjson cpu "$cpu" \
     --argjson conns "$(conn_sample_collect "$RAW/$tgt-get$RTAG.conns")" \
     '. + {tool: "wrk", registry_connections_mid_run: $conns, cpu: $cpu}' <<<"$line"
}

# scopegate's token endpoint: GET /token with Basic credentials and one pull scope.
measure_token() { # (path is always "token")
  exit_on_signals
  local tgt=token url auth out n cpu tok
  url="$GW/token?service=$SERVICE&scope=repository:$REPO:pull"
  auth=$(auth_for basic)
  tok=$(curl -sf --max-time 10 -H "Authorization: $auth" "$url" | jq -r '.token // empty') || true
  [ -n "$tok" ] || die "pre-check GET $url did not answer 200 with a token"
  log "token endpoint: oha -z $DURATION -c $CONCURRENCY GET /token"
  conn_sample_start "$RAW/token.conns"
  acct_begin
  timeout --foreground -k 5 "$LOAD_LIMIT" "$OHA" -z "$DURATION" -c "$CONCURRENCY" --no-tui --output-format json \
      --wait-ongoing-requests-after-deadline -H "Authorization: $auth" "$url" >"$RAW/token.json" 2>"$RAW/token.err" \
    || die "oha failed for the token endpoint: $(tail -3 "$RAW/token.err")"
  out=$RAW/token.json
  n=$(jq '[.statusCodeDistribution[]] | add // 0' "$out")
  acct_end "$tgt" "$n"; cpu=$ACCT_JSON
  wait "$SAMPLER_PID" || true
  oha_summary "$out" "$cpu" "$(conn_sample_collect "$RAW/token.conns")"
}

# The isolation loads: HEAD manifest through PROXY (scopegate with a bearer token, or nginx
# with keep-alive upstream connections) in front of the static upstream, at full speed
# (RATE 0) or paced at RATE req/s. CPU of the proxy and of the static upstream per request.
measure_isolated() { # proxy rate
  exit_on_signals
  local proxy=$1 rate=$2 url auth out n pids p0 p1 s0 s1 m0 m1 t0 t1 tag=isolated-$1-$2
  case $proxy in
    scopegate)
      url=$GWS$MANIFEST_PATH; pids=("$GWS_PID")
      auth=$(curl -sf --max-time 10 -u "bench:$GWS_PASSWORD" "$GWS/token?service=$SERVICE&scope=repository:$REPO:pull" \
               | jq -r '.token // empty') || true
      [ -n "$auth" ] || die "could not fetch a bearer token from $GWS/token"
      auth="Bearer $auth" ;;
    nginx) url=$NGXK$MANIFEST_PATH; auth=""; pids=("${NGX_PIDS[@]}") ;;
  esac
  expect_200 HEAD "$url" "$auth"
  local args
  head_args args "$DURATION" "$auth"
  [ "$rate" -gt 0 ] && args+=(-q "$rate")
  log "isolation: $proxy in front of the static upstream, HEAD manifest, $([ "$rate" -gt 0 ] && echo "paced at $rate req/s" || echo "full speed")"
  times >"$WORK/times0"
  p0=$(cpu_ticks "${pids[@]}"); s0=$(cpu_ticks "${STATIC_PIDS[@]}"); m0=$(machine_busy_ticks); t0=$(date +%s.%N)
  timeout --foreground -k 5 "$LOAD_LIMIT" "$OHA" "${args[@]}" "$url" >"$RAW/$tag.json" 2>"$RAW/$tag.err" \
    || die "oha failed for $tag: $(tail -3 "$RAW/$tag.err")"
  p1=$(cpu_ticks "${pids[@]}"); s1=$(cpu_ticks "${STATIC_PIDS[@]}"); m1=$(machine_busy_ticks); t1=$(date +%s.%N)
  times >"$WORK/times1"
  out=$RAW/$tag.json
  n=$(jq '[.statusCodeDistribution[]] | add // 0' "$out")
  jq --arg proxy "$proxy" --argjson rate "$rate" --argjson hz "$CLK_TCK" --argjson n "$n" \
     --argjson p "$(( p1 - p0 ))" --argjson s "$(( s1 - s0 ))" --argjson m "$(( m1 - m0 ))" \
     --argjson c "$(awk -v a="$(children_cpu_s "$WORK/times0")" -v b="$(children_cpu_s "$WORK/times1")" 'BEGIN { printf "%.3f", b - a }')" \
     --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" '
    def per(v): if $n > 0 then v * 1e6 / $n else null end;
    {tool: "oha", proxy: $proxy, paced_rps: (if $rate > 0 then $rate else null end),
     rps: .summary.requestsPerSec, p50_ms: (.latencyPercentiles.p50 * 1000), p99_ms: (.latencyPercentiles.p99 * 1000),
     success_rate: .summary.successRate, status_codes: .statusCodeDistribution, errors: .errorDistribution,
     cpu: {wall_s: $wall, proxy_us_per_req: per($p / $hz), static_upstream_us_per_req: per($s / $hz),
           client_us_per_req: per($c), proxy_cores: ($p / $hz / $wall), machine_busy_cores: ($m / $hz / $wall),
           other_cores: (((($m - $p - $s) / $hz - $c) / $wall) * 1000 | round / 1000)}}' "$out"
}

# One warm-up download (status + sha256 of the whole body checked), then BLOB_REPS
# timed downloads to /dev/null (status + size checked).
measure_blob_get() { # path label
  exit_on_signals
  local tgt=$1 label=$2 url auth i res code size speed speeds=() bad=0 cpu bytes sum
  bytes=${BLOB_SIZE[$label]}
  url=$(base_for "$tgt")/v2/$REPO/blobs/${BLOB_DIGEST[$label]}
  local max_time=$(( 60 + bytes / 5000000 ))
  local args
  if [ "$ROUND" = 1 ]; then   # the whole body is checked once per path and size
    log "$tgt: blob GET $label x$BLOB_REPS (+1 warm-up)"
    auth=$(auth_for "$tgt")
    args=(-s --max-time "$max_time" -D "$WORK/get.hdr")
    [ -n "$auth" ] && args+=(-H "Authorization: $auth")
    sum=$(curl "${args[@]}" "$url" | sha256sum | cut -d' ' -f1) || sum=curl-failed
    code=$(awk 'toupper($1) ~ /^HTTP\// { c = $2 } END { print c }' "$WORK/get.hdr")
    [ "$code" = 200 ] && [ "sha256:$sum" = "${BLOB_DIGEST[$label]}" ] \
      || die "pre-check blob GET $tgt $label returned $code with sha256:$sum (want 200 and ${BLOB_DIGEST[$label]})"
  else
    log "$tgt: blob GET $label x$BLOB_REPS (round $ROUND)"
  fi
  acct_begin
  for i in $(seq 1 "$BLOB_REPS"); do
    auth=$(auth_for "$tgt")      # fresh bearer each time; not part of curl's speed
    args=(-s -o /dev/null --max-time "$max_time" -w '%{http_code} %{size_download} %{speed_download}')
    [ -n "$auth" ] && args+=(-H "Authorization: $auth")
    res=$(curl "${args[@]}" "$url") || res="000 0 0"
    read -r code size speed <<<"$res"
    if [ "$code" != 200 ] || [ "$size" != "$bytes" ]; then
      bad=$((bad + 1)); echo "GET $code $size bytes" >>"$RAW/$tgt-blobget-$label$RTAG.bad"; continue
    fi
    speeds+=("$speed")
  done
  acct_end "$tgt" "$BLOB_REPS"; cpu=$ACCT_JSON
  blob_summary GET "$bytes" "$bad" "$cpu" "${speeds[@]}"
}

# One warm-up upload, then BLOB_REPS timed uploads. Each is POST + PUT ?digest= with
# the whole blob, and counts only if it answers 201 with the right digest. MB/s is the
# blob size over the PUT's total time (the request, the body and the registry's commit).
measure_blob_put() { # path label
  exit_on_signals
  local tgt=$1 label=$2 i res code secs speeds=() bad=0 cpu bytes
  bytes=${BLOB_SIZE[$label]}
  if [ "$ROUND" = 1 ]; then
    log "$tgt: blob PUT $label x$BLOB_REPS (+1 warm-up)"
    res=$(blob_upload "$tgt" "${BLOB_FILE[$label]}" "${BLOB_DIGEST[$label]}" "$bytes")
    [ "${res%% *}" = 201 ] || die "pre-check blob upload $tgt $label: $res (want 201)"
  else
    log "$tgt: blob PUT $label x$BLOB_REPS (round $ROUND)"
  fi
  acct_begin
  for i in $(seq 1 "$BLOB_REPS"); do
    res=$(blob_upload "$tgt" "${BLOB_FILE[$label]}" "${BLOB_DIGEST[$label]}" "$bytes")
    read -r code secs <<<"$res"
    if [ "$code" != 201 ]; then
      bad=$((bad + 1)); echo "upload: $res" >>"$RAW/$tgt-blobput-$label$RTAG.bad"; continue
    fi
    speeds+=("$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0) ? b / s : 0 }')")
  done
  acct_end "$tgt" "$BLOB_REPS"; cpu=$ACCT_JSON
  blob_summary PUT "$bytes" "$bad" "$cpu" "${speeds[@]}"
}

blob_summary() { # direction bytes bad cpu-json speeds(bytes/s)...
  local dir=$1 bytes=$2 bad=$3 cpu=$4; shift 4
  printf '%s\n' "$@" | jq -s --arg dir "$dir" --argjson bad "$bad" --argjson size "$bytes" --argjson cpu "$cpu" \
      --argjson reps "$BLOB_REPS" '
    (map(select(. != null) | . / 1e6) | sort) as $s |
    ($reps * $size / 1e6) as $mb |
    {tool: "curl", direction: $dir, bytes: $size, samples_mbps: $s, bad_responses: $bad,
     mbps_median: (if ($s|length)>0 then $s[(($s|length)-1)/2|floor] else null end),
     mbps_min: $s[0], mbps_max: $s[-1],
     cpu: ($cpu + {
       registry_us_per_mb: ($cpu.registry_cpu_s * 1e6 / $mb),
       gateway_us_per_mb: (if $cpu.gateway_us_per_req == null then null else $cpu.gateway_cpu_s * 1e6 / $mb end),
       nginx_us_per_mb: (if $cpu.nginx_us_per_req == null then null else $cpu.nginx_cpu_s * 1e6 / $mb end)}
     | .proxy_us_per_mb = (.gateway_us_per_mb // .nginx_us_per_mb))}'
}

# A measurement during which other processes used > OTHER_MAX cores is redone
# (after wait_quiet) up to RETRIES times; the last attempt is kept either way.
measure() { # function path [args] -> JSON
  local fn=$1 tgt=$2 out other try=0
  exit_on_signals
  while :; do
    out=$("$fn" "${@:2}")
    other=$(jq '.cpu.other_cores' <<<"$out")
    awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }' || break
    [ "$try" -ge "$RETRIES" ] && break
    try=$((try + 1))
    log "$tgt ${fn#measure_}${3:+ $3}: other processes used $other cores; retry $try/$RETRIES"
    [ "$QUIET_WAIT" -gt 0 ] && wait_quiet >/dev/null || sleep 5
  done
  jq --argjson attempts "$((try + 1))" '. + {attempts: $attempts}' <<<"$out"
}

# Each measurement runs as a background job and the main shell `wait`s for it:
# `wait` returns as soon as a trapped signal arrives (a plain $(...) would only
# let the trap run after the whole measurement), and cleanup stops the job's
# process tree (MEASURE_PID). The result lands in $RES/<section>__[<label>__]<path>.json.
run_measure() { # result-name function path [args]
  local name=$1; shift
  measure "$@" >"$RES/$name.json" &
  MEASURE_PID=$!
  wait "$MEASURE_PID"
  MEASURE_PID=
}

# ---------------------------------------------------------------- checks after the loads
check_results() {
  local f name h non200 errs other bad
  for f in "$RES"/*.json; do
    name=$(basename "$f" .json); h=$(cat "$f")
    case $name in
      head_manifest__*|token__*|isolated__*)
        non200=$(jq '[.status_codes | to_entries[] | select(.key != "200") | .value] | add // 0' <<<"$h")
        errs=$(jq '[.errors[]?] | add // 0' <<<"$h")
        if [ "$non200" != 0 ] || [ "$errs" != 0 ]; then
          warn "$name: $non200 non-200 responses, $errs errors: $(jq -c '{status_codes, errors}' <<<"$h")"; ANY_BAD=1
        fi ;;
      get_manifest__*)
        errs=$(jq '.errors | add' <<<"$h")
        if [ "$errs" != 0 ]; then warn "$name: errors $(jq -c .errors <<<"$h")"; ANY_BAD=1; fi ;;
      blob_*)
        bad=$(jq .bad_responses <<<"$h")
        if [ "$bad" != 0 ]; then
          warn "$name: $bad transfers not 200/201 with the full blob: $(cat "$RAW"/*.bad 2>/dev/null | sort | uniq -c | head -3 | tr '\n' ';')"
          ANY_BAD=1
        fi ;;
    esac
    other=$(jq '.cpu.other_cores' <<<"$h")
    if awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }'; then
      warn "$name: ${other} cores of CPU used by other processes during the measurement (contaminated)"
    fi
  done
  # scopegate must not log errors/warnings during the run, nginx no errors
  if grep -qE ' (WARN|ERROR) ' <(sed 's/\x1b\[[0-9;]*m//g' "$WORK/scopegate.err"); then
    warn "scopegate logged WARN/ERROR lines:"
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/scopegate.err" | grep -E ' (WARN|ERROR) ' | head -5 >&2
  fi
  if grep -qE '\[(error|crit|alert|emerg)\]' "$WORK/nginx/error.log" 2>/dev/null; then
    warn "nginx logged errors: $(grep -E '\[(error|crit|alert|emerg)\]' "$WORK/nginx/error.log" | head -2 | tr '\n' ' ')"
  fi
  if [ -s "$WORK/hwm-reset-failed" ]; then
    warn "could not reset VmHWM via /proc/PID/clear_refs: per-load RSS peaks are whole-run peaks"
  fi
}

# ---------------------------------------------------------------- rounds
# RES/<name>__rN.json (one per round) -> RES/<name>.json: the round with the median
# req/s (or median MB/s) stands for the path, with every round kept in .rounds (in round
# order, for the within-round ratios); blob speeds pool the samples of all rounds. The
# per-round files move to RES/rounds/.
combine_rounds() {
  local base files
  mkdir -p "$RES/rounds"
  for base in $(find "$RES" -maxdepth 1 -name '*__r[0-9]*.json' -printf '%f\n' | sed 's/__r[0-9]*\.json$//' | sort -u); do
    files=$(find "$RES" -maxdepth 1 -name "${base}__r[0-9]*.json" | sort -V)
    # shellcheck disable=SC2086
    jq -s '
      def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      (if .[0].tool == "curl" then "mbps_median" else "rps" end) as $k |
      (sort_by(.[$k]) | .[(length - 1) / 2 | floor]) + {rounds: .}
      | if $k == "mbps_median" then
          ([.rounds[].samples_mbps[]] | sort) as $all |
          . + {samples_mbps: $all, mbps_median: ($all | med), mbps_min: $all[0], mbps_max: $all[-1],
               bad_responses: ([.rounds[].bad_responses] | add)}
        else . + {rps_rounds: [.rounds[].rps]} end' $files >"$RES/$base.json"
    # shellcheck disable=SC2086
    mv $files "$RES/rounds/"
  done
}

# ---------------------------------------------------------------- report
# latest.json = meta + every measurement (by section, size label and path) + the rows
# of the printed tables + the targets.
write_report() {
  local measurements commit
  # (through a file: with every round kept, the JSON outgrows a command-line argument)
  for f in "$RES"/*.json; do
    jq -c --arg name "$(basename "$f" .json)" '{path: ($name | split("__")), v: .}' "$f"
  done | jq -s 'reduce .[] as $e ({}; setpath($e.path; $e.v))' >"$WORK/measurements.json"
  commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
  RESULT=$(jq -n \
    --slurpfile measurements "$WORK/measurements.json" \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$commit" --arg duration "$DURATION" \
    --argjson conc "$CONCURRENCY" --argjson threads "$THREADS" --argjson reps "$BLOB_REPS" --argjson rounds "$ROUNDS" \
    --arg big "${BIG_MIB}MiB" --arg huge "$([ "$HUGE_MIB" -gt 0 ] && echo "${HUGE_MIB}MiB")" \
    --arg nproc "$(nproc)" --argjson ngx_workers "$NGINX_WORKERS" --argjson cost "$HTPASSWD_COST" \
    --arg oha "$("$OHA" --version 2>&1 | head -1)" --arg wrk "$(wrk -v 2>&1 | head -1 | awk '{print $1,$2}')" \
    --arg nginx "$(nginx -v 2>&1 | head -1)" --arg curl "$(curl --version | head -1 | awk '{print $1,$2}')" \
    --arg registry "$(/usr/bin/docker-registry --version 2>&1 | head -1)" \
    --arg bin "$SG" --arg bin_mtime "$(date -u -r "$SG" +%Y-%m-%dT%H:%M:%SZ)" \
    --arg built "$([ "$SKIP_BUILD" = 1 ] && echo false || echo true)" \
    --argjson gwlog "$(wc -l <"$WORK/scopegate.err")" --argjson bad "$ANY_BAD" \
    --argjson rss_start "$GW_RSS_START_KIB" --argjson rss_run "$(hwm_whole_run "$GW_PID")" \
    --argjson busy_before "$BUSY_BEFORE" --argjson busy_after "$(machine_busy_pct)" --arg loadavg "$LOADAVG_BEFORE" '
  $measurements[0] as $m |
  def r(x): if x == null then null else ((x * 100 | round) / 100) end;
  def ratio(a; b): if (a == null or b == null or b == 0) then null else ((a / b * 1000 | round) / 1000) end;
  def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                  else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  # a over b for one metric: the median of the ratios within each round when both paths
  # were measured in rounds, else the plain ratio
  def rratio(a; b; f):
    if a == null or b == null then null
    elif a.rounds != null and b.rounds != null then
      [range(0; [(a.rounds | length), (b.rounds | length)] | min) as $i
        | [(a.rounds[$i] | f), (b.rounds[$i] | f)] | select(.[0] != null and .[1] != null and .[1] != 0)
        | .[0] / .[1]]
      | if length == 0 then null else (med * 1000 | round) / 1000 end
    else ratio(a | f; b | f) end;
  def mib(kib): if kib == null then null else kib / 1024 end;
  # one printed row: a metric for each path, and its ratios against direct and nginx
  def row(name; unit; f):
    . as $p |
    {metric: name, unit: unit,
     direct: r($p.direct | f), bearer: r($p.bearer | f), basic: r($p.basic | f),
     nginx: r($p.nginx | f), nginx_auth: r($p.nginx_auth | f),
     bearer_vs_direct: rratio($p.bearer; $p.direct; f), basic_vs_direct: rratio($p.basic; $p.direct; f),
     bearer_vs_nginx: rratio($p.bearer; $p.nginx; f), basic_vs_nginx: rratio($p.basic; $p.nginx; f),
     bearer_vs_nginx_auth: rratio($p.bearer; $p.nginx_auth; f), basic_vs_nginx_auth: rratio($p.basic; $p.nginx_auth; f)};
  def blobrows($size):
    ($m.blob_get[$size] // {} | row("blob GET " + $size + " (median)"; "MB/s"; .mbps_median)),
    ($m.blob_put[$size] // {} | row("blob PUT " + $size + " (median)"; "MB/s"; .mbps_median)),
    ($m.blob_get[$size] // {} | row("blob GET " + $size + " proxy CPU/MB"; "us"; .cpu.proxy_us_per_mb)),
    ($m.blob_put[$size] // {} | row("blob PUT " + $size + " proxy CPU/MB"; "us"; .cpu.proxy_us_per_mb)),
    ($m.blob_get[$size] // {} | row("blob GET " + $size + " registry CPU/MB"; "us"; .cpu.registry_us_per_mb)),
    ($m.blob_put[$size] // {} | row("blob PUT " + $size + " registry CPU/MB"; "us"; .cpu.registry_us_per_mb)),
    ($m.blob_get[$size] // {} | row("blob GET " + $size + " proxy peak RSS"; "MiB"; .cpu.proxy_rss_peak_mib)),
    ($m.blob_put[$size] // {} | row("blob PUT " + $size + " proxy peak RSS"; "MiB"; .cpu.proxy_rss_peak_mib));
  def goal(name; v; op; limit; unit):
    {target: name, value: (if v == null then null else ((v * 1000 | round) / 1000) end), goal: (op + " " + (limit | tostring) + " " + unit),
     met: (if v == null then null elif op == ">=" then v >= limit elif op == "<=" then v <= limit else v < limit end)};
  ($m.head_manifest // {}) as $head | ($m.get_manifest // {}) as $get | ($m.token.scopegate // null) as $tok |
  [ $big, (if $huge != "" and $huge != $big then $huge else empty end) ] as $labels |
  ([ ($head | row("HEAD manifest req/s (oha)"; "req/s"; .rps)),
     ($head | row("HEAD manifest p50"; "ms"; .p50_ms)),
     ($head | row("HEAD manifest p99"; "ms"; .p99_ms)),
     ($get | row("GET manifest req/s (wrk)"; "req/s"; .rps)),
     ($get | row("GET manifest p50"; "ms"; .p50_ms)),
     ($get | row("GET manifest p99"; "ms"; .p99_ms)),
     ($head | row("HEAD proxy CPU per req"; "us"; .cpu.proxy_us_per_req)),
     ($get | row("GET proxy CPU per req"; "us"; .cpu.proxy_us_per_req)),
     ($head | row("HEAD registry CPU per req"; "us"; .cpu.registry_us_per_req)),
     ($get | row("GET registry CPU per req"; "us"; .cpu.registry_us_per_req)),
     ($head | row("HEAD proxy peak RSS"; "MiB"; .cpu.proxy_rss_peak_mib)),
     ($labels[] as $l | blobrows($l)),
     ($head | row("HEAD conns to registry (mid-run)"; "n"; .registry_connections_mid_run)),
     ($head | row("HEAD load-client CPU"; "cores"; .cpu.client_cores)),
     ($head | row("HEAD other CPU"; "cores"; .cpu.other_cores)),
     ($get | row("GET other CPU"; "cores"; .cpu.other_cores))
   ] | map(select([.direct, .bearer, .basic, .nginx, .nginx_auth] | any(. != null)))) as $table |
  ($labels[-1]) as $hl |
  ($m.isolated // {}) as $iso |
  ([ goal("HEAD req/s bearer / direct"; rratio($head.bearer; $head.direct; .rps); ">="; 0.9; "x"),
     goal("HEAD req/s basic / direct"; rratio($head.basic; $head.direct; .rps); ">="; 0.9; "x"),
     goal("GET req/s bearer / direct"; rratio($get.bearer; $get.direct; .rps); ">="; 0.9; "x"),
     goal("GET req/s basic / direct"; rratio($get.basic; $get.direct; .rps); ">="; 0.9; "x"),
     goal("scopegate CPU per HEAD (bearer)"; $head.bearer.cpu.gateway_us_per_req; "<="; 50; "us"),
     goal("scopegate CPU per HEAD (basic)"; $head.basic.cpu.gateway_us_per_req; "<="; 50; "us"),
     goal("scopegate CPU per GET (bearer)"; $get.bearer.cpu.gateway_us_per_req; "<="; 50; "us"),
     goal("scopegate CPU per GET (basic)"; $get.basic.cpu.gateway_us_per_req; "<="; 50; "us"),
     ($labels[] as $l |
       goal("blob GET " + $l + " bearer / direct"; rratio($m.blob_get[$l].bearer; $m.blob_get[$l].direct; .mbps_median); ">="; 0.9; "x"),
       goal("blob PUT " + $l + " bearer / direct"; rratio($m.blob_put[$l].bearer; $m.blob_put[$l].direct; .mbps_median); ">="; 0.9; "x")),
     goal("scopegate CPU per HEAD, static upstream, full speed"; $iso.scopegate.full.cpu.proxy_us_per_req; "<="; 50; "us"),
     goal("scopegate CPU per HEAD, static upstream, paced"; $iso.scopegate.paced.cpu.proxy_us_per_req; "<="; 50; "us"),
     goal("scopegate peak RSS, blob GET " + $hl + " (bearer)"; mib($m.blob_get[$hl].bearer.cpu.rss_peak_kib.scopegate); "<"; 64; "MiB"),
     goal("scopegate peak RSS, blob PUT " + $hl + " (bearer)"; mib($m.blob_put[$hl].bearer.cpu.rss_peak_kib.scopegate); "<"; 64; "MiB"),
     goal("scopegate peak RSS, whole run"; $rss_run / 1024; "<"; 64; "MiB"),
     goal("token endpoint tokens/s"; $tok.rps; ">="; 10000; "tokens/s")
   ] | map(select(.value != null))) as $goals |
  {
    meta: {date: $date, commit: $commit, binary: $bin, binary_mtime: $bin_mtime, built_this_run: ($built == "true"),
           duration: $duration, rounds: $rounds, concurrency: $conc, wrk_threads: $threads, blob_reps_per_round: $reps,
           blob_sizes: $labels, nproc: ($nproc | tonumber),
           nginx_workers: $ngx_workers, htpasswd_bcrypt_cost: $cost,
           tools: {oha: $oha, wrk: $wrk, curl: $curl, nginx: $nginx, registry: $registry},
           gateway_log_lines: $gwlog, had_bad_responses: ($bad == 1),
           machine_busy_pct_before: $busy_before, machine_busy_pct_after: $busy_after, loadavg_before: $loadavg},
    scopegate_rss: {start_mib: r($rss_start / 1024), whole_run_peak_mib: r($rss_run / 1024)},
    head_manifest: $head, get_manifest: $get, token: $tok, isolated: $iso,
    blob_get: ($m.blob_get // {}), blob_put: ($m.blob_put // {}),
    table: $table,
    targets: $goals
  }')
  mkdir -p "$RESULTS_DIR"
  printf '%s\n' "$RESULT" >"$RESULTS_DIR/latest.json"
  rm -rf "$RESULTS_DIR/raw"; cp -r "$RAW" "$RESULTS_DIR/raw"
}

print_report() {
  printf '\nscopegate benchmark  commit=%s (binary built %s)  rounds=%s  duration=%s  c=%s  blobs=%s x%s per round  nginx: %s worker(s), bcrypt cost %s  (%s cores, loopback)\n' \
    "$(jq -r .meta.commit <<<"$RESULT")" "$(date -u -r "$SG" +%H:%M:%SZ)" "$ROUNDS" "$DURATION" "$CONCURRENCY" \
    "$(jq -r '.meta.blob_sizes | join(",")' <<<"$RESULT")" "$BLOB_REPS" "$NGINX_WORKERS" "$HTPASSWD_COST" "$(nproc)"
  printf 'values: the median round; ratios: the median of the ratios within each round\n' 
  printf '\n'
  jq -r '.table[] | [.metric + " [" + .unit + "]", .direct, .bearer, .basic, .nginx, .nginx_auth]
         | map(if . == null then "-" else tostring end) | @tsv' <<<"$RESULT" |
  awk -F'\t' 'BEGIN {
      fmt = "%-38s | %9s | %9s | %9s | %9s | %10s\n"
      printf fmt, "metric", "direct", "sg bearer", "sg basic", "nginx", "nginx+auth"
      printf fmt, "--------------------------------------", "---------", "---------", "---------", "---------", "----------"
    } { printf fmt, $1, $2, $3, $4, $5, $6 }'
  printf '\nratios (req/s, MB/s: above 1 = scopegate faster; latency, CPU, RSS: above 1 = scopegate costlier)\n'
  jq -r '.table[] | select(.unit != "cores" and .unit != "n")
         | [.metric, .bearer_vs_direct, .basic_vs_direct, .bearer_vs_nginx, .basic_vs_nginx, .bearer_vs_nginx_auth, .basic_vs_nginx_auth]
         | select(.[1:] | any(. != null))
         | map(if . == null then "-" else tostring end) | @tsv' <<<"$RESULT" |
  awk -F'\t' 'BEGIN {
      fmt = "%-38s | %8s | %8s | %8s | %8s | %10s | %10s\n"
      printf fmt, "metric", "bearer/", "basic/", "bearer/", "basic/", "bearer/", "basic/"
      printf fmt, "", "direct", "direct", "nginx", "nginx", "nginx+auth", "nginx+auth"
      printf fmt, "--------------------------------------", "--------", "--------", "--------", "--------", "----------", "----------"
    } { printf fmt, $1, $2, $3, $4, $5, $6, $7 }'
  jq -r 'if .token then
           "\ntoken endpoint (GET /token, Basic, one pull scope): \(.token.rps | round) tokens/s, p50 \(.token.p50_ms * 100 | round / 100) ms, p99 \(.token.p99_ms * 100 | round / 100) ms, scopegate CPU \(.token.cpu.gateway_us_per_req | round) us/token"
         else empty end,
         "scopegate RSS: \(.scopegate_rss.start_mib) MiB after start, peak \(.scopegate_rss.whole_run_peak_mib) MiB over the run"' <<<"$RESULT"
  jq -r 'def us: if . == null then "-" else (round | tostring) + " us" end;
         def rps: if . == null then "-" else (round | tostring) + " req/s" end;
         if (.isolated | length) > 0 then
           "\nproxy CPU per request in front of a static upstream (nginx serving the manifest; HEAD, c=\(.meta.concurrency)):",
           (.isolated as $i | ["full", "paced"][] as $k |
             "  \(if $k == "full" then "full speed" else "paced at \($i.scopegate[$k].paced_rps // $i.nginx[$k].paced_rps) req/s (the registry'"'"'s rate)" end): " +
             "scopegate (bearer) \($i.scopegate[$k].cpu.proxy_us_per_req | us) at \($i.scopegate[$k].rps | rps); " +
             "nginx (keep-alive upstream, no auth) \($i.nginx[$k].cpu.proxy_us_per_req | us) at \($i.nginx[$k].rps | rps)")
         else empty end' <<<"$RESULT"
  printf '\ntargets (reported only; the run does not fail on them)\n'
  jq -r '.targets[] | [.target, (.value | tostring), .goal, (if .met then "met" elif .met == false then "MISSED" else "-" end)] | @tsv' <<<"$RESULT" |
    awk -F'\t' '{ printf "  %-44s %12s   %-18s %s\n", $1, $2, $3, $4 }'
  printf '\nproxy = scopegate in the sg columns, nginx in the nginx columns. CPU = utime+stime of that\n'
  printf 'process during the load; "other CPU" = machine busy time minus registry, proxies and load\n'
  printf 'client (near 0 = clean run). JSON: %s\n' "$RESULTS_DIR/latest.json"
}

# ================================================================= main
build_scopegate
REG_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port); NGX_PORT=$(free_port); NGXA_PORT=$(free_port)
STATIC_PORT=$(free_port); GWS_PORT=$(free_port); ADMINS_PORT=$(free_port); NGXK_PORT=$(free_port)
STATIC=http://127.0.0.1:$STATIC_PORT
GWS=http://127.0.0.1:$GWS_PORT
NGXK=http://127.0.0.1:$NGXK_PORT
REG=http://127.0.0.1:$REG_PORT
GW=http://127.0.0.1:$GW_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT
NGX=http://127.0.0.1:$NGX_PORT
NGXA=http://127.0.0.1:$NGXA_PORT
start_registry
start_scopegate
start_nginx
prepare_data
if [ "$ISOLATION" = 1 ]; then start_static; fi

RAW=$WORK/raw; RES=$WORK/res; mkdir -p "$RAW" "$RES"
ANY_BAD=0
BUSY_BEFORE=$(wait_quiet)
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine busy before load: ${BUSY_BEFORE}% of $(nproc) cores (loadavg $LOADAVG_BEFORE)"
if awk -v b="$BUSY_BEFORE" 'BEGIN { exit !(b > 15) }'; then
  warn "machine was ${BUSY_BEFORE}% busy before measuring (loadavg $LOADAVG_BEFORE): other processes compete for CPU, numbers are noisy"
fi

# Every path is measured once per round, the paths interleaved, so a drift of the machine
# or of the registry over the run touches all of them alike; ratios are taken within a
# round and the median over the rounds is reported. The order turns by one path each
# round, so no path always runs first or always follows the same one; and one unrecorded
# load per path warms the registry, the proxies and their caches before round 1.
warm_up_manifests
for ROUND in $(seq 1 "$ROUNDS"); do
  RTAG=-r$ROUND
  for tgt in $(turned "$ROUND" $MANIFEST_TARGETS); do
    run_measure "head_manifest__${tgt}__r$ROUND" measure_head "$tgt"
    run_measure "get_manifest__${tgt}__r$ROUND" measure_get "$tgt"
  done
done
RTAG=
if [ "$TOKEN_BENCH" = 1 ]; then run_measure token__scopegate measure_token token; fi
if [ "$ISOLATION" = 1 ]; then
  # paced at the registry's own HEAD rate in this run: the pace the proxies see in front of it
  PACE=$(jq -s 'map(.rps) | sort | .[(length - 1) / 2 | floor] // 1000 | round' "$RES"/head_manifest__direct__r*.json 2>/dev/null || echo 1000)
  [[ $PACE =~ ^[0-9]+$ ]] && [ "$PACE" -gt 0 ] || PACE=1000
  for proxy in scopegate nginx; do
    run_measure "isolated__${proxy}__full" measure_isolated "$proxy" 0
    run_measure "isolated__${proxy}__paced" measure_isolated "$proxy" "$PACE"
  done
fi
for ROUND in $(seq 1 "$ROUNDS"); do
  RTAG=-r$ROUND
  for label in "${BLOB_LABELS[@]}"; do
    for tgt in $(turned "$ROUND" $BLOB_TARGETS); do
      run_measure "blob_get__${label}__${tgt}__r$ROUND" measure_blob_get "$tgt" "$label"
      run_measure "blob_put__${label}__${tgt}__r$ROUND" measure_blob_put "$tgt" "$label"
    done
  done
done
RTAG=

check_results
combine_rounds
write_report
print_report

if [ "$ANY_BAD" = 1 ] || [ ${#WARNINGS[@]} -gt 0 ]; then
  printf '\nWARNINGS:\n' ; printf '  - %s\n' "${WARNINGS[@]}"
fi
[ "$ANY_BAD" = 0 ] || exit 2
