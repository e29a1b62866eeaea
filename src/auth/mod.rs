//! Authentication: reads the `Authorization` header once into a [`Credential`], and turns a
//! credential into a [`Principal`] against the policy snapshot of the request. Token
//! passwords (`<token>:<password>`), API keys (`apikey:<key>`), external JWTs
//! (`bearer:<jwt>`, or `Bearer <jwt>` directly), our own session tokens and refresh tokens
//! are checked here, and every check is *live*: a cached verification only saves the
//! cryptography, never the question "is this still good now" (token or key enabled and
//! unexpired, the password that earned a session unchanged, its issuer still trusted).
//!
//! Authentication says who is calling; it never decides what they may do (`policy` does),
//! and it never logs or echoes a secret. Unknown user and wrong password fail identically.

pub mod external;
pub mod throttle;
pub mod secret;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, HeaderMap};
use time::OffsetDateTime;

use crate::policy::{CredentialKind, KeyName, Policy, Principal, Slot, Status, Subject, TokenName};
use crate::token::jwt::{Binding, Holder, Issuer, JwtError, Use, Verified};
use external::{ExternalIssuers, Identity};
use secret::{digest_of, digests_equal, Secret};

/// The username that says "the password is an API key".
pub const APIKEY_USERNAME: &str = "apikey";
/// The username that says "the password is a JWT of an external issuer".
pub const BEARER_USERNAME: &str = "bearer";

/// The one answer for an unknown user or a wrong password.
const BAD_LOGIN: &str = "invalid username or password";

/// A credential as presented, parsed but not yet verified.
#[derive(Debug)]
pub enum Credential {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

impl Credential {
    /// Reads the `Authorization` header. More than one header, an unknown scheme or a
    /// malformed value is a failure, never "no credential".
    pub fn extract(headers: &HeaderMap) -> Result<Credential, AuthFailure> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(v) = values.next() else { return Ok(Credential::None) };
        if values.next().is_some() {
            return Err(AuthFailure::new(false, "more than one Authorization header"));
        }
        let v = v.to_str().map_err(|_| AuthFailure::new(false, "Authorization header is not ASCII"))?;
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim_start_matches(' ');
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = STANDARD.decode(rest).map_err(|_| AuthFailure::new(false, "malformed Basic credentials"))?;
            let text = String::from_utf8(raw).map_err(|_| AuthFailure::new(false, "malformed Basic credentials"))?;
            let (u, p) = text.split_once(':').ok_or_else(|| AuthFailure::new(false, "malformed Basic credentials"))?;
            Ok(Credential::Basic { username: u.to_owned(), password: Secret::new(p.to_owned()) })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() || rest.contains(' ') {
                return Err(AuthFailure::new(true, "malformed Bearer token"));
            }
            Ok(Credential::Bearer(Secret::new(rest.to_owned())))
        } else {
            Err(AuthFailure::new(false, "unsupported authorization scheme (use Basic or Bearer)"))
        }
    }

    /// For a Basic login (what the failed-login throttle counts): the token name it names,
    /// or `None` for an API key or a JWT presented as a password. `None` overall for any
    /// other credential.
    pub fn basic_login(&self) -> Option<Option<&str>> {
        match self {
            Credential::Basic { username, .. } => Some((login_kind(username) == CredentialKind::Basic).then_some(username.as_str())),
            Credential::None | Credential::Bearer(_) => None,
        }
    }

    /// The kind as presented (a Bearer token is taken for a session until proven external).
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::None => CredentialKind::None,
            Credential::Basic { username, .. } => login_kind(username),
            Credential::Bearer(_) => CredentialKind::Session,
        }
    }
}

/// Authentication failed. `reason` is safe to show the caller; `bearer` says whether a
/// Bearer token was presented (the challenge then carries `error="invalid_token"`);
/// `wrong_secret` says the secret matched nothing (an unknown user, a wrong password, an
/// unknown API key): what a guesser sees, and what the failed-login throttle counts. A
/// right secret refused for another reason (disabled, expired) is not a guess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailure {
    pub bearer: bool,
    pub reason: Cow<'static, str>,
    pub wrong_secret: bool,
}

impl AuthFailure {
    fn new(bearer: bool, reason: impl Into<Cow<'static, str>>) -> Self {
        AuthFailure { bearer, reason: reason.into(), wrong_secret: false }
    }

    fn wrong_secret(reason: &'static str) -> Self {
        AuthFailure { bearer: false, reason: Cow::Borrowed(reason), wrong_secret: true }
    }
}

