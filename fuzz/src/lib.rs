//! Shared fixtures of scopegate's fuzz targets: the fixed clock, the fixed signing keys (a
//! session-token issuer and two external issuers with a JWKS file), a signer that wraps
//! fuzzer-chosen header and claims bytes in a validly signed JWT so the claim parsers
//! behind the signature check are reached, and a poll-once executor for the verify path
//! that never waits when its keys are fixed.
//!
//! The keys below exist only for fuzzing: they sign nothing outside these targets, and
//! they are fixed so that seed tokens in the corpus keep verifying from run to run.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use scopegate::auth::external::ExternalIssuers;
use scopegate::config::{ClaimRule, IssuerSettings, JwksSource};
use scopegate::policy::MapName;
use scopegate::token::jwt::Issuer;
use scopegate::token::keys::{KeySet, SigningKey};
use time::OffsetDateTime;

/// The time every verification runs at (2026-01-01T00:00:00Z).
pub const NOW: i64 = 1_767_225_600;

/// The session issuer's `iss` and `aud`.
pub const SESSION_ISSUER: &str = "scopegate";
pub const SESSION_SERVICE: &str = "registry.example.com";

/// The external issuers' `iss`, configured names, audience and leeway.
pub const EXT_ISS: &str = "https://idp.example.com";
pub const EXT_NAME: &str = "idp";
pub const EXT_CI_ISS: &str = "https://ci.example.com";
pub const EXT_CI_NAME: &str = "ci";
pub const EXT_AUDIENCE: &str = "scopegate";
pub const EXT_LEEWAY: i64 = 30;
/// `kid` of the external ES256 and EdDSA keys.
pub const EXT_EC_KID: &str = "ec-1";
pub const EXT_ED_KID: &str = "ed-1";
/// The scope maps the external issuer's claim rules can grant.
pub const EXT_RULE_MAPS: [&str; 2] = ["pushers", "readers"];

/// PKCS#8 of the session issuer's P-256 key.
const SESSION_P256: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420a4c0c46e0628018a0c31fee0834f59fdcecee576f48dd27dc9b9260de4658079a144034200046d5722191c5d6fde2b27e2de824499be81d2f3960b457f595ce089341e1fd22b29891a0e48e59f180854bd2a9ae0b62c2a3cbdcd4549e2facb1af5b38afc3bf4";
/// PKCS#8 of the external issuers' P-256 key.
const EXTERNAL_P256: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b02010104209b6822f9f5ebd9266f1a97120857406016857353eb8609577bb1478b943dc25ba144034200045b62ecfaaf63880bfbe8563ccff74572225e9f52fb8ddbc793aefbdd4b82ca220dd78728a0e48d5d2df1bc321d6fefd006a50d4f0825f60029acbb010bc42f9d";
/// Seed of the external issuer's Ed25519 key.
const EXTERNAL_ED25519_SEED: &str = "871fab105fcbc5a2ff059211b56adf007c61b058687406c380bdccaed9cee819";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).expect("even length"), 16).expect("hex digits"))
        .collect()
}

/// A key that signs fuzzer-made tokens.
pub enum Signer {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    fn p256(der_hex: &str) -> Signer {
        Signer::P256(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &hex(der_hex)).expect("fixed P-256 key"))
    }

    /// The algorithm the key really signs with.
    pub fn alg(&self) -> Algorithm {
        match self {
            Signer::P256(_) => Algorithm::ES256,
            Signer::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    /// `b64(header).b64(claims).b64(signature)` over exactly the given bytes: the header
    /// may name any `alg` or `kid`, the signature is always this key's.
    pub fn sign(&self, header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let sig: Vec<u8> = match self {
            Signer::P256(k) => k.sign(&SystemRandom::new(), input.as_bytes()).expect("ECDSA signing").as_ref().to_vec(),
            Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// The signer of the session issuer's key.
pub fn session_signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::p256(SESSION_P256))
}

/// The session-token issuer, with the one fixed key.
pub fn session_issuer() -> &'static Issuer {
    static I: OnceLock<Issuer> = OnceLock::new();
    I.get_or_init(|| {
        let key = SigningKey::from_pkcs8(&hex(SESSION_P256), OffsetDateTime::UNIX_EPOCH).expect("fixed session key");
        Issuer::new(SESSION_ISSUER.into(), SESSION_SERVICE.into(), Arc::new(KeySet::new(vec![key]).expect("one key")))
    })
}

/// The external issuers' ES256 signer.
pub fn external_ec_signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::p256(EXTERNAL_P256))
}

