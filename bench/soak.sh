#!/usr/bin/env bash
# scopegate soak: a bounded run of mixed traffic against one gateway, watching whether it
# leaks memory or descriptors or starts answering wrongly over time.
#
# Builds release, starts Debian's docker-registry and scopegate (config file: throttle
# tuned for the run, audit to a file) on free loopback ports in a temp dir, creates the
# tokens, builds IMAGES small OCI images (tests/e2e/make-oci.sh), then runs in parallel
# for SOAK_SECS:
#   push   skopeo copy of the images to soak/push-<worker>:t<n> (token soak-pusher)
#   pull   skopeo copy back to an OCI layout, and skopeo inspect (token soak-puller)
#   deny   a read-only token pushing with skopeo (denied), wrong passwords at /token for
#          token names that exist and ones that do not, sent from 127.0.0.2 so the
#          failed-login throttle (401, then 429) never touches the real traffic's
#          address or names, and a repository the token lacks on /v2 (403)
#   token  GET /token with Basic, then HEAD a manifest with the bearer token it gave
# Every SAMPLE_SECS it samples scopegate's VmRSS/VmHWM, threads and open descriptors and
# each stream's counts: ok, expected denials, unexpected outcomes. At the end it prints
# the samples as a table and a summary, writes bench/results/soak-latest.json (the last
# unexpected outcomes of each stream included), and checks that no tag a denied push
# named reached the registry.
#
# Env knobs (defaults in brackets):
#   SOAK_SECS [600]        length of the traffic      SAMPLE_SECS [10]  sampling period
#   PUSH_WORKERS [2]       PULL_WORKERS [2]           DENY_WORKERS [1]  TOKEN_WORKERS [1]
#   PAUSE [0.05]           seconds between iterations of the curl streams (deny, token)
#   IMAGES [6]             distinct images the pushers cycle through
#   RSS_GROWTH_MAX_MIB [64]  allowed VmRSS growth from the baseline sample to the last
#   RSS_BASELINE_SECS [0]  the baseline is the first sample taken at or after this many
#                          seconds into the run (see "Memory" below)
#   FD_GROWTH_MAX [64]     allowed open-descriptor growth from before the load to after it
#   SKIP_BUILD [0]         1 = use the existing release binary
#   KEEP_WORKDIR [0]       1 = keep the temp dir (logs, data, per-stream outcome files)
# The binary is ${CARGO_TARGET_DIR:-target}/release/scopegate.
# Memory: the gateway caches every distinct credential it has checked for 600 s, and each
# bearer token is a distinct credential, so under steady traffic its RSS climbs for the
# first 10 minutes (the cache filling: 2-3 KiB per new credential in short runs on 2
# cores, about 20 new credentials a second with the default workers, so some 25-35 MiB
# over 10 minutes) and should level off after. The "new creds" column (credential cache
# misses, from /metrics) shows how many entries the cache added, and the summary the
# growth per new credential. To look for a leak past the fill:
#   SOAK_SECS=1500 RSS_BASELINE_SECS=700 RSS_GROWTH_MAX_MIB=8 bench/soak.sh
# Exit status: 0 clean; 1 setup failure; 2 the run finished with unexpected outcomes, RSS
# or descriptor growth past the bound, a gateway that died, or a denied push that landed.
set -euo pipefail

