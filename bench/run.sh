#!/usr/bin/env bash
# scopegate benchmark: registry direct vs. through scopegate (bearer / basic).
#
# One run: build release, start docker-registry + scopegate on free loopback
# ports in a temp dir, create a token, push a small and a big image, then for
#   direct  = docker-registry, no auth
#   bearer  = scopegate, Authorization: Bearer <token from /token>
#   basic   = scopegate, Authorization: Basic bench:<password>
# measure
#   HEAD manifest  (oha)  req/s, p50, p99, + server CPU per request
#   GET  manifest  (wrk)  req/s, p50, p99, + server CPU per request
#   GET  big blob  (curl) MB/s, median of BLOB_REPS downloads
# and print a table + write bench/results/latest.json.
#
# Env knobs (defaults in brackets):
#   DURATION [10s]  per oha/wrk load      CONCURRENCY [16]  connections
#   THREADS [2]     wrk threads           BLOB_REPS [5]     blob downloads per target
#   BIG_MIB [200]   big layer size (MiB)  SKIP_BUILD [0]    1 = skip cargo build
#   KEEP_WORKDIR [0] 1 = keep temp dir (logs, data) after the run
#   QUIET_WAIT [0]  wait up to N s for the machine to be <15% busy before measuring
#   RETRIES [2]     redo a measurement during which other processes used more
#   OTHER_MAX [0.25]  than OTHER_MAX cores (after waiting QUIET_WAIT, or 5 s)
#   OHA [oha in PATH or ~/.cargo/bin/oha]
# Exit status: 0 ok, 1 setup failure, 2 measurements done but some responses
# were not 200 / had errors (see WARN lines and the JSON).
set -euo pipefail

DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-16}
THREADS=${THREADS:-2}
BLOB_REPS=${BLOB_REPS:-5}
BIG_MIB=${BIG_MIB:-200}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_WAIT=${QUIET_WAIT:-0}
RETRIES=${RETRIES:-2}
OTHER_MAX=${OTHER_MAX:-0.25}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
REPO=bench/img
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
# Hard ceiling for the background servers (they are killed by the trap anyway;
# this only matters if the script itself is SIGKILLed).
SERVER_MAX_SECONDS=${SERVER_MAX_SECONDS:-3600}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR=$BENCH_DIR/results

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARN: %s\n' "$(date +%H:%M:%S)" "$*" >&2; WARNINGS+=("$*"); }
die()  { printf '[bench %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
WARNINGS=()

# ---------------------------------------------------------------- tools
OHA=${OHA:-$(command -v oha || true)}
if [ -z "$OHA" ] && [ -x "$HOME/.cargo/bin/oha" ]; then OHA=$HOME/.cargo/bin/oha; fi
if [ -z "$OHA" ] || [ ! -x "$OHA" ]; then die "oha not found (cargo install oha --locked)"; fi
for t in cargo /usr/bin/docker-registry wrk jq skopeo curl timeout awk base64 sha256sum; do
  command -v "$t" >/dev/null || die "missing tool: $t"
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
for v in CONCURRENCY THREADS BLOB_REPS BIG_MIB RETRIES QUIET_WAIT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got ${!v})"
done
[ "$BLOB_REPS" -ge 1 ] && [ "$BIG_MIB" -ge 1 ] && [ "$CONCURRENCY" -ge 1 ] || die "BLOB_REPS, BIG_MIB, CONCURRENCY must be >= 1"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d /tmp/scopegate-bench.XXXXXX)
PIDS=()   # PIDs started by this script (timeout wrappers of the servers)
MEASURE_PID=   # running measurement job (a subshell of this script), if any
kill_tree() { # pid: stop a process and its descendants (all started by this script)
  local c
  for c in $(pgrep -P "$1" || true); do kill_tree "$c"; done
  kill -TERM "$1" 2>/dev/null || true
}
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
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$KEEP_WORKDIR" = 1 ]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
# Subshells reset caught signals to default, and a bash waiting for a child that
# handles SIGINT itself (oha prints its report on Ctrl-C) would simply carry on;
# every measuring subshell calls exit_on_signals.
exit_on_signals() { trap 'exit 130' INT; trap 'exit 143' TERM; }
exit_on_signals

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
free_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 40000 ))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then USED_PORTS+="$p "; echo "$p"; return 0; fi
  done
  die "no free port found"
}

