//! External identity providers: JWTs from configured issuers, accepted as `bearer:<jwt>`
//! at login and as `Authorization: Bearer <jwt>` on `/v2`. The issuer is picked by the
//! exact `iss`; keys come only from the issuer's JWKS (a URL fetched with rustls, or a
//! file), never from the token's own header (`jwk`, `x5c`, `jku` are ignored); each key is
//! pinned to one algorithm, so an RSA key never verifies an HS256 signature. `iss`, `aud`
//! and `exp` are required, `nbf` is honoured, dates must be numbers. A `kid` the cache does
//! not know causes a refetch, at most once per configured interval; an unreachable JWKS
//! with no cached key fails closed and says so in the log.
//!
//! Claim rules turn a verified token into scope maps; no rule matched means an empty grant.
//! This module authenticates; it grants nothing beyond naming the maps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tracing::{info, warn};

use crate::body::{empty, Body};
use crate::config::{ClaimRule, IssuerSettings, JwksSource};
use crate::policy::MapName;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an external token was refused (safe to show the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    #[error("token is not a JWT")]
    Malformed,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token is not signed by a key of its issuer")]
    UnknownKey,
    #[error("token algorithm is not the one its key is pinned to")]
    Algorithm,
    #[error("token signature or claims are invalid")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token lacks the required claim {0}")]
    MissingClaim(String),
    #[error("token dates must be numeric")]
    NonNumericDate,
    #[error("the issuer's keys are unavailable")]
    KeysUnavailable,
}

/// Who an external token vouches for, and what the rules grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The issuer's configured name.
    pub issuer: String,
    pub subject: String,
    pub maps: Vec<MapName>,
    /// The token's `exp` (what tokens issued on it may not outlive).
    pub expires_at: i64,
    /// `exp` plus the issuer's leeway: until then (exclusive) the token is accepted, cached
    /// or not.
    pub accepted_until: i64,
}

#[derive(Clone)]
struct PinnedKey {
    key: DecodingKey,
    alg: Algorithm,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, PinnedKey>,
    fetched_at: Option<Instant>,
}

struct Remote {
    url: String,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    cache: ArcSwap<KeyCache>,
    /// Serializes fetches and remembers the last attempt.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

enum Keys {
    Fixed(HashMap<String, PinnedKey>),
    Remote(Remote),
}

pub struct ExternalIssuer {
    settings: IssuerSettings,
    keys: Keys,
}

/// Every configured issuer, by `iss`.
#[derive(Default)]
pub struct ExternalIssuers {
    by_iss: HashMap<String, Arc<ExternalIssuer>>,
}

impl std::fmt::Debug for ExternalIssuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_iss.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("issuer {0}: {1}")]
    Issuer(String, String),
}

impl ExternalIssuers {
    pub fn new(settings: &[IssuerSettings]) -> Result<ExternalIssuers, SetupError> {
        let mut by_iss = HashMap::new();
        for s in settings {
            let fail = |m: String| SetupError::Issuer(s.name.clone(), m);
            let keys = match &s.jwks {
                JwksSource::File(path) => {
                    let text = std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                    let keys = parse_jwks(&text, &s.algorithms).map_err(fail)?;
                    if keys.is_empty() {
                        return Err(fail(format!("{} holds no usable key", path.display())));
                    }
                    Keys::Fixed(keys)
                }
                JwksSource::Url(url) => Keys::Remote(Remote {
                    url: url.clone(),
                    client: https_client(s.ca_file.as_deref()).map_err(fail)?,
                    cache: ArcSwap::from_pointee(KeyCache::default()),
                    last_attempt: tokio::sync::Mutex::new(None),
                }),
            };
            by_iss.insert(s.issuer.clone(), Arc::new(ExternalIssuer { settings: s.clone(), keys }));
        }
        Ok(ExternalIssuers { by_iss })
    }

    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// Fetches every remote JWKS once (at start), logging what fails.
    pub async fn prefetch(&self) {
        for i in self.by_iss.values() {
            if let Keys::Remote(r) = &i.keys {
                i.refresh(r, true).await;
            }
        }
    }

