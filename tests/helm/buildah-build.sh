#!/usr/bin/env bash
# usage: tests/helm/buildah-build.sh [BINARY]
#
# Builds the Containerfile with `buildah bud` from a PREBUILT scopegate binary (default
# target/release/scopegate, else target/debug/scopegate), offline, and checks the image:
#   1. packaging/stage-rootfs.sh stages the binary and the libraries ldd names;
#   2. `buildah bud` builds it (vfs storage, everything under a temporary directory, in a
#      private mount namespace so /var/lib/containers and /run/containers of the host are
#      never written);
#   3. the image config: user 65532:65532, entrypoint scopegate, ports 5000 and 5002;
#   4. the image alone runs the binary: `scopegate --version` via `buildah run` (chroot
#      isolation, as the image's user) and via chroot(8) as 65532 into the mounted rootfs;
#   5. `scopegate serve` from the image answers `GET /v2/` with 401 and a Bearer challenge on
#      loopback, and writes its store as 65532 into a data volume at /var/lib/scopegate.
# Needs root (unshare --mount, chroot), buildah, curl. Prints "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

BIN=${1:-}
if [ -z "$BIN" ]; then
    for b in target/release/scopegate target/debug/scopegate; do
        [ -x "$b" ] && { BIN=$b; break; }
    done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "buildah-build: no scopegate binary (cargo build --release, or pass its path)" >&2; exit 1; }
for tool in buildah curl unshare chroot timeout jq; do
    command -v "$tool" >/dev/null || { echo "buildah-build: $tool is missing (apt-get install buildah curl jq)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "buildah-build: run as root (unshare --mount, chroot)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/scopegate-buildah.XXXXXX)
cleanup() {
    [ -n "${SERVE_PID:-}" ] && kill "$SERVE_PID" 2>/dev/null || true
    # vfs layers are plain directories; a container's mount is gone with the namespace.
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== staging $BIN"
packaging/stage-rootfs.sh "$BIN" target/container-rootfs

mkdir -p "$WORK"/{root,runroot,varlib,run,config} /var/lib/containers /run/containers
cat > "$WORK/storage.conf" <<C
[storage]
driver = "vfs"
graphroot = "$WORK/root"
runroot = "$WORK/runroot"
C
# A free loopback port pair for the serve check.
read -r PUB ADM < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1",0))
print(*[x.getsockname()[1] for x in s])')
cat > "$WORK/config/scopegate.yaml" <<C
listen: 127.0.0.1:$PUB
public_url: http://127.0.0.1:$PUB
upstream: http://127.0.0.1:9
data_dir: /var/lib/scopegate
admin: {listen: 127.0.0.1:$ADM}
C
chmod 0755 "$WORK" "$WORK/config"; chmod 0644 "$WORK/config/scopegate.yaml"

# Everything below runs in a private mount namespace.
cat > "$WORK/inner.sh" <<'INNER'
set -uo pipefail
W=$1; PUB=$2; ADM=$3
mount --bind "$W/varlib" /var/lib/containers && mount --bind "$W/run" /run/containers || exit 99
export CONTAINERS_STORAGE_CONF=$W/storage.conf
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
BH=(buildah --root "$W/root" --runroot "$W/runroot" --storage-driver vfs)
bh() { "${BH[@]}" "$@"; }
pass=0; fail=0
ok()  { echo "ok   - $1"; pass=$((pass+1)); }
bad() { echo "FAIL - $1"; fail=$((fail+1)); }
finish() { echo "$pass passed, $fail failed"; [ "$fail" = 0 ]; exit $?; }

echo "== buildah bud"
if timeout 300 "${BH[@]}" bud --layers=false -f Containerfile -t localhost/scopegate:ci .; then ok "buildah bud -f Containerfile"; else bad "buildah bud -f Containerfile"; finish; fi

cfg=$(bh inspect --type image localhost/scopegate:ci | jq -c .OCIv1.config)
echo "image config: $cfg"
[ "$(jq -r .User <<<"$cfg")" = "65532:65532" ] && ok "image user is 65532:65532" || bad "image user is $(jq -r .User <<<"$cfg")"
[ "$(jq -c .Entrypoint <<<"$cfg")" = '["scopegate"]' ] && ok "entrypoint scopegate" || bad "entrypoint $(jq -c .Entrypoint <<<"$cfg")"
[ "$(jq -c '.ExposedPorts|keys' <<<"$cfg")" = '["5000/tcp","5002/tcp"]' ] && ok "exposes 5000 and 5002" || bad "exposed ports $(jq -c .ExposedPorts <<<"$cfg")"

c=$(bh from localhost/scopegate:ci)
v=$(timeout 60 "${BH[@]}" run --isolation chroot "$c" -- scopegate --version 2>&1)
[[ "$v" == scopegate\ * ]] && ok "buildah run (image user): $v" || bad "buildah run --version: $v"

m=$(bh mount "$c")
v=$(chroot --userspec=65532:65532 "$m" /usr/local/bin/scopegate --version 2>&1)
[[ "$v" == scopegate\ * ]] && ok "chroot into the image rootfs as 65532: $v" || bad "chroot --version: $v"
files=$(cd "$m" && find . -type f | sort | tr '\n' ' ')
echo "image files: $files"
owner=$(stat -c %u:%g "$m/var/lib/scopegate")
[ "$owner" = 65532:65532 ] && ok "/var/lib/scopegate owned by 65532" || bad "/var/lib/scopegate owned by $owner"

echo "== scopegate serve from the image (loopback ports $PUB, $ADM)"
# The data directory as a volume owned by 65532, as the chart's fsGroup makes it.
mkdir -p "$W/data" && chown 65532:65532 "$W/data" && chmod 0700 "$W/data"
timeout 30 "${BH[@]}" run --isolation chroot -v "$W/config:/etc/scopegate/config:ro" -v "$W/data:/var/lib/scopegate" "$c" -- \
    scopegate serve --config /etc/scopegate/config/scopegate.yaml >"$W/serve.log" 2>&1 &
pid=$!
code=""
for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PUB/v2/" 2>/dev/null) && [ "$code" != 000 ] && break
    sleep 0.1
done
hdr=$(curl -s -D - -o /dev/null "http://127.0.0.1:$PUB/v2/" | tr -d '\r' | grep -i '^www-authenticate:' || true)
if [ "$code" = 401 ] && [[ "$hdr" == *Bearer* ]]; then ok "GET /v2/ answers 401 with a Bearer challenge ($hdr)"; else bad "GET /v2/ answered '$code' ($hdr)"; cat "$W/serve.log"; fi
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
store=$(ls -A "$W/data")
[ -n "$store" ] && ok "serve kept its store in the data volume, as 65532: $(cd "$W/data" && stat -c '%n:%u:%a' * | tr '\n' ' ')" || bad "nothing written to the data volume"
bh umount "$c" >/dev/null; bh rm "$c" >/dev/null
finish
INNER
unshare --mount --propagation private bash "$WORK/inner.sh" "$WORK" "$PUB" "$ADM"