# child of a `timeout` wrapper = the real server process (for /proc/PID/stat)
child_of() {
  local parent=$1 c _
  for _ in $(seq 1 50); do
    c=$(pgrep -P "$parent" | head -1 || true)
    [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.05
  done
  die "could not find child of pid $parent"
}

# utime+stime in clock ticks
cpu_ticks() {
  local f
  read -r -a f < <(sed 's/^.*) //' "/proc/$1/stat")
  echo $(( f[11] + f[12] ))
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

bearer_token() {
  local t
  t=$(curl -sf --max-time 10 -u "bench:$PASSWORD" \
        "$GW/token?service=scopegate&scope=repository:$REPO:pull" | jq -r '.token // empty') || true
  [ -n "$t" ] || die "could not fetch a bearer token from $GW/token"
  echo "$t"
}

# auth header value for a target (fresh bearer token each call: tokens live 300 s)
auth_for() {
  case $1 in
    direct) echo "" ;;
    bearer) echo "Bearer $(bearer_token)" ;;
    basic)  echo "Basic $(printf 'bench:%s' "$PASSWORD" | base64 -w0)" ;;
  esac
}
base_for() { case $1 in direct) echo "$REG" ;; *) echo "$GW" ;; esac; }

# CPU accounting around a load, all in clock ticks / seconds:
#   registry, gateway  utime+stime of the server processes (/proc/PID/stat)
#   client             CPU of this shell's reaped children (`times`): the load
#                      tool (oha/wrk/curl) plus a few ms of curl/jq helpers
#   other              whole-machine busy time (/proc/stat) minus all of the
#                      above: foreign processes + unattributed kernel work.
#                      Well above ~0.1 cores = someone else used the CPU.
# acct_begin/acct_end must run in the same shell as the load they bracket.
machine_busy_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
children_cpu_s() { # file written by `times`
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } }
       END { printf "%.3f", t }' "$1"
}
acct_begin() {
  times >"$WORK/times0"
  ACCT_T0=$(date +%s.%N); ACCT_M0=$(machine_busy_ticks)
  ACCT_R0=$(cpu_ticks "$REG_PID"); ACCT_G0=$(cpu_ticks "$GW_PID")
}
acct_end() { # target requests -> JSON in ACCT_JSON (not $(acct_end): `times` needs this shell)
  local tgt=$1 n=$2 t1 m1 r1 g1
  r1=$(cpu_ticks "$REG_PID"); g1=$(cpu_ticks "$GW_PID"); m1=$(machine_busy_ticks); t1=$(date +%s.%N)
  times >"$WORK/times1"
  ACCT_JSON=$(jq -n --argjson hz "$CLK_TCK" --argjson n "$n" --arg tgt "$tgt" \
        --argjson wall "$(awk -v a="$ACCT_T0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        --argjson reg "$(( r1 - ACCT_R0 ))" --argjson gw "$(( g1 - ACCT_G0 ))" --argjson mach "$(( m1 - ACCT_M0 ))" \
        --argjson c0 "$(children_cpu_s "$WORK/times0")" --argjson c1 "$(children_cpu_s "$WORK/times1")" '
    ($reg / $hz) as $r | ($gw / $hz) as $g | ($c1 - $c0) as $c | ($mach / $hz) as $m |
    {wall_s: $wall,
     registry_cpu_s: $r, gateway_cpu_s: $g, client_cpu_s: $c, machine_busy_s: $m,
     registry_us_per_req: (if $n > 0 then $r * 1e6 / $n else null end),
     gateway_us_per_req:  (if $n > 0 then $g * 1e6 / $n else null end),
     client_us_per_req:   (if $n > 0 then $c * 1e6 / $n else null end),
     registry_cores: ($r / $wall), gateway_cores: ($g / $wall), client_cores: ($c / $wall),
     machine_busy_cores: ($m / $wall),
     other_cores: ((($m - $r - $g - $c) / $wall) * 1000 | round / 1000)}
    | if $tgt == "direct" then .gateway_us_per_req = null | .gateway_cores = null else . end')
}

# Established TCP connections to the registry port, sampled halfway through a
# load (direct: client connections; gateway: the gateway's upstream pool).
# Runs in the background (ends on its own after DURATION/2); the caller waits
# for it in the same shell that started it.
conn_sample_start() { # outfile
  ( sleep "$(( (DUR_S + 1) / 2 ))"; ss -Htn state established "( dport = :$REG_PORT )" 2>/dev/null | wc -l >"$1" ) &
  SAMPLER_PID=$!
}
conn_sample_collect() { # outfile -> number or null
  local n; n=$(cat "$1" 2>/dev/null || true); echo "${n:-null}"
}

# ---------------------------------------------------------------- 1. build + start
cd "$ROOT"
if [ "$SKIP_BUILD" != 1 ]; then
  log "cargo build --release"
  cargo build --release >&2
fi
SG=$ROOT/target/release/scopegate
[ -x "$SG" ] || die "$SG not built"

REG_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port)
REG=http://127.0.0.1:$REG_PORT
GW=http://127.0.0.1:$GW_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT

