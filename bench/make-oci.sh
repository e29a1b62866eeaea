#!/bin/bash
# Copied from the e2e research helpers (/tmp/e2e-research/make-oci.sh) so the benchmark is self-contained.
# usage: [LAYER_COMPRESS=none] make-oci.sh <oci-dir> <tag> [random-MiB]
# Builds a valid single-layer OCI image layout by hand (no network, no daemon).
# With random-MiB>0, the layer contains a file of that many MiB of random data (incompressible).
set -euo pipefail
DIR=$1; TAG=${2:-v1}; MIB=${3:-0}
mkdir -p "$DIR/blobs/sha256"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/root/bin" "$TMP/root/etc"
printf '#!/bin/sh\necho "Hello from e2e test image"\n' > "$TMP/root/bin/hello"; chmod 755 "$TMP/root/bin/hello"
echo "e2e-$TAG" > "$TMP/root/etc/e2e-tag"
if [ "$MIB" -gt 0 ]; then head -c $((MIB*1024*1024)) /dev/urandom > "$TMP/root/random.bin"; fi
# deterministic-ish tar: fixed mtime/owner; gzip -n (no name/time) ; -1 since random data won't compress anyway
tar --sort=name --mtime='2020-01-01 00:00Z' --owner=0 --group=0 --numeric-owner -C "$TMP/root" -cf "$TMP/layer.tar" .
DIFF_ID=$(sha256sum "$TMP/layer.tar" | cut -d' ' -f1)
if [ "${LAYER_COMPRESS:-gzip}" = none ]; then   # uncompressed layer: much faster for big random blobs
  LMT=application/vnd.oci.image.layer.v1.tar; mv "$TMP/layer.tar" "$TMP/layer.tar.gz"
else LMT=application/vnd.oci.image.layer.v1.tar+gzip; gzip -n -1 -c "$TMP/layer.tar" > "$TMP/layer.tar.gz"; fi
if [ "$LMT" = application/vnd.oci.image.layer.v1.tar ]; then LAYER=$DIFF_ID; else LAYER=$(sha256sum "$TMP/layer.tar.gz" | cut -d" " -f1); fi
LSIZE=$(stat -c %s "$TMP/layer.tar.gz")
mv "$TMP/layer.tar.gz" "$DIR/blobs/sha256/$LAYER"
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
# merge into existing index.json (multiple tags per dir allowed), replacing same tag
OLD='{"schemaVersion":2,"manifests":[]}'; [ -f "$DIR/index.json" ] && OLD=$(cat "$DIR/index.json")
jq -c --arg d "sha256:$MDIG" --argjson s "$MSIZE" --arg t "$TAG" \
  '.manifests = ([.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] != $t)] +
   [{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$d,size:$s,
     annotations:{"org.opencontainers.image.ref.name":$t}}])' <<<"$OLD" > "$DIR/index.json.tmp"
mv "$DIR/index.json.tmp" "$DIR/index.json"
echo "sha256:$MDIG"