SOAK_SECS=${SOAK_SECS:-600}
SAMPLE_SECS=${SAMPLE_SECS:-10}
PUSH_WORKERS=${PUSH_WORKERS:-2}
PULL_WORKERS=${PULL_WORKERS:-2}
DENY_WORKERS=${DENY_WORKERS:-1}
TOKEN_WORKERS=${TOKEN_WORKERS:-1}
PAUSE=${PAUSE:-0.05}
IMAGES=${IMAGES:-6}
RSS_GROWTH_MAX_MIB=${RSS_GROWTH_MAX_MIB:-64}
RSS_BASELINE_SECS=${RSS_BASELINE_SECS:-0}
FD_GROWTH_MAX=${FD_GROWTH_MAX:-64}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
# bounds for one client command, and for the servers should this script be SIGKILLed
TOOL_SECS=120
SERVER_MAX_SECONDS=$(( SOAK_SECS + 900 ))
STREAMS=(push pull deny token)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
RESULTS_DIR=$BENCH_DIR/results
MAKE_OCI=$ROOT/tests/e2e/make-oci.sh

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[soak %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

for v in SOAK_SECS SAMPLE_SECS PUSH_WORKERS PULL_WORKERS DENY_WORKERS TOKEN_WORKERS IMAGES RSS_GROWTH_MAX_MIB RSS_BASELINE_SECS FD_GROWTH_MAX; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got ${!v})"
done
[ "$SOAK_SECS" -ge 1 ] && [ "$SAMPLE_SECS" -ge 1 ] && [ "$IMAGES" -ge 1 ] || die "SOAK_SECS, SAMPLE_SECS and IMAGES must be >= 1"
[[ $PAUSE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "PAUSE must be a number of seconds (got $PAUSE)"
for t in cargo /usr/bin/docker-registry skopeo curl jq timeout awk pgrep tar gzip sha256sum; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d /tmp/scopegate-soak.XXXXXX)
OUT=$WORK/outcomes; mkdir -p "$OUT"
PIDS=()      # timeout wrappers of the servers
WORKERS=()   # worker subshells
cleanup() {
  local rc=$? p i alive
  trap - EXIT INT TERM
  for p in "${WORKERS[@]}"; do kill_tree "$p"; done
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$KEEP_WORKDIR" = 1 ]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
open_fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
sg_cli() { SCOPEGATE_ADMIN_TOKEN=$ADMIN_TOKEN timeout --foreground 30 "$SG" --server "$ADMIN" -o json "$@"; }
# credential cache misses so far (each one a credential the gateway had not cached)
cache_misses() {
  curl -s --max-time 5 "$ADMIN/metrics" | awk '/^scopegate_credential_cache_total\{result="miss"\}/ { print $2; f = 1 } END { if (!f) print 0 }'
}
password_of() { jq -r '.credentials.passwords[0].value // empty' <<<"$1"; }

# ---------------------------------------------------------------- 1. build + start
cd "$ROOT"
if [ "$SKIP_BUILD" != 1 ]; then
  log "cargo build --release"
  cargo build --release >&2
fi
SG=${CARGO_TARGET_DIR:-$ROOT/target}/release/scopegate
[ -x "$SG" ] || die "$SG not built"

REG_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port)
REG=http://127.0.0.1:$REG_PORT
GW_HOST=127.0.0.1:$GW_PORT
GW=http://$GW_HOST
ADMIN=http://127.0.0.1:$ADMIN_PORT

mkdir -p "$WORK/registry/data" "$WORK/scopegate"
registry_config "$WORK/registry" "$REG_PORT"
log "starting docker-registry on $REG"
timeout -k 5 "$SERVER_MAX_SECONDS" /usr/bin/docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
REG_PID=$(child_of "${PIDS[-1]}")
for i in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$REG/v2/" || true)" = 200 ] && break
  kill -0 "$REG_PID" 2>/dev/null || { cat "$WORK/registry.log" >&2; die "registry died"; }
  [ "$i" = 100 ] && die "registry not ready after 10 s"
  sleep 0.1
done

# The failed-login throttle, short enough that the denial stream cycles through 401, the
# growing delay (429) and the lockout (429) several times in a run. The denial stream's
# wrong passwords come from 127.0.0.2 with names no other stream uses, so the throttle
# never answers the real traffic (127.0.0.1) with 429.
cat >"$WORK/scopegate.yaml" <<YML
listen: 127.0.0.1:$GW_PORT
upstream: $REG
data_dir: $WORK/scopegate/data
admin:
  listen: 127.0.0.1:$ADMIN_PORT