mkdir -p "$WORK/registry/data" "$WORK/scopegate"
cat > "$WORK/registry/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
  formatter: text
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$REG_PORT
health:
  storagedriver:
    enabled: false
YML
log "starting docker-registry on $REG"
timeout -k 5 "$SERVER_MAX_SECONDS" /usr/bin/docker-registry serve "$WORK/registry/config.yml" \
  >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
REG_PID=$(child_of "${PIDS[-1]}")
for i in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$REG/v2/" || true)" = 200 ] && break
  kill -0 "$REG_PID" 2>/dev/null || { cat "$WORK/registry.log" >&2; die "registry died"; }
  [ "$i" = 100 ] && die "registry not ready after 10 s"
  sleep 0.1
done

ADMIN_TOKEN=bench-admin-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
log "starting scopegate on $GW (admin $ADMIN)"
SCOPEGATE_ADMIN_TOKEN=$ADMIN_TOKEN timeout -k 5 "$SERVER_MAX_SECONDS" "$SG" serve \
  --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "$REG" --data-dir "$WORK/scopegate" \
  >"$WORK/scopegate.out" 2>"$WORK/scopegate.err" &
PIDS+=($!)
GW_PID=$(child_of "${PIDS[-1]}")
for i in $(seq 1 100); do
  grep -q '^scopegate ready' "$WORK/scopegate.out" 2>/dev/null && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/scopegate.err" >&2; die "scopegate died"; }
  [ "$i" = 100 ] && die "scopegate not ready after 10 s"
  sleep 0.1
done
log "$(head -1 "$WORK/scopegate.out")"

SCOPEGATE_ADMIN_TOKEN=$ADMIN_TOKEN timeout --foreground 30 "$SG" --server "$ADMIN" token create --name bench \
  --repository "$REPO" content/read content/write metadata/read >"$WORK/token.json"
PASSWORD=$(jq -r '.credentials.passwords[0].value' "$WORK/token.json")
[ -n "$PASSWORD" ] && [ "$PASSWORD" != null ] || die "token create returned no password"

# ---------------------------------------------------------------- 2. images
log "building + pushing images (small, ${BIG_MIB} MiB)"
"$BENCH_DIR/../tests/e2e/make-oci.sh" "$WORK/oci-small" v1 >/dev/null
LAYER_COMPRESS=none LAYER_RANDOM_MIB="$BIG_MIB" "$BENCH_DIR/../tests/e2e/make-oci.sh" "$WORK/oci-big" v1 >/dev/null
for img in small big; do
  timeout --foreground 600 skopeo --insecure-policy copy -q --dest-tls-verify=false \
    "oci:$WORK/oci-$img:v1" "docker://127.0.0.1:$REG_PORT/$REPO:$img" >&2
done
rm -rf "$WORK/oci-big"   # 200 MiB we no longer need
# skopeo may (re)compress the layer on push: take digest/size from the registry
BIG_MANIFEST=$(curl -sf --max-time 10 -H "Accept: $OCI_MANIFEST" "$REG/v2/$REPO/manifests/big")
BLOB_DIGEST=$(jq -r '.layers[0].digest' <<<"$BIG_MANIFEST")
BLOB_SIZE=$(jq -r '.layers[0].size' <<<"$BIG_MANIFEST")
log "big layer $BLOB_DIGEST ($BLOB_SIZE bytes)"
MANIFEST_PATH=/v2/$REPO/manifests/small
BLOB_PATH=/v2/$REPO/blobs/$BLOB_DIGEST

