//! End-to-end tests of what changes while clients are connected: password regeneration and
//! expiry, a token moved to another scope map, repository locks, the repository commands of
//! the CLI (each gated by exactly one action), anonymous access, and `scopegate check`'s
//! explanations. The real `scopegate` binary in front of Debian's `docker-registry`
//! (distribution 2.8), driven by skopeo, the `scopegate` CLI and hand-written HTTP; the
//! harness (independent servers per test, isolation, `timeout` on every command, loud
//! failure when a tool is missing) is `tests/e2e/harness.rs`, shared with `tests/e2e.rs`.
//!
//! Prerequisites: `/usr/bin/docker-registry`, `skopeo`, `podman`, `jq`, `unshare` and root
//! (for the private mount namespace). Run through `.ci/run`, or
//! `apt-get install docker-registry skopeo podman jq`. `E2E_KEEP=1` keeps the temp dirs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "e2e/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};

const ACTIONS: [&str; 5] = ["content/read", "content/write", "content/delete", "metadata/read", "metadata/write"];

/// A refusal from the CLI or a client: a failure exit, and words saying why.
fn assert_refused(r: &Run, what: &str) {
    assert!(!r.ok(), "{what}: must be refused, but it succeeded: {}", r.all());
    assert!(r.says_denied(), "{what}: the refusal should say denied/unauthorized: {}", r.all());
}

/// A `scopegate repository` command refused for want of an action: exit 1 (refused/denied)
/// or 4 (401 from the registry side), with a denied/unauthorized message.
fn assert_repo_refused(r: &Run, what: &str) {
    assert_refused(r, what);
    assert!(matches!(r.code, Some(1) | Some(4)), "{what}: exit code 1 or 4 expected, got {:?}: {}", r.code, r.all());
}

