//! Authentication: reads the `Authorization` header once into a [`Credential`], and turns a
//! credential into a [`Principal`] against the policy snapshot of the request. Token
//! passwords, our own session tokens and refresh tokens are checked here, and every check
//! is *live*: a cached verification only saves the cryptography, never the question
//! "is this still good now" (token enabled, the password that earned a session unchanged
//! and unexpired).
//!
//! Authentication says who is calling; it never decides what they may do (`policy` does),
//! and it never logs or echoes a secret. Unknown user and wrong password fail identically.

pub mod secret;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, HeaderMap};
use time::OffsetDateTime;

use crate::policy::{CredentialKind, Policy, Principal, Slot, Status, Subject, TokenName};
use crate::token::jwt::{Binding, Issuer, JwtError, Use, Verified};
use secret::{digest_of, digests_equal, Secret};

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

    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::None => CredentialKind::None,
            Credential::Basic { .. } => CredentialKind::Basic,
            Credential::Bearer(_) => CredentialKind::Session,
        }
    }
}

/// Authentication failed. `reason` is safe to show the caller; `bearer` says whether a
/// Bearer token was presented (the challenge then carries `error="invalid_token"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailure {
    pub bearer: bool,
    pub reason: Cow<'static, str>,
}

impl AuthFailure {
    fn new(bearer: bool, reason: impl Into<Cow<'static, str>>) -> Self {
        AuthFailure { bearer, reason: reason.into() }
    }
}

/// A verification the cache remembers; always re-checked against the live policy.
#[derive(Clone)]
enum Cached {
    Password { name: TokenName, binding: Binding },
    Session(Arc<Verified>),
}

/// Verifies credentials, with a cache keyed by an HMAC of the presented secret (a process-
/// local key, so the cache never holds anything usable as a credential).
pub struct Authenticator {
    issuer: Arc<Issuer>,
    cache: moka::sync::Cache<[u8; 32], Cached>,
    cache_key: hmac::Key,
    dummy_digest: [u8; 32],
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("cached", &self.cache.entry_count()).finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(issuer: Arc<Issuer>) -> Result<Authenticator, secret::GenerateError> {
        let cache_key = hmac::Key::new(hmac::HMAC_SHA256, &secret::random_bytes::<32>()?);
        let dummy_digest = digest_of(&secret::random_bytes::<32>()?);
        let cache = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(600)).build();
        Ok(Authenticator { issuer, cache, cache_key, dummy_digest })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
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
    pub fn authenticate(&self, cred: &Credential, policy: &Policy, now: OffsetDateTime) -> Result<Principal, AuthFailure> {
        match cred {
            Credential::None => Ok(Principal::anonymous()),
            Credential::Basic { username, password } => {
                let (name, _) = self.verify_password(username, password, policy, now)?;
                Ok(Principal { subject: Subject::Token(name), credential: CredentialKind::Basic, session: None })
            }
            Credential::Bearer(token) => {
                let v = self.verify_session(token, now.unix_timestamp())?;
                let subject = match (&v.subject, &v.binding) {
                    (None, _) => Subject::Anonymous,
                    (Some(name), Some(binding)) => {
                        live_check(policy, name, binding, now, true)?;
                        Subject::Token(name.clone())
                    }
                    (Some(_), None) => return Err(AuthFailure::new(true, "token is not bound to a credential")),
                };
                Ok(Principal { subject, credential: CredentialKind::Session, session: Some(v.access.clone()) })
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
        if let Some(Cached::Password { name, binding }) = self.cache.get(&key) {
            if live_check(policy, &name, &binding, now, false).is_ok() {
                return Ok((name, binding));
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
        let (Some(token), Some(slot)) = (token, matched) else { return Err(AuthFailure::new(false, BAD_LOGIN)) };
        let p = token.password(slot).ok_or_else(|| AuthFailure::new(false, BAD_LOGIN))?;
        let binding = Binding { slot, password_id: p.id.clone() };
        live_check(policy, &token.name, &binding, now, false)?;
        self.cache.insert(key, Cached::Password { name: token.name.clone(), binding: binding.clone() });
        Ok((token.name.clone(), binding))
    }

    /// Verifies one of our session tokens (signature and expiry; cached until it expires).
    fn verify_session(&self, token: &Secret, now: i64) -> Result<Arc<Verified>, AuthFailure> {
        let key = self.cache_key(&[b"session", token.expose().as_bytes()]);
        if let Some(Cached::Session(v)) = self.cache.get(&key) {
            if v.expires_at > now {
                return Ok(v);
            }
            self.cache.invalidate(&key);
            return Err(AuthFailure::new(true, "token has expired"));
        }
        let v = Arc::new(self.issuer.verify(token.expose(), Use::Access, now).map_err(|e| jwt_failure(&e))?);
        self.cache.insert(key, Cached::Session(Arc::clone(&v)));
        Ok(v)
    }

    /// Verifies a refresh token and that the password it was earned with is still good.
    pub fn verify_refresh(&self, token: &str, policy: &Policy, now: OffsetDateTime) -> Result<(TokenName, Binding), AuthFailure> {
        let v = self.issuer.verify(token, Use::Refresh, now.unix_timestamp()).map_err(|e| AuthFailure::new(false, format!("refresh {}", jwt_failure(&e).reason)))?;
        let (Some(name), Some(binding)) = (v.subject, v.binding) else {
            return Err(AuthFailure::new(false, "refresh token is not bound to a credential"));
        };
        live_check(policy, &name, &binding, now, false)?;
        Ok((name, binding))
    }
}

fn jwt_failure(e: &JwtError) -> AuthFailure {
    AuthFailure::new(true, e.to_string())
}

/// Is the password `binding` names still the token's, unexpired, and the token enabled?
fn live_check(policy: &Policy, name: &TokenName, binding: &Binding, now: OffsetDateTime, bearer: bool) -> Result<(), AuthFailure> {
    let Some(token) = policy.token(name) else {
        let why: Cow<'static, str> = if bearer { format!("token {name} no longer exists").into() } else { BAD_LOGIN.into() };
        return Err(AuthFailure::new(bearer, why));
    };
    let Some(p) = token.password(binding.slot).filter(|p| p.id == binding.password_id) else {
        let why: Cow<'static, str> =
            if bearer { format!("{} of token {name} was regenerated or deleted", binding.slot.as_str()).into() } else { BAD_LOGIN.into() };
        return Err(AuthFailure::new(bearer, why));
    };
    if p.expired(now) {
        let when = p.expiry.and_then(|e| e.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_default();
        return Err(AuthFailure::new(bearer, format!("{} of token {name} expired at {when}", binding.slot.as_str())));
    }
    if token.status == Status::Disabled {
        return Err(AuthFailure::new(bearer, format!("token {name} is disabled")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
