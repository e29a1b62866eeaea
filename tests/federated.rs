//! Federated credentials: API keys (`apikey:<key>`) and identity-provider JWTs
//! (`bearer:<jwt>` at login, `Bearer <jwt>` on /v2), against a loopback JWKS server whose
//! RS256 and ES256 keys are generated at test time. Each test is named after its case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;
#[path = "support/test_key.rs"]
mod test_key;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::config::{RawConfig, RawIssuer, RawRule};
use serde_json::{json, Value};
use support::{basic, FakeRegistry, Harness};
use test_key::TestKey;
use tokio::net::TcpListener;

const ISS: &str = "https://identity.example.test";
const AUD: &str = "containerregistry";

/// A JWKS endpoint on loopback; its key set can be replaced, and it counts fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (Arc::clone(&keys), Arc::clone(&fetches));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (k, f) = (Arc::clone(&k), Arc::clone(&f));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = json!({"keys": *k.lock().unwrap()}).to_string();
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                });
            }
        });
        JwksServer { url, keys, fetches, task }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn issuer(jwks_url: &str, refetch_secs: u64) -> RawIssuer {
    let rule = |claim: &str, value: &str, map: &str| RawRule { claim: claim.into(), value: value.into(), scope_map: map.into() };
    RawIssuer {
        name: "dtz".into(),
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_url: Some(jwks_url.into()),
        jwks_file: None,
        ca_file: None,
        algorithms: vec!["RS256".into(), "ES256".into()],
        refetch_interval_secs: refetch_secs,
        cache_secs: 3600,
        leeway_secs: 5,
        required_claims: vec![],
        context: Some("ctx-1".into()),
        rules: vec![
            rule("roles", "containerregistry/admin/{context}", "_repositories_admin"),
            rule("groups", "pushers", "pushers"),
        ],
    }
}

async fn start(jwks_url: &str, refetch_secs: u64) -> Harness {
    let url = jwks_url.to_owned();
    let h = Harness::start_configured(FakeRegistry::start().await, tempfile::tempdir().unwrap(), move |raw: &mut RawConfig| {
        raw.issuers = vec![issuer(&url, refetch_secs)];
        // these cases send many invalid JWTs from one address on purpose; the failed-login
        // throttle has tests of its own
        raw.limits.failed_logins.enabled = false;
    })
    .await;
    let r = h
        .admin("POST", "/api/v1/scope-maps", Some(json!({"name": "pushers", "repositories": [{"repository": "team/*", "actions": ["content/read", "content/write"]}]})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    h
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "alice@example.test", "iat": now(), "exp": now() + 600});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// The JSON payload of a JWT (unverified), for assertions.
fn payload(jwt: &str) -> Value {
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).unwrap()).unwrap()
}

#[tokio::test]
async fn role_rules_grant_exactly_their_maps() {
    let rs = TestKey::generate("rs-1", Algorithm::RS256);
    let es = TestKey::generate("es-1", Algorithm::ES256);
    let jwks = JwksServer::start(vec![rs.jwk.clone(), es.jwk.clone()]).await;
    let h = start(&jwks.url, 60).await;
    let scope = "&scope=repository:team/app:pull,push&scope=repository:other/app:pull,push,delete";
    let cases = [
        (&rs, json!({"roles": ["containerregistry/admin/ctx-1"]}), json!([
            {"type": "repository", "name": "other/app", "actions": ["pull", "push", "delete", "metadata_read", "metadata_write"]},
            {"type": "repository", "name": "team/app", "actions": ["pull", "push", "metadata_read"]}])),
        (&es, json!({"groups": ["pushers", "x"]}), json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])),
        (&rs, json!({"roles": ["containerregistry/admin/ctx-2"]}), json!(null)),
        (&es, json!({}), json!(null)),
    ];
    for (key, extra, want) in cases {
        let jwt = key.sign(&claims(extra.clone()));
        let r = h.v2("GET", &format!("/token?service=scopegate{scope}"), &[("authorization", &basic("bearer", &jwt))]).await;
        assert_eq!(r.status, StatusCode::OK, "{extra}: {}", r.text());
        let access = payload(r.json()["token"].as_str().unwrap())["access"].clone();
        assert_eq!(access, want, "{extra}");
    }
}