# ---------------------------------------------------------------- 3. measurements
RAW=$WORK/raw; mkdir -p "$RAW"
ANY_BAD=0

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
BUSY_BEFORE=$(wait_quiet)
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine busy before load: ${BUSY_BEFORE}% of $(nproc) cores (loadavg $LOADAVG_BEFORE)"
if awk -v b="$BUSY_BEFORE" 'BEGIN { exit !(b > 15) }'; then
  warn "machine was ${BUSY_BEFORE}% busy before measuring (loadavg $LOADAVG_BEFORE): other processes compete for CPU, numbers are noisy"
fi

measure_head() { # target -> JSON
  exit_on_signals
  local tgt=$1 url auth out n cpu
  url=$(base_for "$tgt")$MANIFEST_PATH
  auth=$(auth_for "$tgt")
  expect_200 HEAD "$url" "$auth"
  local args=(-z "$DURATION" -c "$CONCURRENCY" -m HEAD -H "Accept: $OCI_MANIFEST" --no-tui
              --output-format json --wait-ongoing-requests-after-deadline)
  [ -n "$auth" ] && args+=(-H "Authorization: $auth")
  log "$tgt: HEAD manifest, oha -z $DURATION -c $CONCURRENCY"
  conn_sample_start "$RAW/$tgt-head.conns"
  acct_begin
  timeout --foreground -k 5 "$LOAD_LIMIT" "$OHA" "${args[@]}" "$url" >"$RAW/$tgt-head.json" 2>"$RAW/$tgt-head.err" \
    || die "oha failed for $tgt (see $RAW/$tgt-head.err): $(tail -3 "$RAW/$tgt-head.err")"
  out=$RAW/$tgt-head.json
  n=$(jq '[.statusCodeDistribution[]] | add // 0' "$out")
  acct_end "$tgt" "$n"; cpu=$ACCT_JSON
  wait "$SAMPLER_PID" || true
  jq --argjson cpu "$cpu" \
     --argjson conns "$(conn_sample_collect "$RAW/$tgt-head.conns")" '{
      tool: "oha",
      rps: .summary.requestsPerSec,
      p50_ms: (.latencyPercentiles.p50 * 1000),
      p99_ms: (.latencyPercentiles.p99 * 1000),
      success_rate: .summary.successRate,
      status_codes: .statusCodeDistribution,
      errors: .errorDistribution,
      registry_connections_mid_run: $conns,
      cpu: $cpu}' "$out"
}

measure_get() { # target -> JSON
  exit_on_signals
  local tgt=$1 url auth line n cpu
  url=$(base_for "$tgt")$MANIFEST_PATH
  auth=$(auth_for "$tgt")
  expect_200 GET "$url" "$auth"
  log "$tgt: GET manifest, wrk -t$THREADS -c$CONCURRENCY -d$DURATION"
  conn_sample_start "$RAW/$tgt-get.conns"
  acct_begin
  WRK_METHOD=GET WRK_ACCEPT=$OCI_MANIFEST WRK_AUTH=$auth \
    timeout --foreground -k 5 "$LOAD_LIMIT" wrk -t"$THREADS" -c"$CONCURRENCY" -d"$DURATION" --timeout 10s \
      -s "$BENCH_DIR/wrk-report.lua" "$url" >"$RAW/$tgt-get.txt" 2>&1 \
    || die "wrk failed for $tgt: $(tail -3 "$RAW/$tgt-get.txt")"
  line=$(sed -n 's/^WRKJSON //p' "$RAW/$tgt-get.txt")
  [ -n "$line" ] || die "wrk printed no summary for $tgt"
  n=$(jq .requests <<<"$line")
  acct_end "$tgt" "$n"; cpu=$ACCT_JSON
  wait "$SAMPLER_PID" || true
  # (status 200 is implied: non_2xx_3xx == 0 and the curl pre-check saw 200)
  jq --argjson cpu "$cpu" \
     --argjson conns "$(conn_sample_collect "$RAW/$tgt-get.conns")" \
     '. + {tool: "wrk", registry_connections_mid_run: $conns, cpu: $cpu}' <<<"$line"
}

