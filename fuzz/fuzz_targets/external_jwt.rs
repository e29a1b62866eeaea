//! Fuzzes verification of external issuers' JWTs (`auth::external::ExternalIssuers::verify`)
//! against two issuers with fixed JWKS files. Input: either a token as presented (any text),
//! or, when it starts with `{`, `<header JSON>\n<claims JSON>` that the harness signs: with
//! the Ed25519 key when the header holds the Ed25519 key's `kid`, else with the P-256 key.
//!
//! Invariants checked for every token that verifies:
//! - it names a configured issuer, is not expired by the clock it was checked with (with
//!   the issuer's leeway), and carries every required claim;
//! - a harness-signed token verifies only under the algorithm of the key that signed it;
//! - the scope maps are among the ones the issuer's rules name, each at most once;
//! - verifying twice gives the same identity.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::auth::external::Identity;
use scopegate_fuzz::{
    external_ec_signer, external_ed_signer, external_issuers, poll_once, split_at_byte, EXT_CI_NAME, EXT_ED_KID, EXT_LEEWAY,
    EXT_NAME, EXT_RULE_MAPS, NOW,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (token, signer_alg) = if data.first() == Some(&b'{') {
        let (header, claims) = split_at_byte(data, b'\n');
        let names_ed = header.windows(EXT_ED_KID.len()).any(|w| w == EXT_ED_KID.as_bytes());
        let signer = if names_ed { external_ed_signer() } else { external_ec_signer() };
        (signer.sign(header, claims.unwrap_or_default()), Some(signer.alg()))
    } else {
        match std::str::from_utf8(data) {
            Ok(t) => (t.to_owned(), None),
            Err(_) => return,
        }
    };
    let issuers = external_issuers();
    let Ok(id) = poll_once(issuers.verify(&token, NOW)) else { return };
    check_identity(&token, &id);
    if let Some(alg) = signer_alg {
        let header = jsonwebtoken::decode_header(&token).unwrap_or_else(|e| panic!("{token:?} verified, its header does not decode: {e}"));
        assert_eq!(header.alg, alg, "{token:?} verified under an algorithm its key does not sign with");
    }
    let again = poll_once(issuers.verify(&token, NOW));
    assert_eq!(again.as_ref(), Ok(&id), "{token:?} verifies differently the second time");
});

fn check_identity(token: &str, id: &Identity) {
    assert!(id.issuer == EXT_NAME || id.issuer == EXT_CI_NAME, "{token:?} verified for issuer {:?}", id.issuer);
    assert!(i128::from(id.expires_at) + i128::from(EXT_LEEWAY) > i128::from(NOW), "{token:?} verifies after its exp");
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .unwrap_or_else(|e| panic!("{token:?} verified, its claims do not decode: {e}"));
    if id.issuer == EXT_NAME {
        assert!(claims.get("sub").is_some_and(|s| !s.is_null()), "{token:?} verified without the required sub");
    } else {
        assert!(id.maps.is_empty(), "{token:?}: an issuer without rules granted {:?}", id.maps);
    }
    assert_eq!(id.subject, claims.get("sub").and_then(Value::as_str).unwrap_or_default(), "{token:?}: subject differs from sub");
    for (i, m) in id.maps.iter().enumerate() {
        assert!(EXT_RULE_MAPS.contains(&m.to_string().as_str()), "{token:?}: map {m} is not named by a rule");
        assert!(!id.maps.iter().skip(i + 1).any(|o| o == m), "{token:?}: map {m} granted twice");
    }
}