#[tokio::test]
async fn an_external_bearer_on_v2_is_verified_and_refused_with_403() {
    let es = TestKey::generate("es-1", Algorithm::ES256);
    let jwks = JwksServer::start(vec![es.jwk.clone()]).await;
    let h = start(&jwks.url, 60).await;
    let jwt = es.sign(&claims(json!({"groups": "pushers"})));
    let auth = format!("Bearer {jwt}");
    assert_eq!(h.v2("GET", "/v2/", &[("authorization", &auth)]).await.status, StatusCode::OK);
    assert_eq!(h.v2("PUT", "/v2/team/app/manifests/v1", &[("authorization", &auth)]).await.status, StatusCode::CREATED);
    h.upstream.clear();
    let r = h.v2("PUT", "/v2/other/app/manifests/v1", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a new token cannot help");
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
    assert!(r.headers.get("www-authenticate").is_none());
    assert!(h.upstream.seen().is_empty());
    // and `bearer:<jwt>` as Basic credentials straight on /v2
    let r = h.v2("GET", "/v2/team/app/manifests/v1", &[("authorization", &basic("bearer", &jwt))]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn forged_and_invalid_external_tokens_are_refused() {
    let rs = TestKey::generate("rs-1", Algorithm::RS256);
    let attacker = TestKey::generate("rs-1", Algorithm::RS256);
    let jwks = JwksServer::start(vec![rs.jwk.clone()]).await;
    let h = start(&jwks.url, 3600).await;
    let grant = json!({"roles": ["containerregistry/admin/ctx-1"]});
    let b64 = |v: &Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    // alg none: a header and claims with an empty signature
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": "rs-1"})), b64(&claims(grant.clone())));
    // HS256 "signed" with the RSA public key's DER as the HMAC secret
    let hs = {
        let n = rs.jwk["n"].as_str().unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rs-1".into());
        jsonwebtoken::encode(&h, &claims(grant.clone()), &EncodingKey::from_secret(n.as_bytes())).unwrap()
    };
    // a key of the attacker's own, offered in the header
    let injected = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rs-1".into());
        h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
        jsonwebtoken::encode(&h, &claims(grant.clone()), &attacker.encoding).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        ("unknown issuer", rs.sign(&claims(json!({"iss": "https://evil.example", "roles": ["containerregistry/admin/ctx-1"]})))),
        ("wrong audience", rs.sign(&claims(json!({"aud": "other", "roles": ["containerregistry/admin/ctx-1"]})))),
        ("expired", rs.sign(&claims(json!({"exp": now() - 120, "roles": ["containerregistry/admin/ctx-1"]})))),
        ("not yet valid", rs.sign(&claims(json!({"nbf": now() + 600, "roles": ["containerregistry/admin/ctx-1"]})))),
        ("no exp", rs.sign(&json!({"iss": ISS, "aud": AUD, "sub": "a", "roles": ["containerregistry/admin/ctx-1"]}))),
        ("string exp", rs.sign(&claims(json!({"exp": (now() + 600).to_string(), "roles": ["containerregistry/admin/ctx-1"]})))),
        ("alg none", none),
        ("HS256 with the public key", hs),
        ("key from the header", injected),
        ("foreign key", attacker.sign(&claims(grant.clone()))),
        ("garbage", "not.a.jwt".into()),
    ];
    for (case, jwt) in &cases {
        let r = h.v2("GET", "/token?service=scopegate&scope=repository:a:pull", &[("authorization", &basic("bearer", jwt))]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{case} at /token: {}", r.text());
        assert!(r.json().get("token").is_none(), "{case}");
        let r = h.v2("GET", "/v2/a/manifests/v1", &[("authorization", &format!("Bearer {jwt}"))]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{case} on /v2");
        assert!(r.header("www-authenticate").contains("error=\"invalid_token\""), "{case}");
    }
    assert!(h.upstream.seen().is_empty());
    // the genuine article passes, so the refusals above were for their reason
    let good = rs.sign(&claims(grant));
    assert_eq!(h.v2("GET", "/v2/a/manifests/v1", &[("authorization", &format!("Bearer {good}"))]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn key_rotation_is_picked_up_without_restart_and_refetches_are_limited() {
    let old = TestKey::generate("k-old", Algorithm::RS256);
    let new = TestKey::generate("k-new", Algorithm::ES256);
    let jwks = JwksServer::start(vec![old.jwk.clone()]).await;
    // a long refetch interval: unknown kids may not hammer the JWKS endpoint
    let h = start(&jwks.url, 3600).await;
    let fetched_at_start = jwks.fetches.load(Ordering::SeqCst);
    let ok = |jwt: String| format!("Bearer {jwt}");
    let grant = json!({"groups": "pushers"});
    assert_eq!(h.v2("GET", "/v2/team/a/manifests/v1", &[("authorization", &ok(old.sign(&claims(grant.clone()))))]).await.status, StatusCode::OK);
    for i in 0..5 {
        let jwt = new.sign(&claims(json!({"groups": "pushers", "jti": i})));
        assert_eq!(h.v2("GET", "/v2/team/a/manifests/v1", &[("authorization", &ok(jwt))]).await.status, StatusCode::UNAUTHORIZED);
    }
    assert!(jwks.fetches.load(Ordering::SeqCst) <= fetched_at_start + 1, "at most one refetch per interval");

    // a gateway with a short interval picks the rotation up without a restart
    let h = start(&jwks.url, 0).await;
    let jwt = new.sign(&claims(grant.clone()));
    assert_eq!(h.v2("GET", "/v2/team/a/manifests/v1", &[("authorization", &ok(jwt.clone()))]).await.status, StatusCode::UNAUTHORIZED);
    jwks.keys.lock().unwrap().push(new.jwk.clone());
    assert_eq!(h.v2("GET", "/v2/team/a/manifests/v1", &[("authorization", &ok(jwt))]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_jwks_with_no_cached_key_fails_closed() {
    let key = TestKey::generate("k", Algorithm::ES256);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let h = start(&closed, 0).await;
    let jwt = key.sign(&claims(json!({"roles": ["containerregistry/admin/ctx-1"]})));
    let r = h.v2("GET", "/v2/a/manifests/v1", &[("authorization", &format!("Bearer {jwt}"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("keys are unavailable"), "{}", r.text());
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn a_refresh_token_never_outlives_the_jwt_that_earned_it() {
    let es = TestKey::generate("es-1", Algorithm::ES256);
    let jwks = JwksServer::start(vec![es.jwk.clone()]).await;
    let h = start(&jwks.url, 60).await;
    let exp = now() + 120;
    let jwt = es.sign(&claims(json!({"exp": exp, "groups": "pushers"})));
    let r = h.v2("GET", "/token?service=scopegate&offline_token=true&scope=repository:team/a:pull", &[("authorization", &basic("bearer", &jwt))]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let refresh = v["refresh_token"].as_str().unwrap();
    assert!(payload(refresh)["exp"].as_i64().unwrap() <= exp);
    assert!(payload(v["token"].as_str().unwrap())["exp"].as_i64().unwrap() <= exp);
    // the refresh token works while the JWT lives, and carries the maps its rules granted
    let form = format!("grant_type=refresh_token&refresh_token={refresh}&service=scopegate&scope=repository%3Ateam%2Fa%3Apush");
    let r = h.request("POST", &format!("{}/token", h.public()), &[("content-type", "application/x-www-form-urlencoded")], form.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["scope"], "repository:team/a:push");
    // past the JWT's expiry it is dead
    h.gw.state.clock.advance(std::time::Duration::from_secs(180));
    let r = h.request("POST", &format!("{}/token", h.public()), &[("content-type", "application/x-www-form-urlencoded")], form.as_bytes()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// === API keys ===

async fn api_key(h: &Harness, name: &str, map: &str, extra: Value) -> (StatusCode, Value) {
    let mut body = json!({"name": name, "scopeMap": map});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = h.admin("POST", "/api/v1/apikeys", Some(body)).await;
    (r.status, r.json())
}

#[tokio::test]
async fn an_api_key_logs_in_at_the_token_server_and_on_v2() {
    let h = Harness::start().await;
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "ci-push", "repositories": [{"repository": "ci/*", "actions": ["content/read", "content/write"]}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (status, v) = api_key(&h, "ci-pipeline", "ci-push", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sgk_") && key.len() == 47, "{key}");
    assert_eq!(v["username"], "apikey");
    // on /v2 directly, and through the token server
    let auth = basic("apikey", &key);
    assert_eq!(h.v2("PUT", "/v2/ci/app/manifests/v1", &[("authorization", &auth)]).await.status, StatusCode::CREATED);
    assert_eq!(h.v2("PUT", "/v2/other/manifests/v1", &[("authorization", &auth)]).await.status, StatusCode::FORBIDDEN);
    let tok = h.session("apikey", &key, &["repository:ci/app:pull,push"]).await;
    assert_eq!(payload(&tok)["sub"], "ci-pipeline");
    assert_eq!(h.v2("PUT", "/v2/ci/app/manifests/v2", &[("authorization", &format!("Bearer {tok}"))]).await.status, StatusCode::CREATED);
    // a wrong key is refused, and the key is never shown again
    assert_eq!(h.v2("GET", "/v2/", &[("authorization", &basic("apikey", "sgk_wrong"))]).await.status, StatusCode::UNAUTHORIZED);
    for path in ["/api/v1/apikeys", "/api/v1/apikeys/ci-pipeline"] {
        let r = h.admin("GET", path, None).await;
        assert!(!r.text().contains(&key) && !r.text().contains("\"key\""), "{path}");
    }
    let r = h.admin("GET", "/api/v1/check?apikey=ci-pipeline&repository=ci/app&action=content/write", None).await;
    assert_eq!(r.json()["allowed"], true);
    // the map in use cannot be deleted
    assert_eq!(h.admin("DELETE", "/api/v1/scope-maps/ci-push", None).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_disabled_deleted_or_expired_api_key_is_refused_at_once() {
    let h = Harness::start().await;
    let (_, v) = api_key(&h, "deploy", "_repositories_pull", json!({"expirationInDays": 2})).await;
    let key = v["key"].as_str().unwrap().to_owned();
    let tok = h.session("apikey", &key, &["repository:a:pull"]).await;
    let (b, s) = (basic("apikey", &key), format!("Bearer {tok}"));
    let get = |auth: String| {
        let h = &h;
        async move { h.v2("GET", "/v2/a/manifests/v1", &[("authorization", &auth)]).await }
    };
    assert_eq!(get(b.clone()).await.status, StatusCode::OK);
    assert_eq!(get(s.clone()).await.status, StatusCode::OK);
    assert_eq!(h.admin("PATCH", "/api/v1/apikeys/deploy", Some(json!({"status": "disabled"}))).await.status, StatusCode::OK);
    let r = get(b.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("API key deploy is disabled"), "{}", r.text());
    assert_eq!(get(s.clone()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.admin("PATCH", "/api/v1/apikeys/deploy", Some(json!({"status": "enabled"}))).await.status, StatusCode::OK);
    assert_eq!(get(b.clone()).await.status, StatusCode::OK);
    h.gw.state.clock.advance(std::time::Duration::from_secs(3 * 24 * 3600));
    let r = get(b.clone()).await;
    assert!(r.text().contains("API key deploy expired at"), "{}", r.text());
    // deleting and re-creating under the same name revives nothing
    assert_eq!(h.admin("DELETE", "/api/v1/apikeys/deploy", None).await.status, StatusCode::OK);
    let (_, _) = api_key(&h, "deploy", "_repositories_pull", json!({})).await;
    assert_eq!(get(b).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_key_names_and_maps_are_validated() {
    let h = Harness::start().await;
    assert_eq!(api_key(&h, "bad name", "_repositories_pull", json!({})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api_key(&h, "k1", "no-such-map", json!({})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api_key(&h, "k1", "_repositories_pull", json!({"isAdmin": true})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api_key(&h, "k1", "_repositories_pull", json!({})).await.0, StatusCode::CREATED);
    assert_eq!(api_key(&h, "k1", "_repositories_pull", json!({})).await.0, StatusCode::CONFLICT);
}