measure_blob() { # target -> JSON
  exit_on_signals
  local tgt=$1 url auth i res code size speed speeds=() bad=0 cpu
  url=$(base_for "$tgt")$BLOB_PATH
  log "$tgt: blob GET x$BLOB_REPS (+1 warm-up)"
  for i in $(seq 0 "$BLOB_REPS"); do
    [ "$i" = 1 ] && acct_begin   # after the warm-up
    auth=$(auth_for "$tgt")      # fresh bearer each time; not part of curl's speed
    local args=(-s -o /dev/null --max-time 120 -w '%{http_code} %{size_download} %{speed_download}')
    [ -n "$auth" ] && args+=(-H "Authorization: $auth")
    res=$(curl "${args[@]}" "$url") || res="000 0 0"
    read -r code size speed <<<"$res"
    if [ "$code" != 200 ] || [ "$size" != "$BLOB_SIZE" ]; then
      [ "$i" = 0 ] && die "pre-check blob GET $tgt returned $code / $size bytes (want 200 / $BLOB_SIZE)"
      bad=$((bad + 1)); continue
    fi
    [ "$i" = 0 ] && continue   # warm-up (page cache, connection pools)
    speeds+=("$speed")
  done
  acct_end "$tgt" "$BLOB_REPS"; cpu=$ACCT_JSON
  printf '%s\n' "${speeds[@]}" | jq -s --argjson bad "$bad" --argjson size "$BLOB_SIZE" --argjson cpu "$cpu" \
      --argjson reps "$BLOB_REPS" '
    (map(. / 1e6) | sort) as $s |
    {tool: "curl", bytes: $size, samples_mbps: $s, bad_responses: $bad,
     mbps_median: (if ($s|length)>0 then $s[(($s|length)-1)/2|floor] else null end),
     mbps_min: $s[0], mbps_max: $s[-1],
     cpu: ($cpu + {
       registry_us_per_mb: ($cpu.registry_cpu_s * 1e6 / ($reps * $size / 1e6)),
       gateway_us_per_mb: (if $cpu.gateway_us_per_req == null then null
                           else $cpu.gateway_cpu_s * 1e6 / ($reps * $size / 1e6) end)})}'
}

TARGETS=(direct bearer basic)
declare -A HEAD GET BLOB
# A measurement during which other processes used > OTHER_MAX cores is redone
# (after wait_quiet) up to RETRIES times; the last attempt is kept either way.
measure() { # function target -> JSON
  local fn=$1 tgt=$2 out other try=0
  exit_on_signals
  while :; do
    out=$("$fn" "$tgt")
    other=$(jq '.cpu.other_cores' <<<"$out")
    awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }' || break
    [ "$try" -ge "$RETRIES" ] && break
    try=$((try + 1))
    log "$tgt ${fn#measure_}: other processes used $other cores; retry $try/$RETRIES"
    [ "$QUIET_WAIT" -gt 0 ] && wait_quiet >/dev/null || sleep 5
  done
  jq --argjson attempts "$((try + 1))" '. + {attempts: $attempts}' <<<"$out"
}

# Each measurement runs as a background job and the main shell `wait`s for it:
# `wait` returns as soon as a trapped signal arrives (a plain $(...) would only
# let the trap run after the whole measurement), and cleanup stops the job's
# process tree (MEASURE_PID).
run_measure() { # function target -> JSON on stdout
  measure "$1" "$2" >"$WORK/measure.out" &
  MEASURE_PID=$!
  wait "$MEASURE_PID"
  MEASURE_PID=
  cat "$WORK/measure.out"
}
for tgt in "${TARGETS[@]}"; do
  run_measure measure_head "$tgt" >"$WORK/head-$tgt.json"; HEAD[$tgt]=$(cat "$WORK/head-$tgt.json")
  run_measure measure_get "$tgt" >"$WORK/get-$tgt.json"; GET[$tgt]=$(cat "$WORK/get-$tgt.json")
  run_measure measure_blob "$tgt" >"$WORK/blob-$tgt.json"; BLOB[$tgt]=$(cat "$WORK/blob-$tgt.json")