    /// Verifies an external JWT at `now` (unix seconds).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, ExternalError> {
        #[derive(serde::Deserialize)]
        struct Peek {
            iss: Option<String>,
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| ExternalError::Malformed)?;
        let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| ExternalError::Malformed)?;
        let issuer = peek.iss.as_deref().and_then(|i| self.by_iss.get(i)).ok_or(ExternalError::UnknownIssuer)?;
        let key = issuer.key(header.kid.as_deref()).await?;
        if header.alg != key.alg || !issuer.settings.algorithms.contains(&key.alg) {
            return Err(ExternalError::Algorithm);
        }
        let s = &issuer.settings;
        let mut v = Validation::new(key.alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_issuer(&[&s.issuer]);
        v.set_audience(&[&s.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => ExternalError::MissingClaim(c.clone()),
            _ => ExternalError::Invalid,
        })?;
        let claims = data.claims;
        let date = |name: &str| -> Result<Option<i64>, ExternalError> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                // NumericDate may carry a fraction; truncation toward now is safe for exp
                Some(Value::Number(n)) => n.as_f64().map(|f| Some(f as i64)).ok_or(ExternalError::NonNumericDate),
                Some(_) => Err(ExternalError::NonNumericDate),
            }
        };
        let exp = date("exp")?.ok_or_else(|| ExternalError::MissingClaim("exp".into()))?;
        // dates are the issuer's numbers: saturate, never overflow
        if exp.saturating_add(s.leeway_secs) <= now {
            return Err(ExternalError::Expired);
        }
        if date("nbf")?.is_some_and(|nbf| nbf.saturating_sub(s.leeway_secs) > now) {
            return Err(ExternalError::NotYetValid);
        }
        date("iat")?;
        for c in &s.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(ExternalError::MissingClaim(c.clone()));
            }
        }
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(Identity { issuer: s.name.clone(), subject, maps: apply_rules(&s.rules, &claims), expires_at: exp, accepted_until: exp.saturating_add(s.leeway_secs) })
    }

    /// Whether an issuer of this name is configured (sessions name their issuer).
    pub fn has(&self, name: &str) -> bool {
        self.by_iss.values().any(|i| i.settings.name == name)
    }
}

impl ExternalIssuer {
    async fn key(&self, kid: Option<&str>) -> Result<PinnedKey, ExternalError> {
        match &self.keys {
            Keys::Fixed(keys) => pick(keys, kid).ok_or(ExternalError::UnknownKey),
            Keys::Remote(r) => {
                let stale = r.cache.load().fetched_at.is_none_or(|t| t.elapsed() >= self.settings.cache_for);
                if stale {
                    self.refresh(r, false).await;
                }
                if let Some(k) = pick(&r.cache.load().keys, kid) {
                    return Ok(k);
                }
                // an unknown kid: maybe the issuer rotated its keys
                if !stale {
                    self.refresh(r, false).await;
                }
                let cache = r.cache.load();
                match pick(&cache.keys, kid) {
                    Some(k) => Ok(k),
                    None if cache.keys.is_empty() => Err(ExternalError::KeysUnavailable),
                    None => Err(ExternalError::UnknownKey),
                }
            }
        }
    }