fn login_kind(username: &str) -> CredentialKind {
    match username {
        APIKEY_USERNAME => CredentialKind::ApiKey,
        BEARER_USERNAME => CredentialKind::External,
        _ => CredentialKind::Basic,
    }
}

/// A verification the cache remembers; always re-checked against the live policy.
#[derive(Clone)]
enum Cached {
    Password { name: TokenName, binding: Binding },
    ApiKey { name: KeyName, key_id: String },
    Session(Arc<Verified>),
    External(Arc<Identity>),
}

/// A verified login: whose it is, and the time it must not outlive (an external JWT's `exp`).
#[derive(Debug, Clone)]
pub struct Login {
    pub holder: Holder,
    pub not_after: Option<i64>,
}

/// Verifies credentials, with a cache keyed by an HMAC of the presented secret (a process-
/// local key, so the cache never holds anything usable as a credential).
pub struct Authenticator {
    issuer: Arc<Issuer>,
    external: Arc<ExternalIssuers>,
    cache: moka::sync::Cache<[u8; 32], Cached>,
    cache_key: hmac::Key,
    dummy_digest: [u8; 32],
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("cached", &self.cache.entry_count()).finish_non_exhaustive()
    }
}

/// Who a holder is, for the policy.
pub fn subject_of(holder: &Holder) -> Subject {
    match holder {
        Holder::Anonymous => Subject::Anonymous,
        Holder::Token { name, .. } => Subject::Token(name.clone()),
        Holder::ApiKey { name, .. } => Subject::ApiKey(name.clone()),
        Holder::External { issuer, subject, maps } => {
            Subject::External { issuer: issuer.as_str().into(), subject: subject.as_str().into(), maps: maps.clone().into() }
        }
    }
}

/// How long a verification may stay cached.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// A session token or an external JWT leaves the cache when it expires (no memory is held
/// for a token nobody can use any more); password and key checks stay [`CACHE_TTL`].
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Cached> for UntilExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Cached, _created_at: std::time::Instant) -> Option<Duration> {
        let until = match value {
            Cached::Session(v) => v.accepted_until,
            Cached::External(id) => id.accepted_until,
            Cached::Password { .. } | Cached::ApiKey { .. } => return Some(CACHE_TTL),
        };
        let left = u64::try_from(until.saturating_sub(OffsetDateTime::now_utc().unix_timestamp())).unwrap_or(0);
        Some(Duration::from_secs(left).min(CACHE_TTL))
    }
}

impl Authenticator {
    /// `counters` count cache hits and misses.
    pub fn new(
        issuer: Arc<Issuer>,
        external: Arc<ExternalIssuers>,
        counters: (prometheus::IntCounter, prometheus::IntCounter),
    ) -> Result<Authenticator, secret::GenerateError> {
        let cache_key = hmac::Key::new(hmac::HMAC_SHA256, &secret::random_bytes::<32>()?);
        let dummy_digest = digest_of(&secret::random_bytes::<32>()?);
        let cache = moka::sync::Cache::builder().max_capacity(100_000).expire_after(UntilExpiry).build();
        Ok(Authenticator { issuer, external, cache, cache_key, dummy_digest, hits: counters.0, misses: counters.1 })
    }

