#!/bin/bash
# usage: [LAYER_RANDOM_MIB=N] [LAYER_COMPRESS=none] make-oci.sh <oci-dir> <tag>
#        -> prints the manifest digest
#
# Builds a tiny valid single-layer OCI image (amd64/linux, one gzip layer with /bin/hello
# and /etc/e2e-tag containing <tag>) into the OCI layout <oci-dir>, under the name <tag>,
# by hand: no network, no daemon. Several tags may share one layout (index.json is merged,
# a tag given again is replaced). Deterministic: the same tag gives the same digests, and
# different tags give different layers, configs and manifests. Needs tar, gzip, jq.
#
# For large-transfer tests: LAYER_RANDOM_MIB=N adds /random.bin, N MiB from /dev/urandom
# (incompressible, so no longer deterministic), and LAYER_COMPRESS=none stores the layer
# as an uncompressed tar (media type ...layer.v1.tar), which skips gzip on 200 MiB.
set -euo pipefail
DIR=$1; TAG=$2
MIB=${LAYER_RANDOM_MIB:-0}
COMPRESS=${LAYER_COMPRESS:-gzip}
case "$COMPRESS" in gzip|none) ;; *) echo "make-oci.sh: LAYER_COMPRESS must be gzip or none" >&2; exit 2;; esac
mkdir -p "$DIR/blobs/sha256"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/root/bin" "$TMP/root/etc"
printf '#!/bin/sh\necho "Hello from e2e test image"\n' > "$TMP/root/bin/hello"; chmod 755 "$TMP/root/bin/hello"
echo "e2e-$TAG" > "$TMP/root/etc/e2e-tag"
if [ "$MIB" -gt 0 ]; then head -c $((MIB * 1024 * 1024)) /dev/urandom > "$TMP/root/random.bin"; fi
tar --sort=name --mtime='2020-01-01 00:00Z' --owner=0 --group=0 --numeric-owner -C "$TMP/root" -cf "$TMP/layer.tar" .
DIFF_ID=$(sha256sum "$TMP/layer.tar" | cut -d' ' -f1)
if [ "$COMPRESS" = none ]; then
  LMT=application/vnd.oci.image.layer.v1.tar; mv "$TMP/layer.tar" "$TMP/layer.blob"; LAYER=$DIFF_ID
else
  LMT=application/vnd.oci.image.layer.v1.tar+gzip; gzip -n -c "$TMP/layer.tar" > "$TMP/layer.blob"
  LAYER=$(sha256sum "$TMP/layer.blob" | cut -d' ' -f1)
fi
LSIZE=$(stat -c %s "$TMP/layer.blob")
mv "$TMP/layer.blob" "$DIR/blobs/sha256/$LAYER"
# put JSON: store a blob under its digest, print "<hex> <size>"
put() { local d; d=$(printf '%s' "$1" | sha256sum | cut -d' ' -f1); printf '%s' "$1" > "$DIR/blobs/sha256/$d"; echo "$d $(printf '%s' "$1" | wc -c)"; }
CONFIG=$(jq -cn --arg diff "sha256:$DIFF_ID" '{architecture:"amd64",os:"linux",created:"2020-01-01T00:00:00Z",
  config:{Cmd:["/bin/hello"],Env:["PATH=/bin"]},rootfs:{type:"layers",diff_ids:[$diff]},
  history:[{created:"2020-01-01T00:00:00Z",created_by:"make-oci.sh"}]}')
read -r CDIG CSIZE < <(put "$CONFIG")
MANIFEST=$(jq -cn --arg c "sha256:$CDIG" --argjson cs "$CSIZE" --arg l "sha256:$LAYER" --argjson ls "$LSIZE" --arg lmt "$LMT" \
  '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
    config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$c,size:$cs},
    layers:[{mediaType:$lmt,digest:$l,size:$ls}]}')
read -r MDIG MSIZE < <(put "$MANIFEST")
printf '{"imageLayoutVersion":"1.0.0"}' > "$DIR/oci-layout"
OLD='{"schemaVersion":2,"manifests":[]}'; [ -f "$DIR/index.json" ] && OLD=$(cat "$DIR/index.json")
jq -c --arg d "sha256:$MDIG" --argjson s "$MSIZE" --arg t "$TAG" \
  '.manifests = ([.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] != $t)] +
   [{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$d,size:$s,
     annotations:{"org.opencontainers.image.ref.name":$t}}])' <<<"$OLD" > "$DIR/index.json.tmp"
mv "$DIR/index.json.tmp" "$DIR/index.json"
echo "sha256:$MDIG"
