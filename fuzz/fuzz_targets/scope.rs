//! Fuzzes the token server's `scope` grammar (`token::scope::parse`) and the action words
//! of `access`. Input: one `scope` parameter value, as the token server receives it after
//! form decoding (UTF-8 text).
//!
//! Invariants checked:
//! - one scope per non-empty space-separated part, and a value parses iff every part does;
//! - every repository or catalog scope formats back to `type:name:actions` and re-parses to
//!   the same value, and the whole list re-parses to the same list;
//! - the access a full grant would carry, formatted as the token response's `scope`,
//!   re-parses to the same access (claim words are a bijection);
//! - what request words ask for is always within what is held.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::access::{Access, ActionSet};
use scopegate::token::scope::{format_access, parse, Scope};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    let parsed = parse(value);
    let parts: Vec<&str> = value.split(' ').filter(|s| !s.is_empty()).collect();
    let each: Vec<_> = parts.iter().map(|p| parse(p)).collect();
    assert_eq!(parsed.is_ok(), each.iter().all(Result::is_ok), "{value:?}: the value and its parts disagree");
    let Ok(scopes) = parsed else { return };
    assert_eq!(scopes.len(), parts.len(), "{value:?}: one scope per part");
    for (s, one) in scopes.iter().zip(&each) {
        assert_eq!(one.as_ref().ok(), Some(&vec![s.clone()]), "{value:?}: a part parses alone as in the list");
    }

    let known: Vec<&Scope> = scopes.iter().filter(|s| !matches!(s, Scope::Other)).collect();
    let texts: Vec<String> = known.iter().map(|s| format_scope(s)).collect();
    for (s, text) in known.iter().zip(&texts) {
        assert_eq!(parse(text).as_ref().ok(), Some(&vec![(*s).clone()]), "{text:?} does not re-parse to {s:?}");
    }
    let joined = texts.join(" ");
    let again = parse(&joined).unwrap_or_else(|e| panic!("{joined:?}: {e}"));
    assert_eq!(again.iter().collect::<Vec<_>>(), known, "{joined:?} re-parses to a different list");

    // what a grant of everything held would carry, through the token response and back
    let mut access = Access::default();
    for s in &scopes {
        match s {
            Scope::Repository { name, actions } => {
                let want = ActionSet::from_request_words(actions.iter().map(String::as_str), ActionSet::ALL);
                let partial = ActionSet::from_request_words(actions.iter().map(String::as_str), ActionSet::EMPTY);
                assert!(partial.is_empty(), "words grant beyond an empty holding");
                access.add(name.clone(), want);
            }
            Scope::Catalog { actions } => access.catalog |= actions.iter().any(|a| a == "*"),
            Scope::Other => {}
        }
    }
    let formatted = format_access(&access);
    let back = parse(&formatted).unwrap_or_else(|e| panic!("formatted access {formatted:?}: {e}"));
    let mut rebuilt = Access::default();
    for s in back {
        match s {
            Scope::Repository { name, actions } => {
                let set = ActionSet::from_claim_words(actions.iter().map(String::as_str))
                    .unwrap_or_else(|| panic!("{formatted:?}: claim words do not read back"));
                assert!(!set.is_empty(), "{formatted:?}: an empty action set was formatted");
                rebuilt.add(name, set);
            }
            Scope::Catalog { actions } => {
                assert_eq!(actions, ["*"], "{formatted:?}: catalog access is always *");
                rebuilt.catalog = true;
            }
            Scope::Other => panic!("{formatted:?}: formatted access holds a scope we do not serve"),
        }
    }
    assert_eq!(rebuilt, access, "{formatted:?} reads back as different access");
});

/// `type:name:actions`, the text a client sends for this scope.
fn format_scope(s: &Scope) -> String {
    match s {
        Scope::Repository { name, actions } => format!("repository:{name}:{}", actions.join(",")),
        Scope::Catalog { actions } => format!("registry:catalog:{}", actions.join(",")),
        Scope::Other => unreachable!("unknown scopes are not formatted"),
    }
}
