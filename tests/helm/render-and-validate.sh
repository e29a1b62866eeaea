#!/usr/bin/env bash
# usage: tests/helm/render-and-validate.sh [SCOPEGATE_BINARY]
#
# Renders helm/scopegate without helm (tests/helm/render: Go text/template + sprig + the helm
# built-ins the chart uses) and checks the result:
#   * values.schema.json is a valid JSON Schema, and the merged values of every set validate
#     against it (python jsonschema), as helm would check them;
#   * the sets values-{sidecar,standalone,tls,postgres}.yaml, plus a minimal one (publicUrl
#     only) and a sidecar one with PostgreSQL and shared registry storage, render;
#   * every rendered document validates with `kubernetes-validate --strict` for each of
#     $KUBE_VERSIONS (default "1.25.0 1.30.0"); the ServiceMonitor, whose CRD
#     kubernetes-validate does not bundle, against tests/helm/servicemonitor.schema.json;
#   * structural checks per set (check_rendered.py): security context, probes, ports, mounts
#     behind every file the config names, Secrets and claims referenced, selectors, NOTES.txt;
#   * the scopegate configuration held by the ConfigMap is written to
#     $OUT/<set>/scopegate.yaml; with SCOPEGATE_BINARY, `scopegate config check` runs on it
#     (as root with unshare: in a private mount namespace whose /etc/scopegate holds the files
#     the pod would have: admin token, signing key, TLS certificate and key, upstream CA);
#   * negative cases: values that must fail to render (and be refused by the schema) with a
#     message saying what to change: replicas > 1 without PostgreSQL, no publicUrl, ...
#
# Rendered output stays in $OUT (default target/helm-render) for inspection.
# Needs: go (GOPATH mode) with Debian's golang-github-masterminds-sprig-dev and
# golang-gopkg-yaml.v2-dev, python3 with jsonschema and PyYAML, kubernetes-validate, openssl.
# Prints "N passed, N failed" last; exits 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/helm
CHART=helm/scopegate
SCOPEGATE=${1:-}
KUBE_VERSIONS=${KUBE_VERSIONS:-1.25.0 1.30.0}
OUT=${OUT:-target/helm-render}
WORK=$(mktemp -d /tmp/scopegate-helm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/results

ok()   { echo "ok   - $*" | tee -a "$LOG"; }
bad()  { echo "FAIL - $*" | tee -a "$LOG"; }
# Runs a python check, whose own ok/FAIL lines are counted.
py()   { python3 "$HERE/check_rendered.py" "$@" | tee -a "$LOG"; }

finish() {
    local p f
    p=$(grep -c '^ok   - ' "$LOG" || true)
    f=$(grep -c '^FAIL - ' "$LOG" || true)
    if [ "$f" != 0 ]; then
        echo
        echo "Failed checks:"
        grep '^FAIL - ' "$LOG"
    fi
    echo "$p passed, $f failed"
    [ "$f" = 0 ]
    exit $?
}
: > "$LOG"

# --- tools --------------------------------------------------------------------------------
missing=""
command -v go >/dev/null || missing+=" go (apt-get install golang-go)"
[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || missing+=" sprig (apt-get install golang-github-masterminds-sprig-dev)"
[ -d /usr/share/gocode/src/gopkg.in/yaml.v2 ] || missing+=" yaml.v2 (apt-get install golang-gopkg-yaml.v2-dev)"
python3 -c 'import jsonschema, yaml' 2>/dev/null || missing+=" python jsonschema+PyYAML (pip install jsonschema pyyaml)"
command -v kubernetes-validate >/dev/null || missing+=" kubernetes-validate (pip install kubernetes-validate)"
command -v openssl >/dev/null || missing+=" openssl"
if [ -n "$missing" ]; then
    bad "tools missing:$missing"
    finish
fi
if [ -n "$SCOPEGATE" ] && [ ! -x "$SCOPEGATE" ]; then
    bad "scopegate binary $SCOPEGATE is not executable"
    finish
fi

# --- the renderer ---------------------------------------------------------------------------
RENDER=$WORK/render
if (cd "$HERE/render" && env -u GOFLAGS GO111MODULE=off GOPATH=/usr/share/gocode \
        GOCACHE="${GOCACHE:-/tmp/scopegate-go-cache}" go build -o "$RENDER" .) 2>"$WORK/build.err"; then
    ok "tests/helm/render builds (GOPATH mode, Debian's sprig)"
else
    bad "tests/helm/render does not build: $(cat "$WORK/build.err")"
    finish
fi
unformatted=$(gofmt -l "$HERE/render")
[ -z "$unformatted" ] && ok "renderer is gofmt-clean" || bad "gofmt: $unformatted"

# --- the schema -------------------------------------------------------------------------------
py schema-meta "$CHART/values.schema.json"

# --- test-time material ---------------------------------------------------------------------
# An EC P-256 key (PKCS#8 PEM) for signingKey.value, a self-signed certificate for TLS.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/key.pem" 2>/dev/null
openssl req -x509 -new -key "$WORK/key.pem" -subj /CN=registry.example.com -days 1 -out "$WORK/cert.pem" 2>/dev/null
{ echo "signingKey:"; echo "  value: |"; sed 's/^/    /' "$WORK/key.pem"; } > "$WORK/signing-key.yaml"

render() { # render OUTDIR ARGS... (stderr to OUTDIR.err)
    local out=$1; shift
    rm -rf "$out"; mkdir -p "$(dirname "$out")"
    "$RENDER" --chart "$CHART" --out "$out" --dump-values "$out.values.json" "$@" 2>"$out.err"
}

# Validates every document of a rendered set with kubernetes-validate for one version.
kvalidate() { # kvalidate SET OUTDIR VERSION
    local set=$1 out=$2 v=$3 line
    kubernetes-validate --strict -k "$v" "$out/all.yaml" >"$out.kv-$v" 2>&1
    local rc=$?
    while IFS= read -r line; do
        case "$line" in
            INFO*passed*) ok "$set: k8s $v: ${line#*for resource }" ;;
            WARN*"kind ServiceMonitor"*) ;; # checked against its CRD subset below
            *) bad "$set: k8s $v: $line" ;;
        esac
    done <"$out.kv-$v"
    [ $rc = 0 ] || grep -q '^ERROR' "$out.kv-$v" || bad "$set: kubernetes-validate $v exited $rc"
}