done

# ---------------------------------------------------------------- sanity
for tgt in "${TARGETS[@]}"; do
  h=${HEAD[$tgt]}; g=${GET[$tgt]}; b=${BLOB[$tgt]}
  non200=$(jq '[.status_codes | to_entries[] | select(.key != "200") | .value] | add // 0' <<<"$h")
  errs=$(jq '[.errors[]?] | add // 0' <<<"$h")
  if [ "$non200" != 0 ] || [ "$errs" != 0 ]; then
    warn "$tgt HEAD: $non200 non-200 responses, $errs errors: $(jq -c '{status_codes, errors}' <<<"$h")"; ANY_BAD=1
  fi
  gerr=$(jq '.errors | add' <<<"$g")
  if [ "$gerr" != 0 ]; then warn "$tgt GET: errors $(jq -c .errors <<<"$g")"; ANY_BAD=1; fi
  for pair in "HEAD:$h" "GET:$g" "blob:$b"; do
    other=$(jq '.cpu.other_cores' <<<"${pair#*:}")
    if awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }'; then
      warn "$tgt ${pair%%:*}: ${other} cores of CPU used by other processes during the measurement (contaminated)"
    fi
  done
  bb=$(jq .bad_responses <<<"$b")
  if [ "$bb" != 0 ]; then warn "$tgt blob: $bb downloads not 200/full size"; ANY_BAD=1; fi
done
# gateway must not be logging errors/warnings during the run
if grep -qE ' (WARN|ERROR) ' <(sed 's/\x1b\[[0-9;]*m//g' "$WORK/scopegate.err"); then
  warn "scopegate logged WARN/ERROR lines:"
  sed 's/\x1b\[[0-9;]*m//g' "$WORK/scopegate.err" | grep -E ' (WARN|ERROR) ' | head -5 >&2
fi
GW_LOG_LINES=$(wc -l <"$WORK/scopegate.err")

