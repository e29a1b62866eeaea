//! End-to-end test of federated credentials: the real `scopegate` binary, started with
//! `serve --config FILE` naming an identity provider (its keys in a JWKS file written at
//! test time from an RS256 key generated now), in front of Debian's `docker-registry`,
//! driven by skopeo with `--dest-creds bearer:<jwt>` and `apikey:<key>`, and checked against
//! what the registry itself holds afterwards.
//!
//! The harness (independent servers, isolation, `timeout` on every command, loud failure
//! when a tool is missing) is `tests/e2e/harness.rs`. `E2E_KEEP=1` keeps the temporary
//! directory. The in-process counterpart, with a JWKS server and many more refusal cases,
//! is `tests/federated.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "e2e/harness.rs"]
mod harness;
#[path = "support/test_key.rs"]
mod test_key;

use std::path::Path;

use harness::*;
use test_key::TestKey;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const ISS: &str = "https://idp.e2e.example.test";
const AUD: &str = "containerregistry";
const CONTEXT: &str = "ctx-e2e";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Valid claims for the configured issuer and audience (ten minutes to live), plus `extra`.
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "alice@e2e.example.test", "iat": now(), "exp": now() + 600});
    for (k, v) in extra.as_object().expect("extra claims are an object") {
        c[k] = v.clone();
    }
    c
}

/// The gateway's configuration file: ports 0, the registry, and one issuer whose keys are
/// in `jwks`. `groups: pushers` grants the map `team-push` (created through the CLI once the
/// gateway runs); the admin role of our context grants `_repositories_admin`.
fn config(root: &Path, upstream: &str, jwks: &Path) -> String {
    format!(
        "# written by tests/federated_e2e.rs\n\
         listen: 127.0.0.1:0\n\
         upstream: http://{upstream}\n\
         data_dir: {data}\n\
         admin:\n  listen: 127.0.0.1:0\n\
         issuers:\n\
         \x20 - name: e2e-idp\n\
         \x20   issuer: {ISS}\n\
         \x20   audience: {AUD}\n\
         \x20   jwks_file: {jwks}\n\
         \x20   algorithms: [RS256, ES256]\n\
         \x20   context: {CONTEXT}\n\
         \x20   rules:\n\
         \x20     - claim: roles\n\
         \x20       value: \"containerregistry/admin/{{context}}\"\n\
         \x20       scope_map: _repositories_admin\n\
         \x20     - claim: groups\n\
         \x20       value: pushers\n\
         \x20       scope_map: team-push\n",
        data = root.join("gateway/data").display(),
        jwks = jwks.display(),
    )
}

/// Every repository the registry itself holds (bypassing the gateway), sorted.
fn upstream_catalog(env: &Env) -> Vec<String> {
    let r = env.at_upstream("GET", "/v2/_catalog", &[]).expect("registry answers");
    assert_eq!(r.status, 200, "registry catalog: {}", r.text());
    let mut repos: Vec<String> = r.json()["repositories"].as_array().expect("a repository list").iter().map(|v| v.as_str().expect("a name").to_owned()).collect();
    repos.sort();
    repos
}

/// The manifest digest the OCI layout `dir` holds for `tag`.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json")).expect("index JSON");
    index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag))
        .and_then(|d| d["digest"].as_str())
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .to_owned()
}