# `scopegate config check` on the rendered configuration, where the files it names exist.
config_check() { # config_check SET CONFIG
    local set=$1 cfg=$2 outp rc
    if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
        local made=""
        [ -e /etc/scopegate ] || made=1   # the mount point; removed again below
        outp=$(unshare --mount --propagation private /bin/bash -c '
            set -e
            mkdir -p /etc/scopegate
            mount -t tmpfs tmpfs /etc/scopegate
            mkdir -p /etc/scopegate/{config,admin,signing,tls,upstream-ca}
            cp "$1" /etc/scopegate/config/scopegate.yaml
            echo sga_config-check-admin-token-0123456789 > /etc/scopegate/admin/token
            cp "$2" /etc/scopegate/signing/key.pem
            cp "$3" /etc/scopegate/tls/tls.crt; cp "$2" /etc/scopegate/tls/tls.key
            cp "$3" /etc/scopegate/upstream-ca/ca.crt
            exec "$4" config check --config /etc/scopegate/config/scopegate.yaml' \
            check "$cfg" "$WORK/key.pem" "$WORK/cert.pem" "$(realpath "$SCOPEGATE")" 2>&1)
        rc=$?
        [ -n "$made" ] && rmdir /etc/scopegate 2>/dev/null
    else
        outp=$("$SCOPEGATE" config check --config "$cfg" 2>&1)
        rc=$?
    fi
    if [ $rc = 0 ]; then
        ok "$set: scopegate config check accepts the rendered config ($outp)"
    else
        bad "$set: scopegate config check refuses $cfg (exit $rc): $outp"
    fi
}

# --- the values sets ------------------------------------------------------------------------
for set in sidecar standalone tls postgres; do
    echo "== $set"
    args=(--values "$HERE/values-$set.yaml")
    [ "$set" = standalone ] && args+=(--values "$WORK/signing-key.yaml")
    [ "$set" = tls ] && args+=(--api-versions monitoring.coreos.com/v1)
    for v in $KUBE_VERSIONS; do
        out=$OUT/$set-$v
        if render "$out" "${args[@]}" --kube-version "$v"; then
            ok "$set: renders for Kubernetes $v ($(ls "$out" | grep -v -e all.yaml -e NOTES.txt | tr '\n' ' '))"
        else
            bad "$set: render failed for $v: $(cat "$out.err")"
            continue
        fi
        kvalidate "$set" "$out" "$v"
    done
    out=$OUT/$set-${KUBE_VERSIONS%% *}
    [ -f "$out/all.yaml" ] || continue
    rm -rf "$OUT/$set"; cp -r "$out" "$OUT/$set"; out=$OUT/$set
    py values "$CHART/values.schema.json" "$OUT/$set-${KUBE_VERSIONS%% *}.values.json"
    if grep -q '^kind: ServiceMonitor' "$out/all.yaml"; then
        py servicemonitor "$HERE/servicemonitor.schema.json" "$out/all.yaml"
    fi
    py rendered "$set" "$out"
    echo "   config: $out/scopegate.yaml"
    [ -n "$SCOPEGATE" ] && config_check "$set" "$out/scopegate.yaml"
done

# Two more sets that must render and validate: the minimal install, and sidecar mode with
# several replicas on PostgreSQL with shared registry storage.
cat > "$WORK/values-minimal.yaml" <<'EOF'
publicUrl: https://registry.example.com
EOF
cat > "$WORK/values-sidecar-shared.yaml" <<'EOF'
publicUrl: https://registry.example.com
replicas: 2
database: {url: "postgres://scopegate:secret@postgres:5432/scopegate"}
registry:
  sharedStorage: true
  persistence: {accessModes: [ReadWriteMany]}
EOF
for set in minimal sidecar-shared; do
    echo "== $set"
    for v in $KUBE_VERSIONS; do
        out=$OUT/$set-$v
        if render "$out" --values "$WORK/values-$set.yaml" --kube-version "$v"; then
            ok "$set: renders for Kubernetes $v"
            kvalidate "$set" "$out" "$v"
        else
            bad "$set: render failed for $v: $(cat "$out.err")"
        fi
    done
    py values "$CHART/values.schema.json" "$OUT/$set-${KUBE_VERSIONS%% *}.values.json"
    grep -q 'SCOPEGATE_DATABASE_URL' "$OUT/$set-${KUBE_VERSIONS%% *}/deployment.yaml" 2>/dev/null \
        && [ "$set" = sidecar-shared ] && ok "$set: SCOPEGATE_DATABASE_URL from the chart's Secret"
    [ -n "$SCOPEGATE" ] && [ -f "$OUT/$set-${KUBE_VERSIONS%% *}/configmap.yaml" ] && {
        python3 -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["scopegate.yaml"], end="")' \
            "$OUT/$set-${KUBE_VERSIONS%% *}/configmap.yaml" > "$OUT/$set-${KUBE_VERSIONS%% *}/scopegate.yaml"
        config_check "$set" "$OUT/$set-${KUBE_VERSIONS%% *}/scopegate.yaml"
    }
