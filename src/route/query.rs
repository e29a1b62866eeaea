//! Strict query-string parsing for `/v2` routes. A query is accepted only if every byte is
//! one a URL query may hold, every `%` escape is well formed, no `;` appears (Go drops such
//! pairs; we refuse them so no two parsers can disagree), and the decoded text is UTF-8.
//! Keys a route does not know are dropped (never forwarded); security-relevant keys may
//! appear once.
//!
//! This module does not interpret values; `route` turns them into typed fields.

use crate::reject::{Code, Rejection};

/// The decoded pairs of a query string, in order.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, Rejection> {
        let Some(raw) = raw else { return Ok(Query(Vec::new())) };
        let b = raw.as_bytes();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'%' => {
                    let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                    if !(hex(i + 1) && hex(i + 2)) {
                        return Err(bad("query has an invalid percent-escape"));
                    }
                    i += 3;
                    continue;
                }
                b';' => return Err(bad("query contains ';'")),
                c if c.is_ascii_alphanumeric() || b"-._~!$'()*+,=:@/?&".contains(&c) => {}
                _ => return Err(bad("query contains a character that must be percent-encoded")),
            }
            i += 1;
        }
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(b).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        if pairs.iter().any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')) {
            return Err(bad("query is not valid UTF-8"));
        }
        Ok(Query(pairs))
    }

    /// The single value of `key`; present twice is an error.
    pub fn one(&self, key: &str) -> Result<Option<&str>, Rejection> {
        let mut it = self.0.iter().filter(|(k, _)| k == key);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(bad(format!("query parameter {key:?} given more than once")));
        }
        Ok(first)
    }

    /// Every value of a repeatable key.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn bad(msg: impl Into<std::borrow::Cow<'static, str>>) -> Rejection {
    Rejection::bad_request(Code::InvalidRequest, msg)
}

/// Builds a query string from pairs (the forwarded query is always rebuilt, never copied).
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}
