//! Fuzzes verification of our own session and refresh tokens (`token::jwt::Issuer::verify`
//! and `is_ours`) with one fixed key. Input: either a token as presented (any text), or,
//! when it starts with `{`, `<header JSON>\n<claims JSON>` that the harness signs with the
//! issuer's key, so the header and claim parsers behind the signature check are reached.
//!
//! Invariants checked for every token that verifies:
//! - it names one of our keys, is not expired by the clock it was checked with, and
//!   verifies for exactly one use (a session is never a refresh token);
//! - minting its holder and access again gives a token that verifies to the same holder
//!   and access.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::token::jwt::{Mint, Use, Verified};
use scopegate_fuzz::{session_issuer, session_signer, split_at_byte, NOW};

/// The issuer's leeway for `exp` and `nbf`.
const LEEWAY: i64 = 5;

fuzz_target!(|data: &[u8]| {
    let token = if data.first() == Some(&b'{') {
        let (header, claims) = split_at_byte(data, b'\n');
        session_signer().sign(header, claims.unwrap_or_default())
    } else {
        match std::str::from_utf8(data) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    };
    let issuer = session_issuer();
    let ours = issuer.is_ours(&token);
    let access = issuer.verify(&token, Use::Access, NOW);
    let refresh = issuer.verify(&token, Use::Refresh, NOW);
    assert!(access.is_err() || refresh.is_err(), "{token:?} verifies as a session and as a refresh token");
    for (want, got) in [(Use::Access, access), (Use::Refresh, refresh)] {
        let Ok(v) = got else { continue };
        assert!(ours, "{token:?} verifies but is not ours");
        assert!(i128::from(v.expires_at) + i128::from(LEEWAY) > i128::from(NOW), "{token:?} verifies after its exp");
        remint(want, &v);
    }
});

fn remint(want: Use, v: &Verified) {
    let issuer = session_issuer();
    let again = issuer
        .mint(&Mint { token_use: want, holder: &v.holder, access: &v.access, issued_at: NOW, expires_at: v.expires_at })
        .unwrap_or_else(|e| panic!("re-minting {v:?}: {e}"));
    let back = issuer.verify(&again, want, NOW).unwrap_or_else(|e| panic!("re-minted {v:?} does not verify: {e}"));
    assert_eq!(back.holder, v.holder, "holder changed through minting");
    assert_eq!(back.access, v.access, "access changed through minting");
    assert_eq!(back.expires_at, v.expires_at, "expiry changed through minting");
}
