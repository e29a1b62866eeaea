//! Integration tests: the whole gateway in-process on port 0 in front of a recording fake
//! registry. Each test is named after the case it guards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use http::StatusCode;
use serde_json::json;
use support::{basic, Harness, DIGEST};

const HELLO: &str = "samples/hello-world";

#[tokio::test]
async fn unauthenticated_base_gets_one_bearer_challenge() {
    let h = Harness::start().await;
    let r = h.v2("GET", "/v2/", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers.get_all("www-authenticate").iter().count(), 1);
    assert_eq!(r.header("www-authenticate"), format!("Bearer realm=\"{}/token\",service=\"scopegate\"", h.public()));
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn challenge_names_the_scope_a_request_needs() {
    let h = Harness::start().await;
    let r = h.v2("PUT", &format!("/v2/{HELLO}/manifests/v1"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").ends_with(",scope=\"repository:samples/hello-world:push\""), "{}", r.header("www-authenticate"));
    assert_eq!(r.json()["errors"][0]["detail"][0]["Action"], "push");
}

#[tokio::test]
async fn basic_credentials_work_directly_on_v2_and_403_when_not_granted() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let auth = basic("ci", &pw);
    let r = h.v2("GET", "/v2/", &[("authorization", &auth)]).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "{}"));
    let r = h.v2("GET", &format!("/v2/{HELLO}/manifests/v1"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "ok");
    let r = h.v2("PUT", &format!("/v2/{HELLO}/manifests/v1"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
    assert!(r.headers.get("www-authenticate").is_none());
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1, "only the granted GET reached the registry: {seen:?}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let wrong = h.v2("GET", "/token?service=scopegate", &[("authorization", &basic("ci", "sgp_wrong"))]).await;
    let unknown = h.v2("GET", "/token?service=scopegate", &[("authorization", &basic("nobody", &pw))]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!((wrong.status, wrong.body.clone()), (unknown.status, unknown.body.clone()));
    let on_v2_wrong = h.v2("GET", "/v2/", &[("authorization", &basic("ci", "sgp_wrong"))]).await;
    let on_v2_unknown = h.v2("GET", "/v2/", &[("authorization", &basic("nobody", &pw))]).await;
    assert_eq!(on_v2_wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(on_v2_wrong.body, on_v2_unknown.body);
    assert_eq!(on_v2_wrong.header("www-authenticate"), on_v2_unknown.header("www-authenticate"));
}

#[tokio::test]
async fn token_endpoint_unions_scopes_and_answers_in_the_docker_shape() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read", "content/write", "metadata/read"]), ("other", &["content/read"])]).await;
    let q = "/token?service=scopegate&scope=repository:samples/hello-world:push&scope=repository:samples/hello-world:pull%20repository:other:pull,push%20registry:catalog:*&account=ci&client_id=docker";
    let r = h.v2("GET", q, &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["expires_in"].is_u64());
    assert!(time::OffsetDateTime::parse(v["issued_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).is_ok());
    assert!(v.get("refresh_token").is_none());
    let token = v["token"].as_str().unwrap();
    let auth = format!("Bearer {token}");
    // push and pull both granted on hello-world (union of two scope entries), pull only on other
    assert_eq!(h.v2("PUT", &format!("/v2/{HELLO}/manifests/v1"), &[("authorization", &auth)]).await.status, StatusCode::CREATED);
    assert_eq!(h.v2("GET", &format!("/v2/{HELLO}/tags/list"), &[("authorization", &auth)]).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", "/v2/other/manifests/v1", &[("authorization", &auth)]).await.status, StatusCode::OK);
    let r = h.v2("PUT", "/v2/other/manifests/v1", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").contains("error=\"insufficient_scope\""));
    assert!(r.header("www-authenticate").contains("scope=\"repository:other:push\""));
}

#[tokio::test]
async fn token_endpoint_post_form_and_refresh_tokens() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let form = format!(
        "grant_type=password&username=ci&password={}&service=scopegate&client_id=containerd-client&access_type=offline&scope=repository%3Asamples%2Fhello-world%3Apull%2Cpush",
        pw
    );
    let r = h
        .request("POST", &format!("{}/token", h.public()), &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")], form.as_bytes())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["scope"], "repository:samples/hello-world:pull");
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    // the refresh token is reusable and returned unchanged
    for _ in 0..2 {
        let form = format!("grant_type=refresh_token&refresh_token={refresh}&service=scopegate&scope=repository%3Asamples%2Fhello-world%3Apull&access_type=offline");
        let r = h.request("POST", &format!("{}/token", h.public()), &[("content-type", "application/x-www-form-urlencoded")], form.as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["refresh_token"], refresh.as_str());
    }
    // a refresh token is not a session token
    let r = h.v2("GET", "/v2/", &[("authorization", &format!("Bearer {refresh}"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // regenerating password1 kills the refresh token earned with it
    let r = h.admin("POST", "/api/v1/tokens/ci/credentials", Some(json!({"password1": true}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let form = format!("grant_type=refresh_token&refresh_token={refresh}&service=scopegate");
    let r = h.request("POST", &format!("{}/token", h.public()), &[("content-type", "application/x-www-form-urlencoded")], form.as_bytes()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn docker_login_gets_a_refresh_token_with_offline_token() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let r = h
        .v2("GET", "/token?account=ci&client_id=docker&offline_token=true&service=scopegate", &[("authorization", &basic("ci", &pw))])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["refresh_token"].is_string());
}

#[tokio::test]
async fn wrong_credentials_never_get_an_anonymous_token() {
    let h = Harness::start().await;
    let r = h.v2("GET", "/token?service=scopegate&scope=repository:samples/hello-world:pull", &[("authorization", &basic("x", "y"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json().get("token").is_none());
    let r = h.v2("GET", "/token?service=other", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.v2("GET", "/token?scope=repository", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn disabling_a_token_bites_on_the_next_request_even_with_a_bearer_token() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull"]).await;
    let auth = format!("Bearer {tok}");
    let target = format!("/v2/{HELLO}/manifests/v1");
    assert_eq!(h.v2("HEAD", &target, &[("authorization", &auth)]).await.status, StatusCode::OK);
    assert_eq!(h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await.status, StatusCode::OK);
    let r = h.v2("HEAD", &target, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").contains("error=\"invalid_token\""));
    let r = h.v2("GET", "/v2/", &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("token ci is disabled"));
    assert_eq!(h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "enabled"}))).await.status, StatusCode::OK);
    assert_eq!(h.v2("HEAD", &target, &[("authorization", &auth)]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn editing_a_scope_map_bites_on_the_next_request_even_with_a_bearer_token() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read", "content/write"])]).await;
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull,push"]).await;
    let auth = format!("Bearer {tok}");
    let target = format!("/v2/{HELLO}/manifests/v1");
    assert_eq!(h.v2("PUT", &target, &[("authorization", &auth)]).await.status, StatusCode::CREATED);
    let r = h
        .admin("PATCH", "/api/v1/scope-maps/ci-map", Some(json!({"removeRepositories": [{"repository": HELLO, "actions": ["content/write"]}]})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    h.upstream.clear();
    let r = h.v2("PUT", &target, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(h.upstream.seen().is_empty());
    // what the map still grants keeps working
    assert_eq!(h.v2("GET", &target, &[("authorization", &auth)]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn deleting_a_token_or_regenerating_its_password_kills_its_sessions() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull"]).await;
    let auth = format!("Bearer {tok}");
    let target = format!("/v2/{HELLO}/manifests/v1");
    let r = h.admin("POST", "/api/v1/tokens/ci/credentials", Some(json!({"password2": true}))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.v2("GET", &target, &[("authorization", &auth)]).await.status, StatusCode::OK, "password1 sessions survive a password2 change");
    let r = h.admin("POST", "/api/v1/tokens/ci/credentials", Some(json!({"password1": true}))).await;
    let fresh = r.json()["passwords"][0]["value"].as_str().unwrap().to_owned();
    assert_eq!(h.v2("GET", &target, &[("authorization", &auth)]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.v2("GET", "/v2/", &[("authorization", &basic("ci", &pw))]).await.status, StatusCode::UNAUTHORIZED);
    let tok = h.session("ci", &fresh, &["repository:samples/hello-world:pull"]).await;
    assert_eq!(h.admin("DELETE", "/api/v1/tokens/ci", None).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", &target, &[("authorization", &format!("Bearer {tok}"))]).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forwarded_requests_carry_no_client_credentials_or_forwarding_headers() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let auth = basic("ci", &pw);
    let r = h
        .v2(
            "GET",
            &format!("/v2/{HELLO}/manifests/v1?ns=docker.io"),
            &[
                ("authorization", &auth),
                ("forwarded", "host=evil.example;proto=https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
                ("cookie", "a=b"),
                ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.target, format!("/v2/{HELLO}/manifests/v1"));
    for gone in ["authorization", "forwarded", "x-forwarded-host", "x-forwarded-proto", "cookie"] {
        assert!(s.headers.get(gone).is_none(), "{gone} reached the registry");
    }
    assert_eq!(s.headers["host"], h.upstream.addr.to_string());
    assert_eq!(s.headers["accept"], "application/vnd.oci.image.manifest.v1+json");
}

#[tokio::test]
async fn upload_location_is_rewritten_to_the_public_origin() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read", "content/write"])]).await;
    let r = h.v2("POST", &format!("/v2/{HELLO}/blobs/uploads/"), &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("location"), format!("{}/v2/{HELLO}/blobs/uploads/f00d-1?_state=abc", h.public()));
    // the rewritten location works through the gateway with _state forwarded
    let r = h.v2("PATCH", &format!("/v2/{HELLO}/blobs/uploads/f00d-1?_state=abc"), &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.upstream.seen().last().unwrap().target, format!("/v2/{HELLO}/blobs/uploads/f00d-1?_state=abc"));
}

#[tokio::test]
async fn cross_repository_mount_from_an_unreadable_repository_is_stripped() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[("mine", &["content/read", "content/write"]), ("pub/base", &["content/read"])]).await;
    let auth = basic("ci", &pw);
    let r = h.v2("POST", &format!("/v2/mine/blobs/uploads/?mount={DIGEST}&from=victim/secret"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(h.upstream.seen().last().unwrap().target, "/v2/mine/blobs/uploads/");
    let r = h.v2("POST", &format!("/v2/mine/blobs/uploads/?mount={DIGEST}&from=pub/base"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let t = h.upstream.seen().last().unwrap().target.clone();
    assert!(t.contains("mount=sha256") && t.contains("from=pub%2Fbase"), "{t}");
}

#[tokio::test]
async fn form_body_cannot_smuggle_a_mount_source() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[("mine", &["content/read", "content/write"])]).await;
    let r = h
        .request(
            "POST",
            &format!("{}/v2/mine/blobs/uploads/?mount={DIGEST}&from=mine", h.public()),
            &[("authorization", &basic("ci", &pw)), ("content-type", "application/x-www-form-urlencoded")],
            b"from=victim%2Fsecret",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn catalog_is_filtered_and_link_never_names_a_hidden_repository() {
    let h = Harness::start().await;
    *h.upstream.repos.lock().unwrap() = (0..30).map(|i| format!("r{i:02}")).chain(["team/a", "team/b", "zz/hidden"].map(String::from)).collect();
    let pw = h.token("ci", &[("team/*", &["metadata/read"]), ("r05", &["metadata/read"]), ("r20", &["content/read"])]).await;
    let auth = basic("ci", &pw);
    let r = h.v2("GET", "/v2/_catalog?n=2", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["repositories"], json!(["r05", "team/a"]));
    assert_eq!(r.header("link"), "</v2/_catalog?last=team%2Fa&n=2>; rel=\"next\"");
    let r = h.v2("GET", "/v2/_catalog?last=team%2Fa&n=2", &[("authorization", &auth)]).await;
    assert_eq!(r.json()["repositories"], json!(["team/b"]));
    assert_eq!(r.header("link"), "");
    // a session token needs registry:catalog:*, and is then filtered the same way
    let tok = h.session("ci", &pw, &[]).await;
    let r = h.v2("GET", "/v2/_catalog", &[("authorization", &format!("Bearer {tok}"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").contains("scope=\"registry:catalog:*\""));
    let tok = h.session("ci", &pw, &["registry:catalog:*"]).await;
    let r = h.v2("GET", "/v2/_catalog", &[("authorization", &format!("Bearer {tok}"))]).await;
    assert_eq!(r.json()["repositories"], json!(["r05", "team/a", "team/b"]));
    // the upstream was paged with a clamped n, never the client's
    assert!(h.upstream.seen().iter().all(|s| s.target.starts_with("/v2/_catalog?n=1000")));
}

#[tokio::test]
async fn tag_listing_n_is_clamped() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["metadata/read"])]).await;
    let r = h.v2("GET", &format!("/v2/{HELLO}/tags/list?n=99999999"), &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.upstream.seen()[0].target, format!("/v2/{HELLO}/tags/list?n=1000"));
}

#[tokio::test]
async fn oversized_manifest_is_refused_before_the_registry() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/write"])]).await;
    let big = vec![b'x'; 4 * 1024 * 1024 + 1];
    let r = h
        .request("PUT", &format!("{}/v2/{HELLO}/manifests/v1", h.public()), &[("authorization", &basic("ci", &pw)), ("content-type", "application/vnd.oci.image.manifest.v1+json")], &big)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.upstream.seen().is_empty());
}

/// A client still sending a body the gateway has already refused must read the refusal,
/// not a connection reset: docker re-authenticates on a 401 to an upload PATCH whose token
/// expired mid-push, and shows a 413 for an oversized manifest. 12 MiB is more than the
/// loopback socket buffers hold, so the client is still writing when the answer leaves.
#[tokio::test]
async fn refused_request_with_a_large_body_still_reads_its_answer() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/write"])]).await;
    let big = vec![b'x'; 12 * 1024 * 1024];
    let upload = format!("{}/v2/{HELLO}/blobs/uploads/f00d-1?_state=abc", h.public());
    let r = h.request("PATCH", &upload, &[("content-type", "application/octet-stream")], &big).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h.request("PATCH", &upload, &[("authorization", &basic("ci", "wrong"))], &big).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let manifest = format!("{}/v2/{HELLO}/manifests/v1", h.public());
    let ct = ("content-type", "application/vnd.oci.image.manifest.v1+json");
    let r = h.request("PUT", &manifest, &[("authorization", &basic("ci", &pw)), ct], &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());
}

#[tokio::test]
async fn hostile_requests_never_reach_the_registry() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[("*", &["content/read", "content/write", "content/delete", "metadata/read", "metadata/write"])]).await;
    let auth = basic("ci", &pw);
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/v2/team%2Fsecret/manifests/latest", 400),
        ("GET", "/v2/a/%2e%2e/b/manifests/latest", 400),
        ("GET", "/v2/foo/../bar/tags/list", 400),
        ("GET", "/v2/a//b/manifests/latest", 400),
        ("GET", "/v2/a/tags/list/", 404),
        ("GET", "/v2/Foo/manifests/latest", 400),
        ("DELETE", "/v2/x/manifests/sha256:ZZ", 400),
        ("POST", "/v2/a/blobs/uploads/0f3e?_state=x", 405),
        ("OPTIONS", "/v2/a/manifests/latest", 405),
        ("TRACE", "/v2/", 405),
        ("GET", "/v2/a/referrers/latest", 400),
        ("GET", "/v2/_catalog?n=1&n=2", 400),
        ("PATCH", "/v2/a/blobs/uploads/u?_state=a;b", 400),
    ];
    for (m, target, status) in cases {
        let req = format!("{m} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
        let (code, text) = h.raw(req.as_bytes()).await;
        assert_eq!(code, *status, "{m} {target}: {text}");
        assert!(text.to_ascii_lowercase().contains("docker-distribution-api-version: registry/2.0"), "{m} {target}");
        assert!(text.contains("\"errors\"") || *m == "HEAD", "{m} {target}: {text}");
    }
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());
}

#[tokio::test]
async fn upstream_down_is_a_docker_json_503() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    h.upstream.stop().await;
    let r = h.v2("GET", &format!("/v2/{HELLO}/manifests/v1"), &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
}

#[tokio::test]
async fn everything_survives_a_restart_including_issued_tokens() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull"]).await;
    let h = h.restart().await;
    let target = format!("/v2/{HELLO}/manifests/v1");
    assert_eq!(h.v2("GET", &target, &[("authorization", &basic("ci", &pw))]).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", &target, &[("authorization", &format!("Bearer {tok}"))]).await.status, StatusCode::OK);
    assert_eq!(h.admin("GET", "/api/v1/scope-maps/ci-map", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_api_requires_the_admin_token() {
    let h = Harness::start().await;
    let url = format!("http://{}/api/v1/tokens", h.gw.admin_addr);
    assert_eq!(h.request("GET", &url, &[], b"").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.request("GET", &url, &[("authorization", "Bearer wrong-token-xxxxxxxx")], b"").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.request("GET", &url, &[("authorization", &format!("Bearer {}", support::ADMIN))], b"").await.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_api_rejects_unknown_fields_and_changes_nothing() {
    let h = Harness::start().await;
    let r = h
        .admin("POST", "/api/v1/scope-maps", Some(json!({"name": "m1", "repositories": [{"repository": "a", "actions": ["content/read"]}], "isAdmin": true})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("isAdmin"), "{}", r.text());
    let r = h.admin("POST", "/api/v1/tokens", Some(json!({"name": "t1", "scopeMap": "_repositories_admin", "passwords": ["mine"]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.admin("GET", "/api/v1/tokens", None).await.json(), json!([]));
    assert_eq!(h.admin("GET", "/api/v1/scope-maps/m1", None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn secrets_are_shown_once_and_never_again() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    for path in ["/api/v1/tokens", "/api/v1/tokens/ci"] {
        let r = h.admin("GET", path, None).await;
        assert!(!r.text().contains(&pw), "{path} returned a password");
        assert!(!r.text().contains("\"value\""), "{path}");
    }
    let db = std::fs::read(h.data.path().join("scopegate.db")).unwrap();
    assert!(!db.windows(pw.len()).any(|w| w == pw.as_bytes()), "password stored in clear");
}

#[tokio::test]
async fn scope_map_rules_refuse_with_a_reason() {
    let h = Harness::start().await;
    h.token("ci", &[(HELLO, &["content/read"])]).await;
    let r = h.admin("DELETE", "/api/v1/scope-maps/ci-map", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.text().contains("used by token(s) ci"), "{}", r.text());
    let r = h.admin("PATCH", "/api/v1/scope-maps/_repositories_pull", Some(json!({"description": "x"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "bad name", "repositories": [{"repository": "a", "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "m2", "repositories": [{"repository": "a", "actions": ["pull"]}]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("content/read"), "{}", r.text());
    let r = h.admin("POST", "/api/v1/tokens", Some(json!({"name": "t2", "scopeMap": "nope"}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn token_create_with_repositories_makes_its_own_scope_map() {
    let h = Harness::start().await;
    let r = h
        .admin("POST", "/api/v1/tokens", Some(json!({"name": "MyToken", "repositories": [{"repository": HELLO, "actions": ["content/read"]}], "expirationInDays": 30})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    assert_eq!(v["scopeMap"], "MyToken-scope-map");
    assert_eq!(v["credentials"]["username"], "MyToken");
    assert_eq!(v["credentials"]["passwords"].as_array().unwrap().len(), 2);
    assert!(v["credentials"]["passwords"][0]["expiry"].is_string());
    let shown = h.admin("GET", "/api/v1/tokens/MyToken", None).await.json();
    assert_eq!(shown["creationDate"], v["creationDate"], "the stored time reads back as created");
    assert_eq!(shown["credentials"]["passwords"][0]["expiry"], v["credentials"]["passwords"][0]["expiry"]);
    let m = h.admin("GET", "/api/v1/scope-maps/MyToken-scope-map", None).await.json();
    assert_eq!(m["actions"], json!(["repositories/samples/hello-world/content/read"]));
}

// === token lifecycle, locks, anonymous access, explain (time is moved, never slept) ===

fn lock_body(attr: &str, on: bool) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(attr.into(), json!(on));
    serde_json::Value::Object(m)
}

#[tokio::test]
async fn an_expiring_password_stops_working_at_its_expiry() {
    let h = Harness::start().await;
    h.token("ci", &[(HELLO, &["content/read"])]).await;
    let r = h.admin("POST", "/api/v1/tokens/ci/credentials", Some(json!({"password1": true, "expirationInDays": 1}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let pw = r.json()["passwords"][0]["value"].as_str().unwrap().to_owned();
    let target = format!("/v2/{HELLO}/manifests/v1");
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull"]).await;
    assert_eq!(h.v2("GET", &target, &[("authorization", &basic("ci", &pw))]).await.status, StatusCode::OK);
    h.gw.state.clock.advance(std::time::Duration::from_secs(24 * 3600 - 60));
    assert_eq!(h.v2("GET", &target, &[("authorization", &basic("ci", &pw))]).await.status, StatusCode::OK, "a minute before expiry");
    h.gw.state.clock.advance(std::time::Duration::from_secs(61));
    let r = h.v2("GET", "/token?service=scopegate", &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("password1 of token ci expired at"), "{}", r.text());
    let r = h.v2("GET", &target, &[("authorization", &basic("ci", &pw))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("expired at"), "{}", r.text());
    // a session earned before the expiry dies with the password
    let r = h.v2("GET", &target, &[("authorization", &format!("Bearer {tok}"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").contains("error=\"invalid_token\""));
}

#[tokio::test]
async fn token_update_scope_map_changes_what_a_live_session_can_do() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[(HELLO, &["content/read", "content/write"])]).await;
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "read-only", "repositories": [{"repository": HELLO, "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull,push"]).await;
    let auth = format!("Bearer {tok}");
    let upload = format!("/v2/{HELLO}/blobs/uploads/");
    assert_eq!(h.v2("POST", &upload, &[("authorization", &auth)]).await.status, StatusCode::ACCEPTED);
    assert_eq!(h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"scopeMap": "read-only"}))).await.status, StatusCode::OK);
    h.upstream.clear();
    assert_eq!(h.v2("POST", &upload, &[("authorization", &auth)]).await.status, StatusCode::UNAUTHORIZED);
    assert!(h.upstream.seen().is_empty());
    assert_eq!(h.v2("GET", &format!("/v2/{HELLO}/manifests/v1"), &[("authorization", &auth)]).await.status, StatusCode::OK);
    assert_eq!(h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"scopeMap": "ci-map"}))).await.status, StatusCode::OK);
    assert_eq!(h.v2("POST", &upload, &[("authorization", &auth)]).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn repository_locks_bind_every_caller_including_admin_tokens() {
    let h = Harness::start().await;
    let r = h.admin("POST", "/api/v1/tokens", Some(json!({"name": "root", "scopeMap": "_repositories_admin"}))).await;
    let pw = r.json()["credentials"]["passwords"][0]["value"].as_str().unwrap().to_owned();
    let auth = basic("root", &pw);
    let api = format!("/scopegate/v1/{HELLO}");
    let cases: [(&str, &str, String); 4] = [
        ("writeEnabled", "PUT", format!("/v2/{HELLO}/manifests/v1")),
        ("readEnabled", "GET", format!("/v2/{HELLO}/manifests/v1")),
        ("deleteEnabled", "DELETE", format!("/v2/{HELLO}/manifests/{}", support::DIGEST)),
        ("listEnabled", "GET", format!("/v2/{HELLO}/tags/list")),
    ];
    for (attr, method, target) in &cases {
        let r = h.request("PATCH", &format!("{}{api}", h.public()), &[("authorization", &auth)], lock_body(attr, false).to_string().as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["changeableAttributes"][attr], false);
        h.upstream.clear();
        let r = h.v2(method, target, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{attr}: {method} {target}");
        assert_eq!(r.json()["errors"][0]["code"], "DENIED");
        assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains(&format!("{attr}: false")), "{}", r.text());
        assert!(h.upstream.seen().is_empty(), "{attr}");
        // the attributes stay readable while locked
        let shown = h.v2("GET", &api, &[("authorization", &auth)]).await;
        assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
        assert_eq!(shown.json()["changeableAttributes"][attr], false);
        let r = h.request("PATCH", &format!("{}{api}", h.public()), &[("authorization", &auth)], lock_body(attr, true).to_string().as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(h.v2(method, target, &[("authorization", &auth)]).await.status, StatusCode::FORBIDDEN, "{attr} unlocked");
    }
}

#[tokio::test]
async fn a_list_locked_repository_leaves_the_catalog_and_a_read_locked_one_cannot_be_mounted() {
    let h = Harness::start().await;
    *h.upstream.repos.lock().unwrap() = vec!["a".into(), "b".into()];
    let r = h.admin("POST", "/api/v1/tokens", Some(json!({"name": "root", "scopeMap": "_repositories_admin"}))).await;
    let pw = r.json()["credentials"]["passwords"][0]["value"].as_str().unwrap().to_owned();
    let auth = basic("root", &pw);
    for (repo, attr) in [("a", "listEnabled"), ("b", "readEnabled")] {
        let r = h.request("PATCH", &format!("{}/scopegate/v1/{repo}", h.public()), &[("authorization", &auth)], lock_body(attr, false).to_string().as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(h.v2("GET", "/v2/_catalog", &[("authorization", &auth)]).await.json()["repositories"], json!(["b"]));
    h.upstream.clear();
    let r = h.v2("POST", &format!("/v2/a/blobs/uploads/?mount={}&from=b", support::DIGEST), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(h.upstream.seen()[0].target, "/v2/a/blobs/uploads/");
    // locks survive a restart
    let h = h.restart().await;
    assert_eq!(h.v2("GET", "/v2/b/manifests/v1", &[("authorization", &auth)]).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn anonymous_callers_get_exactly_the_anonymous_map() {
    let h = Harness::start().await;
    let target = "/v2/public/base/manifests/v1";
    assert_eq!(h.v2("GET", target, &[]).await.status, StatusCode::UNAUTHORIZED, "off by default");
    let r = h.admin("GET", "/api/v1/anonymous", None).await;
    assert_eq!(r.json()["scopeMap"], serde_json::Value::Null);
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "public-pull", "repositories": [{"repository": "public/*", "actions": ["content/read", "metadata/read"]}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(h.admin("PUT", "/api/v1/anonymous", Some(json!({"scopeMap": "public-pull"}))).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", target, &[]).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", "/v2/", &[]).await.status, StatusCode::UNAUTHORIZED, "the base route always challenges");
    assert_eq!(h.v2("GET", "/v2/private/x/manifests/v1", &[]).await.status, StatusCode::UNAUTHORIZED);
    // an anonymous /token request gets exactly the anonymous map's grant
    let r = h.v2("GET", "/token?service=scopegate&scope=repository:public/base:pull,push&scope=repository:private/x:pull&scope=registry:catalog:*", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let tok = r.json()["token"].as_str().unwrap().to_owned();
    let claims = String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, tok.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_str(&claims).unwrap();
    assert_eq!(claims["sub"], "");
    assert_eq!(claims["access"], json!([{"type": "repository", "name": "public/base", "actions": ["pull", "metadata_read"]}]));
    let auth = format!("Bearer {tok}");
    assert_eq!(h.v2("GET", target, &[("authorization", &auth)]).await.status, StatusCode::OK);
    // the map in use cannot go; switching anonymous access off bites at once
    assert_eq!(h.admin("DELETE", "/api/v1/scope-maps/public-pull", None).await.status, StatusCode::CONFLICT);
    assert_eq!(h.admin("PUT", "/api/v1/anonymous", Some(json!({}))).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.admin("PUT", "/api/v1/anonymous", Some(json!({"scopeMap": "nope"}))).await.status, StatusCode::NOT_FOUND);
    let h = h.restart().await;
    assert_eq!(h.v2("GET", target, &[]).await.status, StatusCode::OK, "the setting survives a restart");
    assert_eq!(h.admin("PUT", "/api/v1/anonymous", Some(json!({"scopeMap": null}))).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", target, &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.v2("GET", target, &[("authorization", &auth)]).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn check_explains_allowed_and_each_kind_of_denial() {
    let h = Harness::start().await;
    let pw = h.token("ci", &[("samples/*", &["content/read"])]).await;
    let check = |q: &str| format!("/api/v1/check?{q}");
    let r = h.admin("GET", &check("token=ci&repository=samples/a&action=content/read"), None).await.json();
    assert_eq!((r["allowed"].as_bool(), r["scopeMap"].as_str(), r["pattern"].as_str()), (Some(true), Some("ci-map"), Some("samples/*")));
    let r = h.admin("GET", &check("token=ci&repository=samples/a&action=content/write"), None).await.json();
    assert_eq!(r["allowed"], false);
    assert!(r["reason"].as_str().unwrap().contains("has no pattern granting content/write"), "{r}");
    h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await;
    let r = h.admin("GET", &check("token=ci&repository=samples/a&action=content/read"), None).await.json();
    assert_eq!(r["reason"], "token ci is disabled");
    h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "enabled"}))).await;
    h.admin("PATCH", "/api/v1/scope-maps/ci-map", Some(json!({"addRepositories": [{"repository": "samples/a", "actions": ["metadata/write"]}]}))).await;
    let r = h.request("PATCH", &format!("{}/scopegate/v1/samples/a", h.public()), &[("authorization", &basic("ci", &pw))], br#"{"readEnabled": false}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = h.admin("GET", &check("token=ci&repository=samples/a&action=content/read"), None).await.json();
    assert_eq!(r["reason"], "repository samples/a is read-locked (readEnabled: false)");
    let r = h.admin("POST", "/api/v1/tokens/ci/credentials", Some(json!({"expirationInDays": 1}))).await;
    assert_eq!(r.status, StatusCode::OK);
    h.gw.state.clock.advance(std::time::Duration::from_secs(2 * 24 * 3600));
    let r = h.admin("GET", &check("token=ci&repository=samples/b&action=content/read"), None).await.json();
    assert!(r["reason"].as_str().unwrap().starts_with("token ci has no valid password (password1 expired at"), "{r}");
    let r = h.admin("GET", &check("anonymous=true&repository=samples/b&action=content/read"), None).await.json();
    assert_eq!(r["reason"], "anonymous access is off (no anonymous scope map is set)");
    for bad in ["token=ci&repository=samples/b", "token=ci&anonymous=true&repository=a&action=content/read", "token=ci&repository=A&action=content/read", "token=ci&repository=a&action=pull", "token=ci&repository=a&action=content/read&x=1"] {
        assert_eq!(h.admin("GET", &check(bad), None).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn the_repository_api_needs_exactly_its_action() {
    let h = Harness::start().await;
    // (method, path, action it needs)
    let cases = [
        ("GET", format!("/scopegate/v1/{HELLO}"), "metadata/read"),
        ("GET", format!("/scopegate/v1/{HELLO}/_tags"), "metadata/read"),
        ("GET", format!("/scopegate/v1/{HELLO}/_manifests"), "metadata/read"),
        ("GET", format!("/scopegate/v1/{HELLO}/_tags/v1"), "metadata/read"),
        ("DELETE", format!("/scopegate/v1/{HELLO}/_manifests/v1"), "content/delete"),
        ("DELETE", format!("/scopegate/v1/{HELLO}"), "content/delete"),
        ("PATCH", format!("/scopegate/v1/{HELLO}"), "metadata/write"),
    ];
    let all = ["content/read", "content/write", "content/delete", "metadata/read", "metadata/write"];
    for (i, (method, path, needed)) in cases.iter().enumerate() {
        let only = format!("only{i}");
        let pw = h.token(&only, &[(HELLO, &[needed])]).await;
        let others: Vec<&str> = all.iter().copied().filter(|a| a != needed).collect();
        let without = format!("without{i}");
        let pw2 = h.token(&without, &[(HELLO, &others)]).await;
        let body: &[u8] = if *method == "PATCH" { br#"{"writeEnabled": true}"# } else { b"" };
        let r = h.request(method, &format!("{}{path}", h.public()), &[("authorization", &basic(&only, &pw))], body).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path} with {needed}: {}", r.text());
        h.upstream.clear();
        let r = h.request(method, &format!("{}{path}", h.public()), &[("authorization", &basic(&without, &pw2))], body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path} without {needed}");
        assert!(h.upstream.seen().is_empty(), "{method} {path}");
    }
}

#[tokio::test]
async fn an_interrupted_untag_is_finished_at_the_next_start() {
    use scopegate::oci::{Digest, RepoName, Tag};
    use scopegate::store::Store;
    let data = tempfile::tempdir().unwrap();
    let journal = scopegate::store::UntagJournal {
        id: 0,
        repo: RepoName::parse(HELLO).unwrap(),
        digest: Digest::parse(support::DIGEST).unwrap(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest: b"{\"schemaVersion\":2}".to_vec(),
        keep_tags: vec![Tag::parse("v2").unwrap()],
    };
    // an untag that stopped half-way, left in the store of a gateway that is not running
    scopegate::store::sqlite::SqliteStore::open(data.path()).unwrap().begin_untag(&journal).unwrap();
    let h = Harness::start_on(support::FakeRegistry::start().await, data).await;
    // the recovery runs in the background after start: wait until the journal is empty
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !h.gw.state.store.pending_untags().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the journal was not replayed");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let puts: Vec<String> = h.upstream.seen().into_iter().filter(|s| s.method == http::Method::PUT).map(|s| s.target).collect();
    assert_eq!(puts, [format!("/v2/{HELLO}/manifests/{}", support::DIGEST), format!("/v2/{HELLO}/manifests/v2")]);
    let put = h.upstream.seen().into_iter().find(|s| s.method == http::Method::PUT).unwrap();
    assert_eq!(put.body.as_ref(), b"{\"schemaVersion\":2}");
    assert_eq!(put.headers["content-type"], "application/vnd.oci.image.manifest.v1+json");
}

// === operations: audit log, metrics, health ===

#[tokio::test]
async fn every_decision_writes_one_audit_line_without_secrets() {
    let data = tempfile::tempdir().unwrap();
    let audit = data.path().join("audit.jsonl");
    let path = audit.display().to_string();
    let h = Harness::start_configured(support::FakeRegistry::start().await, tempfile::tempdir().unwrap(), move |raw| raw.audit.output = path).await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    let tok = h.session("ci", &pw, &["repository:samples/hello-world:pull"]).await;
    let cases = [
        (format!("/v2/{HELLO}/manifests/v1"), basic("ci", &pw), "allowed"),
        (format!("/v2/{HELLO}/manifests/v1"), format!("Bearer {tok}"), "allowed"),
        ("/v2/other/manifests/v1".to_owned(), basic("ci", &pw), "denied"),
        ("/v2/other/manifests/v1".to_owned(), basic("ci", "sgp_wrong"), "unauthenticated"),
    ];
    let mut ids = Vec::new();
    for (target, auth, _) in &cases {
        ids.push(h.v2("GET", target, &[("authorization", auth)]).await.header("x-request-id").to_owned());
    }
    // the writer thread flushes when idle: wait for the five lines (token + 4 requests)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.lines().count() >= 5 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let events: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 5, "{lines}");
    assert_eq!(events[0]["endpoint"], "token");
    for ((e, (_, _, outcome)), id) in events[1..].iter().zip(&cases).zip(&ids) {
        assert_eq!(e["outcome"], *outcome, "{e}");
        for field in ["time", "request_id", "client", "credential", "status"] {
            assert!(!e[field].is_null(), "{field} missing in {e}");
        }
        // the line names the request as the client's X-Request-Id does
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "request id {id:?}");
        assert_eq!(e["request_id"], id.as_str(), "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        let time = e["time"].as_str().unwrap();
        let at = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).unwrap_or_else(|err| panic!("{time}: {err}"));
        assert!((time::OffsetDateTime::now_utc() - at).abs() < time::Duration::minutes(5), "{time}");
    }
    assert_eq!(events[1]["subject"], "ci");
    assert_eq!(events[1]["repository"], HELLO);
    assert_eq!(events[1]["action"], "content/read");
    assert!(events[3]["reason"].as_str().unwrap().contains("has no pattern granting content/read"), "{}", events[3]);
    assert!(!lines.contains(&pw) && !lines.contains(&tok) && !lines.contains("sgp_wrong"), "a secret reached the audit log");
}

#[tokio::test]
async fn metrics_count_decisions_with_closed_label_sets() {
    // twenty failed logins from one address: with the throttle on, most would be 429
    let h = limited(|raw| raw.limits.failed_logins.enabled = false).await;
    let pw = h.token("ci", &[(HELLO, &["content/read"])]).await;
    h.v2("GET", &format!("/v2/{HELLO}/manifests/v1"), &[("authorization", &basic("ci", &pw))]).await;
    // random repository names must not create series
    for i in 0..20 {
        h.v2("GET", &format!("/v2/random-{i}/manifests/v1"), &[("authorization", &basic("ci", &pw))]).await;
        h.v2("GET", &format!("/v2/random-{i}/manifests/v1"), &[("authorization", &basic(&format!("user{i}"), "x"))]).await;
    }
    let r = h.request("GET", &format!("http://{}/metrics", h.gw.admin_addr), &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    assert!(text.contains(r#"scopegate_requests_total{action="content/read",credential="basic",endpoint="manifest",outcome="allowed"} 1"#), "{text}");
    assert!(text.contains(r#"scopegate_requests_total{action="content/read",credential="basic",endpoint="manifest",outcome="denied"} 20"#), "{text}");
    assert!(text.contains(r#"scopegate_requests_total{action="content/read",credential="basic",endpoint="manifest",outcome="unauthenticated"} 20"#), "{text}");
    assert!(text.contains("scopegate_upstream_request_duration_seconds_count{endpoint=\"manifest\"} 1"), "{text}");
    assert!(text.contains("scopegate_credential_cache_total{result=\"hit\"}"));
    assert!(!text.contains("random-") && !text.contains("user1"), "a name leaked into the labels");
    let series = text.lines().filter(|l| l.starts_with("scopegate_requests_total{")).count();
    assert_eq!(series, 3);
}

#[tokio::test]
async fn readiness_follows_the_registry() {
    let h = Harness::start().await;
    let url = format!("http://{}/readyz", h.gw.admin_addr);
    let r = h.request("GET", &url, &[], b"").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["ready"], true);
    h.upstream.stop().await;
    let r = h.request("GET", &url, &[], b"").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["upstream"].as_str().unwrap().contains("unreachable"), "{}", r.text());
    assert_eq!(h.request("GET", &format!("http://{}/healthz", h.gw.admin_addr), &[], b"").await.status, StatusCode::OK);
}

// === abuse limits (time is moved, never slept) ===

/// A gateway with the given limits and a frozen clock: the throttle's answers name exact
/// seconds, and on a slow CI machine a real second boundary crossed mid-test once turned
/// an expected 429 into a 401 (and a `Retry-After: 900` into 899).
async fn limited(f: impl FnOnce(&mut scopegate::config::RawConfig)) -> Harness {
    let h = Harness::start_configured(support::FakeRegistry::start().await, tempfile::tempdir().unwrap(), f).await;
    h.gw.state.clock.freeze();
    h
}

#[tokio::test]
async fn failed_logins_slow_down_then_lock_out_with_429_even_for_the_right_password() {
    let h = limited(|raw| {
        let f = &mut raw.limits.failed_logins;
        (f.delay_after, f.lockout_after, f.max_delay_secs, f.lockout_secs) = (2, 4, 60, 600);
    })
    .await;
    let pw = h.token("ci", &[("team/app", &["content/read"])]).await;
    let target = "/v2/team/app/manifests/v1";
    let wrong = basic("ci", "not-the-password");
    let right = basic("ci", &pw);
    assert_eq!(h.v2("GET", target, &[("authorization", &wrong)]).await.status, StatusCode::UNAUTHORIZED);
    // the second failure starts the waiting: 1 s, answered before any check of the password
    assert_eq!(h.v2("GET", target, &[("authorization", &wrong)]).await.status, StatusCode::UNAUTHORIZED);
    h.upstream.clear();
    for auth in [&wrong, &right] {
        let r = h.v2("GET", target, &[("authorization", auth)]).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
        assert_eq!(r.header("retry-after"), "1");
        assert_eq!(r.json()["errors"][0]["code"], "TOOMANYREQUESTS");
        assert!(r.text().contains("token ci is slowed down"), "{}", r.text());
    }
    // the token endpoint shares the count
    let r = h.v2("GET", "/token?service=scopegate&scope=repository:team/app:pull", &[("authorization", &right)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    h.gw.state.clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(h.v2("GET", "/token?service=scopegate", &[("authorization", &wrong)]).await.status, StatusCode::UNAUTHORIZED);
    h.gw.state.clock.advance(std::time::Duration::from_secs(2));
    assert_eq!(h.v2("GET", target, &[("authorization", &wrong)]).await.status, StatusCode::UNAUTHORIZED);
    // the fourth failure locks the name out, from every address, for lockout_secs
    let r = h.v2("GET", target, &[("authorization", &right)]).await;
    assert_eq!((r.status, r.header("retry-after")), (StatusCode::TOO_MANY_REQUESTS, "600"));
    assert!(r.text().contains("locked out"), "{}", r.text());
    assert!(h.upstream.seen().is_empty(), "a throttled request reached the registry: {:?}", h.upstream.seen());
    h.gw.state.clock.advance(std::time::Duration::from_secs(600));
    assert_eq!(h.v2("GET", target, &[("authorization", &right)]).await.status, StatusCode::OK);
    let m = h.request("GET", &format!("http://{}/metrics", h.gw.admin_addr), &[], b"").await.text();
    assert!(m.contains("scopegate_logins_throttled_total{by=\"token\"} 4"), "{m}");
}

#[tokio::test]
async fn unknown_token_names_are_throttled_like_real_ones() {
    let mut answers = Vec::new();
    for user in ["ci", "nobody"] {
        let h = limited(|raw| {
            let f = &mut raw.limits.failed_logins;
            (f.delay_after, f.lockout_after) = (1, 3);
        })
        .await;
        h.token("ci", &[("team/app", &["content/read"])]).await;
        let auth = basic(user, "guess");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = h.v2("GET", "/token?service=scopegate", &[("authorization", &auth)]).await;
            seen.push((r.status, r.header("retry-after").to_owned(), r.json()["errors"][0]["message"].as_str().unwrap().replace(user, "NAME")));
            h.gw.state.clock.advance(std::time::Duration::from_secs(1));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1]);
    let statuses: Vec<StatusCode> = answers[0].iter().map(|a| a.0).collect();
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS, StatusCode::UNAUTHORIZED]);
}

#[tokio::test]
async fn a_disabled_token_used_with_its_right_password_is_not_throttled() {
    let h = limited(|raw| {
        let f = &mut raw.limits.failed_logins;
        (f.delay_after, f.lockout_after) = (1, 2);
    })
    .await;
    let pw = h.token("ci", &[("team/app", &["content/read"])]).await;
    let (target, auth) = ("/v2/team/app/manifests/v1", basic("ci", &pw));
    assert_eq!(h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await.status, StatusCode::OK);
    for _ in 0..5 {
        let r = h.v2("GET", target, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert!(r.text().contains("disabled"), "{}", r.text());
    }
    // re-enabled, it works at once: none of those attempts was a guess
    assert_eq!(h.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "enabled"}))).await.status, StatusCode::OK);
    assert_eq!(h.v2("GET", target, &[("authorization", &auth)]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_and_reach_nothing() {
    let h = limited(|raw| raw.limits.max_headers = 20).await;
    let many: String = (0..25).map(|i| format!("X-Filler-{i}: v\r\n")).collect();
    let (code, text) = h.raw(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(code, 431, "{text}");
    let big = "a".repeat(70 * 1024);
    let (code, text) = h.raw(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(code, 431, "{text}");
    assert!(h.upstream.seen().is_empty());
    // within the limits, the same request is served
    let (code, _) = h.raw(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Filler: v\r\nConnection: close\r\n\r\n").await;
    assert_eq!(code, 401);
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = limited(|raw| raw.limits.header_read_timeout_secs = 1).await;
    let mut s = tokio::net::TcpStream::connect(h.gw.public_addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    // the gateway ends the connection; the bound only keeps a broken build from hanging
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "closed before the timeout: {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // a connection that never sends a byte is cut off the same way
    let mut idle = tokio::net::TcpStream::connect(h.gw.public_addr).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the silent connection was still open after 10 s");
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = limited(|raw| raw.limits.max_connections = 2).await;
    let request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(h.gw.public_addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 401");
        held.push(s);
    }
    // a third client is queued, not served
    let mut third = tokio::net::TcpStream::connect(h.gw.public_addr).await.unwrap();
    third.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), third.read_exact(&mut buf)).await.is_err(), "served over the limit");
    let m = h.request("GET", &format!("http://{}/metrics", h.gw.admin_addr), &[], b"").await.text();
    assert!(m.contains("scopegate_connections_open 2"), "{m}");
    drop(held.pop());
    tokio::time::timeout(std::time::Duration::from_secs(10), third.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"HTTP/1.1 401");
}

/// A client that hangs up while its request waits on the registry leaves nothing counted
/// in flight: the drain then ends once requests stop (seconds), not at the end of the grace
/// period. (Found after a load test: oha cut its last requests off, and the next shutdown
/// took the whole grace period.)
#[tokio::test]
async fn shutdown_is_not_held_up_by_a_request_its_client_abandoned() {
    use tokio::io::AsyncWriteExt;
    // a registry that accepts connections and never answers
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
            let _ = arrived_tx.send(());
        }
    });
    let grace = 60;
    let h = Harness::start_in_front_of(hung_addr, support::FakeRegistry::start().await, tempfile::tempdir().unwrap(), |c| {
        c.shutdown_grace_secs = grace;
    })
    .await;
    let password = h.token("abandoner", &[(HELLO, &["content/read"])]).await;

    let mut client = tokio::net::TcpStream::connect(h.gw.public_addr).await.unwrap();
    let head = format!(
        "GET /v2/{HELLO}/manifests/latest HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        basic("abandoner", &password)
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // readiness: the gateway has forwarded the request (its connection reached the registry)
    tokio::time::timeout(std::time::Duration::from_secs(10), arrived.recv()).await.expect("the request reaches the registry");
    drop(client);

    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(grace), h.gw.shutdown()).await.expect("shutdown ends within the grace period");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "shutdown took {took:?}: the abandoned request was still counted in flight");
}

// === worker threads ===

/// An upstream that answers 200 to everything and records the client port of every
/// connection it accepts.
async fn counting_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&ports);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.port());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, ports)
}

/// Opens one client connection to the gateway's public listener.
async fn client_connection(h: &Harness) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(h.gw.public_addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Each worker thread keeps its own keep-alive connections to the registry: two client
/// connections, served by two workers, use two upstream connections even when their
/// requests never overlap (one shared pool would have reused a single one), and each
/// upstream connection is reused by its worker.
#[tokio::test]
async fn each_worker_keeps_its_own_upstream_connections() {
    for (workers, expected) in [(2, 2), (1, 1)] {
        let (addr, ports) = counting_upstream().await;
        let h = Harness::start_in_front_of(addr, support::FakeRegistry::start().await, tempfile::tempdir().unwrap(), |raw| raw.workers = workers).await;
        let pw = h.token("ci", &[("team/app", &["content/read"])]).await;
        let auth = basic("ci", &pw);
        let mut conns = vec![client_connection(&h).await, client_connection(&h).await];
        for round in 0..3 {
            for c in &mut conns {
                let req = http::Request::get("/v2/team/app/manifests/v1").header("authorization", &auth).header("host", "gateway").body(http_body_util::Empty::new()).unwrap();
                let resp = c.send_request(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "round {round}");
                http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
            }
        }
        let opened = ports.lock().unwrap().len();
        assert_eq!(opened, expected, "{workers} worker(s): upstream connections for 6 requests on 2 client connections");
    }
}

#[tokio::test]
async fn the_number_of_workers_cannot_change_on_reload() {
    let h = Harness::start_configured(support::FakeRegistry::start().await, tempfile::tempdir().unwrap(), |raw| raw.workers = 2).await;
    let mut changed = h.gw.state.runtime().config.clone();
    changed.workers = 3;
    let e = h.gw.reload(changed).await.unwrap_err();
    assert!(e.contains("workers cannot change while running"), "{e}");
    let same = h.gw.state.runtime().config.clone();
    assert!(h.gw.reload(same).await.is_ok());
}
