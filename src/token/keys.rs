//! Signing keys of the token server: ES256 (P-256) keys generated on first start and kept
//! in the store, each named by its RFC 7638 JWK thumbprint (`kid`). The newest key signs;
//! every stored key verifies, so tokens survive a rotation.
//!
//! Key material never leaves this module except as PKCS#8 bytes handed to the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
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
}
