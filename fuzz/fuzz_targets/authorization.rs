//! Fuzzes `Authorization` header parsing (`auth::Credential::extract`): the Basic and
//! Bearer schemes and the `apikey` / `bearer` usernames. Input: header values separated by
//! `\n` (empty input: no header at all).
//!
//! Invariants checked:
//! - no header is "no credential"; two or more headers always fail;
//! - a parsed Basic credential has a username without `:`, and re-encoding it as Basic
//!   parses to the same username and password; its kind follows the username;
//! - a parsed Bearer token is non-empty, holds no space, and `Bearer <token>` parses to the
//!   same token;
//! - a failure of one ASCII header is flagged as a Bearer failure exactly for the Bearer
//!   scheme, and every failure's reason is fixed text (so it cannot echo the credential).

#![no_main]

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scopegate::auth::{Credential, APIKEY_USERNAME, BEARER_USERNAME};
use scopegate::policy::CredentialKind;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    if !data.is_empty() {
        for line in data.split(|b| *b == b'\n') {
            let Ok(v) = HeaderValue::from_bytes(line) else { return };
            headers.append(AUTHORIZATION, v);
        }
    }
    let count = headers.get_all(AUTHORIZATION).iter().count();
    let got = Credential::extract(&headers);
    match (&got, count) {
        (Ok(Credential::None), 0) => return,
        (_, 0) => panic!("no header gave {got:?}"),
        (Ok(c), n) if n > 1 => panic!("{n} headers gave {c:?}"),
        _ => {}
    }
    let Some(value) = headers.get(AUTHORIZATION) else { return };
    let scheme = value.as_bytes().split(|b| *b == b' ').next().unwrap_or_default();
    match got {
        Ok(Credential::None) => panic!("a header gave no credential"),
        Ok(Credential::Basic { username, password }) => {
            assert!(scheme.eq_ignore_ascii_case(b"basic"), "Basic credentials from scheme {scheme:?}");
            assert!(!username.contains(':'), "username {username:?} holds ':'");
            let want = match username.as_str() {
                APIKEY_USERNAME => CredentialKind::ApiKey,
                BEARER_USERNAME => CredentialKind::External,
                _ => CredentialKind::Basic,
            };
            let again = Credential::Basic { username: username.clone(), password: password.clone() };
            assert_eq!(again.kind(), want, "kind of username {username:?}");
            let encoded = format!("Basic {}", STANDARD.encode(format!("{username}:{}", password.expose())));
            match reparse(&encoded) {
                Credential::Basic { username: u, password: p } => {
                    assert_eq!(u, username);
                    assert_eq!(p, password);
                }
                other => panic!("re-encoded Basic credentials gave {other:?}"),
            }
        }
        Ok(Credential::Bearer(token)) => {
            assert!(scheme.eq_ignore_ascii_case(b"bearer"), "a Bearer token from scheme {scheme:?}");
            let t = token.expose();
            assert!(!t.is_empty() && !t.contains(' '), "Bearer token {t:?}");
            assert_eq!(Credential::Bearer(token.clone()).kind(), CredentialKind::Session);
            match reparse(&format!("Bearer {t}")) {
                Credential::Bearer(again) => assert_eq!(again, token),
                other => panic!("re-encoded Bearer token gave {other:?}"),
            }
        }
        Err(f) => {
            // a value that is not visible ASCII fails before its scheme is read
            if count == 1 && value.to_str().is_ok() {
                assert_eq!(f.bearer, scheme.eq_ignore_ascii_case(b"bearer"), "bearer flag of {f:?} for scheme {scheme:?}");
            }
            // fixed text cannot echo what was presented
            assert!(matches!(f.reason, Cow::Borrowed(_)), "reason {:?} is built at run time", f.reason);
        }
    }
});

fn reparse(value: &str) -> Credential {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{value:?}: {e}")));
    Credential::extract(&h).unwrap_or_else(|f| panic!("{value:?}: {f:?}"))
}