/// An identity provider's JWTs and an API key, used by skopeo against the real gateway and
/// registry:
///
/// * a JWT with `groups: [pushers]` pushes to `team/app:v1` (the map `team-push`: content
///   read and write on `team/*`) and is refused on `other/app:v1`; the same JWT as
///   `Authorization: Bearer` straight on `/v2` reads `team/app` and gets 403 on `other/app`;
/// * a JWT with the admin role of the configured context pushes anywhere
///   (`_repositories_admin`);
/// * refused, each with nothing reaching the registry: a JWT matching no rule (another
///   group, the admin role of another context), an expired JWT, and a JWT signed by another
///   key under the same `kid`;
/// * an API key on a map granting `ci/*` pushes to `ci/app:v1`, is refused on `other/x`,
///   is refused at once once disabled (a session token it earned before, too), and pushes
///   again once re-enabled.
///
/// The images are pulled back through the gateway with `bearer:<jwt>` (the pusher's JWT
/// cannot pull `ci/app`), and the registry's own catalog holds exactly the allowed
/// repositories and tags. No JWT or key appears in the gateway's logs.
#[test]
fn skopeo_pushes_with_an_identity_provider_jwt_and_an_api_key() {
    let key = TestKey::generate("e2e-rs-1", Algorithm::RS256);
    let mut jwks_path = None;
    let env = Env::start_with("federated", |root, upstream| {
        let dir = root.join("gateway");
        std::fs::create_dir_all(&dir).expect("gateway dir");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [key.jwk]}).to_string()).expect("JWKS file");
        let file = dir.join("scopegate.yaml");
        std::fs::write(&file, config(root, upstream, &jwks)).expect("config file");
        let launched = launch_gateway(&dir, &["serve".into(), "--config".into(), file.into_os_string()], "http");
        jwks_path = Some(jwks);
        launched
    });
    assert!(jwks_path.is_some_and(|p| p.is_file()));
    env.cli_ok(&["scope-map", "create", "--name", "team-push", "--repository", "team/*", "content/read", "content/write"]);
    env.cli_ok(&["scope-map", "create", "--name", "ci-push", "--repository", "ci/*", "content/read", "content/write"]);
    let digest = env.make_images("images", &["v1"]).remove(0);
    let src = env.oci("images", "v1");
    let push = |creds: &str, dest: &str| env.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", creds, &src, &env.at_gateway(dest)]);
    let pull = |creds: &str, from: &str, layout: &str| {
        let to = format!("oci:{}:{}", env.path(layout).display(), from.rsplit(':').next().expect("a tag"));
        env.tool(&["skopeo", "copy", "-q", "--src-tls-verify=false", "--src-creds", creds, &env.at_gateway(from), &to])
    };
    let refused = |r: &Run, what: &str| assert!(!r.ok() && r.says_denied(), "{what} must be refused (denied/unauthorized): {}", r.all());
    // ... and for the reason the gateway gave at login, which skopeo shows.
    let refused_for = |r: &Run, what: &str, reason: &str| {
        refused(r, what);
        assert!(r.stderr.contains(reason), "{what}: skopeo should show the gateway's reason {reason:?}: {}", r.all());
    };

    // (a) groups: pushers → team/* only.
    let pusher_jwt = key.sign(&claims(json!({"groups": ["developers", "pushers"]})));
    let pusher = format!("bearer:{pusher_jwt}");
    let r = push(&pusher, "team/app:v1");
    assert!(r.ok(), "push to team/app:v1 with the pushers JWT: {}", r.all());
    assert_eq!(env.upstream_digest("team/app", "v1").as_deref(), Some(digest.as_str()));
    refused(&push(&pusher, "other/app:v1"), "a push to other/app:v1 with the pushers JWT");
    assert!(env.upstream_tags("other/app").is_empty(), "nothing may reach other/app");
    // The same JWT straight on /v2, as `Authorization: Bearer`.
    let direct = format!("Bearer {pusher_jwt}");
    let r = env.gateway("HEAD", "/v2/team/app/manifests/v1", &[("Authorization", &direct), ("Accept", OCI_MANIFEST)]);
    assert_eq!((r.status, r.header("Docker-Content-Digest")), (200, Some(digest.as_str())), "{:?}", r.headers);
    let r = env.gateway("HEAD", "/v2/other/app/manifests/v1", &[("Authorization", &direct), ("Accept", OCI_MANIFEST)]);
    assert_eq!(r.status, 403, "{:?}", r.headers);

    // The admin role of our context → _repositories_admin: any repository.
    let admin_jwt = key.sign(&claims(json!({"sub": "ops@e2e.example.test", "roles": [format!("containerregistry/admin/{CONTEXT}")]})));
    let admin = format!("bearer:{admin_jwt}");
    let r = push(&admin, "platform/base:v1");
    assert!(r.ok(), "push to platform/base:v1 with the admin-role JWT: {}", r.all());

    // (b) no rule matches: another group, the admin role of another context.
    let nothing = key.sign(&claims(json!({"sub": "bob@e2e.example.test", "groups": ["viewers"], "roles": ["containerregistry/admin/ctx-other"]})));
    refused(&push(&format!("bearer:{nothing}"), "team/app:no-rule"), "a push with a JWT matching no rule");
    // (c) expired (well past any leeway).
    let expired = key.sign(&claims(json!({"groups": ["pushers"], "iat": now() - 3600, "exp": now() - 1800})));
    refused_for(&push(&format!("bearer:{expired}"), "team/app:expired"), "a push with an expired JWT", "token has expired");
    // (d) signed by another key, under the kid of the real one.
    let forged = TestKey::generate("e2e-rs-1", Algorithm::RS256).sign(&claims(json!({"groups": ["pushers"], "roles": [format!("containerregistry/admin/{CONTEXT}")]})));
    refused_for(&push(&format!("bearer:{forged}"), "team/app:forged"), "a push with a JWT signed by another key", "token signature or claims are invalid");
    // Straight on /v2: a valid JWT granting nothing is forbidden; the invalid ones are not
    // authenticated at all.
    let head_team = |jwt: &str| env.gateway("HEAD", "/v2/team/app/manifests/v1", &[("Authorization", &format!("Bearer {jwt}")), ("Accept", OCI_MANIFEST)]);
    assert_eq!(head_team(&nothing).status, 403, "a JWT matching no rule, straight on /v2");
    for (what, jwt) in [("expired", &expired), ("forged", &forged)] {
        let r = head_team(jwt);
        assert_eq!(r.status, 401, "the {what} JWT straight on /v2: {:?}", r.headers);
        assert!(r.header("WWW-Authenticate").is_some_and(|c| c.contains("error=\"invalid_token\"")), "the {what} JWT: {:?}", r.headers);
    }
    assert_eq!(env.upstream_tags("team/app"), ["v1"], "no refused push reached the registry");

    // API key: ci/* only.
    let v = env.cli_ok(&["apikey", "create", "--name", "ci-pipeline", "--scope-map", "ci-push"]);
    let api_key = v["key"].as_str().unwrap_or_else(|| panic!("no key in {v}")).to_owned();
    assert!(api_key.starts_with("sgk_"), "{api_key}");
    let ci = format!("apikey:{api_key}");
    let r = push(&ci, "ci/app:v1");
    assert!(r.ok(), "push to ci/app:v1 with the API key: {}", r.all());
    assert_eq!(env.upstream_digest("ci/app", "v1").as_deref(), Some(digest.as_str()));
    refused(&push(&ci, "other/x:v1"), "a push to other/x:v1 with the API key");
    assert!(env.upstream_tags("other/x").is_empty());
    let session = env.bearer("apikey", &api_key, "repository:ci/app:pull");
    let r = env.gateway("HEAD", "/v2/ci/app/manifests/v1", &[("Authorization", &session), ("Accept", OCI_MANIFEST)]);
    assert_eq!(r.status, 200, "{:?}", r.headers);

    // Disabled: refused at once — the next push, and the session token it earned before.
    env.cli_ok(&["apikey", "update", "--name", "ci-pipeline", "--status", "disabled"]);
    refused_for(&push(&ci, "ci/app:v2"), "a push with the disabled API key", "API key ci-pipeline is disabled");
    assert_eq!(env.upstream_tags("ci/app"), ["v1"]);
    let r = env.gateway("HEAD", "/v2/ci/app/manifests/v1", &[("Authorization", &session), ("Accept", OCI_MANIFEST)]);
    assert_eq!(r.status, 401, "a session token of the disabled key: {:?}", r.headers);
    // Re-enabled: works again.
    env.cli_ok(&["apikey", "update", "--name", "ci-pipeline", "--status", "enabled"]);
    let r = push(&ci, "ci/app:v2");
    assert!(r.ok(), "push with the re-enabled API key: {}", r.all());
    assert_eq!(env.upstream_tags("ci/app"), ["v1", "v2"]);

    // Pulled back through the gateway with bearer:<jwt>.
    let r = pull(&pusher, "team/app:v1", "pulled-team");
    assert!(r.ok(), "pull of team/app:v1 with the pushers JWT: {}", r.all());
    assert_eq!(layout_digest(&env.path("pulled-team"), "v1"), digest);
    refused(&pull(&pusher, "ci/app:v1", "pulled-nothing"), "a pull of ci/app:v1 with the pushers JWT");
    let r = pull(&admin, "ci/app:v2", "pulled-ci");
    assert!(r.ok(), "pull of ci/app:v2 with the admin-role JWT: {}", r.all());
    assert_eq!(layout_digest(&env.path("pulled-ci"), "v2"), digest);

    // The registry holds exactly what was allowed.
    assert_eq!(upstream_catalog(&env), ["ci/app", "platform/base", "team/app"]);
    assert_eq!(env.upstream_tags("team/app"), ["v1"]);
    assert_eq!(env.upstream_tags("platform/base"), ["v1"]);
    assert_eq!(env.upstream_tags("ci/app"), ["v1", "v2"]);

    // No credential in the logs (stderr, and the audit lines on stdout).
    let logs = format!("{}\n{}", env.gateway_log(), std::fs::read_to_string(env.path("gateway/gateway.stdout")).expect("gateway stdout"));
    for (what, secret) in [("the pushers JWT", pusher_jwt.as_str()), ("the admin JWT", &admin_jwt), ("the forged JWT", &forged), ("the API key", &api_key)] {
        let signature = secret.rsplit('.').next().expect("a last part");
        assert!(!logs.contains(signature), "the gateway logged {what}");
    }
}
