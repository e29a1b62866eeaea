//! Micro-benchmarks of the request path's own work, one stage at a time:
//! route classification, scope parsing, the policy decision, and a cached credential check.
//!
//!     cargo bench --bench micro

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use scopegate::access::{Action, ActionSet, Requirement};
use scopegate::auth::secret::{self, Secret};
use scopegate::auth::Authenticator;
use scopegate::oci::RepoName;
use scopegate::policy::{CredentialKind, MapName, Password, Policy, Principal, RepoPattern, ScopeMap, Slot, Status, Subject, Token, TokenName};
use scopegate::route::{classify, PageLimits};
use scopegate::access::Access;
use scopegate::auth::Credential;
use scopegate::token::jwt::{Binding, Holder, Issuer, Mint, Use};
use scopegate::token::keys::{KeySet, SigningKey};
use time::OffsetDateTime;

const LIMITS: PageLimits = PageLimits { catalog_max_n: 1000, tags_max_n: 1000 };

fn bench(c: &mut Criterion) {
    let digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let manifest = "/v2/samples/hello-world/manifests/v1".to_owned();
    let blob = format!("/v2/team/app/blobs/{digest}");
    c.bench_function("route: manifest HEAD", |b| b.iter(|| classify(&Method::HEAD, black_box(&manifest), None, None, LIMITS).unwrap()));
    c.bench_function("route: blob GET", |b| b.iter(|| classify(&Method::GET, black_box(&blob), None, None, LIMITS).unwrap()));
    let upload = "/v2/team/app/blobs/uploads/0f3e-11aa?_state=abcDEF123%3D%3D".to_owned();
    let (path, query) = upload.split_once('?').unwrap();
    c.bench_function("route: upload PATCH with _state", |b| b.iter(|| classify(&Method::PATCH, black_box(path), Some(query), None, LIMITS).unwrap()));

    let scope = "repository:samples/hello-world:pull,push repository:library/base:pull registry:catalog:*";
    c.bench_function("scope: parse three scopes", |b| b.iter(|| scopegate::token::scope::parse(black_box(scope)).unwrap()));

    let mut map = ScopeMap::new(MapName::parse("ci-map").unwrap(), String::new(), OffsetDateTime::UNIX_EPOCH, BTreeMap::new());
    map.add(RepoPattern::parse("samples/*").unwrap(), ActionSet::of(&[Action::ContentRead, Action::ContentWrite]));
    map.add(RepoPattern::parse("team/app").unwrap(), ActionSet::ALL);
    let password = secret::generate(secret::PASSWORD_PREFIX).unwrap();
    let mut token = Token::new(TokenName::parse("ci").unwrap(), map.name.clone(), Status::Enabled, OffsetDateTime::UNIX_EPOCH);
    token.set_password(Slot::Password1, Some(Password { id: "p1".into(), digest: password.digest(), created: OffsetDateTime::UNIX_EPOCH, expiry: None }));
    let policy = Arc::new(Policy::new(1, vec![map], vec![token], None));
    let principal = Principal { subject: Subject::Token(TokenName::parse("ci").unwrap()), credential: CredentialKind::Basic, session: None };
    let repo = RepoName::parse("samples/hello-world/sub").unwrap();
    c.bench_function("policy: decide (prefix pattern)", |b| {
        b.iter(|| policy.decide(black_box(&principal), Requirement::Repository { repo: &repo, action: Action::ContentRead, mount_from: None, locks: true }).unwrap())
    });

    let key = SigningKey::generate(OffsetDateTime::now_utc()).unwrap();
    let issuer = Arc::new(Issuer::new("scopegate".into(), "scopegate".into(), Arc::new(KeySet::new(vec![key]).unwrap())));
    let counters = (prometheus::IntCounter::new("h", "h").unwrap(), prometheus::IntCounter::new("m", "m").unwrap());
    let auth = Authenticator::new(Arc::clone(&issuer), Arc::default(), counters).unwrap();
    let now = OffsetDateTime::now_utc();
    let pw = Secret::new(password.expose().to_owned());
    auth.verify_password("ci", &pw, &policy, now).unwrap();
    c.bench_function("credential: cached password check", |b| b.iter(|| auth.verify_password(black_box("ci"), &pw, &policy, now).unwrap()));

    // a session token as `docker pull` presents it: one repository, pull
    let holder = Holder::Token { name: TokenName::parse("ci").unwrap(), binding: Binding { slot: Slot::Password1, password_id: "p1".into() } };
    let access = Access { repositories: BTreeMap::from([(RepoName::parse("samples/hello-world").unwrap(), ActionSet::of(&[Action::ContentRead]))]), catalog: false };
    let t = now.unix_timestamp();
    let jwt = issuer.mint(&Mint { token_use: Use::Access, holder: &holder, access: &access, issued_at: t, expires_at: t + 300 }).unwrap();
    let bearer = Credential::Bearer(Secret::new(jwt));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(auth.authenticate(&bearer, &policy, now)).unwrap();
    c.bench_function("credential: cached session token check", |b| b.iter(|| rt.block_on(auth.authenticate(black_box(&bearer), &policy, now)).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