    /// A cache lookup, counted.
    fn cached(&self, key: &[u8; 32]) -> Option<Cached> {
        let hit = self.cache.get(key);
        if hit.is_some() { &self.hits } else { &self.misses }.inc();
        hit
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn external(&self) -> &ExternalIssuers {
        &self.external
    }

    fn cache_key(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Who a `/v2` request's credential belongs to, as of `policy`.
    pub async fn authenticate(&self, cred: &Credential, policy: &Policy, now: OffsetDateTime) -> Result<Principal, AuthFailure> {
        match cred {
            Credential::None => Ok(Principal::anonymous()),
            Credential::Basic { username, password } => {
                let login = self.login(username, password, policy, now).await?;
                Ok(Principal { subject: subject_of(&login.holder), credential: login_kind(username), session: None })
            }
            Credential::Bearer(token) => {
                // a token found under its session key was verified as ours by this
                // authenticator (whose keys it shares), so its header need not be read again
                let key = self.cache_key(&[b"session", token.expose().as_bytes()]);
                let cached = self.cache.get(&key);
                if cached.is_none() && !self.issuer.is_ours(token.expose()) {
                    return self.external_principal(token, now).await;
                }
                let v = self.verify_session(key, cached, token, now.unix_timestamp())?;
                self.live_check(policy, &v.holder, now, true)?;
                Ok(Principal { subject: subject_of(&v.holder), credential: CredentialKind::Session, session: Some(Arc::clone(&v.access)) })
            }
        }
    }

    /// The principal of a bearer token from an external issuer.
    async fn external_principal(&self, token: &Secret, now: OffsetDateTime) -> Result<Principal, AuthFailure> {
        let id = self.verify_external(token.expose(), now.unix_timestamp(), true).await?;
        let holder = Holder::External { issuer: id.issuer.clone(), subject: id.subject.clone(), maps: id.maps.clone() };
        Ok(Principal { subject: subject_of(&holder), credential: CredentialKind::External, session: None })
    }

    /// Checks Basic credentials: a token's password, an API key, or an external JWT.
    pub async fn login(&self, username: &str, password: &Secret, policy: &Policy, now: OffsetDateTime) -> Result<Login, AuthFailure> {
        match username {
            APIKEY_USERNAME => {
                let (name, key_id) = self.verify_api_key(password, policy, now)?;
                Ok(Login { holder: Holder::ApiKey { name, key_id }, not_after: None })
            }
            BEARER_USERNAME => {
                let id = self.verify_external(password.expose(), now.unix_timestamp(), false).await?;
                let not_after = Some(id.expires_at);
                Ok(Login { holder: Holder::External { issuer: id.issuer.clone(), subject: id.subject.clone(), maps: id.maps.clone() }, not_after })
            }
            _ => {
                let (name, binding) = self.verify_password(username, password, policy, now)?;
                Ok(Login { holder: Holder::Token { name, binding }, not_after: None })
            }
        }
    }

    /// Checks `username:password` against the token's passwords. Unknown users cost the
    /// same digest and comparisons as known ones.
    pub fn verify_password(
        &self,
        username: &str,
        password: &Secret,
        policy: &Policy,
        now: OffsetDateTime,
    ) -> Result<(TokenName, Binding), AuthFailure> {
        let key = self.cache_key(&[b"basic", username.as_bytes(), password.expose().as_bytes()]);
        if let Some(Cached::Password { name, binding }) = self.cached(&key) {
            let holder = Holder::Token { name, binding };
            if self.live_check(policy, &holder, now, false).is_ok() {
                if let Holder::Token { name, binding } = holder {
                    return Ok((name, binding));
                }
            }
            self.cache.invalidate(&key);
        }
        let presented = password.digest();
        let token = TokenName::parse(username).ok().and_then(|n| policy.token(&n));
        let mut matched = None;
        for slot in Slot::BOTH {
            let stored = token.and_then(|t| t.password(slot));
            let ok = digests_equal(&presented, stored.map_or(&self.dummy_digest, |p| &p.digest));
            if ok && stored.is_some() {
                matched = Some(slot);
            }
        }
        let (Some(token), Some(slot)) = (token, matched) else { return Err(AuthFailure::wrong_secret(BAD_LOGIN)) };
        let p = token.password(slot).ok_or_else(|| AuthFailure::wrong_secret(BAD_LOGIN))?;
        let holder = Holder::Token { name: token.name.clone(), binding: Binding { slot, password_id: p.id.clone() } };
        self.live_check(policy, &holder, now, false)?;
        let binding = Binding { slot, password_id: p.id.clone() };
        self.cache.insert(key, Cached::Password { name: token.name.clone(), binding: binding.clone() });
        Ok((token.name.clone(), binding))
    }

    /// Checks an API key: one digest, one hash lookup.
    fn verify_api_key(&self, key: &Secret, policy: &Policy, now: OffsetDateTime) -> Result<(KeyName, String), AuthFailure> {
        let ck = self.cache_key(&[b"apikey", key.expose().as_bytes()]);
        if let Some(Cached::ApiKey { name, key_id }) = self.cached(&ck) {
            let holder = Holder::ApiKey { name: name.clone(), key_id: key_id.clone() };
            if self.live_check(policy, &holder, now, false).is_ok() {
                return Ok((name, key_id));
            }
            self.cache.invalidate(&ck);
        }
        let k = policy.api_key_by_digest(&key.digest()).ok_or_else(|| AuthFailure::wrong_secret("invalid API key"))?;
        let holder = Holder::ApiKey { name: k.name.clone(), key_id: k.id.clone() };
        self.live_check(policy, &holder, now, false)?;
        self.cache.insert(ck, Cached::ApiKey { name: k.name.clone(), key_id: k.id.clone() });
        Ok((k.name.clone(), k.id.clone()))
    }

    /// Verifies an external issuer's JWT (cached until its `exp` plus the issuer's leeway).
    async fn verify_external(&self, token: &str, now: i64, bearer: bool) -> Result<Arc<Identity>, AuthFailure> {
        if self.external.is_empty() {
            return Err(AuthFailure::new(bearer, if bearer { "token is not valid here" } else { BAD_LOGIN }));
        }
        let key = self.cache_key(&[b"external", token.as_bytes()]);
        if let Some(Cached::External(id)) = self.cached(&key) {
            if id.accepted_until > now {
                return Ok(id);
            }
            self.cache.invalidate(&key);
        }
        let id = Arc::new(self.external.verify(token, now).await.map_err(|e| AuthFailure::new(bearer, e.to_string()))?);
        self.cache.insert(key, Cached::External(Arc::clone(&id)));
        Ok(id)
    }

    /// Verifies one of our session tokens (signature and expiry; cached until it expires,
    /// leeway included).
    /// `cached` is what the cache holds under `key`, the token's session key.
    fn verify_session(&self, key: [u8; 32], cached: Option<Cached>, token: &Secret, now: i64) -> Result<Arc<Verified>, AuthFailure> {
        if cached.is_some() { &self.hits } else { &self.misses }.inc();
        if let Some(Cached::Session(v)) = cached {
            if v.accepted_until > now {
                return Ok(v);
            }
            self.cache.invalidate(&key);
            return Err(AuthFailure::new(true, "token has expired"));
        }
        let v = Arc::new(self.issuer.verify(token.expose(), Use::Access, now).map_err(|e| jwt_failure(&e))?);
        self.cache.insert(key, Cached::Session(Arc::clone(&v)));
        Ok(v)
    }

    /// Verifies a refresh token and that what earned it is still good.
    pub fn verify_refresh(&self, token: &str, policy: &Policy, now: OffsetDateTime) -> Result<Holder, AuthFailure> {
        let v = self
            .issuer
            .verify(token, Use::Refresh, now.unix_timestamp())
            .map_err(|e| AuthFailure::new(false, format!("refresh {}", jwt_failure(&e).reason)))?;
        if v.holder == Holder::Anonymous {
            return Err(AuthFailure::new(false, "refresh token is not bound to a credential"));
        }
        self.live_check(policy, &v.holder, now, false)?;
        Ok(v.holder)
    }

    /// Is what `holder` names still good now? (Anonymous always is.)
    fn live_check(&self, policy: &Policy, holder: &Holder, now: OffsetDateTime, bearer: bool) -> Result<(), AuthFailure> {
        let why = |bearer_reason: String| -> AuthFailure {
            AuthFailure::new(bearer, if bearer { Cow::Owned(bearer_reason) } else { Cow::Borrowed(BAD_LOGIN) })
        };
        match holder {
            Holder::Anonymous => Ok(()),
            Holder::Token { name, binding } => {
                let Some(token) = policy.token(name) else { return Err(why(format!("token {name} no longer exists"))) };
                let Some(p) = token.password(binding.slot).filter(|p| p.id == binding.password_id) else {
                    return Err(why(format!("{} of token {name} was regenerated or deleted", binding.slot.as_str())));
                };
                if p.expired(now) {
                    let when = p.expiry.map(rfc3339).unwrap_or_default();
                    return Err(AuthFailure::new(bearer, format!("{} of token {name} expired at {when}", binding.slot.as_str())));
                }
                if token.status == Status::Disabled {
                    return Err(AuthFailure::new(bearer, format!("token {name} is disabled")));
                }
                Ok(())
            }
            Holder::ApiKey { name, key_id } => {
                let Some(k) = policy.api_key(name).filter(|k| k.id == *key_id) else {
                    return Err(AuthFailure::new(bearer, if bearer { format!("API key {name} no longer exists") } else { "invalid API key".into() }));
                };
                if k.expired(now) {
                    return Err(AuthFailure::new(bearer, format!("API key {name} expired at {}", k.expiry.map(rfc3339).unwrap_or_default())));
                }
                if k.status == Status::Disabled {
                    return Err(AuthFailure::new(bearer, format!("API key {name} is disabled")));
                }
                Ok(())
            }
            Holder::External { issuer, .. } => {
                if self.external.has(issuer) {
                    Ok(())
                } else {
                    Err(AuthFailure::new(bearer, format!("issuer {issuer} is no longer trusted")))
                }
            }
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn jwt_failure(e: &JwtError) -> AuthFailure {
    AuthFailure::new(true, e.to_string())
}

#[cfg(test)]
mod tests;
