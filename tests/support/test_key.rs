//! A signing key made at test time (RS256 or ES256) with its public JWK, for tests that
//! play an identity provider. Included by path from the test files that need it.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn generate(kid: &str, alg: Algorithm) -> TestKey {
        type FromPem = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
        let (rc_alg, from_pem): (&'static rcgen::SignatureAlgorithm, FromPem) = match alg {
            Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            other => panic!("{other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rc_alg).unwrap();
        let encoding = from_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        TestKey { kid: kid.into(), alg, encoding, jwk }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}
