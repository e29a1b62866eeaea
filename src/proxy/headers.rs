//! Header hygiene at both crossings. Toward the registry: hop-by-hop headers (and those the
//! client's `Connection` names), the client's credentials, and every client-sent forwarding
//! header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are dropped, since the registry would
//! build URLs from them; `Host` is the upstream's. Back to the client: hop-by-hop headers
//! are dropped and a `Location` on the upstream's origin is rewritten to the public origin
//! (other hosts, such as storage redirects, are left alone).
//!
//! No header is added here that the registry could take for the client's.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop and proxy headers (RFC 9110 §7.6.1) plus `Expect`, which the gateway's own
/// HTTP stack answers.
const HOP_BY_HOP: [&str; 9] =
    ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

/// Client headers the registry must never see (and any other `x-forwarded-*`).
const CLIENT_ONLY: [&str; 10] = [
    "authorization",
    "cookie",
    "host",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
];

/// Removes every header `drop` names, and those the message's `Connection` header names.
/// One pass over the names present (a message carries a handful), then one removal each.
fn strip(h: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let gone: Vec<HeaderName> = h.keys().filter(|k| drop(k.as_str()) || named.contains(k)).cloned().collect();
    for n in gone {
        h.remove(n);
    }
}

fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Prepares the client's headers for the registry.
pub fn to_upstream(h: &mut HeaderMap) {
    strip(h, |n| hop_by_hop(n) || CLIENT_ONLY.contains(&n) || n.starts_with("x-forwarded-"));
}

/// Prepares the registry's headers for the client. `upstream_origin` is the registry's own
/// `scheme://authority` (what it writes into absolute Locations); `public_origin` replaces it.
pub fn to_client(h: &mut HeaderMap, upstream_origin: &str, public_origin: &str) {
    strip(h, hop_by_hop);
    if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        if let Some(rest) = loc.strip_prefix(upstream_origin).filter(|r| r.starts_with('/')) {
            if let Ok(v) = HeaderValue::from_str(&format!("{public_origin}{rest}")) {
                h.insert(header::LOCATION, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_forwarding_and_credentials_never_reach_the_registry() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Basic eDp5"),
            ("forwarded", "host=evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/x"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "public.example"),
            ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ("content-length", "10"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        to_upstream(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "content-length"]);
    }

    #[test]
    fn upstream_locations_are_rewritten_and_foreign_ones_kept() {
        let up = "http://127.0.0.1:5001";
        let public = "https://registry.example.com";
        let cases = [
            ("http://127.0.0.1:5001/v2/a/blobs/uploads/u?_state=x", "https://registry.example.com/v2/a/blobs/uploads/u?_state=x"),
            ("/v2/a/blobs/uploads/u", "/v2/a/blobs/uploads/u"),
            ("https://bucket.s3.example/blob?sig=1", "https://bucket.s3.example/blob?sig=1"),
            ("http://127.0.0.1:50011/v2/x", "http://127.0.0.1:50011/v2/x"),
        ];
        for (from, to) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_str(from).unwrap());
            to_client(&mut h, up, public);
            assert_eq!(h[header::LOCATION], to, "{from}");
        }
    }
}
