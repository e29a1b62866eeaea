//! Secrets: generated here (256 random bits, URL-safe base64, a recognisable prefix so
//! leaked values can be found by secret scanners), stored only as SHA-256 digests, compared
//! in constant time, and redacted wherever they could be printed.
//!
//! A fast digest is the right tool for these values: they carry 256 bits of entropy, so no
//! guessing attack exists for a slow hash to slow down. Nothing here logs or stores a value.

use std::fmt;

use aws_lc_rs::{constant_time, digest, rand};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// A secret value in memory; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for the one place that must show or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> [u8; 32] {
        digest_of(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Prefixes of generated secrets.
pub const PASSWORD_PREFIX: &str = "sgp_";
pub const ADMIN_TOKEN_PREFIX: &str = "sga_";
pub const API_KEY_PREFIX: &str = "sgk_";

/// `prefix` + 256 random bits in URL-safe base64.
pub fn generate(prefix: &str) -> Result<Secret, GenerateError> {
    let bytes = random_bytes::<32>()?;
    Ok(Secret(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))))
}

/// A short random id (96 bits), for password ids and JWT ids.
pub fn random_id() -> Result<String, GenerateError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<12>()?))
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], GenerateError> {
    let mut b = [0u8; N];
    rand::fill(&mut b).map_err(|_| GenerateError)?;
    Ok(b)
}

#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct GenerateError;

pub fn digest_of(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_long_prefixed_and_distinct() {
        let a = generate(PASSWORD_PREFIX).unwrap();
        let b = generate(PASSWORD_PREFIX).unwrap();
        assert_ne!(a, b);
        assert!(a.expose().starts_with("sgp_"));
        assert_eq!(a.expose().len(), 4 + 43);
        assert_eq!(format!("{a:?}"), "Secret(<redacted>)");
        assert!(digests_equal(&a.digest(), &a.digest()));
        assert!(!digests_equal(&a.digest(), &b.digest()));
    }
}