# ---------------------------------------------------------------- 4. report
mkdir -p "$RESULTS_DIR"
obj() { # name assoc-array -> JSON object {direct:..,bearer:..,basic:..}
  local -n arr=$2
  jq -n --argjson d "${arr[direct]}" --argjson be "${arr[bearer]}" --argjson ba "${arr[basic]}" \
    '{direct: $d, bearer: $be, basic: $ba}'
}
COMMIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
RESULT=$(jq -n \
  --argjson head "$(obj x HEAD)" --argjson get "$(obj x GET)" --argjson blob "$(obj x BLOB)" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$COMMIT" --arg duration "$DURATION" \
  --argjson conc "$CONCURRENCY" --argjson threads "$THREADS" --argjson reps "$BLOB_REPS" \
  --argjson blob_size "$BLOB_SIZE" --arg nproc "$(nproc)" \
  --arg oha "$("$OHA" --version 2>&1 | head -1)" --arg wrk "$(wrk -v 2>&1 | head -1 | awk '{print $1,$2}')" \
  --arg registry "$(/usr/bin/docker-registry --version 2>&1 | head -1)" \
  --arg bin_mtime "$(date -u -r "$SG" +%Y-%m-%dT%H:%M:%SZ)" --arg built "$([ "$SKIP_BUILD" = 1 ] && echo false || echo true)" \
  --argjson gwlog "$GW_LOG_LINES" --argjson bad "$ANY_BAD" \
  --argjson busy_before "$BUSY_BEFORE" --argjson busy_after "$(machine_busy_pct)" --arg loadavg "$LOADAVG_BEFORE" '
  def r(x): if x == null then null else ((x * 100 | round) / 100) end;
  def ratio(a; b): if (a == null or b == null or b == 0) then null else ((a / b * 1000 | round) / 1000) end;
  def row(name; unit; f):
    {metric: name, unit: unit, direct: r(.direct | f), bearer: r(.bearer | f), basic: r(.basic | f)}
    | . + {ratio_bearer: ratio(.bearer; .direct), ratio_basic: ratio(.basic; .direct)};
  def diag(name; unit; f): row(name; unit; f) | .ratio_bearer = null | .ratio_basic = null;
  {
    meta: {date: $date, commit: $commit, binary_mtime: $bin_mtime, built_this_run: ($built == "true"), duration: $duration, concurrency: $conc, wrk_threads: $threads,
           blob_reps: $reps, blob_bytes: $blob_size, nproc: ($nproc | tonumber),
           tools: {oha: $oha, wrk: $wrk, registry: $registry},
           gateway_log_lines: $gwlog, had_bad_responses: ($bad == 1),
           machine_busy_pct_before: $busy_before, machine_busy_pct_after: $busy_after, loadavg_before: $loadavg},
    head_manifest: $head, get_manifest: $get, blob_get: $blob,
    table: [
      ($head | row("HEAD manifest req/s (oha)"; "req/s"; .rps)),
      ($head | row("HEAD manifest p50"; "ms"; .p50_ms)),
      ($head | row("HEAD manifest p99"; "ms"; .p99_ms)),
      ($get | row("GET manifest req/s (wrk)"; "req/s"; .rps)),
      ($get | row("GET manifest p50"; "ms"; .p50_ms)),
      ($get | row("GET manifest p99"; "ms"; .p99_ms)),
      ($blob | row("blob GET throughput (median)"; "MB/s"; .mbps_median)),
      ($head | row("HEAD registry CPU per req"; "us"; .cpu.registry_us_per_req)),
      ($head | row("HEAD gateway CPU per req"; "us"; .cpu.gateway_us_per_req)),
      ($head | diag("HEAD gateway CPU (cores)"; "cores"; .cpu.gateway_cores)),
      ($get | row("GET registry CPU per req"; "us"; .cpu.registry_us_per_req)),
      ($get | row("GET gateway CPU per req"; "us"; .cpu.gateway_us_per_req)),
      ($blob | row("blob registry CPU per MB"; "us"; .cpu.registry_us_per_mb)),
      ($blob | row("blob gateway CPU per MB"; "us"; .cpu.gateway_us_per_mb)),
      ($head | diag("HEAD conns to registry (mid-run)"; "n"; .registry_connections_mid_run)),
      ($head | diag("HEAD load-client CPU (cores)"; "cores"; .cpu.client_cores)),
      ($head | diag("HEAD other CPU (cores)"; "cores"; .cpu.other_cores)),
      ($get | diag("GET other CPU (cores)"; "cores"; .cpu.other_cores)),
      ($blob | diag("blob other CPU (cores)"; "cores"; .cpu.other_cores))
    ]
  }')
printf '%s\n' "$RESULT" >"$RESULTS_DIR/latest.json"
rm -rf "$RESULTS_DIR/raw"; cp -r "$RAW" "$RESULTS_DIR/raw"

{
  printf '\nscopegate benchmark  commit=%s (binary built %s)  duration=%s  c=%s  blob=%s bytes x%s  (%s cores, loopback)\n\n' \
    "$COMMIT" "$(date -u -r "$SG" +%H:%M:%SZ)" "$DURATION" "$CONCURRENCY" "$BLOB_SIZE" "$BLOB_REPS" "$(nproc)"
  jq -r '.table[] | [.metric + " [" + .unit + "]", .direct, .bearer, .basic, .ratio_bearer, .ratio_basic]
         | map(if . == null then "-" else tostring end) | @tsv' <<<"$RESULT" |
  awk -F'\t' 'BEGIN {
      fmt = "%-36s | %10s | %16s | %15s | %13s | %12s\n"
      printf fmt, "metric", "direct", "gateway (bearer)", "gateway (basic)", "bearer/direct", "basic/direct"
      printf fmt, "------------------------------------", "----------", "----------------", "---------------", "-------------", "------------"
    } { printf fmt, $1, $2, $3, $4, $5, $6 }'
  printf '\nCPU rows: registry/gateway = utime+stime of that process during the load ("direct": gateway rows are -).\n'
  printf '"other CPU" = machine busy time minus registry, gateway and load client: other processes. Near 0 = clean run.\n'
  printf 'JSON: %s\n' "$RESULTS_DIR/latest.json"
}

if [ "$ANY_BAD" = 1 ] || [ ${#WARNINGS[@]} -gt 0 ]; then
  printf '\nWARNINGS:\n' ; printf '  - %s\n' "${WARNINGS[@]}"
fi
[ "$ANY_BAD" = 0 ] || exit 2