audit:
  output: $WORK/scopegate-audit.log
limits:
  failed_logins:
    enabled: true
    delay_after: 3
    lockout_after: 10
    window_secs: 60
    lockout_secs: 10
    max_delay_secs: 2
log:
  format: text
  level: info
YML
ADMIN_TOKEN=soak-admin-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
log "starting scopegate on $GW (admin $ADMIN)"
SCOPEGATE_ADMIN_TOKEN=$ADMIN_TOKEN timeout -k 5 "$SERVER_MAX_SECONDS" "$SG" serve --config "$WORK/scopegate.yaml" \
  >"$WORK/scopegate.out" 2>"$WORK/scopegate.err" &
PIDS+=($!)
GW_PID=$(child_of "${PIDS[-1]}")
wait_ready "$GW_PID" "$WORK/scopegate.out" "$WORK/scopegate.err"
log "$(head -1 "$WORK/scopegate.out")"

# ---------------------------------------------------------------- 2. tokens + images
T=$(sg_cli token create --name soak-pusher --repository 'soak/*' content/read content/write metadata/read) || die "token create soak-pusher failed"
PUSH_PW=$(password_of "$T")
T=$(sg_cli token create --name soak-puller --repository 'soak/*' content/read metadata/read) || die "token create soak-puller failed"
PULL_PW=$(password_of "$T")
T=$(sg_cli token create --name soak-readonly --repository 'soak/*' content/read metadata/read) || die "token create soak-readonly failed"
RO_PW=$(password_of "$T")
# tokens that exist but whose passwords are only ever guessed wrong
for n in 1 2 3; do sg_cli token create --name "soak-guessed-$n" --repository 'soak/*' content/read >/dev/null || die "token create soak-guessed-$n failed"; done
[ -n "$PUSH_PW" ] && [ -n "$PULL_PW" ] && [ -n "$RO_PW" ] || die "token create returned no password"

log "building $IMAGES small OCI images"
for i in $(seq 0 $((IMAGES - 1))); do
  timeout 60 "$MAKE_OCI" "$WORK/oci" "img$i" >/dev/null || die "make-oci.sh img$i failed"
done
# the pulled image, pushed through the gateway
timeout --foreground "$TOOL_SECS" skopeo --insecure-policy copy -q --dest-tls-verify=false --dest-creds "soak-pusher:$PUSH_PW" \
  "oci:$WORK/oci:img0" "docker://$GW_HOST/soak/base:v1" >&2 || die "seeding soak/base:v1 through the gateway failed"
curl -s -o /dev/null -w '%{http_code}' --max-time 10 --interface 127.0.0.2 "$GW/v2/" | grep -q 401 \
  || die "cannot reach the gateway from 127.0.0.2 (the denial stream's address)"

# ---------------------------------------------------------------- 3. the streams
# Each worker appends "<unix time> <ok|denied|unexpected> <detail>" lines to its own file.
record() { printf '%s %s %s\n' "$(date +%s)" "$1" "${2:-}" >>"$MYLOG"; }
oneline() { tr '\n' ' ' | tr -s ' ' | cut -c1-300; }

worker_push() { # id
  local id=$1 i=0 out rc
  while [ "$(date +%s)" -lt "$END" ]; do
    i=$((i + 1))
    out=$(timeout -k 5 "$TOOL_SECS" skopeo --insecure-policy copy -q --dest-tls-verify=false --dest-creds "soak-pusher:$PUSH_PW" \
            "oci:$WORK/oci:img$(( (i + id) % IMAGES ))" "docker://$GW_HOST/soak/push-$id:t$i" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ]; then record ok; else record unexpected "push rc=$rc: $(oneline <<<"$out")"; fi
  done
}