/// The external issuer's EdDSA signer.
pub fn external_ed_signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        Signer::Ed25519(Ed25519KeyPair::from_seed_unchecked(&hex(EXTERNAL_ED25519_SEED)).expect("fixed Ed25519 seed"))
    })
}

fn ec_jwk(kid: Option<&str>) -> serde_json::Value {
    let Signer::P256(k) = external_ec_signer() else { unreachable!("the external EC signer is P-256") };
    let point = k.public_key().as_ref();
    let mut jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(point.get(1..33).expect("uncompressed point")),
        "y": URL_SAFE_NO_PAD.encode(point.get(33..65).expect("uncompressed point")),
        "use": "sig",
    });
    if let Some(kid) = kid {
        jwk["kid"] = kid.into();
    }
    jwk
}

fn ed_jwk() -> serde_json::Value {
    let Signer::Ed25519(k) = external_ed_signer() else { unreachable!("the external Ed signer is Ed25519") };
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref()),
        "kid": EXT_ED_KID,
    })
}

/// Two external issuers read from JWKS files: `idp` (ES256 and EdDSA keys with `kid`s,
/// `sub` required, two claim rules) and `ci` (one ES256 key without a `kid`, no rules).
pub fn external_issuers() -> &'static ExternalIssuers {
    static E: OnceLock<ExternalIssuers> = OnceLock::new();
    E.get_or_init(|| {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let idp_file = dir.join(format!("scopegate-fuzz-{pid}-idp.json"));
        let ci_file = dir.join(format!("scopegate-fuzz-{pid}-ci.json"));
        let idp_jwks = serde_json::json!({"keys": [ec_jwk(Some(EXT_EC_KID)), ed_jwk()]});
        let ci_jwks = serde_json::json!({"keys": [ec_jwk(None)]});
        std::fs::write(&idp_file, idp_jwks.to_string()).expect("write JWKS file");
        std::fs::write(&ci_file, ci_jwks.to_string()).expect("write JWKS file");
        let rule = |claim: &str, value: &str, map: &str| ClaimRule {
            claim: claim.split('.').map(str::to_owned).collect(),
            value: value.into(),
            scope_map: MapName::parse(map).expect("map name"),
        };
        let settings = |name: &str, iss: &str, file: &std::path::Path, algorithms: Vec<Algorithm>| IssuerSettings {
            name: name.into(),
            issuer: iss.into(),
            audience: EXT_AUDIENCE.into(),
            jwks: JwksSource::File(file.to_path_buf()),
            ca_file: None,
            algorithms,
            refetch_interval: Duration::from_secs(60),
            cache_for: Duration::from_secs(3600),
            leeway_secs: EXT_LEEWAY,
            required_claims: Vec::new(),
            rules: Vec::new(),
        };
        let mut idp = settings(EXT_NAME, EXT_ISS, &idp_file, vec![Algorithm::ES256, Algorithm::EdDSA]);
        idp.required_claims = vec!["sub".into()];
        idp.rules = vec![rule("groups", "pushers", "pushers"), rule("realm_access.roles", "reader", "readers")];
        let ci = settings(EXT_CI_NAME, EXT_CI_ISS, &ci_file, vec![Algorithm::ES256]);
        let issuers = ExternalIssuers::new(&[idp, ci]).expect("external issuers");
        // the keys are read once, at setup
        let _ = std::fs::remove_file(&idp_file);
        let _ = std::fs::remove_file(&ci_file);
        issuers
    })
}

/// Runs a future that must finish without waiting (verification against fixed keys).
pub fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification against fixed keys waited"),
    }
}

/// Splits at the first `sep`; everything is the head when `sep` is absent.
pub fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..)),
        None => (data, None),
    }
}