    /// Fetches the JWKS unless the last attempt was less than the refetch interval ago
    /// (`force` skips that check). On failure the old keys stay.
    async fn refresh(&self, r: &Remote, force: bool) {
        let mut last = r.last_attempt.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.settings.refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        let name = &self.settings.name;
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(r)).await.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(bytes) => match parse_jwks(&bytes, &self.settings.algorithms) {
                Ok(keys) => {
                    info!(issuer = %name, url = %r.url, keys = keys.len(), "fetched the issuer's JWKS");
                    r.cache.store(Arc::new(KeyCache { keys, fetched_at: Some(Instant::now()) }));
                }
                Err(e) => warn!(issuer = %name, url = %r.url, error = %e, "the issuer's JWKS is invalid; keeping the keys already known"),
            },
            Err(e) => {
                let known = r.cache.load().keys.len();
                if known == 0 {
                    warn!(issuer = %name, url = %r.url, error = %e, "cannot fetch the issuer's JWKS and no key is cached: its tokens are refused");
                } else {
                    warn!(issuer = %name, url = %r.url, error = %e, known, "cannot fetch the issuer's JWKS; keeping the keys already known");
                }
            }
        }
    }
}

/// The key a token names; without a `kid`, the only key there is.
fn pick(keys: &HashMap<String, PinnedKey>, kid: Option<&str>) -> Option<PinnedKey> {
    match kid {
        Some(k) => keys.get(k).cloned(),
        None if keys.len() == 1 => keys.values().next().cloned(),
        None => None,
    }
}

async fn fetch(r: &Remote) -> Result<bytes::Bytes, String> {
    let req = Request::builder().method(Method::GET).uri(&r.url).header("accept", "application/json").body(empty()).map_err(|e| e.to_string())?;
    let resp = r.client.request(req).await.map_err(|e| format!("{e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("answered {}", resp.status()));
    }
    Ok(Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| e.to_string())?.to_bytes())
}

fn https_client(ca_file: Option<&std::path::Path>) -> Result<Client<HttpsConnector<HttpConnector>, Body>, String> {
    let tls = crate::tls::client_config(ca_file)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Usable signing keys of a JWKS, each pinned to one allowed algorithm. Keys without a
/// `kid` are kept only when they are the only key.
fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<HashMap<String, PinnedKey>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
    let mut out = HashMap::new();
    for raw in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Some(alg) = pinned_algorithm(&jwk) else { continue };
        if !allowed.contains(&alg) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        out.insert(kid, PinnedKey { key, alg });
    }
    if out.contains_key("") && out.len() > 1 {
        out.remove("");
    }
    Ok(out)
}

/// The one algorithm a key verifies: its `alg`, or the natural one for its type.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let natural = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        // symmetric and unknown keys never verify an external token
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Algorithm::try_from(ka).ok()?,
        None => natural,
    };
    let family_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512),
        AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::OctetKeyPair(_) => alg == natural,
        _ => false,
    };
    family_ok.then_some(alg)
}

