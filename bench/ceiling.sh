#!/usr/bin/env bash
# bench/ceiling.sh: how fast can any proxy relay a blob GET on this machine?
#
# Puts four paths side by side, in rounds with the order turned each round:
#   direct      curl -> docker-registry
#   relay_copy  curl -> bare TCP relay (bench/relay, user-space copy) -> registry
#   relay_splice curl -> bare TCP relay (bench/relay, splice(2), zero-copy) -> registry
#   scopegate   curl -> scopegate (bearer token, every check) -> registry
# and reports, per path, the median MB/s, the ratio against direct (the median of the
# ratios within each round) and the CPU per MB of the proxy, the registry and curl. A
# bare relay parses nothing and authorizes nothing, so its figures are the ceiling for
# any proxy that sits in the byte path, scopegate included.
# It measures; it never fails on a figure. Exit 1 = setup failure or a wrong download.
#
# Env knobs [defaults]: ROUNDS [6], REPS [3] transfers per path and round, MIB [1024]
# blob size, SKIP_BUILD [0] (1 = use an existing target/release/scopegate),
# SCOPEGATE_BIN, OUT [bench/results/ceiling.json], KEEP_WORKDIR [0],
# SERVER_MAX_SECONDS [1800].
# Requires: cargo, go, Debian's docker-registry, curl, jq, ss. About 3 minutes after the
# build with the defaults.
set -euo pipefail

ROUNDS=${ROUNDS:-6}
REPS=${REPS:-3}
MIB=${MIB:-1024}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
SERVER_MAX_SECONDS=${SERVER_MAX_SECONDS:-1800}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SG=${SCOPEGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/scopegate}
OUT=${OUT:-$ROOT/bench/results/ceiling.json}
REPO=bench/img
PATHS=(direct relay_copy relay_splice scopegate)

log() { printf '[ceiling %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[ceiling %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for v in ROUNDS REPS MIB SERVER_MAX_SECONDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
for t in go docker-registry curl jq ss sha256sum; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install -y golang-go docker-registry curl jq iproute2)"
done

