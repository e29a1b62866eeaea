//! End-to-end tests: the real `scopegate` binary in front of Debian's `docker-registry`
//! (distribution 2.8), driven by the real clients — skopeo, podman — and by hand-written
//! HTTP where the protocol itself is the subject. The harness (servers, isolation,
//! prerequisites, helpers) is `tests/e2e/harness.rs`, shared with `tests/lifecycle.rs`.
//!
//! Prerequisites: `/usr/bin/docker-registry`, `skopeo`, `podman`, `jq`, `unshare` and root
//! (for the private mount namespace). When they are missing the tests FAIL and say so — run
//! them through `.ci/run`, or `apt-get install docker-registry skopeo podman jq`.
//!
//! Set `E2E_KEEP=1` to keep the temporary directories (their paths are printed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "e2e/harness.rs"]
mod harness;

use harness::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The walk-through of Azure's "repository-scoped permissions" article, with skopeo as the
/// client: a scope map on samples/hello-world, a token on it, pushes allowed and refused,
/// a map update that moves write permission between repositories (effective on the next
/// request), tag listing gated by metadata/read, deletion by content/delete, and disabling.
#[test]
fn acr_tokens_article_scenario_with_skopeo() {
    let env = Env::start("acr");
    let digests = env.make_images("images", &["hello-v1", "hello-v2", "nginx-v1"]);
    let (hello_v1, nginx_v1) = (&digests[0], &digests[2]);

    // az acr scope-map create --name MyScopeMap --repository samples/hello-world content/write content/read
    let map = env.cli_ok(&[
        "scope-map", "create", "--name", "MyScopeMap", "--repository", "samples/hello-world", "content/write", "content/read",
        "--description", "Sample scope map",
    ]);
    assert_eq!(map["name"], "MyScopeMap");
    assert_eq!(map["type"], "UserDefined");
    assert_eq!(map["description"], "Sample scope map");
    assert_eq!(
        map["actions"],
        serde_json::json!(["repositories/samples/hello-world/content/read", "repositories/samples/hello-world/content/write"])
    );
    // az acr token create --name MyToken --scope-map MyScopeMap
    let t = env.create_token(&["--name", "MyToken", "--scope-map", "MyScopeMap"]);
    assert_eq!(t.name, "MyToken");

    // Push to the repository in the map: allowed.
    let r = env.skopeo_push(&t, &env.oci("images", "hello-v1"), "samples/hello-world:v1");
    assert!(r.ok(), "push samples/hello-world:v1 should succeed: {}", r.all());
    assert_eq!(env.upstream_tags("samples/hello-world"), ["v1"]);

    // Push to a repository outside it: refused, and nothing reaches the registry.
    let r = env.skopeo_push(&t, &env.oci("images", "nginx-v1"), "samples/nginx:v1");
    assert!(!r.ok(), "push samples/nginx:v1 must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert!(env.upstream_tags("samples/nginx").is_empty(), "a refused push must not reach the registry");

    // az acr scope-map update --add-repository samples/nginx content/write content/read
    //                        --remove-repository samples/hello-world content/write
    let map = env.cli_ok(&[
        "scope-map", "update", "--name", "MyScopeMap",
        "--add-repository", "samples/nginx", "content/write", "content/read",
        "--remove-repository", "samples/hello-world", "content/write",
    ]);
    assert_eq!(
        map["actions"],
        serde_json::json!([
            "repositories/samples/hello-world/content/read",
            "repositories/samples/nginx/content/read",
            "repositories/samples/nginx/content/write"
        ])
    );
    // Effective on the next request, with the same token and no new login.
    let r = env.skopeo_push(&t, &env.oci("images", "nginx-v1"), "samples/nginx:v1");
    assert!(r.ok(), "after the update, push samples/nginx:v1 should succeed: {}", r.all());
    let r = env.skopeo_push(&t, &env.oci("images", "hello-v2"), "samples/hello-world:v2");
    assert!(!r.ok(), "after the update, push samples/hello-world:v2 must be refused");
    assert!(r.all().to_lowercase().contains("denied"), "the refusal should say denied: {}", r.all());
    assert_eq!(env.upstream_tags("samples/hello-world"), ["v1"]);
    assert_eq!(env.upstream_tags("samples/nginx"), ["v1"]);

    // Pulls of both still work (content/read on both), byte-identical manifests.
    for (repo, digest) in [("samples/hello-world", hello_v1), ("samples/nginx", nginx_v1)] {
        let dest = format!("pulled-{}", repo.replace('/', "-"));
        let r = env.skopeo_pull(&t, &format!("{repo}:v1"), &env.oci(&dest, "v1"));
        assert!(r.ok(), "pull {repo}:v1 should succeed: {}", r.all());
        let index: Value = serde_json::from_str(&std::fs::read_to_string(env.path(&dest).join("index.json")).expect("pulled index.json")).expect("index JSON");
        assert_eq!(index["manifests"][0]["digest"], digest.as_str(), "pulled {repo}:v1 is the pushed image");
    }

    // Tag listing needs metadata/read.
    let r = env.skopeo_list_tags(&t, "samples/nginx");
    assert!(!r.ok(), "list-tags without metadata/read must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    env.cli_ok(&["scope-map", "update", "--name", "MyScopeMap", "--add-repository", "samples/nginx", "metadata/read"]);
    let r = env.skopeo_list_tags(&t, "samples/nginx");
    assert!(r.ok(), "list-tags with metadata/read should succeed: {}", r.all());
    let tags: Value = serde_json::from_str(&r.stdout).expect("list-tags JSON");
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));

    // Deletion needs content/delete.
    let nginx_ref = env.at_gateway("samples/nginx:v1");
    let creds = format!("{}:{}", t.name, t.password1);
    let delete = || env.tool(&["skopeo", "delete", "--tls-verify=false", "--creds", &creds, &nginx_ref]);
    let r = delete();
    assert!(!r.ok(), "delete without content/delete must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert_eq!(env.upstream_tags("samples/nginx"), ["v1"]);
    env.cli_ok(&["scope-map", "update", "--name", "MyScopeMap", "--add-repository", "samples/nginx", "content/delete"]);
    let r = delete();
    assert!(r.ok(), "delete with content/delete should succeed: {}", r.all());
    let r = env.skopeo_list_tags(&t, "samples/nginx");
    assert!(r.ok(), "list-tags after the delete: {}", r.all());
    let tags: Value = serde_json::from_str(&r.stdout).expect("list-tags JSON");
    let listed: Vec<&str> = tags["Tags"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    assert!(!listed.contains(&"v1"), "v1 was deleted but is still listed: {tags}");
    assert!(env.upstream_tags("samples/nginx").is_empty());

    // az acr token update --status disabled: refused at once, for push and pull alike.
    let v = env.cli_ok(&["token", "update", "--name", "MyToken", "--status", "disabled"]);
    assert_eq!(v["status"], "disabled");
    let r = env.skopeo_pull(&t, "samples/hello-world:v1", &env.oci("pulled-after-disable", "v1"));
    assert!(!r.ok(), "a disabled token must not pull");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    let r = env.skopeo_push(&t, &env.oci("images", "nginx-v1"), "samples/nginx:v2");
    assert!(!r.ok(), "a disabled token must not push");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert!(env.upstream_tags("samples/nginx").is_empty());
    assert_eq!(env.cli_ok(&["token", "show", "--name", "MyToken"])["status"], "disabled");
}

/// A bearer token obtained before a change is judged by the policy of now: disabling the
/// token kills it (401 invalid_token), re-enabling revives it, and regenerating password1
/// kills every bearer token earned with the old password1 — but not one earned with
/// password2.
#[test]
fn disabled_token_refuses_a_bearer_token_fetched_before() {
    let env = Env::start("bearer");
    let digest = env.make_images("images", &["v1"]).remove(0);
    // Seed the registry directly: this test is about the gateway's answers, not about pushing.
    env.seed(&env.oci("images", "v1"), "samples/hello-world:v1");

    let t = env.create_token(&["--name", "ci-reader", "--repository", "samples/hello-world", "content/read"]);
    assert_eq!(env.cli_ok(&["token", "show", "--name", "ci-reader"])["scopeMap"], "ci-reader-scope-map");

    let realm = format!("http://{}/token", env.public);
    let manifest = "/v2/samples/hello-world/manifests/v1";
    let fetch = |password: &str| -> Resp {
        env.gateway(
            "GET",
            "/token?service=scopegate&scope=repository:samples/hello-world:pull",
            &[("Authorization", &basic(&t.name, password))],
        )
    };
    let bearer_of = |r: &Resp| -> String {
        assert_eq!(r.status, 200, "token request: {}", r.text());
        let v = r.json();
        assert_eq!(v["token"], v["access_token"], "token and access_token are identical");
        assert!(v["expires_in"].as_u64().is_some_and(|n| n > 0), "integer expires_in: {v}");
        assert!(v["issued_at"].as_str().is_some_and(|s| s.contains('T')), "RFC 3339 issued_at: {v}");
        format!("Bearer {}", v["token"].as_str().expect("token string"))
    };
    let head = |auth: Option<&str>| -> Resp {
        let mut h = vec![("Accept", OCI_MANIFEST)];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        env.gateway("HEAD", manifest, &h)
    };
    let assert_works = |auth: &str, when: &str| {
        let r = head(Some(auth));
        assert_eq!(r.status, 200, "{when}: HEAD {manifest} with the bearer token: {:?}", r.headers);
        assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()), "{when}");
    };
    let assert_invalid_token = |auth: &str, when: &str| {
        let r = head(Some(auth));
        assert_eq!(r.status, 401, "{when}: the bearer token must be refused: {:?}", r.headers);
        let challenge = r.header("WWW-Authenticate").unwrap_or_else(|| panic!("{when}: 401 without a challenge"));
        assert!(challenge.contains("error=\"invalid_token\""), "{when}: {challenge}");
        assert!(challenge.contains(&format!("realm=\"{realm}\"")), "{when}: {challenge}");
        assert_eq!(r.header("Docker-Distribution-API-Version"), Some("registry/2.0"), "{when}");
    };

    // No credential: a challenge pointing at the token server.
    let r = head(None);
    assert_eq!(r.status, 401);
    let challenge = r.header("WWW-Authenticate").expect("challenge").to_owned();
    assert!(challenge.starts_with(&format!("Bearer realm=\"{realm}\"")), "{challenge}");
    assert!(challenge.contains("scope=\"repository:samples/hello-world:pull\""), "{challenge}");

    let bearer1 = bearer_of(&fetch(&t.password1));
    let bearer2 = bearer_of(&fetch(&t.password2));
    assert_works(&bearer1, "fresh token");
    assert_works(&bearer2, "fresh token (password2)");

    // Disable: the token already in the client's hands dies on the next request.
    assert_eq!(env.cli_ok(&["token", "update", "--name", "ci-reader", "--status", "disabled"])["status"], "disabled");
    assert_invalid_token(&bearer1, "after disabling");
    let r = fetch(&t.password1);
    assert_eq!(r.status, 401, "a disabled token earns no bearer token: {}", r.text());

    // Re-enable: the same bearer token works again.
    assert_eq!(env.cli_ok(&["token", "update", "--name", "ci-reader", "--status", "enabled"])["status"], "enabled");
    assert_works(&bearer1, "after re-enabling");

    // Regenerate password1: bearer tokens earned with the old one die, password2's live on.
    let v = env.cli_ok(&["token", "credential", "generate", "--name", "ci-reader", "--password1"]);
    assert_eq!(v["username"], "ci-reader");
    let passwords = v["passwords"].as_array().expect("passwords");
    let new1 = passwords.iter().find(|p| p["name"] == "password1").and_then(|p| p["value"].as_str()).expect("new password1 value").to_owned();
    assert_ne!(new1, t.password1);
    assert!(
        passwords.iter().filter(|p| p["name"] == "password2").all(|p| p.get("value").is_none_or(Value::is_null)),
        "password2 was not regenerated, so its value must not be shown: {v}"
    );
    assert_invalid_token(&bearer1, "after regenerating password1");
    assert_eq!(fetch(&t.password1).status, 401, "the old password1 no longer earns a token");
    assert_works(&bearer_of(&fetch(&new1)), "token from the new password1");
    assert_works(&bearer2, "token from password2 after regenerating password1");
}

