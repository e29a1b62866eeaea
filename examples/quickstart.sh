#!/usr/bin/env bash
# One-command local quickstart: Debian's docker-registry on 127.0.0.1:5001 (loopback only),
# scopegate in front of it on 127.0.0.1:5000 (admin API on :5002), a scope map and a token
# as in the ACR tokens article, and a push with skopeo: allowed to samples/hello-world,
# denied for samples/nginx. Everything lives in a temporary directory.
#
#   bash examples/quickstart.sh          # leaves both servers running until Ctrl-C
#   bash examples/quickstart.sh --exit   # stops them after the demo
#
# Needs: docker-registry, skopeo, jq (apt-get install docker-registry skopeo jq) and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in /usr/bin/docker-registry skopeo jq cargo; do
    command -v "$t" >/dev/null || { echo "quickstart: $t is missing (apt-get install docker-registry skopeo jq)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet
sg=target/release/scopegate

cat > "$work/registry.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5001}
YAML
/usr/bin/docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)

export SCOPEGATE_ADMIN_TOKEN
SCOPEGATE_ADMIN_TOKEN=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
"$sg" serve --data-dir "$work/scopegate" >"$work/scopegate.out" 2>"$work/scopegate.log" &
pids+=($!)

# wait for both servers (bounded)
for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:5001/v2/ && grep -q "scopegate ready" "$work/scopegate.out" && break
    sleep 0.1
done
grep -q "scopegate ready" "$work/scopegate.out" || { cat "$work/scopegate.log" >&2; exit 1; }

echo "== scope map and token (az acr scope-map create / az acr token create)"
"$sg" scope-map create --name MyScopeMap --repository samples/hello-world content/write content/read \
    --description "Sample scope map" --output table
"$sg" token create --name MyToken --scope-map MyScopeMap >"$work/token.json"
password=$(jq -r '.credentials.passwords[0].value' "$work/token.json")
echo "token MyToken, password1 $password (shown once)"

echo "== a small image, pushed with the token's credentials"
bash tests/e2e/make-oci.sh "$work/img" v1 >/dev/null
skopeo copy -q --dest-tls-verify=false --dest-creds "MyToken:$password" \
    "oci:$work/img:v1" docker://127.0.0.1:5000/samples/hello-world:v1
echo "pushed 127.0.0.1:5000/samples/hello-world:v1"
if skopeo copy -q --dest-tls-verify=false --dest-creds "MyToken:$password" \
    "oci:$work/img:v1" docker://127.0.0.1:5000/samples/nginx:v1 2>"$work/denied.txt"; then
    echo "unexpected: the push to samples/nginx was allowed" >&2; exit 1
fi
echo "push to samples/nginx refused: $(grep -o 'denied: [^\\]*' "$work/denied.txt" | head -1)"

if [ "${1:-}" = "--exit" ]; then exit 0; fi
cat <<MSG

scopegate is running: registry clients use 127.0.0.1:5000, the CLI uses the admin API on :5002.
    export SCOPEGATE_ADMIN_TOKEN=$SCOPEGATE_ADMIN_TOKEN
    $sg token list --output table
    docker login 127.0.0.1:5000 -u MyToken -p $password
Press Ctrl-C to stop (everything in $work is removed).
MSG
wait
