//! Session and refresh tokens: the JWTs the token server mints and the gateway verifies.
//! ES256 only, `kid` looked up among our own keys (never a key from the token's header:
//! `jwk`, `x5c` and `jku` are ignored), `iss` and `aud` exact, `exp`/`nbf` with a small
//! leeway, and a `use` claim so a refresh token is never accepted as a session and the
//! reverse. Claims follow distribution's layout; `access` uses the claim words of
//! `access.rs`; `kind` and `cred` say whose the token is and bind it to the credential that
//! earned it (a token's password, an API key), and an external identity's session carries
//! the issuer and the scope maps its rules granted.
//!
//! Verifying here says only "we minted this and it has not expired"; whether it is still
//! good against the policy now is `auth`'s question.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::access::{Access, ActionSet};
use crate::auth::secret::random_id;
use crate::oci::RepoName;
use crate::policy::{KeyName, MapName, Slot, TokenName};
use crate::token::keys::KeySet;

/// Leeway for `exp` and `nbf` between replicas' clocks.
const LEEWAY_SECS: u64 = 5;

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Use {
    Access,
    Refresh,
}

/// The password a token was earned with: sessions die when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub slot: Slot,
    pub password_id: String,
}

impl Binding {
    fn encode(&self) -> String {
        format!("{}:{}", self.slot.as_str(), self.password_id)
    }

    fn decode(s: &str) -> Option<Binding> {
        let (slot, id) = s.split_once(':')?;
        Some(Binding { slot: Slot::parse(slot)?, password_id: id.to_owned() })
    }
}

/// Whose a session or refresh token is, and what it is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Anonymous,
    /// A token, through one of its passwords.
    Token { name: TokenName, binding: Binding },
    /// An API key (bound to the key's random id).
    ApiKey { name: KeyName, key_id: String },
    /// An external issuer's subject, with the maps its rules granted at login.
    External { issuer: String, subject: String, maps: Vec<MapName> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Token,
    Apikey,
    External,
}

#[derive(Serialize, Deserialize)]
struct AccessEntry {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    #[serde(rename = "use")]
    token_use: Use,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    access: Vec<AccessEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cred: Option<String>,
    /// External sessions: the issuer's configured name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ext: Option<String>,
    /// External sessions: the scope maps the issuer's rules granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    maps: Vec<String>,
}

/// What a verified token says.
#[derive(Clone, Debug)]
pub struct Verified {
    pub holder: Holder,
    pub access: Arc<Access>,
    /// The last moment (Unix seconds, exclusive) it is accepted: `exp` plus the clock-skew
    /// leeway, the same bound `verify` applies, so a cached verification lasts exactly as
    /// long as a fresh one would succeed.
    pub accepted_until: i64,
}

/// What to put in a new token.
pub struct Mint<'a> {
    pub token_use: Use,
    pub holder: &'a Holder,
    pub access: &'a Access,
    pub issued_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token is malformed or not signed by this gateway")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token could not be signed")]
    Sign,
}

/// Mints and verifies our JWTs for one issuer and service.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub service: String,
    keys: std::sync::Arc<KeySet>,
}

impl Issuer {
    pub fn new(issuer: String, service: String, keys: std::sync::Arc<KeySet>) -> Issuer {
        Issuer { issuer, service, keys }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Whether a token names one of our keys (else it may be an external issuer's).
    pub fn is_ours(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid).is_some_and(|kid| self.keys.get(&kid).is_some())
    }

    pub fn mint(&self, m: &Mint<'_>) -> Result<String, JwtError> {
        let key = self.keys.current();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let mut access: Vec<AccessEntry> = m
            .access
            .repositories
            .iter()
            .map(|(name, set)| AccessEntry {
                kind: "repository".into(),
                name: name.to_string(),
                actions: set.claim_words().map(str::to_owned).collect(),
            })
            .collect();
        if m.access.catalog {
            access.push(AccessEntry { kind: "registry".into(), name: "catalog".into(), actions: vec!["*".into()] });
        }
        let (sub, kind, cred, ext, maps) = match m.holder {
            Holder::Anonymous => (String::new(), None, None, None, vec![]),
            Holder::Token { name, binding } => (name.to_string(), Some(Kind::Token), Some(binding.encode()), None, vec![]),
            Holder::ApiKey { name, key_id } => (name.to_string(), Some(Kind::Apikey), Some(key_id.clone()), None, vec![]),
            Holder::External { issuer, subject, maps } => {
                (subject.clone(), Some(Kind::External), None, Some(issuer.clone()), maps.iter().map(ToString::to_string).collect())
            }
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            sub,
            aud: self.service.clone(),
            exp: m.expires_at,
            nbf: m.issued_at,
            iat: m.issued_at,
            jti: random_id().map_err(|_| JwtError::Sign)?,
            token_use: m.token_use,
            access,
            kind,
            cred,
            ext,
            maps,
        };
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|_| JwtError::Sign)
    }