WORK=$(mktemp -d /tmp/scopegate-ceiling.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill_tree "$p"; done
  if [ "$KEEP_WORKDIR" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup
if [ "$SKIP_BUILD" != 1 ]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --locked --quiet) || die "cargo build failed"
fi
[ -x "$SG" ] || die "no scopegate binary at $SG (SKIP_BUILD=1 needs one)"
GOCACHE=$WORK/gocache go build -o "$WORK/relay" "$ROOT/bench/relay/relay.go" || die "go build of bench/relay failed"

REG_PORT=$(free_port)
registry_config "$WORK/registry" "$REG_PORT"
spawn "$WORK/registry.log" "$WORK/registry.log" /usr/bin/docker-registry serve "$WORK/registry/config.yml"
REG_PID=$SERVER_PID
wait_http docker-registry "$REG_PID" "http://127.0.0.1:$REG_PORT/v2/"
log "docker-registry on 127.0.0.1:$REG_PORT (pid $REG_PID)"

declare -A PORT PID
PORT[direct]=$REG_PORT; PID[direct]=
for mode in copy splice; do
  PORT[relay_$mode]=$(free_port)
  spawn "$WORK/relay_$mode.out" "$WORK/relay_$mode.err" "$WORK/relay" "127.0.0.1:${PORT[relay_$mode]}" "127.0.0.1:$REG_PORT" "$mode"
  PID[relay_$mode]=$SERVER_PID
  wait_http "relay_$mode" "$SERVER_PID" "http://127.0.0.1:${PORT[relay_$mode]}/v2/"
done
PORT[scopegate]=$(free_port); ADMIN_PORT=$(free_port)
ADMIN_TOKEN=ceiling-admin-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mkdir -p "$WORK/sg"
export SCOPEGATE_ADMIN_TOKEN=$ADMIN_TOKEN
spawn "$WORK/scopegate.out" "$WORK/scopegate.err" "$SG" serve \
  --listen "127.0.0.1:${PORT[scopegate]}" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$REG_PORT" --data-dir "$WORK/sg"
PID[scopegate]=$SERVER_PID
wait_ready "$SERVER_PID" "$WORK/scopegate.out" "$WORK/scopegate.err"
PASSWORD=$(timeout --foreground 30 "$SG" --server "http://127.0.0.1:$ADMIN_PORT" \
  token create --name bench --repository "$REPO" content/read metadata/read | jq -r '.credentials.passwords[0].value')
BEARER=$(curl -sf --max-time 10 -u "bench:$PASSWORD" \
  "http://127.0.0.1:${PORT[scopegate]}/token?service=scopegate&scope=repository:$REPO:pull" | jq -r '.token // empty')
[ -n "$BEARER" ] || die "no bearer token from scopegate"

log "blob: $MIB MiB of random data, uploaded straight to the registry"
head -c $(( MIB * 1048576 )) /dev/urandom >"$WORK/blob"
DIGEST=sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)
LOC=$(curl -sf --max-time 10 -D - -o /dev/null -X POST "http://127.0.0.1:$REG_PORT/v2/$REPO/blobs/uploads/" \
  | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
[ -n "$LOC" ] || die "the registry gave no upload location"
[[ $LOC == /* ]] && LOC=http://127.0.0.1:$REG_PORT$LOC
code=$(curl -s --max-time 600 -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/octet-stream' \
  -T "$WORK/blob" "$LOC&digest=$DIGEST")
[ "$code" = 201 ] || die "blob upload: HTTP $code"
rm -f "$WORK/blob"

url_of() { echo "http://127.0.0.1:${PORT[$1]}/v2/$REPO/blobs/$DIGEST"; }
auth_args() { [ "$1" = scopegate ] && printf '%s\n' -H "Authorization: Bearer $BEARER"; true; }

# every path must deliver the blob's exact bytes (checked once, outside the timed runs)
for p in "${PATHS[@]}"; do
  mapfile -t A < <(auth_args "$p")
  got=sha256:$(curl -sf --max-time 600 "${A[@]}" "$(url_of "$p")" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$DIGEST" ] || die "$p delivered bytes with digest $got, not $DIGEST"
done
log "all paths deliver the blob; measuring $ROUNDS rounds x $REPS transfers per path"

# ---------------------------------------------------------------- measure
# one line per transfer: round path bytes_per_s proxy_ticks registry_ticks curl_user+sys_s
SAMPLES=$WORK/samples.txt
: >"$SAMPLES"
HZ=$(getconf CLK_TCK)
TIMEFORMAT='%U %S'
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!PATHS[@]}"; do
    p=${PATHS[$(( (i + r - 1) % ${#PATHS[@]} ))]}
    mapfile -t A < <(auth_args "$p")
    for _ in $(seq 1 "$REPS"); do
      p0=0; [ -n "${PID[$p]}" ] && p0=$(cpu_ticks "${PID[$p]}")
      g0=$(cpu_ticks "$REG_PID")
      { time curl -s --max-time 600 -o /dev/null -w '%{http_code} %{speed_download} %{size_download}\n' \
          "${A[@]}" "$(url_of "$p")" >"$WORK/curl.out"; } 2>"$WORK/time.out"
      p1=0; [ -n "${PID[$p]}" ] && p1=$(cpu_ticks "${PID[$p]}")
      g1=$(cpu_ticks "$REG_PID")
      read -r code speed size <"$WORK/curl.out"
      [ "$code" = 200 ] && [ "$size" = $(( MIB * 1048576 )) ] || die "$p: HTTP $code, $size bytes"
      read -r cu cs <"$WORK/time.out"
      echo "$r $p $speed $((p1 - p0)) $((g1 - g0)) $(awk -v u="$cu" -v s="$cs" 'BEGIN { print u + s }')" >>"$SAMPLES"
    done
  done
  log "round $r of $ROUNDS done"
done

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
jq -R -s --argjson hz "$HZ" --argjson mib "$MIB" --arg commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --arg kernel "$(uname -r)" --argjson nproc "$(nproc)" --argjson rounds "$ROUNDS" --argjson reps "$REPS" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  ($mib * 1048576 / 1e6) as $mb
  | [split("\n")[] | select(length > 0) | split(" ")
     | {round: (.[0] | tonumber), path: .[1], mbps: (.[2] | tonumber / 1e6),
        proxy_ticks: (.[3] | tonumber), registry_ticks: (.[4] | tonumber), curl_s: (.[5] | tonumber)}] as $s
  | ($s | map(.path) | unique) as $paths
  | def round_median($p; $r): [$s[] | select(.path == $p and .round == $r) | .mbps] | median;
  {meta: {commit: $commit, kernel: $kernel, nproc: $nproc, blob_mib: $mib, rounds: $rounds, reps_per_round: $reps},
   paths: ($paths | map(. as $p | [$s[] | select(.path == $p)] as $x | {key: $p, value: {
       mbps_median: ([$x[].mbps] | median),
       mbps_min: ([$x[].mbps] | min), mbps_max: ([$x[].mbps] | max),
       ratio_vs_direct: ([range(1; $rounds + 1) as $r | round_median($p; $r) / round_median("direct"; $r)] | median),
       proxy_us_per_mb: (if $p == "direct" then null else ([$x[].proxy_ticks] | add) / $hz / ($x | length) / $mb * 1e6 end),
       registry_us_per_mb: (([$x[].registry_ticks] | add) / $hz / ($x | length) / $mb * 1e6),
       curl_us_per_mb: (([$x[].curl_s] | add) / ($x | length) / $mb * 1e6)}}) | from_entries),
   samples: $s}' "$SAMPLES" >"$OUT"

printf '\nblob GET of %s MiB, %s rounds x %s transfers, %s cores, kernel %s, commit %s\n' \
  "$MIB" "$ROUNDS" "$REPS" "$(nproc)" "$(uname -r)" "$(jq -r .meta.commit "$OUT")"
printf '%-13s | %9s | %9s | %13s | %16s | %12s\n' path "MB/s" "x direct" "proxy us/MB" "registry us/MB" "curl us/MB"
printf '%s\n' "--------------|-----------|-----------|---------------|------------------|-------------"
for p in "${PATHS[@]}"; do
  jq -r --arg p "$p" '.paths[$p] | [$p, .mbps_median, .ratio_vs_direct, (.proxy_us_per_mb // "-"),
      .registry_us_per_mb, .curl_us_per_mb] | @tsv' "$OUT" \
    | awk -F'\t' '{ printf "%-13s | %9.0f | %9.2f | %13s | %16.0f | %12.0f\n", $1, $2, $3,
                     ($4 == "-" ? "-" : sprintf("%.0f", $4)), $5, $6 }'
done
printf '\nJSON: %s\n' "$OUT"