/// The scope maps the rules grant; several rules add up.
fn apply_rules(rules: &[ClaimRule], claims: &Value) -> Vec<MapName> {
    let mut maps: Vec<MapName> = Vec::new();
    for r in rules {
        let found = r.claim.iter().try_fold(claims, |v, part| v.get(part));
        let hit = match found {
            Some(Value::String(s)) => *s == r.value,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(r.value.as_str())),
            _ => false,
        };
        if hit && !maps.contains(&r.scope_map) {
            maps.push(r.scope_map.clone());
        }
    }
    maps
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(claim: &str, value: &str, map: &str) -> ClaimRule {
        ClaimRule { claim: claim.split('.').map(str::to_owned).collect(), value: value.into(), scope_map: MapName::parse(map).unwrap() }
    }

    #[test]
    fn rules_add_up_and_match_strings_or_arrays() {
        let rules = [
            rule("roles", "containerregistry/admin/ctx-1", "_repositories_admin"),
            rule("groups", "pushers", "pushers"),
            rule("realm_access.roles", "reader", "readers"),
        ];
        let claims = json!({"roles": ["containerregistry/admin/ctx-1", "x"], "groups": "pushers", "realm_access": {"roles": ["reader"]}});
        let got: Vec<String> = apply_rules(&rules, &claims).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["_repositories_admin", "pushers", "readers"]);
        let other_context = json!({"roles": ["containerregistry/admin/ctx-2"]});
        assert!(apply_rules(&rules, &other_context).is_empty());
        assert!(apply_rules(&rules, &json!({"roles": [{"nested": 1}], "groups": 5})).is_empty());
    }

    /// An issuer `idp` with one Ed25519 key `ed-1` (fixed seed) and no required claims.
    fn ed25519_issuer() -> (ExternalIssuers, aws_lc_rs::signature::Ed25519KeyPair) {
        use aws_lc_rs::signature::KeyPair;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let key = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())).unwrap();
        let settings = IssuerSettings {
            name: "idp".into(),
            issuer: "https://idp.example.com".into(),
            audience: "scopegate".into(),
            jwks: JwksSource::File(std::path::PathBuf::new()),
            ca_file: None,
            algorithms: vec![Algorithm::EdDSA],
            refetch_interval: Duration::from_secs(60),
            cache_for: Duration::from_secs(3600),
            leeway_secs: 30,
            required_claims: vec![],
            rules: vec![],
        };
        let keys = HashMap::from([("ed-1".to_owned(), PinnedKey { key, alg: Algorithm::EdDSA })]);
        let issuer = ExternalIssuer { settings, keys: Keys::Fixed(keys) };
        (ExternalIssuers { by_iss: HashMap::from([("https://idp.example.com".to_owned(), Arc::new(issuer))]) }, pair)
    }

    /// `b64(header).b64(claims).b64(signature)` over exactly these bytes.
    fn sign_exact(pair: &aws_lc_rs::signature::Ed25519KeyPair, header: &[u8], claims: &[u8]) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let sig = URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref());
        format!("{input}.{sig}")
    }

    /// Found by the external_jwt fuzz target: an `exp` beyond i64 saturates to i64::MAX in
    /// the float conversion, and adding the leeway overflowed (a panic with overflow checks).
    #[tokio::test]
    async fn external_exp_beyond_i64_does_not_overflow() {
        let (issuers, pair) = ed25519_issuer();
        let header = br#"{"alg":"EdDSA","kid":"ed-1","typ":"JWT"}"#;
        let claims = br#"{"iss":"https://idp.example.com","aud":"scopegate","exp":17672262088888888880}"#;
        let id = issuers.verify(&sign_exact(&pair, header, claims), 1_767_225_600).await.unwrap();
        assert_eq!(id.expires_at, i64::MAX);
        assert_eq!(id.accepted_until, i64::MAX, "adding the leeway saturates");
    }

    /// The same edge on `nbf`: a date below i64 saturates to i64::MIN, and subtracting the
    /// leeway overflowed.
    #[tokio::test]
    async fn external_nbf_below_i64_does_not_overflow() {
        let (issuers, pair) = ed25519_issuer();
        let header = br#"{"alg":"EdDSA","kid":"ed-1"}"#;
        let claims = br#"{"iss":"https://idp.example.com","aud":"scopegate","exp":1767229200,"nbf":-1e19}"#;
        assert!(issuers.verify(&sign_exact(&pair, header, claims), 1_767_225_600).await.is_ok());
    }

    #[test]
    fn keys_are_pinned_to_their_algorithm() {
        let rsa = json!({"kty": "RSA", "kid": "r", "n": "sXch", "e": "AQAB"});
        let ec = json!({"kty": "EC", "kid": "e", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let hs = json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"});
        let rsa_claiming_es = json!({"kty": "RSA", "kid": "x", "n": "sXch", "e": "AQAB", "alg": "ES256"});
        for (jwk, want) in [(rsa, Some(Algorithm::RS256)), (ec, Some(Algorithm::ES256)), (hs, None), (rsa_claiming_es, None)] {
            let jwk: Jwk = serde_json::from_value(jwk).unwrap();
            assert_eq!(pinned_algorithm(&jwk), want);
        }
    }
}