    /// Verifies a token of the given use at time `now` (unix seconds). Time claims are
    /// checked here against the gateway's clock, not by the JWT library's own.
    pub fn verify(&self, token: &str, want: Use, now: i64) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
        if header.alg != Algorithm::ES256 {
            return Err(JwtError::Invalid);
        }
        let key = header.kid.as_deref().and_then(|kid| self.keys.get(kid)).ok_or(JwtError::Invalid)?;
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.service]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(|_| JwtError::Invalid)?;
        let c = data.claims;
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        if c.nbf > now + leeway {
            return Err(JwtError::Invalid);
        }
        // saturating: an `exp` near i64::MAX must not overflow
        if c.exp.saturating_add(leeway) <= now {
            return Err(JwtError::Expired);
        }
        if c.token_use != want {
            return Err(JwtError::Invalid);
        }
        let holder = match (c.kind, c.cred, c.ext) {
            (None, None, None) if c.sub.is_empty() => Holder::Anonymous,
            (Some(Kind::Token), Some(cred), None) => Holder::Token {
                name: TokenName::parse(&c.sub).map_err(|_| JwtError::Invalid)?,
                binding: Binding::decode(&cred).ok_or(JwtError::Invalid)?,
            },
            (Some(Kind::Apikey), Some(cred), None) => {
                Holder::ApiKey { name: KeyName::parse(&c.sub).map_err(|_| JwtError::Invalid)?, key_id: cred }
            }
            (Some(Kind::External), None, Some(issuer)) => Holder::External {
                issuer,
                subject: c.sub,
                maps: c.maps.iter().map(|m| MapName::parse(m)).collect::<Result<_, _>>().map_err(|_| JwtError::Invalid)?,
            },
            _ => return Err(JwtError::Invalid),
        };
        let mut access = Access::default();
        for e in c.access {
            match (e.kind.as_str(), e.name.as_str()) {
                ("repository", name) => {
                    let repo = RepoName::parse(name).map_err(|_| JwtError::Invalid)?;
                    let set = ActionSet::from_claim_words(e.actions.iter().map(String::as_str)).ok_or(JwtError::Invalid)?;
                    access.add(repo, set);
                }
                ("registry", "catalog") if e.actions == ["*"] => access.catalog = true,
                _ => return Err(JwtError::Invalid),
            }
        }
        Ok(Verified { holder, access: Arc::new(access), accepted_until: c.exp.saturating_add(leeway) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Action;
    use crate::token::keys::SigningKey;
    use time::OffsetDateTime;

    fn issuer() -> Issuer {
        let k = SigningKey::generate(OffsetDateTime::UNIX_EPOCH).unwrap();
        Issuer::new("scopegate".into(), "svc".into(), std::sync::Arc::new(KeySet::new(vec![k]).unwrap()))
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_minted_session_verifies_with_its_access_and_binding() {
        let iss = issuer();
        let mut access = Access::default();
        access.add(RepoName::parse("a/b").unwrap(), ActionSet::of(&[Action::ContentRead, Action::MetadataRead]));
        access.catalog = true;
        let holders = [
            Holder::Token { name: TokenName::parse("ci").unwrap(), binding: Binding { slot: Slot::Password2, password_id: "abc".into() } },
            Holder::ApiKey { name: KeyName::parse("deploy").unwrap(), key_id: "k1".into() },
            Holder::External { issuer: "idp".into(), subject: "user@example.com".into(), maps: vec![MapName::parse("_repositories_pull").unwrap()] },
            Holder::Anonymous,
        ];
        for holder in &holders {
            let t = iss.mint(&Mint { token_use: Use::Access, holder, access: &access, issued_at: now(), expires_at: now() + 300 }).unwrap();
            let v = iss.verify(&t, Use::Access, now()).unwrap();
            assert_eq!(*v.access, access);
            assert_eq!(&v.holder, holder);
        }
        let holder = &holders[0];
        let t = iss.mint(&Mint { token_use: Use::Access, holder, access: &access, issued_at: now(), expires_at: now() + 300 }).unwrap();
        // a session is not a refresh token
        assert!(iss.verify(&t, Use::Refresh, now()).is_err());
        // another gateway's key does not verify
        assert!(issuer().verify(&t, Use::Access, now()).is_err());
        // not yet valid, and expired, by the clock it is given
        assert!(matches!(iss.verify(&t, Use::Access, now() - 60), Err(JwtError::Invalid)));
        assert!(matches!(iss.verify(&t, Use::Access, now() + 300 + LEEWAY_SECS as i64 + 1), Err(JwtError::Expired)));
    }

    /// An `exp` of i64::MAX in a token signed by our key: adding the leeway overflowed (a
    /// panic with overflow checks, a wrap to "expired" without).
    #[test]
    fn session_exp_at_i64_max_does_not_overflow() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let iss = issuer();
        let key = iss.keys().current();
        let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, key.kid);
        let claims = br#"{"iss":"scopegate","aud":"svc","exp":9223372036854775807,"nbf":0,"iat":0,"jti":"j","sub":"","use":"access"}"#;
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::ES256).unwrap();
        let v = iss.verify(&format!("{input}.{sig}"), Use::Access, now()).unwrap();
        assert_eq!(v.accepted_until, i64::MAX);
        assert_eq!(v.holder, Holder::Anonymous);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let iss = issuer();
        let t = iss
            .mint(&Mint {
                token_use: Use::Access,
                holder: &Holder::Anonymous,
                access: &Access::default(),
                issued_at: now() - 600,
                expires_at: now() - 300,
            })
            .unwrap();
        assert!(matches!(iss.verify(&t, Use::Access, now()), Err(JwtError::Expired)));
    }
}