/// `HEAD /v2/<repo>/manifests/<reference>` on the gateway with `auth`.
fn head_manifest(env: &Env, repo: &str, reference: &str, auth: &str) -> Resp {
    env.gateway("HEAD", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", OCI_MANIFEST), ("Authorization", auth)])
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `deadline`.
fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not seen within {deadline:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rfc3339_time(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// The tag names of a `repository show-tags` answer, in its order.
fn names(tags: &Value) -> Vec<&str> {
    tags.as_array().unwrap_or_else(|| panic!("not a list: {tags}")).iter().map(|t| t["name"].as_str().expect("tag name")).collect()
}

// ---------------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------------

/// `token credential generate --password1`: the old password1 stops working at once — for
/// skopeo and for the bearer token earned with it before — while the new one works and
/// password2, not regenerated, keeps working.
#[test]
fn password_regeneration_kills_the_old_password_and_its_bearer_token() {
    let env = Env::start("regen");
    let digests = env.make_images("images", &["v1", "v2"]);
    let t = env.create_token(&["--name", "rotating", "--repository", "samples/app", "content/read", "content/write"]);

    let r = env.skopeo_push(&t, &env.oci("images", "v1"), "samples/app:v1");
    assert!(r.ok(), "push with the original password1: {}", r.all());
    let scope = "repository:samples/app:pull";
    let old_bearer = env.bearer(&t.name, &t.password1, scope);
    let p2_bearer = env.bearer(&t.name, &t.password2, scope);
    assert_eq!(head_manifest(&env, "samples/app", "v1", &old_bearer).status, 200, "the bearer token works before the regeneration");

    let v = env.cli_ok(&["token", "credential", "generate", "--name", "rotating", "--password1"]);
    assert_eq!(v["username"], "rotating", "{v}");
    let new1 = password_value(&v, "password1");
    assert_ne!(new1, t.password1, "a regenerated password is a new one");
    assert!(
        v["passwords"].as_array().expect("passwords").iter().filter(|p| p["name"] == "password2").all(|p| p.get("value").is_none_or(Value::is_null)),
        "password2 was not regenerated, so no value of it may be shown: {v}"
    );

    // The old password1: refused by a real client, for pull and push, and at /token.
    let r = env.skopeo_pull(&t, "samples/app:v1", &env.oci("pulled-old", "v1"));
    assert_refused(&r, "skopeo pull with the old password1");
    let r = env.skopeo_push(&t, &env.oci("images", "v2"), "samples/app:v2");
    assert_refused(&r, "skopeo push with the old password1");
    assert_eq!(env.upstream_tags("samples/app"), ["v1"], "a refused push must not reach the registry");
    let r = env.token_request(&t.name, &t.password1, scope);
    assert_eq!(r.status, 401, "the old password1 earns no bearer token: {}", r.text());

    // The bearer token earned with the old password1 dies with it.
    let r = head_manifest(&env, "samples/app", "v1", &old_bearer);
    assert_eq!(r.status, 401, "the bearer token of the old password1 must be refused: {:?}", r.headers);
    let challenge = r.header("WWW-Authenticate").unwrap_or_default();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    // The new password1 works for a real client; password2 and its bearer token are untouched.
    let renewed = t.using(&new1);
    let r = env.skopeo_push(&renewed, &env.oci("images", "v2"), "samples/app:v2");
    assert!(r.ok(), "push with the new password1: {}", r.all());
    assert_eq!(env.upstream_tags("samples/app"), ["v1", "v2"]);
    let r = env.skopeo_pull(&renewed, "samples/app:v2", &env.oci("pulled-new", "v2"));
    assert!(r.ok(), "pull with the new password1: {}", r.all());
    let r = head_manifest(&env, "samples/app", "v2", &env.bearer(&t.name, &new1, scope));
    assert_eq!(r.header("Docker-Content-Digest"), Some(digests[1].as_str()), "a bearer token from the new password1 works");
    assert_eq!(head_manifest(&env, "samples/app", "v1", &p2_bearer).status, 200, "password2's bearer token lives on");
    let r = env.skopeo_pull(&t.using(&t.password2), "samples/app:v1", &env.oci("pulled-p2", "v1"));
    assert!(r.ok(), "password2 still works for skopeo: {}", r.all());
}

/// A password generated with `--expiration` a few seconds ahead works until then and not
/// after: /token answers 401 saying which password of which token expired when, the bearer
/// token earned before dies, and `check` reports that the token has no valid password.
#[test]
fn an_expiring_password_stops_working_at_its_expiry() {
    let env = Env::start("expiry");
    let digest = env.make_images("images", &["v1"]).remove(0);
    env.seed(&env.oci("images", "v1"), "samples/app:v1");
    let t = env.create_token(&["--name", "shortlived", "--repository", "samples/app", "content/read"]);

    // Both passwords regenerated (no slot named), expiring in 2 to 3 seconds.
    let expiry = rfc3339_in(Duration::from_secs(2));
    let at = rfc3339_time(&expiry);
    let v = env.cli_ok(&["token", "credential", "generate", "--name", "shortlived", "--expiration", &expiry]);
    let passwords = v["passwords"].as_array().unwrap_or_else(|| panic!("no passwords: {v}"));
    assert_eq!(passwords.len(), 2, "both passwords regenerated: {v}");
    for p in passwords {
        assert_eq!(p["expiry"], expiry.as_str(), "the expiry is the one asked for: {v}");
    }
    let p1 = password_value(&v, "password1");
    let p2 = password_value(&v, "password2");
    assert_eq!(env.token_request(&t.name, &t.password1, "repository:samples/app:pull").status, 401, "the replaced password1 is dead");

    // Before the expiry: it works. (The expiry is short to keep the test quick; on a machine
    // too loaded to get here in time, say so rather than fail obscurely.)
    assert!(time::OffsetDateTime::now_utc() + time::Duration::seconds(1) < at, "too slow: the expiry {expiry} is (nearly) reached before the first use");
    let scope = "repository:samples/app:pull";
    let bearer = env.bearer(&t.name, &p1, scope);
    let r = head_manifest(&env, "samples/app", "v1", &bearer);
    assert_eq!(r.status, 200, "a bearer token from the expiring password works before the expiry: {:?}", r.headers);
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));
    let (code, c) = env.check(&["--token", "shortlived", "--repository", "samples/app", "--action", "content/read"]);
    assert_eq!((code, &c["allowed"]), (Some(0), &json!(true)), "allowed before the expiry: {c}");

    // Poll /token until it refuses (no fixed sleep); never before the expiry.
    let refused = poll("the expired password1 refused at /token", Duration::from_secs(8), || {
        let r = env.token_request(&t.name, &p1, scope);
        match r.status {
            200 => None,
            401 => Some(r),
            s => panic!("/token answered {s}: {}", r.text()),
        }
    });
    assert!(time::OffsetDateTime::now_utc() >= at, "refused before its expiry {expiry}");
    let message = refused.json()["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(&format!("password1 of token shortlived expired at {expiry}")), "the 401 should say which password expired when: {}", refused.text());
    let r = env.token_request(&t.name, &p2, scope);
    assert_eq!(r.status, 401, "password2 expired at the same time: {}", r.text());
    assert!(r.text().contains(&format!("password2 of token shortlived expired at {expiry}")), "{}", r.text());

    // The bearer token earned before the expiry dies with the password.
    assert_eq!(head_manifest(&env, "samples/app", "v1", &bearer).status, 401, "a bearer token outliving its password must be refused");
    // A real client is refused too, and shown why.
    let r = env.skopeo_pull(&t.using(&p1), "samples/app:v1", &env.oci("pulled", "v1"));
    assert!(!r.ok(), "skopeo with an expired password must fail: {}", r.all());
    assert!(r.stderr.contains(&format!("password1 of token shortlived expired at {expiry}")), "{}", r.all());

    let (code, c) = env.check(&["--token", "shortlived", "--repository", "samples/app", "--action", "content/read"]);
    assert_eq!(code, Some(1), "check exits 1 when denied: {c}");
    assert_eq!(c["allowed"], false, "{c}");
    assert_eq!(
        c["reason"],
        format!("token shortlived has no valid password (password1 expired at {expiry}, password2 expired at {expiry})").as_str(),
        "{c}"
    );
}

// ---------------------------------------------------------------------------------------
// Scope maps and live clients
// ---------------------------------------------------------------------------------------

/// `token update --scope-map` takes effect on the next request of a client already holding
/// a bearer token for pull and push: its push is refused while its map lacks content/write
/// (its pull still works), and accepted again once the map is swapped back.
#[test]
fn token_update_scope_map_changes_what_a_live_client_can_do() {
    let env = Env::start("swap");
    let digests = env.make_images("images", &["v1", "v2", "v3"]);
    env.seed(&env.oci("images", "v1"), "samples/app:v1");
    env.cli_ok(&["scope-map", "create", "--name", "app-push", "--repository", "samples/app", "content/read", "content/write"]);
    env.cli_ok(&["scope-map", "create", "--name", "app-pull", "--repository", "samples/app", "content/read"]);
    let t = env.create_token(&["--name", "ci", "--scope-map", "app-push"]);

    let bearer = env.bearer(&t.name, &t.password1, "repository:samples/app:pull,push");
    let start_upload = || env.gateway("POST", "/v2/samples/app/blobs/uploads/", &[("Authorization", &bearer), ("Content-Length", "0")]);
    let r = start_upload();
    assert_eq!(r.status, 202, "push allowed on app-push: {} {:?}", r.text(), r.headers);
    assert!(r.header("Location").is_some(), "an upload session was opened: {:?}", r.headers);

    let v = env.cli_ok(&["token", "update", "--name", "ci", "--scope-map", "app-pull"]);
    assert_eq!(v["scopeMap"], "app-pull", "{v}");
    let r = start_upload();
    assert!(matches!(r.status, 401 | 403), "the same bearer token must not push after the swap: {} {}", r.status, r.text());
    assert!(r.text().to_lowercase().contains("denied"), "{}", r.text());
    let r = head_manifest(&env, "samples/app", "v1", &bearer);
    assert_eq!(r.status, 200, "pull is still in the map: {:?}", r.headers);
    assert_eq!(r.header("Docker-Content-Digest"), Some(digests[0].as_str()));
    let r = env.skopeo_push(&t, &env.oci("images", "v2"), "samples/app:v2");
    assert_refused(&r, "skopeo push on app-pull");
    assert_eq!(env.upstream_tags("samples/app"), ["v1"]);

    let v = env.cli_ok(&["token", "update", "--name", "ci", "--scope-map", "app-push"]);
    assert_eq!(v["scopeMap"], "app-push", "{v}");
    let r = start_upload();
    assert_eq!(r.status, 202, "after swapping back the same bearer token pushes again: {} {:?}", r.text(), r.headers);
    let r = env.skopeo_push(&t, &env.oci("images", "v3"), "samples/app:v3");
    assert!(r.ok(), "skopeo push after swapping back: {}", r.all());
    assert_eq!(env.upstream_tags("samples/app"), ["v1", "v3"]);
}

// ---------------------------------------------------------------------------------------
// The repository commands
// ---------------------------------------------------------------------------------------

/// Each `scopegate repository` command with a token holding exactly the action it needs
/// (and nothing else) succeeds and has its effect; with a token holding every action but
/// that one it is refused and changes nothing. The registry is checked directly.
#[test]
fn each_repository_command_needs_exactly_its_action() {
    const R: &str = "samples/repo";
    let env = Env::start("repocmds");
    let d = env.make_images("images", &["one", "two", "three"]);
    let (d1, d2, d3) = (d[0].as_str(), d[1].as_str(), d[2].as_str());
    for (tag, image) in [("one", "one"), ("one-alias", "one"), ("two", "two"), ("three", "three")] {
        env.seed(&env.oci("images", image), &format!("{R}:{tag}"));
    }
    let only = |action: &str| env.create_token(&["--name", &format!("only-{}", action.replace('/', "-")), "--repository", R, action]);
    let all_but = |action: &str| {
        let others: Vec<&str> = ACTIONS.iter().copied().filter(|a| *a != action).collect();
        env.create_token(&[&["--name", &format!("no-{}", action.replace('/', "-")), "--repository", R][..], &others].concat())
    };
    let (reader, no_reader) = (only("metadata/read"), all_but("metadata/read"));
    let (writer, no_writer) = (only("metadata/write"), all_but("metadata/write"));
    let (deleter, no_deleter) = (only("content/delete"), all_but("content/delete"));
    let tags_before = ["one", "one-alias", "three", "two"];

    // --- show-tags, show-manifests, show: metadata/read.
    let reads: [&[&str]; 5] = [
        &["show-tags", "--repository", R],
        &["show-manifests", "--repository", R],
        &["show", "--repository", R],
        &["show", "--image", "samples/repo:two"],
        &["show", "--image", &format!("{R}@{d2}")],
    ];
    for args in reads {
        assert_repo_refused(&env.repo_as(&no_reader, args), &format!("repository {args:?} without metadata/read"));
    }
    let tags = env.repo_ok(&reader, &["show-tags", "--repository", R]);
    assert_eq!(names(&tags), tags_before, "{tags}");
    for t in tags.as_array().expect("tags") {
        let want = match t["name"].as_str() {
            Some("one" | "one-alias") => d1,
            Some("two") => d2,
            _ => d3,
        };
        assert_eq!(t["digest"], want, "{tags}");
    }
    let manifests = env.repo_ok(&reader, &["show-manifests", "--repository", R]);
    let mut listed: Vec<(String, Value)> =
        manifests.as_array().expect("manifests").iter().map(|m| (m["digest"].as_str().expect("digest").to_owned(), m["tags"].clone())).collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![(d1.to_owned(), json!(["one", "one-alias"])), (d2.to_owned(), json!(["two"])), (d3.to_owned(), json!(["three"]))];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed, want, "{manifests}");
    let shown = env.repo_ok(&reader, &["show", "--repository", R]);
    assert_eq!(shown["imageName"], R, "{shown}");
    assert_eq!((shown["tagCount"].as_u64(), shown["manifestCount"].as_u64()), (Some(4), Some(3)), "{shown}");
    let all_on = json!({"readEnabled": true, "writeEnabled": true, "deleteEnabled": true, "listEnabled": true});
    assert_eq!(shown["changeableAttributes"], all_on, "{shown}");
    let image = env.repo_ok(&reader, &["show", "--image", "samples/repo:two"]);
    assert_eq!(image["tag"]["digest"], d2, "{image}");
    let image = env.repo_ok(&reader, &["show", "--image", &format!("{R}@{d2}")]);
    assert_eq!(image["manifest"]["digest"], d2, "{image}");
    assert_eq!(image["manifest"]["tags"], json!(["two"]), "{image}");
    let r = env.repo_as(&reader, &["show", "--image", "samples/repo:missing"]);
    assert_eq!(r.code, Some(3), "a tag that does not exist is exit 3: {}", r.all());
    // metadata/read alone changes nothing.
    assert_repo_refused(&env.repo_as(&reader, &["untag", "--image", "samples/repo:two"]), "untag with metadata/read only");
    assert_repo_refused(&env.repo_as(&reader, &["delete", "--image", "samples/repo:two"]), "delete with metadata/read only");

    // --- delete --image: content/delete.
    let r = env.repo_as(&no_deleter, &["delete", "--image", "samples/repo:three"]);
    assert_repo_refused(&r, "delete without content/delete");
    assert_eq!(env.upstream_digest(R, d3).as_deref(), Some(d3), "a refused delete leaves the manifest");
    assert_eq!(env.upstream_tags(R), tags_before);
    let v = env.repo_ok(&deleter, &["delete", "--image", "samples/repo:three"]);
    assert_eq!(v["deleted"]["manifests"], json!([d3]), "{v}");
    assert_eq!(env.upstream_digest(R, d3), None, "the deleted manifest is gone from the registry");
    assert_eq!(env.upstream_tags(R), ["one", "one-alias", "two"]);
    assert_eq!(env.repo_as(&reader, &["show", "--image", "samples/repo:three"]).code, Some(3), "show of the deleted image is exit 3");

    // --- untag: metadata/write. Only the tag goes; the manifest and its other tags stay.
    let r = env.repo_as(&no_writer, &["untag", "--image", "samples/repo:one"]);
    assert_repo_refused(&r, "untag without metadata/write");
    assert_eq!(env.upstream_tags(R), ["one", "one-alias", "two"], "a refused untag changes nothing");
    let v = env.repo_ok(&writer, &["untag", "--image", "samples/repo:one"]);
    assert_eq!((&v["untagged"], &v["digest"]), (&json!("one"), &json!(d1)), "{v}");
    assert_eq!(env.upstream_tags(R), ["one-alias", "two"], "only the tag `one` was removed");
    assert_eq!(env.upstream_digest(R, d1).as_deref(), Some(d1), "the manifest survives the untag");
    assert_eq!(env.upstream_digest(R, "one-alias").as_deref(), Some(d1), "its other tag still points at it");
    assert_eq!(env.upstream_digest(R, "two").as_deref(), Some(d2), "other manifests are untouched");
    let manifests = env.repo_ok(&reader, &["show-manifests", "--repository", R]);
    let one = manifests.as_array().expect("manifests").iter().find(|m| m["digest"] == d1).unwrap_or_else(|| panic!("{d1} listed: {manifests}"));
    assert_eq!(one["tags"], json!(["one-alias"]), "{manifests}");
    // Untagging a manifest's last tag keeps the manifest, reachable by digest.
    env.repo_ok(&writer, &["untag", "--image", "samples/repo:two"]);
    assert_eq!(env.upstream_tags(R), ["one-alias"]);
    assert_eq!(env.upstream_digest(R, d2).as_deref(), Some(d2), "a manifest untagged of its last tag is kept");

    // --- update (locks): metadata/write.
    let r = env.repo_as(&no_writer, &["update", "--repository", R, "--write-enabled", "false"]);
    assert_repo_refused(&r, "update without metadata/write");
    assert_eq!(env.repo_ok(&reader, &["show", "--repository", R])["changeableAttributes"], all_on, "a refused update changes nothing");
    let v = env.repo_ok(&writer, &["update", "--repository", R, "--write-enabled", "false"]);
    let write_locked = json!({"readEnabled": true, "writeEnabled": false, "deleteEnabled": true, "listEnabled": true});
    assert_eq!(v["changeableAttributes"], write_locked, "{v}");
    assert_eq!(env.repo_ok(&reader, &["show", "--repository", R])["changeableAttributes"], write_locked);
    let (code, c) = env.check(&["--token", "no-metadata-read", "--repository", R, "--action", "content/write"]);
    assert_eq!((code, &c["allowed"]), (Some(1), &json!(false)), "the lock is in force: {c}");
    assert_eq!(c["reason"], format!("repository {R} is write-locked (writeEnabled: false)").as_str(), "{c}");
    let v = env.repo_ok(&writer, &["update", "--repository", R, "--write-enabled", "true"]);
    assert_eq!(v["changeableAttributes"], all_on, "{v}");
}

// ---------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------

/// Repository locks bind every caller, the admin scope map included: a write lock refuses
/// an admin token's skopeo push (saying "write-locked") and its untag while pulls go on,
/// `check` explains it, and unlocking lets the push through. A delete lock refuses
/// `repository delete` the same way.
#[test]
fn a_write_locked_repository_refuses_an_admin_push_until_unlocked() {
    const R: &str = "samples/locked";
    let env = Env::start("locks");
    let d = env.make_images("images", &["v1", "v2"]);
    let admin = env.create_token(&["--name", "admin", "--scope-map", "_repositories_admin"]);

    let r = env.skopeo_push(&admin, &env.oci("images", "v1"), &format!("{R}:v1"));
    assert!(r.ok(), "admin push before the lock: {}", r.all());
    assert_eq!(env.upstream_tags(R), ["v1"]);

    let v = env.repo_ok(&admin, &["update", "--repository", R, "--write-enabled", "false"]);
    assert_eq!(v["changeableAttributes"], json!({"readEnabled": true, "writeEnabled": false, "deleteEnabled": true, "listEnabled": true}), "{v}");

    let r = env.skopeo_push(&admin, &env.oci("images", "v2"), &format!("{R}:v2"));
    assert!(!r.ok(), "an admin push into a write-locked repository must be refused: {}", r.all());
    assert!(r.stderr.contains("write-locked"), "skopeo should report the lock: {}", r.all());
    assert_eq!(env.upstream_tags(R), ["v1"], "nothing reached the registry");
    let r = env.repo_as(&admin, &["untag", "--image", &format!("{R}:v1")]);
    assert_eq!(r.code, Some(1), "untag is a write, refused by the lock: {}", r.all());
    assert!(r.stderr.contains(&format!("repository {R} is write-locked (writeEnabled: false)")), "{}", r.all());
    assert_eq!(env.upstream_tags(R), ["v1"]);
    let r = env.skopeo_pull(&admin, &format!("{R}:v1"), &env.oci("pulled", "v1"));
    assert!(r.ok(), "a write lock does not stop pulls: {}", r.all());

    let (code, c) = env.check(&["--token", "admin", "--repository", R, "--action", "content/write"]);
    assert_eq!(code, Some(1), "{c}");
    assert_eq!(
        c,
        json!({
            "allowed": false,
            "reason": format!("repository {R} is write-locked (writeEnabled: false)"),
            "scopeMap": "_repositories_admin",
            "pattern": "*",
            "repository": R,
            "action": "content/write",
        })
    );
    let (code, c) = env.check(&["--token", "admin", "--repository", R, "--action", "content/read"]);
    assert_eq!((code, &c["allowed"]), (Some(0), &json!(true)), "{c}");

    let v = env.repo_ok(&admin, &["update", "--repository", R, "--write-enabled", "true"]);
    assert_eq!(v["changeableAttributes"]["writeEnabled"], true, "{v}");
    let r = env.skopeo_push(&admin, &env.oci("images", "v2"), &format!("{R}:v2"));
    assert!(r.ok(), "the push succeeds once unlocked: {}", r.all());
    assert_eq!(env.upstream_tags(R), ["v1", "v2"]);

    // The delete lock.
    let v = env.repo_ok(&admin, &["update", "--repository", R, "--delete-enabled", "false"]);
    assert_eq!(v["changeableAttributes"], json!({"readEnabled": true, "writeEnabled": true, "deleteEnabled": false, "listEnabled": true}), "{v}");
    let r = env.repo_as(&admin, &["delete", "--image", &format!("{R}:v2")]);
    assert_eq!(r.code, Some(1), "delete refused by the lock: {}", r.all());
    assert!(r.stderr.contains(&format!("repository {R} is delete-locked (deleteEnabled: false)")), "{}", r.all());
    assert_eq!(env.upstream_digest(R, &d[1]).as_deref(), Some(d[1].as_str()), "the manifest is still there");
    let (code, c) = env.check(&["--token", "admin", "--repository", R, "--action", "content/delete"]);
    assert_eq!(code, Some(1), "{c}");
    assert_eq!(c["reason"], format!("repository {R} is delete-locked (deleteEnabled: false)").as_str(), "{c}");
    env.repo_ok(&admin, &["update", "--repository", R, "--delete-enabled", "true"]);
    let v = env.repo_ok(&admin, &["delete", "--image", &format!("{R}:v2")]);
    assert_eq!(v["deleted"]["manifests"], json!([d[1]]), "{v}");
    assert_eq!(env.upstream_tags(R), ["v1"]);
}

// ---------------------------------------------------------------------------------------
// Anonymous access
// ---------------------------------------------------------------------------------------

/// Anonymous callers get exactly the anonymous scope map's grant: nothing by default,
/// public/* read with `anonymous --scope-map`, nothing again with `anonymous --none`.
/// `skopeo inspect` lists tags too, so it needs metadata/read besides content/read
/// (`--no-tags` does not). GET /v2/ without credentials is 401 throughout.
#[test]
fn anonymous_inspect_is_served_only_inside_the_anonymous_map() {
    let env = Env::start("anon");
    let digest = env.make_images("images", &["v1"]).remove(0);
    env.seed(&env.oci("images", "v1"), "public/x:v1");
    env.seed(&env.oci("images", "v1"), "samples/y:v1");
    let base_is_401 = |when: &str| {
        let r = env.gateway("GET", "/v2/", &[]);
        assert_eq!(r.status, 401, "{when}: GET /v2/ without credentials must be 401");
        assert!(r.header("WWW-Authenticate").is_some_and(|c| c.starts_with("Bearer realm=")), "{when}: {:?}", r.headers);
    };
    let inspect = |repo: &str, extra: &[&str]| {
        let target = env.at_gateway(&format!("{repo}:v1"));
        env.tool(&[&["skopeo", "inspect", "--tls-verify=false", "--no-creds"][..], extra, &[target.as_str()]].concat())
    };
    let anonymous = |args: &[&str]| env.cli_ok(&[&["anonymous"][..], args].concat());

    // Default: off.
    assert_eq!(anonymous(&[]), json!({"scopeMap": null}));
    base_is_401("anonymous access off");
    assert_refused(&inspect("public/x", &[]), "anonymous inspect by default");
    assert_refused(&inspect("public/x", &["--no-tags"]), "anonymous inspect --no-tags by default");

    // A map with content/read only: --no-tags works, listing tags does not.
    env.cli_ok(&["scope-map", "create", "--name", "anon-public", "--repository", "public/*", "content/read"]);
    assert_eq!(anonymous(&["--scope-map", "anon-public"]), json!({"scopeMap": "anon-public"}));
    assert_eq!(anonymous(&[]), json!({"scopeMap": "anon-public"}));
    let r = inspect("public/x", &["--no-tags"]);
    assert!(r.ok(), "anonymous inspect --no-tags with content/read: {}", r.all());
    assert_eq!(stdout_json(&r)["Digest"], digest.as_str());
    assert_refused(&inspect("public/x", &[]), "anonymous inspect (lists tags) without metadata/read");

    // With metadata/read too: the full inspect works inside public/*, nowhere else.
    env.cli_ok(&["scope-map", "update", "--name", "anon-public", "--add-repository", "public/*", "metadata/read"]);
    let r = inspect("public/x", &[]);
    assert!(r.ok(), "anonymous inspect of public/x: {}", r.all());
    let v = stdout_json(&r);
    assert_eq!(v["Digest"], digest.as_str(), "{v}");
    assert_eq!(v["RepoTags"], json!(["v1"]), "{v}");
    assert_refused(&inspect("samples/y", &[]), "anonymous inspect outside the anonymous map");
    assert_refused(&inspect("samples/y", &["--no-tags"]), "anonymous inspect --no-tags outside the anonymous map");
    base_is_401("anonymous access on");
    // Read only: no anonymous push.
    let r = env.gateway("POST", "/v2/public/x/blobs/uploads/", &[("Content-Length", "0")]);
    assert_eq!(r.status, 401, "an anonymous push must be refused: {}", r.text());

    let (code, c) = env.check(&["--anonymous", "--repository", "public/x", "--action", "content/read"]);
    assert_eq!(code, Some(0), "{c}");
    assert_eq!(
        c,
        json!({
            "allowed": true,
            "reason": "scope map anon-public of the anonymous caller grants content/read on repository public/x through pattern public/*",
            "scopeMap": "anon-public",
            "pattern": "public/*",
            "repository": "public/x",
            "action": "content/read",
        })
    );
    let (code, c) = env.check(&["--anonymous", "--repository", "samples/y", "--action", "content/read"]);
    assert_eq!(code, Some(1), "{c}");
    assert_eq!(c["allowed"], false, "{c}");
    assert_eq!(c["reason"], "scope map anon-public of the anonymous caller has no pattern granting content/read on repository samples/y", "{c}");
    assert_eq!(c["pattern"], Value::Null, "{c}");
    let (code, c) = env.check(&["--anonymous", "--repository", "public/x", "--action", "content/write"]);
    assert_eq!((code, &c["allowed"]), (Some(1), &json!(false)), "{c}");

    // An anonymous bearer token (no credentials at /token) carries the map's grant …
    let r = env.gateway("GET", "/token?service=scopegate&scope=repository:public/x:pull", &[]);
    assert_eq!(r.status, 200, "an anonymous token request: {}", r.text());
    let anon_bearer = format!("Bearer {}", r.json()["token"].as_str().expect("token"));
    assert_eq!(head_manifest(&env, "public/x", "v1", &anon_bearer).status, 200, "the anonymous bearer token reads public/x");

    // Off again.
    assert_eq!(anonymous(&["--none"]), json!({"scopeMap": null}));
    // … and dies with it.
    assert_eq!(head_manifest(&env, "public/x", "v1", &anon_bearer).status, 401, "an anonymous bearer token after --none");
    assert_eq!(anonymous(&[]), json!({"scopeMap": null}));
    assert_refused(&inspect("public/x", &[]), "anonymous inspect after --none");
    assert_refused(&inspect("public/x", &["--no-tags"]), "anonymous inspect --no-tags after --none");
    base_is_401("anonymous access switched off");
    let (code, c) = env.check(&["--anonymous", "--repository", "public/x", "--action", "content/read"]);
    assert_eq!(code, Some(1), "{c}");
    assert_eq!(c["reason"], "anonymous access is off (no anonymous scope map is set)", "{c}");
}

// ---------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------

/// `scopegate check` names the reason of each denial — a disabled token, expired or deleted
/// passwords, a lock, a missing pattern, a missing token — and, when allowed, the pattern
/// that grants. Exit 0 when allowed, 1 when denied; the JSON answer either way.
#[test]
fn check_explains_each_denial() {
    let env = Env::start("check");
    env.cli_ok(&["scope-map", "create", "--name", "team", "--repository", "samples/*", "content/read", "content/write", "metadata/read"]);
    // Passwords expiring while the rest of the test runs.
    let expiry = rfc3339_in(Duration::from_secs(2));
    env.create_token(&["--name", "soon", "--scope-map", "team", "--expiration", &expiry]);
    env.create_token(&["--name", "dev", "--scope-map", "team"]);
    let admin = env.create_token(&["--name", "admin", "--scope-map", "_repositories_admin"]);

    let check = |token: &str, repo: &str, action: &str| env.check(&["--token", token, "--repository", repo, "--action", action]);
    let denied = |token: &str, repo: &str, action: &str, reason: &str| {
        let (code, c) = check(token, repo, action);
        assert_eq!(code, Some(1), "check exits 1 when denied: {c}");
        assert_eq!(c["allowed"], false, "{c}");
        assert_eq!(c["reason"], reason, "{c}");
        assert_eq!((&c["repository"], &c["action"]), (&json!(repo), &json!(action)), "{c}");
        c
    };
    let allowed = |token: &str, repo: &str, action: &str| {
        let (code, c) = check(token, repo, action);
        assert_eq!(code, Some(0), "check exits 0 when allowed: {c}");
        assert_eq!(
            c,
            json!({
                "allowed": true,
                "reason": format!("scope map team of token {token} grants {action} on repository {repo} through pattern samples/*"),
                "scopeMap": "team",
                "pattern": "samples/*",
                "repository": repo,
                "action": action,
            })
        );
    };

    allowed("dev", "samples/app", "content/read");
    allowed("dev", "samples/app", "content/write");

    // No pattern: the wrong repository, or an action the map does not hold.
    let c = denied("dev", "other/app", "content/read", "scope map team of token dev has no pattern granting content/read on repository other/app");
    assert_eq!((&c["scopeMap"], &c["pattern"]), (&json!("team"), &Value::Null), "{c}");
    denied("dev", "samples/app", "content/delete", "scope map team of token dev has no pattern granting content/delete on repository samples/app");
    denied("dev", "samples/app", "metadata/write", "scope map team of token dev has no pattern granting metadata/write on repository samples/app");

    // A lock: explained with the pattern that would otherwise grant.
    env.repo_ok(&admin, &["update", "--repository", "samples/app", "--write-enabled", "false"]);
    let c = denied("dev", "samples/app", "content/write", "repository samples/app is write-locked (writeEnabled: false)");
    assert_eq!((&c["scopeMap"], &c["pattern"]), (&json!("team"), &json!("samples/*")), "{c}");
    allowed("dev", "samples/app", "content/read");
    allowed("dev", "samples/other", "content/write");
    env.repo_ok(&admin, &["update", "--repository", "samples/app", "--write-enabled", "true"]);
    allowed("dev", "samples/app", "content/write");

    // Disabled, then enabled again.
    env.cli_ok(&["token", "update", "--name", "dev", "--status", "disabled"]);
    denied("dev", "samples/app", "content/read", "token dev is disabled");
    env.cli_ok(&["token", "update", "--name", "dev", "--status", "enabled"]);
    allowed("dev", "samples/app", "content/read");

    // Deleted passwords: one left is enough; none is not.
    env.cli_ok(&["token", "credential", "delete", "--name", "dev", "--password1"]);
    allowed("dev", "samples/app", "content/read");
    env.cli_ok(&["token", "credential", "delete", "--name", "dev", "--password2"]);
    denied("dev", "samples/app", "content/read", "token dev has no valid password (password1 is not set, password2 is not set)");
    env.cli_ok(&["token", "credential", "generate", "--name", "dev", "--password2"]);
    allowed("dev", "samples/app", "content/read");

    // A token that does not exist.
    denied("ghost", "samples/app", "content/read", "token ghost does not exist");

    // Expired passwords (both, set at creation): poll until the expiry has passed.
    let reason = format!("token soon has no valid password (password1 expired at {expiry}, password2 expired at {expiry})");
    poll("check reporting the expired passwords of token soon", Duration::from_secs(6), || {
        let (code, c) = check("soon", "samples/app", "content/read");
        match code {
            Some(0) => None,
            _ => Some(c),
        }
    });
    assert!(time::OffsetDateTime::now_utc() >= rfc3339_time(&expiry));
    denied("soon", "samples/app", "content/read", &reason);
}