worker_pull() { # id
  local id=$1 i=0 out rc
  while [ "$(date +%s)" -lt "$END" ]; do
    i=$((i + 1))
    if [ $((i % 2)) = 0 ]; then
      rm -rf "$WORK/pull-$id"
      out=$(timeout -k 5 "$TOOL_SECS" skopeo --insecure-policy copy -q --src-tls-verify=false --src-creds "soak-puller:$PULL_PW" \
              "docker://$GW_HOST/soak/base:v1" "oci:$WORK/pull-$id:v1" 2>&1) && rc=0 || rc=$?
    else
      out=$(timeout -k 5 "$TOOL_SECS" skopeo --insecure-policy inspect --tls-verify=false --creds "soak-puller:$PULL_PW" \
              "docker://$GW_HOST/soak/base:v1" 2>&1) && rc=0 || rc=$?
      if [ "$rc" = 0 ] && ! jq -e '.RepoTags | index("v1")' >/dev/null 2>&1 <<<"$out"; then rc=99; fi
    fi
    if [ "$rc" = 0 ]; then record ok; else record unexpected "pull/inspect rc=$rc: $(oneline <<<"$out")"; fi
  done
}

worker_deny() { # id
  local id=$1 i=0 out rc code
  while [ "$(date +%s)" -lt "$END" ]; do
    i=$((i + 1))
    case $((i % 5)) in
      0) # a push by a token without content/write, with a real client: denied, nothing lands
        out=$(timeout -k 5 "$TOOL_SECS" skopeo --insecure-policy copy -q --dest-tls-verify=false --dest-creds "soak-readonly:$RO_PW" \
                "oci:$WORK/oci:img$((i % IMAGES))" "docker://$GW_HOST/soak/base:denied-$id-$i" 2>&1) && rc=0 || rc=$?
        if [ "$rc" = 0 ]; then record unexpected "a push by soak-readonly succeeded (soak/base:denied-$id-$i)"
        elif grep -qiE 'denied|unauthorized|forbidden' <<<"$out"; then record denied "push"
        else record unexpected "denied push failed otherwise, rc=$rc: $(oneline <<<"$out")"; fi
        ;;
      1|2|3) # wrong passwords from 127.0.0.2: token names that exist, and one that does not
        local name=soak-guessed-$(( i % 3 + 1 ))
        [ $((i % 5)) = 3 ] && name=soak-nobody-$id
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 --interface 127.0.0.2 -u "$name:sgp_wrong-$i" \
                 "$GW/token?service=scopegate&scope=repository:soak/base:pull") || code="curl-failed"
        case $code in 401|429) record denied "token $code" ;; *) record unexpected "wrong password for $name at /token: $code" ;; esac
        ;;
      4) # the right password, a repository the token lacks: 403
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -u "soak-puller:$PULL_PW" -H "Accept: $OCI_MANIFEST" \
                 "$GW/v2/private/other/manifests/v1") || code="curl-failed"
        if [ "$code" = 403 ]; then record denied "v2 403"; else record unexpected "a repository soak-puller lacks: $code"; fi
        ;;
    esac
    sleep "$PAUSE"
  done
}

worker_token() { # id
  local i=0 resp code tok code2
  while [ "$(date +%s)" -lt "$END" ]; do
    i=$((i + 1))
    resp=$(curl -s --max-time 30 -u "soak-puller:$PULL_PW" -w '\n%{http_code}' \
             "$GW/token?service=scopegate&scope=repository:soak/base:pull") || resp=$'\ncurl-failed'
    code=${resp##*$'\n'}
    tok=$(jq -r '.token // empty' 2>/dev/null <<<"${resp%$'\n'*}" || true)
    if [ "$code" != 200 ] || [ -z "$tok" ]; then
      record unexpected "token request: $code $(oneline <<<"${resp%$'\n'*}")"
    else
      code2=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -I -H "Authorization: Bearer $tok" -H "Accept: $OCI_MANIFEST" \
                "$GW/v2/soak/base/manifests/v1") || code2="curl-failed"
      if [ "$code2" = 200 ]; then record ok; else record unexpected "HEAD manifest with a fresh bearer token: $code2"; fi
    fi
    sleep "$PAUSE"
  done
}

