//! Credential tests: parsing, the uniform answer for unknown users and wrong passwords,
//! expiry and disabled messages, and that no cached verification outlives a change.

use http::HeaderValue;
use time::{Duration, OffsetDateTime};

use super::*;
use crate::access::{Access, ActionSet};
use crate::oci::RepoName;
use crate::policy::{MapName, Password, ScopeMap, Token};
use crate::token::jwt::{Holder, Mint};
use crate::token::keys::{KeySet, SigningKey};

struct Fixture {
    auth: Authenticator,
    password: Secret,
    token: Token,
}

fn fixture() -> Fixture {
    let key = SigningKey::generate(OffsetDateTime::UNIX_EPOCH).unwrap();
    let issuer = Arc::new(Issuer::new("scopegate".into(), "svc".into(), Arc::new(KeySet::new(vec![key]).unwrap())));
    let password = secret::generate(secret::PASSWORD_PREFIX).unwrap();
    let mut token = Token::new(TokenName::parse("ci").unwrap(), MapName::parse("_repositories_pull").unwrap(), Status::Enabled, OffsetDateTime::UNIX_EPOCH);
    token.set_password(Slot::Password1, Some(Password { id: "p1".into(), digest: password.digest(), created: OffsetDateTime::UNIX_EPOCH, expiry: None }));
    let counters = (prometheus::IntCounter::new("h", "h").unwrap(), prometheus::IntCounter::new("m", "m").unwrap());
    Fixture { auth: Authenticator::new(issuer, Arc::default(), counters).unwrap(), password, token }
}

fn policy_with(t: &Token) -> Policy {
    Policy::new(1, Vec::<ScopeMap>::new(), vec![t.clone()], None)
}

fn basic(u: &str, p: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(format!("{u}:{p}")))).unwrap());
    h
}

#[test]
fn authorization_header_parsing() {
    assert!(matches!(Credential::extract(&HeaderMap::new()), Ok(Credential::None)));
    assert!(matches!(Credential::extract(&basic("a", "b:c")), Ok(Credential::Basic { ref username, ref password }) if username == "a" && password.expose() == "b:c"));
    for bad in ["Basic !!!", "Basic YWJj", "Negotiate abc", "Bearer", "Bearer a b"] {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
        assert!(Credential::extract(&h).is_err(), "{bad}");
    }
    let mut h = basic("a", "b");
    h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    assert!(Credential::extract(&h).is_err());
}

#[test]
fn unknown_user_and_wrong_password_are_indistinguishable() {
    let f = fixture();
    let p = policy_with(&f.token);
    let now = OffsetDateTime::now_utc();
    let wrong = f.auth.verify_password("ci", &Secret::new("nope".into()), &p, now).unwrap_err();
    let unknown = f.auth.verify_password("nobody", &f.password, &p, now).unwrap_err();
    let invalid_name = f.auth.verify_password("no/such", &f.password, &p, now).unwrap_err();
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, invalid_name);
    assert!(f.auth.verify_password("ci", &f.password, &p, now).is_ok());
}

#[test]
fn expired_password_says_it_expired() {
    let mut f = fixture();
    let now = OffsetDateTime::now_utc();
    let mut pw = f.token.password(Slot::Password1).unwrap().clone();
    pw.expiry = Some(now - Duration::hours(1));
    f.token.set_password(Slot::Password1, Some(pw));
    let e = f.auth.verify_password("ci", &f.password, &policy_with(&f.token), now).unwrap_err();
    assert!(e.reason.contains("password1 of token ci expired at"), "{}", e.reason);
}

#[test]
fn cached_password_check_does_not_outlive_disable_or_regeneration() {
    let mut f = fixture();
    let now = OffsetDateTime::now_utc();
    assert!(f.auth.verify_password("ci", &f.password, &policy_with(&f.token), now).is_ok());
    f.token.status = Status::Disabled;
    let e = f.auth.verify_password("ci", &f.password, &policy_with(&f.token), now).unwrap_err();
    assert_eq!(e.reason, "token ci is disabled");
    f.token.status = Status::Enabled;
    let fresh = secret::generate(secret::PASSWORD_PREFIX).unwrap();
    f.token.set_password(Slot::Password1, Some(Password { id: "p1b".into(), digest: fresh.digest(), created: now, expiry: None }));
    assert!(f.auth.verify_password("ci", &f.password, &policy_with(&f.token), now).is_err());
    assert!(f.auth.verify_password("ci", &fresh, &policy_with(&f.token), now).is_ok());
}

#[tokio::test]
async fn a_session_dies_with_the_password_that_earned_it() {
    let mut f = fixture();
    let now = OffsetDateTime::now_utc();
    let (name, binding) = f.auth.verify_password("ci", &f.password, &policy_with(&f.token), now).unwrap();
    let mut access = Access::default();
    access.add(RepoName::parse("a").unwrap(), ActionSet::ALL);
    let t = now.unix_timestamp();
    let jwt = f
        .auth
        .issuer()
        .mint(&Mint { token_use: Use::Access, holder: &Holder::Token { name, binding }, access: &access, issued_at: t, expires_at: t + 300 })
        .unwrap();
    let cred = Credential::Bearer(Secret::new(jwt));
    let p = f.auth.authenticate(&cred, &policy_with(&f.token), now).await.unwrap();
    assert_eq!(p.session.as_deref(), Some(&access));
    f.token.set_password(Slot::Password1, None);
    let e = f.auth.authenticate(&cred, &policy_with(&f.token), now).await.unwrap_err();
    assert!(e.bearer);
    assert!(e.reason.contains("regenerated or deleted"), "{}", e.reason);
}

#[tokio::test]
async fn a_session_in_its_clock_skew_leeway_is_verified_once_then_served_from_the_cache_until_the_leeway_ends() {
    // Before: a token past `exp` but within the leeway verified (ES256) on every request,
    // because the cache kept it only until `exp`, and a cached one was refused at `exp`.
    let f = fixture();
    let now = OffsetDateTime::now_utc();
    let (name, binding) = f.auth.verify_password("ci", &f.password, &policy_with(&f.token), now).unwrap();
    let t = now.unix_timestamp();
    let jwt = f
        .auth
        .issuer()
        .mint(&Mint { token_use: Use::Access, holder: &Holder::Token { name, binding }, access: &Access::default(), issued_at: t - 300, expires_at: t - 2 })
        .unwrap();
    let cred = Credential::Bearer(Secret::new(jwt));
    let p = policy_with(&f.token);
    let (hits, misses) = (f.auth.hits.get(), f.auth.misses.get());
    assert!(f.auth.authenticate(&cred, &p, now).await.is_ok(), "within the leeway, a fresh verification succeeds");
    assert!(f.auth.authenticate(&cred, &p, now).await.is_ok(), "and so does the cached one");
    assert_eq!((f.auth.hits.get() - hits, f.auth.misses.get() - misses), (1, 1), "verified once, then a cache hit");
    let e = f.auth.authenticate(&cred, &p, now + Duration::seconds(10)).await.unwrap_err();
    assert!(e.bearer && e.reason.contains("expired"), "past the leeway it is refused: {}", e.reason);
}