/// podman, isolated (vfs storage, own auth file, private mount namespace): login with the
/// token's credentials (and not with a wrong password), push to the repository the token
/// may write, refused push elsewhere, pull back.
#[test]
fn podman_push_pull_through_the_gateway() {
    let env = Env::start("podman");
    env.make_images("images", &["v1"]);
    let t = env.create_token(&["--name", "podman-user", "--repository", "samples/allowed", "content/read", "content/write"]);
    let reg = env.public.clone();
    let auth_file = env.iso_base().join("podman/auth.json");

    // Wrong password: refused, nothing stored.
    let r = env.tool(&["podman", "login", "--tls-verify=false", "-u", &t.name, "-p", "not-the-password", &reg]);
    assert!(!r.ok(), "podman login with a wrong password must fail");
    let lower = r.all().to_lowercase();
    assert!(lower.contains("invalid username/password") || lower.contains("unauthorized"), "{}", r.all());
    assert!(!std::fs::read_to_string(&auth_file).unwrap_or_default().contains(&reg));

    let r = env.tool(&["podman", "login", "--tls-verify=false", "-u", &t.name, "-p", &t.password1, &reg]);
    assert!(r.ok(), "podman login should succeed: {}", r.all());
    assert!(r.stdout.contains("Login Succeeded"), "{}", r.all());
    assert!(std::fs::read_to_string(&auth_file).expect("auth file").contains(&reg), "login stored the credential");

    // Local image in the isolated containers-storage (from the OCI layout; no network).
    let r = env.tool(&["skopeo", "copy", "-q", &env.oci("images", "v1"), "containers-storage:localhost/e2e/hello:v1"]);
    assert!(r.ok(), "importing the image: {}", r.all());

    // From here on podman uses the stored login.
    let r = env.tool(&["podman", "push", "-q", "--tls-verify=false", "localhost/e2e/hello:v1", &format!("docker://{reg}/samples/allowed:v1")]);
    assert!(r.ok(), "push to samples/allowed should succeed: {}", r.all());
    assert_eq!(env.upstream_tags("samples/allowed"), ["v1"]);

    let r = env.tool(&["podman", "push", "-q", "--tls-verify=false", "localhost/e2e/hello:v1", &format!("docker://{reg}/samples/forbidden:v1")]);
    assert!(!r.ok(), "push to samples/forbidden must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert!(env.upstream_tags("samples/forbidden").is_empty(), "a refused push must not reach the registry");

    // Pull back what was pushed, after removing the local copy.
    let r = env.tool(&["podman", "rmi", "localhost/e2e/hello:v1"]);
    assert!(r.ok(), "{}", r.all());
    let pulled = format!("{reg}/samples/allowed:v1");
    let r = env.tool(&["podman", "pull", "-q", "--tls-verify=false", &pulled]);
    assert!(r.ok(), "pull samples/allowed:v1 should succeed: {}", r.all());
    let r = env.tool(&["podman", "image", "exists", &pulled]);
    assert!(r.ok(), "the pulled image is in local storage: {}", r.all());
    let r = env.tool(&["podman", "image", "inspect", "--format", "{{.Config.Cmd}}", &pulled]);
    assert!(r.ok() && r.stdout.contains("/bin/hello"), "the pulled image is the pushed one: {}", r.all());

    let r = env.tool(&["podman", "logout", &reg]);
    assert!(r.ok(), "{}", r.all());
    let r = env.tool(&["podman", "pull", "-q", "--tls-verify=false", &pulled]);
    assert!(!r.ok(), "after logout, an anonymous pull must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
}