start_worker() { # stream id
  ( trap 'exit 143' TERM; MYLOG=$OUT/$1-$2.log; : >"$MYLOG"; "worker_$1" "$2" ) &
  WORKERS+=($!)
}

# counts of one stream so far: "ok denied unexpected"
counts() {
  { cat "$OUT/$1"-*.log 2>/dev/null || true; } | awk '{ c[$2]++ } END { printf "%d %d %d\n", c["ok"], c["denied"], c["unexpected"] }'
}
SAMPLES=$WORK/samples.tsv
sample() { # seconds-into-run
  local line s
  line="$1 $(status_kb "$GW_PID" VmRSS) $(status_kb "$GW_PID" VmHWM) $(open_fds "$GW_PID") $(status_kb "$GW_PID" Threads) $(cache_misses)"
  for s in "${STREAMS[@]}"; do line+=" $(counts "$s")"; done
  echo "$line" >>"$SAMPLES"
  echo "$line"
}

FDS_BEFORE=$(open_fds "$GW_PID")
RSS_BEFORE=$(status_kb "$GW_PID" VmRSS)
START=$(date +%s)
END=$(( START + SOAK_SECS ))
log "soak for ${SOAK_SECS}s: push x$PUSH_WORKERS, pull x$PULL_WORKERS, deny x$DENY_WORKERS, token x$TOKEN_WORKERS; sampling every ${SAMPLE_SECS}s"
for w in $(seq 1 "$PUSH_WORKERS"); do start_worker push "$w"; done
for w in $(seq 1 "$PULL_WORKERS"); do start_worker pull "$w"; done
for w in $(seq 1 "$DENY_WORKERS"); do start_worker deny "$w"; done
for w in $(seq 1 "$TOKEN_WORKERS"); do start_worker token "$w"; done

: >"$SAMPLES"
GW_DIED=0
next=$(( START + SAMPLE_SECS ))
while :; do
  now=$(date +%s)
  if ! kill -0 "$GW_PID" 2>/dev/null; then GW_DIED=1; log "scopegate died during the soak"; break; fi
  if [ "$now" -ge "$next" ]; then
    s=$(sample $(( now - START )))
    log "$(awk '{ printf "t=%ss rss=%.1fMiB fds=%d  ok/denied/unexpected: push %s/%s/%s pull %s/%s/%s deny %s/%s/%s token %s/%s/%s",
                      $1, $2 / 1024, $4, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 }' <<<"$s")"
    next=$(( next + SAMPLE_SECS ))
  fi
  [ "$now" -ge "$END" ] && break
  sleep 1
done
log "traffic window over; waiting for the workers' last commands (each bounded by ${TOOL_SECS}s)"
for p in "${WORKERS[@]}"; do wait "$p" 2>/dev/null || true; done
WORKERS=()
ELAPSED=$(( $(date +%s) - START ))
if [ "$GW_DIED" = 0 ] && kill -0 "$GW_PID" 2>/dev/null; then
  sample "$ELAPSED" >/dev/null
  # connections close, idle upstream connections stay pooled: give descriptors 10 s to settle
  for i in $(seq 1 100); do
    [ "$(open_fds "$GW_PID")" -le $(( FDS_BEFORE + FD_GROWTH_MAX )) ] && break
    sleep 0.1
  done
  FDS_AFTER=$(open_fds "$GW_PID")
else
  GW_DIED=1; FDS_AFTER=0
fi

# ---------------------------------------------------------------- 4. checks
# no tag a denied push named may have reached the registry
LANDED=$(curl -sf --max-time 10 "$REG/v2/soak/base/tags/list" | jq -r '[.tags[]? | select(startswith("denied-"))] | join(" ")') \
  || LANDED="(the registry's tag list could not be read)"
PANICS=$(grep -c 'panicked' "$WORK/scopegate.err" || true)
WARN_LINES=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/scopegate.err" | grep -cE ' (WARN|ERROR) ' || true)