done

# --- negative cases ---------------------------------------------------------------------------
# negative NAME RENDER_MESSAGE SCHEMA_MESSAGE VALUES [RENDER ARGS...]
#   RENDER_MESSAGE "": must render; SCHEMA_MESSAGE "": the schema must accept.
negative() {
    local name=$1 rmsg=$2 smsg=$3 values=$4; shift 4
    local out=$WORK/neg-$name
    printf '%s\n' "$values" > "$out.yaml"
    if render "$out" --values "$out.yaml" "$@"; then
        if [ -z "$rmsg" ]; then ok "$name: renders"; else bad "$name: rendered, expected a failure mentioning '$rmsg'"; fi
    else
        if [ -n "$rmsg" ] && grep -qF -- "$rmsg" "$out.err"; then
            ok "$name: refused: $(cat "$out.err")"
        else
            bad "$name: render failed without '$rmsg': $(cat "$out.err")"
        fi
    fi
    if [ -f "$out.values.json" ]; then
        if [ -n "$smsg" ]; then
            py values "$CHART/values.schema.json" "$out.values.json" --expect-error "$smsg"
        else
            py values "$CHART/values.schema.json" "$out.values.json"
        fi
    fi
}
echo "== negative cases"
negative sqlite-replicas "replicas: 2 needs PostgreSQL" "database" \
    'publicUrl: https://registry.example.com
replicas: 2'
negative standalone-sqlite-replicas "replicas: 3 needs PostgreSQL" "database" \
    'mode: standalone
publicUrl: https://registry.example.com
upstream: {url: "http://registry:5000"}
replicas: 3'
negative sidecar-replicas-unshared "gives every replica its own registry" "sharedStorage" \
    'publicUrl: https://registry.example.com
replicas: 2
database: {url: "postgres://u:p@db/scopegate"}'
negative no-public-url "publicUrl is required" "publicUrl" \
    'mode: sidecar'
negative public-url-path "publicUrl must be an origin" "publicUrl" \
    'publicUrl: https://registry.example.com/v2'
negative standalone-no-upstream "upstream.url is required in standalone mode" "upstream.url" \
    'mode: standalone
publicUrl: https://registry.example.com'
negative tls-no-secret "tls.enabled needs tls.secretName" "tls.secretName" \
    'publicUrl: https://registry.example.com
tls: {enabled: true}'
negative short-admin-token "at least 16 characters" "adminToken.value" \
    'publicUrl: https://registry.example.com
adminToken: {value: short}'
negative bad-mode "mode must be sidecar or standalone" "mode" \
    'mode: both
publicUrl: https://registry.example.com'
negative servicemonitor-without-crd "monitoring.coreos.com/v1" "" \
    'publicUrl: https://registry.example.com
serviceMonitor: {enabled: true}'
negative kubernetes-1.24 "incompatible with Kubernetes" "" \
    'publicUrl: https://registry.example.com' --kube-version 1.24.0
# Unknown keys: only helm's schema check refuses them (templates ignore them).
negative unknown-top-key "" "'replica' was unexpected" \
    'publicUrl: https://registry.example.com
replica: 2'
negative unknown-config-key "" "'formt' was unexpected" \
    'publicUrl: https://registry.example.com
config: {log: {formt: text}}'
negative bad-database-url "" "database.url" \
    'publicUrl: https://registry.example.com
database: {url: "mysql://db/scopegate"}'

# The validators themselves refuse a broken manifest.
python3 - "$OUT/sidecar/deployment.yaml" "$WORK/broken.yaml" <<'EOF'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
yaml.safe_dump(d, open(sys.argv[2], "w"))
EOF
if kubernetes-validate --strict -k "${KUBE_VERSIONS%% *}" "$WORK/broken.yaml" >/dev/null 2>&1; then
    bad "kubernetes-validate --strict accepted a Deployment with an unknown field"
else
    ok "kubernetes-validate --strict refuses a Deployment with an unknown field"
fi

finish
