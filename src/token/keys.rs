//! Signing keys of the token server: ES256 (P-256) keys generated on first start and kept
//! in the store, each named by its RFC 7638 JWK thumbprint (`kid`). The newest key signs;
//! every stored key verifies, so tokens survive a rotation.
//!
//! Key material never leaves this module except as PKCS#8 bytes handed to the store.
//!
//! jsonwebtoken parses (and validates) a PKCS#8 key on every signature, which was a quarter
//! of the CPU of issuing a token. So this module installs, once per process, a
//! jsonwebtoken crypto provider that signs ES256 with the key pairs parsed when our keys
//! were loaded, and hands everything else to jsonwebtoken's own aws-lc provider unchanged.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner};
use jsonwebtoken::signature::Signer;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use time::OffsetDateTime;

use crate::auth::secret::digest_of;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate a signing key")]
    Generate,
    #[error("stored signing key is not a P-256 PKCS#8 key")]
    Invalid,
    #[error("no signing key is available")]
    None,
}

pub struct SigningKey {
    pub kid: String,
    pub created: OffsetDateTime,
    pkcs8: Vec<u8>,
    x: String,
    y: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("created", &self.created).finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate(created: OffsetDateTime) -> Result<SigningKey, KeyError> {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| KeyError::Generate)?;
        SigningKey::from_pkcs8(doc.as_ref(), created)
    }

    pub fn from_pkcs8(der: &[u8], created: OffsetDateTime) -> Result<SigningKey, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|_| KeyError::Invalid)?;
        let point = pair.public_key().as_ref();
        // uncompressed SEC1 point: 0x04 || x (32) || y (32)
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else { return Err(KeyError::Invalid) };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest_of(thumb_input.as_bytes()));
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|_| KeyError::Invalid)?;
        remember_parsed(der, pair);
        Ok(SigningKey { kid, created, pkcs8: der.to_vec(), x, y, encoding: EncodingKey::from_ec_der(der), decoding })
    }

    /// The private key, for the store only.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y, "kid": self.kid, "alg": "ES256", "use": "sig"})
    }
}

/// Our key pairs as parsed at load, by their PKCS#8 bytes (a handful at most).
type Parsed = RwLock<Vec<(Vec<u8>, Arc<EcdsaKeyPair>)>>;

fn parsed_keys() -> &'static Parsed {
    static PARSED: OnceLock<Parsed> = OnceLock::new();
    PARSED.get_or_init(RwLock::default)
}

fn remember_parsed(der: &[u8], pair: EcdsaKeyPair) {
    install_provider();
    let mut keys = parsed_keys().write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !keys.iter().any(|(d, _)| d == der) {
        keys.push((der.to_vec(), Arc::new(pair)));
    }
}

/// Installs the provider (once; if jsonwebtoken already chose one in this process, that
/// one stays and signing is only slower).
fn install_provider() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        let mut p = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.clone();
        p.signer_factory = signer;
        p
    });
    let _ = provider.install_default();
}

/// ES256 with a key parsed at load; anything else as jsonwebtoken does it.
fn signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    if *alg == Algorithm::ES256 {
        let keys = parsed_keys().read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, pair)) = keys.iter().find(|(d, _)| d.as_slice() == key.as_bytes()) {
            return Ok(Box::new(ParsedEs256(Arc::clone(pair))));
        }
    }
    (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.signer_factory)(alg, key)
}

struct ParsedEs256(Arc<EcdsaKeyPair>);

impl Signer<Vec<u8>> for ParsedEs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        let sig = self.0.sign(&SystemRandom::new(), msg).map_err(jsonwebtoken::signature::Error::from_source)?;
        Ok(sig.as_ref().to_vec())
    }
}

impl JwtSigner for ParsedEs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// The keys in use: the newest signs, all verify.
#[derive(Debug)]
pub struct KeySet {
    current: Arc<SigningKey>,
    by_kid: HashMap<String, Arc<SigningKey>>,
}

impl KeySet {
    pub fn new(keys: Vec<SigningKey>) -> Result<KeySet, KeyError> {
        let keys: Vec<Arc<SigningKey>> = keys.into_iter().map(Arc::new).collect();
        let current = keys.iter().max_by_key(|k| k.created).cloned().ok_or(KeyError::None)?;
        let by_kid = keys.into_iter().map(|k| (k.kid.clone(), k)).collect();
        Ok(KeySet { current, by_kid })
    }

    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.by_kid.get(kid).map(|k| &**k)
    }

    /// The JWKS document of every verifying key.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": self.by_kid.values().map(|k| k.jwk()).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reloads_with_the_same_kid() {
        let k = SigningKey::generate(OffsetDateTime::UNIX_EPOCH).unwrap();
        let again = SigningKey::from_pkcs8(k.pkcs8(), OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(k.kid, again.kid);
        assert_eq!(k.kid.len(), 43);
        assert!(!format!("{k:?}").contains(&URL_SAFE_NO_PAD.encode(k.pkcs8())));
        assert!(SigningKey::from_pkcs8(b"not a key", OffsetDateTime::UNIX_EPOCH).is_err());
    }

    #[test]
    fn a_signature_made_with_the_parsed_key_verifies_with_the_public_key() {
        let k = SigningKey::generate(OffsetDateTime::UNIX_EPOCH).unwrap();
        assert!(matches!(signer(&Algorithm::ES256, &k.encoding), Ok(s) if s.algorithm() == Algorithm::ES256));
        let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::ES256), &claims, &k.encoding).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        let back = jsonwebtoken::decode::<serde_json::Value>(&jwt, &k.decoding, &v).unwrap();
        assert_eq!(back.claims, claims);
        // a key we did not load is signed the ordinary way
        let other = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        assert!(signer(&Algorithm::ES256, &EncodingKey::from_ec_der(other.as_ref())).is_ok());
    }
}