mkdir -p "$RESULTS_DIR"
COMMIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
UNEXPECTED_EXAMPLES=$(for s in "${STREAMS[@]}"; do
  { cat "$OUT/$s"-*.log 2>/dev/null || true; } | awk -v s="$s" '$2 == "unexpected" { $2 = ""; print s "\t" $0 }' | sort -n -k2 | tail -5
done | jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {stream: .[0], at_and_detail: .[1]})')
RESULT=$(jq -R -s \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$COMMIT" --argjson soak "$SOAK_SECS" --argjson elapsed "$ELAPSED" \
  --argjson sample_secs "$SAMPLE_SECS" --argjson pushw "$PUSH_WORKERS" --argjson pullw "$PULL_WORKERS" --argjson denyw "$DENY_WORKERS" \
  --argjson tokenw "$TOKEN_WORKERS" --arg pause "$PAUSE" --argjson rss_before "$RSS_BEFORE" --argjson fds_before "$FDS_BEFORE" \
  --argjson fds_after "$FDS_AFTER" --argjson rss_max "$RSS_GROWTH_MAX_MIB" --argjson baseline_secs "$RSS_BASELINE_SECS" --argjson fd_max "$FD_GROWTH_MAX" --argjson died "$GW_DIED" \
  --arg landed "$LANDED" --argjson panics "$PANICS" --argjson warns "$WARN_LINES" --argjson examples "$UNEXPECTED_EXAMPLES" \
  --arg nproc "$(nproc)" --arg registry "$(/usr/bin/docker-registry --version 2>&1 | head -1)" '
  def c(a; b; d): {ok: (a | tonumber), denied: (b | tonumber), unexpected: (d | tonumber)};
  [split("\n")[] | select(length > 0) | split(" ") |
    {t_s: (.[0] | tonumber), rss_kb: (.[1] | tonumber), hwm_kb: (.[2] | tonumber), fds: (.[3] | tonumber), threads: (.[4] | tonumber),
     new_creds: (.[5] | tonumber),
     push: c(.[6]; .[7]; .[8]), pull: c(.[9]; .[10]; .[11]), deny: c(.[12]; .[13]; .[14]), token: c(.[15]; .[16]; .[17])}] as $s |
  ($s | last) as $last |
  ([$s[] | select(.t_s >= $baseline_secs)] | first // $last) as $base |
  (if ($s | length) > 0 then ($last.rss_kb - $base.rss_kb) else 0 end) as $growth |
  (if ($s | length) > 0 then ($last.new_creds - $base.new_creds) else 0 end) as $creds |
  ([$last.push.unexpected, $last.pull.unexpected, $last.deny.unexpected, $last.token.unexpected] | add // 0) as $unexp |
  {
    meta: {date: $date, commit: $commit, soak_secs: $soak, elapsed_secs: $elapsed, sample_secs: $sample_secs, nproc: ($nproc | tonumber),
           workers: {push: $pushw, pull: $pullw, deny: $denyw, token: $tokenw}, pause_secs: ($pause | tonumber), registry: $registry},
    samples: $s,
    totals: ($last | {push, pull, deny, token}),
    errors: $unexp,
    unexpected_examples: $examples,
    memory: {rss_before_load_kb: $rss_before, baseline_t_s: ($base.t_s // null), rss_baseline_kb: ($base.rss_kb // null),
             rss_last_kb: ($last.rss_kb // null), rss_max_kb: ([$s[].rss_kb] | max), hwm_last_kb: ($last.hwm_kb // null),
             rss_growth_kb: $growth, rss_growth_bound_kb: ($rss_max * 1024), new_credentials_since_baseline: $creds,
             rss_growth_per_new_credential_kb: (if $creds > 0 then ($growth / $creds * 100 | round / 100) else null end)},
    descriptors: {before_load: $fds_before, after_load: $fds_after, max_during: ([$s[].fds] | max), growth_bound: $fd_max},
    gateway: {died: ($died == 1), panics: $panics, warn_or_error_log_lines: $warns},
    denied_pushes_that_landed: ($landed | split(" ") | map(select(length > 0))),
    pass: ($unexp == 0 and $growth <= $rss_max * 1024 and $died == 0 and $panics == 0 and ($landed == "")
           and $fds_after <= $fds_before + $fd_max)
  }' "$SAMPLES")
printf '%s\n' "$RESULT" >"$RESULTS_DIR/soak-latest.json"

# ---------------------------------------------------------------- 5. report
{
  printf '\nscopegate soak  commit=%s  %ss (planned %ss)  push x%s pull x%s deny x%s token x%s  (%s cores, loopback)\n\n' \
    "$COMMIT" "$ELAPSED" "$SOAK_SECS" "$PUSH_WORKERS" "$PULL_WORKERS" "$DENY_WORKERS" "$TOKEN_WORKERS" "$(nproc)"
  jq -r '.samples[] | [.t_s, (.rss_kb / 1024 * 10 | round / 10), (.hwm_kb / 1024 * 10 | round / 10), .fds, .threads, .new_creds,
           "\(.push.ok)/\(.push.unexpected)", "\(.pull.ok)/\(.pull.unexpected)",
           "\(.deny.denied)/\(.deny.unexpected)", "\(.token.ok)/\(.token.unexpected)"] | @tsv' <<<"$RESULT" |
  awk -F'\t' 'BEGIN {
      fmt = "%6s | %8s | %8s | %5s | %7s | %9s | %14s | %14s | %14s | %14s\n"
      printf fmt, "t (s)", "RSS MiB", "HWM MiB", "fds", "threads", "new creds", "push ok/unexp", "pull ok/unexp", "deny den/unexp", "token ok/unexp"
      printf fmt, "------", "--------", "--------", "-----", "-------", "---------", "--------------", "--------------", "--------------", "--------------"
    } { printf fmt, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
  printf '\n(counts are cumulative; "den" = expected denials: 401/429 wrong passwords, 403, a refused push;\n "new creds" = credential cache misses, entries the cache added)\n\n'
  jq -r '
    "summary:",
    "  requests   push \(.totals.push.ok) ok, pull \(.totals.pull.ok) ok, token \(.totals.token.ok) ok, denials \(.totals.deny.denied) as expected",
    "  errors     \(.errors) unexpected outcome(s)",
    "  memory     RSS \(.memory.rss_baseline_kb / 1024 * 10 | round / 10) MiB at t=\(.memory.baseline_t_s)s -> \(.memory.rss_last_kb / 1024 * 10 | round / 10) MiB (growth \(.memory.rss_growth_kb) KiB, bound \(.memory.rss_growth_bound_kb) KiB), peak \(.memory.hwm_last_kb / 1024 * 10 | round / 10) MiB",
    "             \(.memory.new_credentials_since_baseline) new credentials cached meanwhile (\(.memory.rss_growth_per_new_credential_kb) KiB of growth each)",
    "  fds        \(.descriptors.before_load) before, \(.descriptors.max_during) at most during, \(.descriptors.after_load) after (bound +\(.descriptors.growth_bound))",
    "  gateway    died: \(.gateway.died), panics: \(.gateway.panics), WARN/ERROR log lines: \(.gateway.warn_or_error_log_lines)",
    "  denied pushes that landed: \(.denied_pushes_that_landed | length)",
    (if (.unexpected_examples | length) > 0 then "  last unexpected outcomes:", (.unexpected_examples[] | "    [\(.stream)] \(.at_and_detail)") else empty end),
    "  result     \(if .pass then "PASS" else "FAIL" end)"' <<<"$RESULT"
  printf 'JSON: %s\n' "$RESULTS_DIR/soak-latest.json"
}
[ "$(jq -r .pass <<<"$RESULT")" = true ] || exit 2
