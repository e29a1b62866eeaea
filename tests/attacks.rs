//! Attack suite: hostile requests written byte for byte onto a TCP socket, against an
//! in-process gateway on port 0 whose upstream is a fake registry that records everything it
//! receives. Every case asserts the exact answer the gateway gives today and that the
//! registry saw nothing it should not have (usually: nothing at all). The classes are path
//! confusion and canonicalization, cross-repository mounts, the method allowlist, header
//! hygiene and `Location` rewriting, request smuggling, JWT forgery, credential handling,
//! catalog leaks and pagination, anonymous access, the admin API, and size limits.
//! `SECURITY-CASES.md` at the repository root says why each case matters.
//!
//! Cases that show a weakness of the product assert the correct behaviour and are marked

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;
#[path = "support/test_key.rs"]
mod test_key;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::config::{RawConfig, RawIssuer, RawRule};
use serde_json::{json, Value};
use support::{basic, FakeRegistry, Harness, Seen, ADMIN, DIGEST};
use test_key::TestKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ===================================================================================
// The wire: raw requests out, parsed responses back
// ===================================================================================

/// The Host every raw request names (the gateway must not care).
const HOST: &str = "scopegate.test";
/// Every action there is.
const ALL: &[&str] = &["content/read", "content/write", "content/delete", "metadata/read", "metadata/write"];
/// A request that is answered 401 without reaching the registry; sent last on a connection
/// to see whether the gateway still reads requests there.
const SENTINEL: &str = "GET /v2/ HTTP/1.1\r\nHost: scopegate.test\r\nConnection: close\r\n\r\n";
/// What a smuggled request asks for: if it ever ran, the registry would record this path.
const SMUGGLED: &str = "/v2/mine/manifests/smuggled";

/// One response as read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    /// The first value of a response header (case-insensitive name).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn count(&self, name: &str) -> usize {
        self.head.lines().skip(1).filter(|l| l.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))).count()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The Docker error code of the body.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }

    /// Answered by the gateway's own code (it adds a request id), not by the HTTP layer
    /// refusing to parse the request.
    fn by_gateway(&self) -> bool {
        self.header("x-request-id").is_some()
    }
}

/// Everything written back on one connection until the gateway closed it.
struct Wire {
    replies: Vec<Reply>,
    text: String,
}

impl Wire {
    fn statuses(&self) -> Vec<u16> {
        self.replies.iter().map(|r| r.status).collect()
    }

    /// The only reply; anything else fails with the transcript.
    fn one(&self, case: &str) -> &Reply {
        assert_eq!(self.replies.len(), 1, "{case}: expected exactly one reply, got:\n{}", self.text);
        &self.replies[0]
    }
}

/// Writes `bytes` to `addr` and reads until the peer closes (a reset ends the read too).
/// The write half stays open while reading, so the gateway never sees a half-close.
async fn wire(addr: SocketAddr, bytes: &[u8]) -> Wire {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.split();
    let write = async {
        let _ = w.write_all(bytes).await;
    };
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    // a safety net against a hung test, not an ordering device
    let done = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) }).await;
    assert!(done.is_ok(), "the connection was still open after 30 s; read so far:\n{}", String::from_utf8_lossy(&out));
    Wire { replies: parse_replies(&out), text: String::from_utf8_lossy(&out).into_owned() }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_replies(mut rest: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut after = &rest[end + 4..];
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut reply = Reply { status, head, body: String::new() };
        let body: Vec<u8> = if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(n) = reply.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = n.min(after.len());
            let b = after[..n].to_vec();
            after = &after[n..];
            b
        } else if reply.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut b = Vec::new();
            while let Some(eol) = find(after, b"\r\n") {
                let size = usize::from_str_radix(String::from_utf8_lossy(&after[..eol]).trim(), 16).unwrap_or(0);
                after = &after[eol + 2..];
                if size == 0 {
                    after = after.get(2..).unwrap_or_default();
                    break;
                }
                let n = size.min(after.len());
                b.extend_from_slice(&after[..n]);
                after = after.get(n + 2..).unwrap_or_default();
            }
            b
        } else {
            let b = after.to_vec();
            after = &[];
            b
        };
        reply.body = String::from_utf8_lossy(&body).into_owned();
        out.push(reply);
        rest = after;
    }
    out
}

/// A request head (and body) that asks the gateway to close the connection after it.
fn closing(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("Connection: close\r\n\r\n");
    s.push_str(body);
    s
}

/// The same, keeping the connection open for a following request.
fn keeping(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// A complete request that, if the gateway ever parsed and ran it, would reach the registry.
fn smuggled(auth: &str) -> String {
    format!("GET {SMUGGLED} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {auth}\r\n\r\n")
}

fn targets(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| format!("{} {}", s.method, s.target)).collect()
}

/// The registry received nothing at all.
fn assert_untouched(h: &Harness, case: &str) {
    let seen = h.upstream.seen();
    assert!(seen.is_empty(), "{case}: the registry received {:?}", targets(&seen));
}

/// A Docker-shaped error from the gateway's own `/v2` code.
fn assert_docker_error(r: &Reply, case: &str) {
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"), "{case}: {}", r.head);
    assert!(r.body.contains("\"errors\""), "{case}: {}", r.body);
}

// ===================================================================================
// Fixtures
// ===================================================================================

/// A gateway with two callers: token `ci` (every action on exactly `mine`, content/read on
/// `pub/base`) and token `root` (every action everywhere).
struct Fx {
    h: Harness,
    /// `Authorization` value of token `ci`.
    mine: String,
    /// `Authorization` value of token `root`.
    root: String,
}

async fn fixture() -> Fx {
    fixture_on(Harness::start_configured(FakeRegistry::start().await, tempfile::tempdir().unwrap(), no_throttle).await).await
}

/// The cases send many wrong credentials from one address on purpose; the failed-login
/// throttle would answer them 429 before they are looked at. It has tests of its own
/// (`failed_logins_slow_down_then_lock_out_with_429_even_for_the_right_password` and
/// `unknown_token_names_are_throttled_like_real_ones` in tests/gateway.rs).
fn no_throttle(raw: &mut RawConfig) {
    raw.limits.failed_logins.enabled = false;
}

async fn fixture_on(h: Harness) -> Fx {
    let pw = h.token("ci", &[("mine", ALL), ("pub/base", &["content/read"])]).await;
    let rpw = h.token("root", &[("*", ALL)]).await;
    Fx { mine: basic("ci", &pw), root: basic("root", &rpw), h }
}

impl Fx {
    async fn send(&self, bytes: impl AsRef<[u8]>) -> Wire {
        wire(self.h.gw.public_addr, bytes.as_ref()).await
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// The decoded payload of a JWT (unverified).
fn payload(jwt: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// The decoded header of a JWT (unverified).
fn jwt_header(jwt: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').next().unwrap()).unwrap()).unwrap()
}

/// A session token for `auth` and `scopes`, fetched from the token endpoint.
async fn session(fx: &Fx, auth: &str, scopes: &[&str]) -> String {
    let q: String = scopes.iter().map(|s| format!("&scope={}", form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())).collect();
    let w = fx.send(closing("GET", &format!("/token?service=scopegate{q}"), &[("Authorization", auth)], "")).await;
    let r = w.one("session");
    assert_eq!(r.status, 200, "session: {}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// The P-256 public key of a JWK as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
fn ec_public_pem(jwk: &Value) -> String {
    let coord = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
    let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    der.push(4);
    der.extend(coord("x"));
    der.extend(coord("y"));
    let b = STANDARD.encode(der);
    let lines: Vec<&str> = b.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A loopback listener that nobody should ever connect to; `touched` says whether someone did.
struct Trap {
    listener: std::net::TcpListener,
}

impl Trap {
    fn new() -> Trap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Trap { listener }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.listener.local_addr().unwrap())
    }

    /// A connection the kernel already completed is waiting: someone dialled the trap.
    fn touched(&self) -> bool {
        self.listener.accept().is_ok()
    }
}

// ===================================================================================
// Path confusion and canonicalization
// ===================================================================================

/// Percent-encoding anywhere in the path is refused: the registry decodes once, so `%2f`
/// would split a name and `%2e%2e` would climb, behind a gateway that matched the raw text.
#[tokio::test]
async fn percent_encoded_paths_are_refused_before_the_registry() {
    let fx = fixture().await;
    let hex = &DIGEST[7..];
    let cases = [
        "/v2/mine/%2e%2e/victim/manifests/latest",
        "/v2/mine/%2E%2E/victim/manifests/latest",
        "/v2/mine/%2e/manifests/latest",
        "/v2/mine%2fvictim/manifests/latest",
        "/v2/mine%2Fvictim/manifests/latest",
        "/v2/mine/%252e%252e/victim/manifests/latest",
        "/v2/mine%252fvictim/manifests/latest",
        "/v2/%6dine/manifests/latest",
        "/v2/mine/manifests/latest%00",
        "/v2/mine/manifests/latest%00.json",
        "/v2/mine/%c0%ae%c0%ae/victim/manifests/latest",
        "/v2/mine/%e0%80%ae%e0%80%ae/victim/manifests/latest",
        "/v2/mine%5c..%5cvictim/manifests/latest",
        "/v2/mine/manifests/%2e%2e%2f%2e%2e%2fvictim%2fmanifests%2flatest",
        &format!("/v2/mine/blobs/sha256%3a{hex}"),
        "/v2/mine/manifests/lat%65st",
        "/v2/_catalog%3fn=1",
        "/v2/mine/manifests/latest%",
        "/v2/mine/manifests/latest%zz",
        "/scopegate/v1/mine%2fvictim",
    ];
    for target in cases {
        let w = fx.send(closing("GET", target, &[("Authorization", &fx.root)], "")).await;
        let r = w.one(target);
        assert_eq!(r.status, 400, "{target}: {}", w.text);
        assert_eq!(r.code(), "INVALID_REQUEST", "{target}");
        assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("percent-encoding"), "{target}: {}", r.body);
        assert_docker_error(r, target);
    }
    assert_untouched(&fx.h, "percent-encoded paths");
}

/// Dot segments, empty segments and trailing-slash variants: the registry cleans or
/// redirects them (`path.Clean`, `StrictSlash`), so the gateway refuses rather than repairs.
#[tokio::test]
async fn dot_empty_and_trailing_slash_segments_are_refused() {
    let fx = fixture().await;
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/v2/victim/../mine/manifests/latest", 400),
        ("GET", "/v2/mine/../victim/manifests/latest", 400),
        ("GET", "/v2/../v2/victim/manifests/latest", 400),
        ("GET", "/v2/mine/./manifests/latest", 400),
        ("GET", "/v2/./mine/manifests/latest", 400),
        ("GET", "/v2/mine/manifests/..", 400),
        ("GET", "/v2/mine/manifests/.", 400),
        ("GET", "/v2/.", 400),
        ("GET", "/v2/..", 400),
        ("POST", "/v2/mine/blobs/uploads/.", 400),
        ("GET", "/v2//mine/manifests/latest", 400),
        ("GET", "/v2/mine//manifests/latest", 400),
        ("GET", "/v2/mine/manifests//latest", 400),
        ("POST", "/v2/mine/blobs/uploads//", 400),
        ("GET", "/v2/mine/manifests/latest/", 404),
        ("GET", "/v2/mine/tags/list/", 404),
        ("GET", "/v2/_catalog/", 404),
        ("GET", &format!("/v2/mine/blobs/{DIGEST}/"), 404),
        ("POST", "/v2/mine/blobs/uploads", 404),
        ("GET", "/v2", 404),
        ("GET", "/v2/mine", 404),
        ("GET", "/v2/mine/manifests", 404),
    ];
    for (m, target, status) in cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &fx.root)], "")).await;
        let r = w.one(&case);
        assert_eq!(r.status, *status, "{case}: {}", w.text);
        assert_docker_error(r, &case);
    }
    // a doubled leading slash is not under /v2/ at all
    let w = fx.send(closing("GET", "//v2/mine/manifests/latest", &[("Authorization", &fx.root)], "")).await;
    assert_eq!(w.one("//v2").status, 404, "//v2: {}", w.text);
    assert_untouched(&fx.h, "dot, empty and trailing-slash segments");
}

/// Route literals are case-sensitive in the registry (`/V2/` and `Manifests` are 404 there)
/// and names must be lower case; nothing is folded.
#[tokio::test]
async fn case_variants_of_literals_and_names_do_not_route() {
    let fx = fixture().await;
    let hex = &DIGEST[7..];
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/V2/mine/manifests/latest", 404, "NOT_FOUND"),
        ("GET", "/V2/", 404, "NOT_FOUND"),
        ("GET", "/v2/mine/Manifests/latest", 404, "UNSUPPORTED"),
        ("GET", "/v2/mine/MANIFESTS/latest", 404, "UNSUPPORTED"),
        ("GET", "/v2/mine/TAGS/LIST", 404, "UNSUPPORTED"),
        ("GET", "/v2/mine/tags/List", 404, "UNSUPPORTED"),
        ("GET", &format!("/v2/mine/Blobs/{DIGEST}"), 404, "UNSUPPORTED"),
        ("POST", "/v2/mine/blobs/Uploads/", 404, "UNSUPPORTED"),
        ("GET", "/v2/_Catalog", 404, "UNSUPPORTED"),
        ("GET", "/v2/Mine/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/mine/Victim/manifests/latest", 400, "NAME_INVALID"),
        ("GET", &format!("/v2/mine/manifests/SHA256:{hex}"), 400, "DIGEST_INVALID"),
        ("GET", &format!("/v2/mine/blobs/sha256:{}", hex.to_uppercase()), 400, "DIGEST_INVALID"),
        ("GET", "/scopegate/V1/mine", 404, "NOT_FOUND"),
    ];
    for (m, target, status, code) in cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &fx.root)], "")).await;
        let r = w.one(&case);
        assert_eq!((r.status, r.code().as_str()), (*status, *code), "{case}: {}", w.text);
    }
    assert_untouched(&fx.h, "case variants");
}

/// Bytes no registry route uses: non-ASCII (including look-alikes of `/` and `.`), raw
/// overlong UTF-8, backslashes, `;` path parameters, controls. Some never get past the HTTP
/// parser (answered 400 before the gateway sees them); the rest the gateway refuses itself.
#[tokio::test]
async fn foreign_bytes_in_the_path_are_refused() {
    let fx = fixture().await;
    // (case, raw request target, answered by the gateway's code rather than the HTTP layer)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("utf-8 letter", "/v2/m\u{ef}ne/manifests/latest".into(), true),
        ("fullwidth solidus", "/v2/mine\u{ff0f}victim/manifests/latest".into(), true),
        ("one-dot leader pair", "/v2/mine/\u{2024}\u{2024}/victim/manifests/latest".into(), true),
        ("raw overlong dot", b"/v2/mine/\xc0\xae\xc0\xae/victim/manifests/latest".to_vec(), false),
        ("raw latin-1 byte", b"/v2/m\xefne/manifests/latest".to_vec(), false),
        ("backslash", b"/v2/mine\\..\\victim/manifests/latest".to_vec(), true),
        ("backslash separator", b"/v2/mine\\manifests\\latest".to_vec(), true),
        ("semicolon in the reference", b"/v2/mine/manifests/latest;v=1".to_vec(), true),
        ("semicolon in the name", b"/v2/mine;x=1/manifests/latest".to_vec(), true),
        ("tilde", b"/v2/mine/manifests/~latest".to_vec(), true),
        ("plus", b"/v2/mine/manifests/lat+est".to_vec(), true),
        ("DEL byte", b"/v2/mine/manifests/latest\x7f".to_vec(), false),
        ("tab", b"/v2/mine/manifests/la\ttest".to_vec(), false),
    ];
    for (case, target, by_gateway) in cases {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(&target);
        req.extend_from_slice(format!(" HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n", fx.root).as_bytes());
        let w = fx.send(&req).await;
        let r = w.one(case);
        assert_eq!(r.status, 400, "{case}: {}", w.text);
        assert_eq!(r.by_gateway(), by_gateway, "{case}: {}", w.text);
        if by_gateway {
            assert_docker_error(r, case);
        }
    }
    assert_untouched(&fx.h, "foreign bytes");
}

/// Query strings are parsed strictly: `;` (which Go's parser drops, so two parsers would
/// disagree), bad or non-UTF-8 escapes and characters that must be escaped are refused;
/// what passes is re-encoded, never copied.
#[tokio::test]
async fn malformed_query_strings_are_refused_before_the_registry() {
    let fx = fixture().await;
    // (method, target, what the gateway says; empty when the HTTP layer refuses it first)
    let cases: &[(&str, &str, &str)] = &[
        ("PUT", "/v2/mine/blobs/uploads/u1?digest=sha256:aa;_state=x", "query contains ';'"),
        ("POST", "/v2/mine/blobs/uploads/?mount=sha256:aa;from=victim/secret", "query contains ';'"),
        ("PATCH", "/v2/mine/blobs/uploads/u1?_state=a%zz", "invalid percent-escape"),
        ("PATCH", "/v2/mine/blobs/uploads/u1?_state=a%", "invalid percent-escape"),
        ("PATCH", "/v2/mine/blobs/uploads/u1?_state=%ff%fe", "not valid UTF-8"),
        ("PATCH", "/v2/mine/blobs/uploads/u1?_state=a\\b", "must be percent-encoded"),
        ("GET", "/v2/mine/tags/list?n=1|2", "must be percent-encoded"),
        ("PATCH", "/v2/mine/blobs/uploads/u1?_state=<x>", ""),
    ];
    for (m, target, why) in cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(&case);
        assert_eq!(r.status, 400, "{case}: {}", w.text);
        assert_eq!(r.by_gateway(), !why.is_empty(), "{case}: {}", w.text);
        if !why.is_empty() {
            assert_eq!(r.code(), "INVALID_REQUEST", "{case}");
            assert!(r.body.contains(why), "{case}: {}", r.body);
        }
    }
    assert_untouched(&fx.h, "malformed queries");
    let w = fx.send(closing("PATCH", "/v2/mine/blobs/uploads/u1?_state=a%2Fb%3D%3D&unknown=1", &[("Authorization", &fx.mine)], "")).await;
    assert_eq!(w.one("control").status, 200, "{}", w.text);
    assert_eq!(targets(&fx.h.upstream.seen()), ["PATCH /v2/mine/blobs/uploads/u1?_state=a%2Fb%3D%3D"], "re-encoded, unknown keys dropped");
}

/// Names over 255 characters and tags over 128 are refused (the registry checks them only
/// after authorizing); request targets over the HTTP layer's limit get 414.
#[tokio::test]
async fn overlong_names_tags_and_targets_are_refused() {
    let fx = fixture().await;
    let name255 = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    let name256 = format!("{}/{}", "a".repeat(127), "b".repeat(128));
    let cases = [
        (format!("/v2/{}/manifests/latest", "a".repeat(256)), 400, "NAME_INVALID"),
        (format!("/v2/{name256}/manifests/latest"), 400, "NAME_INVALID"),
        (format!("/v2/mine/manifests/{}", "t".repeat(129)), 400, "TAG_INVALID"),
        (format!("/v2/{name255}/manifests/latest"), 200, ""),
        (format!("/v2/mine/manifests/{}", "t".repeat(128)), 200, ""),
    ];
    for (target, status, code) in &cases {
        let case = format!("{} chars: {}", target.len(), &target[..40]);
        let w = fx.send(closing("GET", target, &[("Authorization", &fx.root)], "")).await;
        let r = w.one(&case);
        assert_eq!(r.status, *status, "{case}: {}", w.text);
        if !code.is_empty() {
            assert_eq!(r.code(), *code, "{case}");
        }
    }
    assert_eq!(targets(&fx.h.upstream.seen()), [format!("GET /v2/{name255}/manifests/latest"), format!("GET /v2/mine/manifests/{}", "t".repeat(128))]);
    fx.h.upstream.clear();
    let long = format!("/v2/mine/manifests/{}", "a".repeat(70_000));
    let w = fx.send(closing("GET", &long, &[("Authorization", &fx.root)], "")).await;
    let r = w.one("70 kB target");
    // a target that long makes the head longer than limits.max_header_bytes (64 KiB)
    assert_eq!(r.status, 431, "70 kB target: {}", r.head);
    assert!(!r.by_gateway(), "the HTTP layer refuses it before the gateway");
    assert_untouched(&fx.h, "overlong targets");
}

/// The name is matched greedily as the registry does, so path suffixes that look like
/// route literals belong to the name: the caller is authorized for the repository the
/// registry will act on, not the first segment.
#[tokio::test]
async fn greedy_names_authorize_the_repository_the_registry_will_use() {
    let fx = fixture().await;
    let cases: &[(&str, String, u16, &str)] = &[
        ("GET", format!("/v2/mine/blobs/uploads/blobs/{DIGEST}"), 403, "blob in mine/blobs/uploads"),
        ("GET", "/v2/mine/manifests/x/manifests/y".into(), 403, "manifest of mine/manifests/x"),
        ("GET", "/v2/mine/tags/list/tags/list".into(), 403, "tags of mine/tags/list"),
        ("PATCH", "/v2/mine/blobs/uploads/blobs/uploads/u1".into(), 403, "upload into mine/blobs/uploads"),
        ("DELETE", format!("/v2/mine/manifests/v1/blobs/{DIGEST}"), 403, "blob of mine/manifests/v1"),
        ("GET", format!("/v2/mine/blobs/{DIGEST}/manifests/v1"), 400, "name holding a digest"),
        ("GET", "/v2/mine/manifests/v1".into(), 200, "control: the granted repository"),
    ];
    for (m, target, status, case) in cases {
        let w = fx.send(closing(m, target, &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, *status, "{case} ({m} {target}): {}", w.text);
        if *status == 403 {
            assert_eq!(r.code(), "DENIED", "{case}");
        }
    }
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/mine/manifests/v1"], "only the control reached the registry");
}

/// A fragment is not part of a request target; the HTTP layer drops it, so the decision and
/// the forwarded path both cover exactly the part before `#`, and no `#` reaches the registry.
#[tokio::test]
async fn a_fragment_never_reaches_the_registry_and_never_changes_the_decision() {
    let fx = fixture().await;
    let cases: &[(&str, u16)] = &[
        ("/v2/mine/manifests/latest#frag", 200),
        ("/v2/victim/manifests/x#/../../../mine/manifests/latest", 403),
        ("/v2/victim/manifests/x#%2f..%2fmine", 403),
    ];
    for (target, status) in cases {
        let w = fx.send(closing("GET", target, &[("Authorization", &fx.mine)], "")).await;
        assert_eq!(w.one(target).status, *status, "{target}: {}", w.text);
    }
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/mine/manifests/latest"]);
}

/// An absolute-form target (as sent to a forward proxy) is decided on its path; its
/// authority never becomes the upstream, the `Host` the registry sees, the realm or a
/// `Location`.
#[tokio::test]
async fn absolute_form_targets_are_decided_on_their_path_and_their_authority_is_ignored() {
    let fx = fixture().await;
    let up = fx.h.upstream.addr;
    let public = fx.h.public();
    let w = fx.send(closing("GET", "http://evil.example/v2/mine/manifests/latest", &[("Authorization", &fx.mine)], "")).await;
    assert_eq!(w.one("absolute-form GET").status, 200, "{}", w.text);
    let seen = fx.h.upstream.seen();
    assert_eq!(targets(&seen), ["GET /v2/mine/manifests/latest"]);
    assert_eq!(seen[0].headers["host"], up.to_string(), "the registry sees its own Host");
    fx.h.upstream.clear();
    let refused: &[(&str, u16)] = &[
        ("http://evil.example/v2/victim/manifests/latest", 403),
        (&format!("http://{up}/v2/victim/manifests/latest"), 403),
        ("http://evil.example/v2/mine%2fx/manifests/latest", 400),
        ("http://evil.example/v2/mine/../victim/manifests/latest", 400),
    ];
    for (target, status) in refused {
        let w = fx.send(closing("GET", target, &[("Authorization", &fx.mine)], "")).await;
        assert_eq!(w.one(target).status, *status, "{target}: {}", w.text);
    }
    assert_untouched(&fx.h, "absolute-form targets that must be refused");
    let w = fx.send(closing("POST", "http://evil.example/v2/mine/blobs/uploads/", &[("Authorization", &fx.mine)], "")).await;
    let r = w.one("absolute-form upload start");
    assert_eq!(r.status, 202, "{}", w.text);
    assert_eq!(r.header("location"), Some(format!("{public}/v2/mine/blobs/uploads/f00d-1?_state=abc").as_str()));
    let w = fx.send(closing("GET", "http://evil.example/v2/", &[], "")).await;
    let r = w.one("absolute-form challenge");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(format!("Bearer realm=\"{public}/token\",service=\"scopegate\"").as_str()));
}

/// `CONNECT host:port` (authority-form) and `OPTIONS *` match no route: the gateway never
/// opens a tunnel (the next bytes on the connection are read as HTTP again) and never
/// forwards them.
#[tokio::test]
async fn authority_form_and_asterisk_targets_are_not_tunnelled_or_forwarded() {
    let fx = fixture().await;
    let up = fx.h.upstream.addr;
    let tunnel = format!("{}{SENTINEL}", keeping("CONNECT", &up.to_string(), &[("Authorization", &fx.root)]));
    let w = fx.send(&tunnel).await;
    assert_eq!(w.statuses(), [404, 401], "CONNECT to the registry: {}", w.text);
    assert!(w.replies[1].header("www-authenticate").is_some(), "the bytes after CONNECT were read as a request");
    let cases: &[(&str, &str, u16)] = &[("CONNECT", "scopegate.test:443", 404), ("OPTIONS", "*", 404), ("CONNECT", "/v2/", 405)];
    for (m, target, status) in cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &fx.root)], "")).await;
        assert_eq!(w.one(&case).status, *status, "{case}: {}", w.text);
    }
    assert_untouched(&fx.h, "authority-form and asterisk targets");
}

/// The realm, `Location` and the registry's `Host` come from configuration and the
/// registry's address, never from the client's `Host` or forwarding headers.
#[tokio::test]
async fn host_header_games_never_steer_the_realm_the_location_or_the_registry() {
    let fx = fixture().await;
    let up = fx.h.upstream.addr;
    let public = fx.h.public();
    let variants = [
        ("foreign Host", "Host: evil.example\r\n".to_owned()),
        ("two Hosts", "Host: evil.example\r\nHost: other.example\r\n".to_owned()),
        ("no Host", String::new()),
        ("the registry's own address", format!("Host: {up}\r\n")),
        ("Host with a path", "Host: evil.example/v2/victim\r\n".to_owned()),
        (
            "forwarding headers",
            "Host: evil.example\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: host=evil.example;proto=https\r\n".to_owned(),
        ),
    ];
    for (case, hosts) in &variants {
        let w = fx.send(format!("GET /v2/ HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n")).await;
        let r = w.one(case);
        assert_eq!(r.status, 401, "{case}: {}", w.text);
        assert_eq!(r.header("www-authenticate"), Some(format!("Bearer realm=\"{public}/token\",service=\"scopegate\"").as_str()), "{case}");
        let w = fx.send(format!("POST /v2/mine/blobs/uploads/ HTTP/1.1\r\n{hosts}Authorization: {}\r\nConnection: close\r\n\r\n", fx.mine)).await;
        let r = w.one(case);
        assert_eq!(r.status, 202, "{case}: {}", w.text);
        assert_eq!(r.header("location"), Some(format!("{public}/v2/mine/blobs/uploads/f00d-1?_state=abc").as_str()), "{case}");
        let seen = fx.h.upstream.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.headers.get_all("host").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>(), [up.to_string()], "{case}");
        for gone in ["forwarded", "x-forwarded-host", "x-forwarded-proto"] {
            assert!(last.headers.get(gone).is_none(), "{case}: {gone} reached the registry");
        }
    }
}

// ===================================================================================
// Cross-repository mount
// ===================================================================================

/// A mount needs content/read on `from`; without it the gateway strips `mount` and `from`
/// and forwards a plain upload start, so the registry never links a blob it may not read.
#[tokio::test]
async fn mount_from_an_unreadable_repository_is_stripped_to_a_plain_upload() {
    let fx = fixture().await;
    let plain = "/v2/mine/blobs/uploads/".to_owned();
    let mounted = |from: &str| format!("/v2/mine/blobs/uploads/?mount=sha256%3A{}&from={}", &DIGEST[7..], from.replace('/', "%2F"));
    let cases = [
        (format!("?mount={DIGEST}&from=victim/secret"), plain.clone(), "unreadable source"),
        (format!("?from=victim/secret&mount={DIGEST}"), plain.clone(), "unreadable source, reordered"),
        (format!("?mount={DIGEST}&from=victim%2Fsecret"), plain.clone(), "unreadable source, encoded slash"),
        (format!("?mount={DIGEST}"), plain.clone(), "mount without from"),
        ("?from=pub/base".to_owned(), plain.clone(), "from without mount"),
        (format!("?mount={DIGEST}&from=pub/base"), mounted("pub/base"), "control: readable source"),
        (format!("?mount={DIGEST}&from=mine"), mounted("mine"), "control: the target itself"),
    ];
    for (query, forwarded, case) in &cases {
        fx.h.upstream.clear();
        let w = fx.send(closing("POST", &format!("/v2/mine/blobs/uploads/{query}"), &[("Authorization", &fx.mine)], "")).await;
        assert_eq!(w.one(case).status, 202, "{case}: {}", w.text);
        assert_eq!(targets(&fx.h.upstream.seen()), [format!("POST {forwarded}")], "{case}");
    }
    fx.h.upstream.clear();
    for (query, code) in [(format!("?mount={DIGEST}&from=Victim/secret"), "NAME_INVALID"), ("?mount=sha256:zz&from=pub/base".to_owned(), "DIGEST_INVALID")] {
        let w = fx.send(closing("POST", &format!("/v2/mine/blobs/uploads/{query}"), &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(&query);
        assert_eq!((r.status, r.code().as_str()), (400, code), "{query}: {}", w.text);
    }
    assert_untouched(&fx.h, "invalid mount parameters");
}

/// The registry reads `from` and `mount` from a form body too, with precedence over the
/// query; a gateway that reads only the query would be fooled, so form and multipart bodies
/// are refused on every `/v2` route.
#[tokio::test]
async fn mount_source_in_a_form_or_multipart_body_is_refused() {
    let fx = fixture().await;
    let start = format!("/v2/mine/blobs/uploads/?mount={DIGEST}&from=mine");
    let form = "from=victim%2Fsecret&mount=sha256%3Aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let multipart = "--b\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\nvictim/secret\r\n--b--\r\n";
    let cases: &[(&str, &str, &str, &str)] = &[
        ("POST", &start, "application/x-www-form-urlencoded", form),
        ("POST", &start, "application/x-www-form-urlencoded; charset=utf-8", form),
        ("POST", &start, "Application/X-WWW-Form-URLEncoded", form),
        ("POST", &start, "application/x-www-form-urlencoded ;", form),
        ("POST", &start, "multipart/form-data; boundary=b", multipart),
        ("POST", &start, "MULTIPART/FORM-DATA; boundary=b", multipart),
        ("POST", &start, "multipart/mixed; boundary=b", multipart),
        ("POST", "/v2/mine/blobs/uploads/", "application/x-www-form-urlencoded", form),
        ("PUT", &format!("/v2/mine/blobs/uploads/u1?digest={DIGEST}"), "application/x-www-form-urlencoded", "digest=sha256%3Abbbb"),
        ("PATCH", "/v2/mine/blobs/uploads/u1", "multipart/form-data; boundary=b", multipart),
    ];
    for (m, target, ct, body) in cases {
        let case = format!("{m} {target} as {ct}");
        let w = fx.send(closing(m, target, &[("Authorization", &fx.mine), ("Content-Type", ct)], body)).await;
        let r = w.one(&case);
        assert_eq!((r.status, r.code().as_str()), (415, "UNSUPPORTED"), "{case}: {}", w.text);
    }
    assert_untouched(&fx.h, "form and multipart bodies");
}

/// Two parsers that disagree on which duplicate wins (first, last) are a bypass; duplicates
/// of the parameters that decide something are refused.
#[tokio::test]
async fn duplicated_security_parameters_are_refused() {
    let fx = fixture().await;
    let cases = [
        ("POST", format!("/v2/mine/blobs/uploads/?mount={DIGEST}&from=pub/base&from=victim/secret")),
        ("POST", format!("/v2/mine/blobs/uploads/?mount={DIGEST}&from=victim/secret&from=pub/base")),
        ("POST", format!("/v2/mine/blobs/uploads/?mount={DIGEST}&mount={DIGEST}&from=pub/base")),
        ("POST", format!("/v2/mine/blobs/uploads/?digest={DIGEST}&digest={DIGEST}")),
        ("PUT", format!("/v2/mine/blobs/uploads/u1?_state=a&_state=b&digest={DIGEST}")),
        ("PUT", format!("/v2/mine/blobs/uploads/u1?digest={DIGEST}&digest={DIGEST}")),
        ("GET", "/v2/mine/tags/list?n=1&n=2".to_owned()),
        ("GET", "/v2/mine/tags/list?last=a&last=b".to_owned()),
        ("GET", "/v2/_catalog?last=a&last=b".to_owned()),
    ];
    for (m, target) in &cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(&case);
        assert_eq!((r.status, r.code().as_str()), (400, "INVALID_REQUEST"), "{case}: {}", w.text);
        assert!(r.body.contains("more than once"), "{case}: {}", r.body);
    }
    assert_untouched(&fx.h, "duplicated parameters");
}

/// The registry's upload routes share one method table, so a POST to an upload session URL
/// starts a new upload and honours `mount`/`from`; the gateway refuses POST there.
#[tokio::test]
async fn mount_through_an_upload_session_url_is_refused() {
    let fx = fixture().await;
    for target in [
        format!("/v2/mine/blobs/uploads/u1?_state=x&mount={DIGEST}&from=victim/secret"),
        format!("/v2/mine/blobs/uploads/u1?mount={DIGEST}&from=pub/base"),
    ] {
        let w = fx.send(closing("POST", &target, &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(&target);
        assert_eq!(r.status, 405, "{target}: {}", w.text);
        assert_eq!(r.header("allow"), Some("GET, HEAD, PATCH, PUT, DELETE"), "{target}");
    }
    assert_untouched(&fx.h, "POST to an upload session");
}

/// A second `Content-Type` line naming a form type rides along to the registry today: the
/// gateway checks only the first line. Distribution reads the first too, so it is not
/// exploitable against it, but the rule "form bodies never reach the registry" is broken
/// for any upstream that reads another line.
#[tokio::test]
async fn a_second_content_type_naming_a_form_is_refused() {
    let fx = fixture().await;
    let body = "from=victim%2Fsecret";
    let cases = [
        ("octet-stream then form", ["application/octet-stream", "application/x-www-form-urlencoded"]),
        ("manifest type then multipart", ["application/vnd.oci.image.manifest.v1+json", "multipart/form-data; boundary=b"]),
    ];
    for (case, [first, second]) in cases {
        let req = closing(
            "POST",
            &format!("/v2/mine/blobs/uploads/?mount={DIGEST}&from=mine"),
            &[("Authorization", &fx.mine), ("Content-Type", first), ("Content-Type", second)],
            body,
        );
        let w = fx.send(&req).await;
        let status = w.one(case).status;
        assert!(status == 415 || status == 400, "{case}: expected a refusal (400 or 415), got {status}: {}", w.text);
    }
    assert_untouched(&fx.h, "second Content-Type");
}

// ===================================================================================
// Method allowlist
// ===================================================================================

/// Only the methods of each route pass; TRACE, CONNECT, OPTIONS, WebDAV verbs, lower-case
/// spellings and invented methods are refused with 405 and the route's `Allow`, before any
/// credential is looked at, and nothing is forwarded (the registry authorizes by method
/// and lets unknown methods through with no permission at all).
#[tokio::test]
async fn methods_outside_the_allowlist_are_refused_on_every_route() {
    let fx = fixture().await;
    let routes: Vec<(String, &str)> = vec![
        ("/v2/".into(), "GET, HEAD"),
        ("/v2/_catalog".into(), "GET"),
        ("/v2/mine/tags/list".into(), "GET"),
        ("/v2/mine/manifests/v1".into(), "GET, HEAD, PUT, DELETE"),
        (format!("/v2/mine/blobs/{DIGEST}"), "GET, HEAD, DELETE"),
        ("/v2/mine/blobs/uploads/".into(), "POST"),
        ("/v2/mine/blobs/uploads/u1".into(), "GET, HEAD, PATCH, PUT, DELETE"),
        (format!("/v2/mine/referrers/{DIGEST}"), "GET"),
        ("/scopegate/v1/mine".into(), "GET, PATCH, DELETE"),
        ("/scopegate/v1/mine/_tags".into(), "GET"),
        ("/token".into(), "GET, POST"),
    ];
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT", "OPTIONS", "PROPFIND", "MKCOL", "get", "post", "Delete", "FOO", "M-SEARCH"];
    for (target, allow) in &routes {
        for m in methods {
            if allow.split(", ").any(|a| a == m) {
                continue;
            }
            let case = format!("{m} {target}");
            for auth in [Some(fx.root.as_str()), None] {
                let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
                let w = fx.send(closing(m, target, &headers, "")).await;
                let r = w.one(&case);
                assert_eq!(r.status, 405, "{case} (authenticated: {}): {}", auth.is_some(), w.text);
                assert_eq!(r.header("allow"), Some(*allow), "{case}");
                if target.starts_with("/v2") && m != "HEAD" {
                    assert_docker_error(r, &case);
                }
            }
        }
    }
    assert_untouched(&fx.h, "methods outside the allowlist");
}

// ===================================================================================
// Header hygiene and Location rewriting
// ===================================================================================

/// The registry never sees the client's credentials, cookies, proxy credentials, forwarding
/// headers (it builds URLs from them), hop-by-hop headers, or headers the client's
/// `Connection` names; unknown query keys (a token in the URL) are not forwarded either.
#[tokio::test]
async fn credentials_forwarding_and_hop_by_hop_headers_never_reach_the_registry() {
    let fx = fixture().await;
    let dropped: &[(&str, &str)] = &[
        ("Cookie", "session=abc"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Forwarded", "for=1.2.3.4;host=evil.example;proto=https"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Forwarded-Server", "evil.example"),
        ("X-Real-IP", "1.2.3.4"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("X-Secret-Hop", "named by Connection"),
    ];
    let mut headers: Vec<(&str, &str)> = vec![("Authorization", &fx.mine), ("Connection", "X-Secret-Hop"), ("Accept", "application/vnd.oci.image.manifest.v1+json")];
    headers.extend_from_slice(dropped);
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1?ns=docker.io&access_token=secret-in-url", &headers, "")).await;
    assert_eq!(w.one("hygiene").status, 200, "{}", w.text);
    let seen = fx.h.upstream.seen();
    assert_eq!(targets(&seen), ["GET /v2/mine/manifests/v1"], "unknown query keys are not forwarded");
    let s = &seen[0];
    for (name, _) in dropped.iter().chain([("Authorization", ""), ("Connection", "")].iter()) {
        assert!(s.headers.get(*name).is_none(), "{name} reached the registry: {:?}", s.headers);
    }
    assert_eq!(s.headers["host"], fx.h.upstream.addr.to_string());
    assert_eq!(s.headers["accept"], "application/vnd.oci.image.manifest.v1+json", "end-to-end headers pass");
}

/// Back to the client: hop-by-hop headers of the registry's answer (and those its
/// `Connection` names) are dropped.
#[tokio::test]
async fn hop_by_hop_headers_of_the_registry_never_reach_the_client() {
    let fx = fixture().await;
    *fx.h.upstream.reply_headers.lock().unwrap() = vec![
        ("connection".into(), "x-internal-hop".into()),
        ("x-internal-hop".into(), "registry-only".into()),
        ("keep-alive".into(), "timeout=99".into()),
        ("proxy-authenticate".into(), "Basic realm=\"internal\"".into()),
        ("trailer".into(), "x-checksum".into()),
    ];
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &fx.mine)], "")).await;
    let r = w.one("registry hop-by-hop headers");
    assert_eq!(r.status, 200, "{}", w.text);
    for gone in ["x-internal-hop", "keep-alive", "proxy-authenticate", "trailer"] {
        assert_eq!(r.count(gone), 0, "{gone} reached the client: {}", r.head);
    }
    assert_eq!(r.header("connection"), Some("close"), "only the gateway's own Connection");
}

/// A `Location` on the registry's own origin is rewritten to the public origin (clients
/// drop credentials when an upload moves to another host); other hosts (storage redirects),
/// look-alike origins and path-only locations pass unchanged.
#[tokio::test]
async fn location_on_the_registry_origin_is_rewritten_and_every_other_location_is_kept() {
    let fx = fixture().await;
    let up = fx.h.upstream.addr;
    let public = fx.h.public();
    let cases = [
        (None, format!("{public}/v2/mine/blobs/uploads/f00d-1?_state=abc"), "registry origin"),
        (Some(format!("http://{up}/v2/mine/blobs/uploads/u2?_state=s")), format!("{public}/v2/mine/blobs/uploads/u2?_state=s"), "registry origin, other upload"),
        (Some("https://storage.example/blob?sig=1".to_owned()), "https://storage.example/blob?sig=1".to_owned(), "storage redirect"),
        (Some(format!("http://{up}0/v2/x")), format!("http://{up}0/v2/x"), "longer port"),
        (Some(format!("http://{up}@evil.example/v2/x")), format!("http://{up}@evil.example/v2/x"), "registry origin as userinfo"),
        (Some(format!("http://{up}.evil.example/v2/x")), format!("http://{up}.evil.example/v2/x"), "registry origin as a label"),
        (Some("/v2/mine/blobs/uploads/u3?_state=t".to_owned()), "/v2/mine/blobs/uploads/u3?_state=t".to_owned(), "path-only"),
    ];
    for (upstream_location, client_location, case) in &cases {
        *fx.h.upstream.reply_headers.lock().unwrap() = upstream_location.iter().map(|l| ("location".to_owned(), l.clone())).collect();
        let w = fx.send(closing("POST", "/v2/mine/blobs/uploads/", &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 202, "{case}: {}", w.text);
        assert_eq!(r.header("location"), Some(client_location.as_str()), "{case}");
    }
}

// ===================================================================================
// Request smuggling
// ===================================================================================

/// Content-Length and Transfer-Encoding together: the request is framed by chunked alone,
/// the Content-Length is dropped, and the connection is closed after the answer (RFC 9112
/// §6.1), so the bytes after the chunked body are never read as a request. The registry
/// receives a re-framed request whose length headers agree with its body.
#[tokio::test]
async fn cl_te_requests_are_framed_by_chunked_and_the_smuggled_request_never_runs() {
    let fx = fixture().await;
    let tail = format!("0\r\n\r\n{}", smuggled(&fx.mine));
    let inner = smuggled(&fx.mine);
    let chunked_inner = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    let head = |lines: &str| format!("POST /v2/mine/blobs/uploads/ HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n{lines}\r\n", fx.mine);
    let cases = [
        ("CL then TE", format!("{}{tail}{SENTINEL}", head(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", tail.len()))), ""),
        ("TE then CL", format!("{}{tail}{SENTINEL}", head(&format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", tail.len()))), ""),
        ("CL shorter than the chunked body", format!("{}{chunked_inner}{SENTINEL}", head("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n")), inner.as_str()),
    ];
    for (case, bytes, body) in &cases {
        fx.h.upstream.clear();
        let w = fx.send(bytes).await;
        let r = w.one(case);
        assert_eq!(r.status, 202, "{case}: {}", w.text);
        assert_eq!(r.header("connection"), Some("close"), "{case}: the connection must close after an ambiguous frame");
        let seen = fx.h.upstream.seen();
        assert_eq!(targets(&seen), ["POST /v2/mine/blobs/uploads/"], "{case}");
        assert_eq!(seen[0].body.as_ref(), body.as_bytes(), "{case}: the chunked body, as data");
        if let Some(cl) = seen[0].headers.get("content-length") {
            assert_eq!(cl.to_str().unwrap(), seen[0].body.len().to_string(), "{case}: Content-Length disagrees with the body");
        }
    }
}

/// Differing duplicate, signed, spaced, listed, hexadecimal or overflowing Content-Length
/// values are refused by the HTTP layer (400, connection closed); nothing after them runs.
#[tokio::test]
async fn malformed_or_conflicting_content_length_is_refused_and_the_connection_closed() {
    let fx = fixture().await;
    let cases = [
        ("differing duplicates", "Content-Length: 3\r\nContent-Length: 45\r\n"),
        ("plus sign", "Content-Length: +3\r\n"),
        ("minus sign", "Content-Length: -3\r\n"),
        ("inner space", "Content-Length: 3 3\r\n"),
        ("hexadecimal", "Content-Length: 0x3\r\n"),
        ("list of equal values", "Content-Length: 3, 3\r\n"),
        ("list of differing values", "Content-Length: 3, 45\r\n"),
        ("trailing letters", "Content-Length: 3abc\r\n"),
        ("empty", "Content-Length: \r\n"),
        ("overflowing", "Content-Length: 99999999999999999999999\r\n"),
    ];
    for (case, cl) in cases {
        let w = fx
            .send(format!("PATCH /v2/mine/blobs/uploads/u1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n{cl}\r\nabc{}{SENTINEL}", fx.mine, smuggled(&fx.mine)))
            .await;
        let r = w.one(case);
        assert_eq!(r.status, 400, "{case}: {}", w.text);
        assert!(!r.by_gateway(), "{case}: the HTTP layer refuses the frame");
    }
    assert_untouched(&fx.h, "malformed Content-Length");
}

/// A Transfer-Encoding whose final coding is not exactly `chunked` cannot be framed and is
/// refused; so is any Transfer-Encoding on HTTP/1.0.
#[tokio::test]
async fn transfer_encoding_other_than_final_chunked_is_refused() {
    let fx = fixture().await;
    let cases = [
        ("chunked, identity", "HTTP/1.1", "Transfer-Encoding: chunked, identity\r\n"),
        ("xchunked", "HTTP/1.1", "Transfer-Encoding: xchunked\r\n"),
        ("chunkedx", "HTTP/1.1", "Transfer-Encoding: chunkedx\r\n"),
        ("identity", "HTTP/1.1", "Transfer-Encoding: identity\r\n"),
        ("gzip", "HTTP/1.1", "Transfer-Encoding: gzip\r\n"),
        ("chunked with a parameter", "HTTP/1.1", "Transfer-Encoding: chunked;q=1\r\n"),
        ("quoted", "HTTP/1.1", "Transfer-Encoding: \"chunked\"\r\n"),
        ("second line not chunked", "HTTP/1.1", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
        ("chunked on HTTP/1.0", "HTTP/1.0", "Transfer-Encoding: chunked\r\n"),
    ];
    for (case, version, te) in cases {
        let w = fx
            .send(format!(
                "PATCH /v2/mine/blobs/uploads/u1 {version}\r\nHost: {HOST}\r\nAuthorization: {}\r\n{te}\r\n3\r\nabc\r\n0\r\n\r\n{}{SENTINEL}",
                fx.mine,
                smuggled(&fx.mine)
            ))
            .await;
        let r = w.one(case);
        assert_eq!(r.status, 400, "{case}: {}", w.text);
        assert!(!r.by_gateway(), "{case}");
    }
    assert_untouched(&fx.h, "Transfer-Encoding variants");
}

/// Header folding, a bare CR, NUL bytes, whitespace before the colon and other broken head
/// lines are refused by the HTTP layer (400, connection closed); nothing after them runs.
#[tokio::test]
async fn obs_fold_bare_cr_nul_and_broken_head_lines_are_refused() {
    let fx = fixture().await;
    let a = &fx.mine;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("folded Transfer-Encoding", format!("PATCH /v2/mine/blobs/uploads/u1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\nTransfer-Encoding: identity\r\n chunked\r\nContent-Length: 3\r\n\r\nabc").into_bytes()),
        ("folded header", format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\nX-Note: a\r\n\tb\r\n\r\n").into_bytes()),
        ("bare CR in a value", format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nX-Note: a\rTransfer-Encoding: chunked\r\nAuthorization: {a}\r\n\r\n").into_bytes()),
        ("NUL in a value", [format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\nX-Note: a").into_bytes(), b"\x00b\r\n\r\n".to_vec()].concat()),
        ("NUL in a name", [format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\nX-No").into_bytes(), b"\x00te: b\r\n\r\n".to_vec()].concat()),
        ("NUL in the target", [b"GET /v2/mine/manifests/v1".to_vec(), b"\x00".to_vec(), format!(" HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\n\r\n").into_bytes()].concat()),
        ("space before the colon", format!("PATCH /v2/mine/blobs/uploads/u1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc").into_bytes()),
        ("line without a colon", format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\nGarbage\r\n\r\n").into_bytes()),
        ("HTTP/2.0 in a request line", format!("GET /v2/mine/manifests/v1 HTTP/2.0\r\nHost: {HOST}\r\nAuthorization: {a}\r\n\r\n").into_bytes()),
        ("HTTP/0.9", b"GET /v2/mine/manifests/v1\r\n\r\n".to_vec()),
        ("two spaces in the request line", format!("GET  /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {a}\r\n\r\n").into_bytes()),
    ];
    for (case, mut bytes) in cases {
        bytes.extend_from_slice(smuggled(a).as_bytes());
        bytes.extend_from_slice(SENTINEL.as_bytes());
        let w = fx.send(&bytes).await;
        let r = w.one(case);
        assert_eq!(r.status, 400, "{case}: {}", w.text);
        assert!(!r.by_gateway(), "{case}");
    }
    assert_untouched(&fx.h, "broken head lines");
}

/// Bare LF line endings are accepted as line ends (RFC 9112 allows it). The gateway
/// re-frames what it forwards, so a header hidden behind a bare LF cannot desynchronize the
/// registry: the request is one request, and an embedded Transfer-Encoding makes it a CL+TE
/// request, framed by chunked and closed.
#[tokio::test]
async fn bare_lf_line_ends_make_one_request_and_smuggle_nothing() {
    let fx = fixture().await;
    let w = fx.send(format!("GET /v2/mine/manifests/barelf HTTP/1.1\nHost: {HOST}\nAuthorization: {}\nConnection: close\n\n", fx.mine)).await;
    assert_eq!(w.one("bare LF request").status, 200, "{}", w.text);
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/mine/manifests/barelf"]);
    fx.h.upstream.clear();
    let tail = format!("0\r\n\r\n{}", smuggled(&fx.mine));
    let w = fx
        .send(format!(
            "POST /v2/mine/blobs/uploads/ HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nX-Note: a\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{tail}{SENTINEL}",
            fx.mine,
            tail.len()
        ))
        .await;
    let r = w.one("Transfer-Encoding behind a bare LF");
    assert_eq!(r.status, 202, "{}", w.text);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(targets(&fx.h.upstream.seen()), ["POST /v2/mine/blobs/uploads/"]);
}

/// The body of a rejected request is never parsed as the next request: the gateway answers
/// without reading it, and the connection then either skips it or closes. Only the
/// sentinel sent after it may be answered.
#[tokio::test]
async fn the_body_of_a_rejected_request_is_never_read_as_a_request() {
    let fx = fixture().await;
    let inner = smuggled(&fx.mine);
    let cases: Vec<(&str, String, u16)> = vec![
        ("unauthenticated", keeping("POST", "/v2/mine/blobs/uploads/", &[("Content-Length", &inner.len().to_string())]), 401),
        ("denied", keeping("POST", "/v2/victim/blobs/uploads/", &[("Authorization", &fx.mine), ("Content-Length", &inner.len().to_string())]), 403),
        ("bad path", keeping("POST", "/v2/mine%2fx/blobs/uploads/", &[("Authorization", &fx.mine), ("Content-Length", &inner.len().to_string())]), 400),
        ("bad method", keeping("PROPFIND", "/v2/mine/manifests/v1", &[("Authorization", &fx.mine), ("Content-Length", &inner.len().to_string())]), 405),
        (
            "form body",
            keeping("POST", "/v2/mine/blobs/uploads/", &[("Authorization", &fx.mine), ("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", &inner.len().to_string())]),
            415,
        ),
        ("no route", keeping("POST", "/elsewhere", &[("Content-Length", &inner.len().to_string())]), 404),
    ];
    for (case, head, status) in &cases {
        let w = fx.send(format!("{head}{inner}{SENTINEL}")).await;
        let got = w.statuses();
        // the connection may be kept (body skipped, sentinel answered) or closed; never more
        assert!(got == [*status] || got == [*status, 401], "{case}: {got:?}\n{}", w.text);
        assert_untouched(&fx.h, case);
    }
}

/// Pipelined requests are judged one by one: a refused request leaves nothing behind, so
/// the next request on the connection carries only its own credentials.
#[tokio::test]
async fn pipelined_requests_after_a_refused_one_are_judged_on_their_own_credentials() {
    let fx = fixture().await;
    let bytes = format!(
        "{}{}{}",
        keeping("GET", "/v2/victim/manifests/v1", &[("Authorization", &fx.mine)]),
        keeping("GET", "/v2/mine/manifests/v1", &[]),
        closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &fx.mine)], "")
    );
    let w = fx.send(&bytes).await;
    assert_eq!(w.statuses(), [403, 401, 200], "{}", w.text);
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/mine/manifests/v1"]);
    fx.h.upstream.clear();
    // after a frame the HTTP layer cannot parse, the connection is closed: nothing follows
    let bytes = format!("GET /v2/ HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: +1\r\n\r\nx{}{SENTINEL}", smuggled(&fx.mine));
    let w = fx.send(&bytes).await;
    assert_eq!(w.statuses(), [400], "{}", w.text);
    assert_untouched(&fx.h, "after an unparseable frame");
}

/// `Expect: 100-continue` on a request the gateway refuses gets the refusal, never a
/// `100 Continue` inviting the body, and nothing is forwarded.
#[tokio::test]
async fn expect_continue_on_a_refused_request_gets_no_continue_and_no_forward() {
    let fx = fixture().await;
    let cases = [
        ("unauthenticated", "/v2/mine/manifests/e", None, 401),
        ("denied", "/v2/victim/manifests/e", Some(fx.mine.as_str()), 403),
    ];
    for (case, target, auth, status) in cases {
        let mut headers = vec![("Expect", "100-continue"), ("Content-Length", "5"), ("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let w = fx.send(closing("PUT", target, &headers, "")).await;
        assert_eq!(w.statuses(), [status], "{case}: {}", w.text);
        assert!(!w.text.contains("100 Continue"), "{case}: {}", w.text);
    }
    assert_untouched(&fx.h, "Expect: 100-continue");
}

/// A malformed chunk in the body of an authorized, streamed request is the client's fault
/// and deserves a 400; today it surfaces as 502 "the registry connection failed", and the
/// registry has already received the start of the request.
#[tokio::test]
async fn a_malformed_chunked_body_on_an_authorized_upload_is_a_client_error() {
    let fx = fixture().await;
    let cases = [("bad size line", "3\r\nabc\r\nzz\r\nGARBAGE\r\n0\r\n\r\n"), ("missing chunk terminator", "3\r\nabcXY5\r\nhello\r\n0\r\n\r\n")];
    for (case, body) in cases {
        let w = fx
            .send(format!("PATCH /v2/mine/blobs/uploads/u1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}", fx.mine))
            .await;
        let r = w.one(case);
        assert_eq!(r.status, 400, "{case}: {}", w.text);
    }
}

/// An HTTP/2 preface on the HTTP/1 listener gets no answer and no forward.
#[tokio::test]
async fn an_http2_preface_is_not_served() {
    let fx = fixture().await;
    let w = fx.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(w.replies.is_empty(), "{}", w.text);
    assert_untouched(&fx.h, "HTTP/2 preface");
}

// ===================================================================================
// JWT forgery
// ===================================================================================

/// Session tokens that were not minted by this gateway, or were changed after: a payload
/// edit, `alg: none`, HS256 keyed with the gateway's public key, keys offered in the header
/// (`jwk`, `jku`, `x5u`), another gateway's key, a stripped signature. Each is 401
/// `invalid_token`, nothing is forwarded, and no key URL is ever fetched.
#[tokio::test]
async fn forged_session_tokens_are_refused() {
    let fx = fixture().await;
    let genuine = session(&fx, &fx.mine, &["repository:mine:pull"]).await;
    let kid = jwt_header(&genuine)["kid"].as_str().unwrap().to_owned();
    let ours = fx.h.gw.state.keys.current().jwk();
    let mut escalated = payload(&genuine);
    escalated["access"] = json!([{"type": "repository", "name": "victim", "actions": ["pull", "push", "delete"]}]);
    let sig = genuine.split('.').nth(2).unwrap();
    let attacker = TestKey::generate("attacker", Algorithm::ES256);
    let trap = Trap::new();
    let with_header = |f: &dyn Fn(&mut Header)| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.clone());
        f(&mut h);
        jsonwebtoken::encode(&h, &escalated, &attacker.encoding).unwrap()
    };
    let hs256 = |secret: &[u8]| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, &escalated, &EncodingKey::from_secret(secret)).unwrap()
    };
    let other_gateway = {
        let other = fixture().await;
        session(&other, &other.mine, &["repository:mine:pull"]).await
    };
    let cases: Vec<(&str, String)> = vec![
        ("payload edited, signature kept", format!("{}.{}.{sig}", genuine.split('.').next().unwrap(), b64json(&escalated))),
        ("alg none", format!("{}.{}.", b64json(&json!({"alg": "none", "typ": "JWT", "kid": kid})), b64json(&escalated))),
        ("alg None", format!("{}.{}.", b64json(&json!({"alg": "None", "typ": "JWT", "kid": kid})), b64json(&escalated))),
        ("alg none with the old signature", format!("{}.{}.{sig}", b64json(&json!({"alg": "none", "kid": kid})), b64json(&escalated))),
        ("HS256 keyed with the public key PEM", hs256(ec_public_pem(&ours).as_bytes())),
        ("HS256 keyed with the public JWK", hs256(ours.to_string().as_bytes())),
        ("HS256 keyed with x", hs256(ours["x"].as_str().unwrap().as_bytes())),
        ("key offered as jwk", with_header(&|h| h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap()))),
        ("key offered as jku", with_header(&|h| h.jku = Some(trap.url()))),
        ("key offered as x5u", with_header(&|h| h.x5u = Some(trap.url()))),
        ("jku with the attacker's kid", with_header(&|h| {
            h.jku = Some(trap.url());
            h.kid = Some("attacker".into());
        })),
        ("another gateway's token", other_gateway),
        ("signature stripped", format!("{}.{}", genuine.split('.').next().unwrap(), genuine.split('.').nth(1).unwrap())),
        ("extra segment", format!("{genuine}.AAAA")),
        ("garbage", "not.a.jwt".into()),
    ];
    for (case, jwt) in &cases {
        for target in ["/v2/victim/manifests/v1", "/v2/mine/manifests/v1"] {
            let w = fx.send(closing("GET", target, &[("Authorization", &format!("Bearer {jwt}"))], "")).await;
            let r = w.one(case);
            assert_eq!(r.status, 401, "{case} on {target}: {}", w.text);
            assert!(r.header("www-authenticate").unwrap_or_default().contains("error=\"invalid_token\""), "{case} on {target}: {}", r.head);
        }
    }
    assert_untouched(&fx.h, "forged session tokens");
    assert!(!trap.touched(), "the gateway fetched a key URL named in a token header");
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &format!("Bearer {genuine}"))], "")).await;
    assert_eq!(w.one("control").status, 200, "the genuine token works, so the refusals were for the forgery: {}", w.text);
}

/// Tokens signed with the gateway's own key but carrying claims it would never mint: wrong
/// issuer or audience, expired, not yet valid, a refresh token used as a session, missing
/// subject, string dates, a binding to a password that does not exist, unknown kinds. The
/// same claims re-signed unchanged pass, so each refusal is for the claim.
#[tokio::test]
async fn session_tokens_with_claims_the_gateway_never_mints_are_refused() {
    let fx = fixture().await;
    let genuine = session(&fx, &fx.mine, &["repository:mine:pull"]).await;
    let key = fx.h.gw.state.keys.current();
    let encoding = EncodingKey::from_ec_der(key.pkcs8());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let base = payload(&genuine);
    let now = fx.h.gw.state.clock.now().unix_timestamp();
    let sign = |edit: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        edit(&mut c);
        jsonwebtoken::encode(&header, &c, &encoding).unwrap()
    };
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &format!("Bearer {}", sign(&|_| {})))], "")).await;
    assert_eq!(w.one("control").status, 200, "re-signed unchanged claims pass: {}", w.text);
    let cases: Vec<(&str, String)> = vec![
        ("foreign issuer", sign(&|c| c["iss"] = json!("someone-else"))),
        ("foreign audience", sign(&|c| c["aud"] = json!("another-registry"))),
        ("audience as an array", sign(&|c| c["aud"] = json!(["scopegate"]))),
        ("expired", sign(&|c| c["exp"] = json!(now - 60))),
        ("not yet valid", sign(&|c| c["nbf"] = json!(now + 600))),
        ("refresh token as a session", sign(&|c| c["use"] = json!("refresh"))),
        ("no use", sign(&|c| {
            c.as_object_mut().unwrap().remove("use");
        })),
        ("no subject", sign(&|c| {
            c.as_object_mut().unwrap().remove("sub");
        })),
        ("no expiry", sign(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        })),
        ("string expiry", sign(&|c| c["exp"] = json!((now + 600).to_string()))),
        ("string not-before", sign(&|c| c["nbf"] = json!(now.to_string()))),
        ("bound to a password that does not exist", sign(&|c| c["cred"] = json!("password1:no-such-password"))),
        ("bound to the other slot", sign(&|c| c["cred"] = json!(c["cred"].as_str().unwrap().replace("password1", "password2")))),
        ("subject of another token", sign(&|c| c["sub"] = json!("root"))),
        ("an API key that does not exist", sign(&|c| c["kind"] = json!("apikey"))),
        ("unknown kind", sign(&|c| c["kind"] = json!("admin"))),
        ("invalid repository name", sign(&|c| c["access"] = json!([{"type": "repository", "name": "Mine", "actions": ["pull"]}]))),
        ("unknown action word", sign(&|c| c["access"] = json!([{"type": "repository", "name": "mine", "actions": ["pull", "sudo"]}]))),
        ("catalog with a non-star action", sign(&|c| c["access"] = json!([{"type": "registry", "name": "catalog", "actions": ["pull"]}]))),
    ];
    for (case, jwt) in &cases {
        let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &format!("Bearer {jwt}"))], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 401, "{case}: {}", w.text);
        assert!(r.header("www-authenticate").unwrap_or_default().contains("error=\"invalid_token\""), "{case}: {}", r.head);
    }
    // a session whose subject is anonymous is held to the anonymous map (off here)
    let anon = sign(&|c| {
        let o = c.as_object_mut().unwrap();
        o.insert("sub".into(), json!(""));
        o.remove("kind");
        o.remove("cred");
    });
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &format!("Bearer {anon}"))], "")).await;
    let r = w.one("anonymous subject with access");
    assert_eq!(r.status, 401, "{}", w.text);
    assert!(r.header("www-authenticate").unwrap_or_default().contains("error=\"insufficient_scope\""), "{}", r.head);
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/mine/manifests/v1"], "only the control reached the registry");
}

/// A genuine session opens exactly what it carries: another repository, another action or
/// the catalog gets a 401 `insufficient_scope` naming what is needed, and nothing is
/// forwarded.
#[tokio::test]
async fn a_session_token_for_one_repository_opens_nothing_else() {
    let fx = fixture().await;
    let tok = session(&fx, &fx.mine, &["repository:mine:pull"]).await;
    let auth = format!("Bearer {tok}");
    let cases = [
        ("GET", "/v2/victim/manifests/v1".to_owned(), "repository:victim:pull"),
        ("GET", "/v2/pub/base/manifests/v1".to_owned(), "repository:pub/base:pull"),
        ("PUT", "/v2/mine/manifests/v1".to_owned(), "repository:mine:push"),
        ("DELETE", format!("/v2/mine/manifests/{DIGEST}"), "repository:mine:delete"),
        ("POST", "/v2/mine/blobs/uploads/".to_owned(), "repository:mine:push"),
        ("GET", "/v2/_catalog".to_owned(), "registry:catalog:*"),
    ];
    for (m, target, scope) in &cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &auth)], "")).await;
        let r = w.one(&case);
        assert_eq!(r.status, 401, "{case}: {}", w.text);
        let ch = r.header("www-authenticate").unwrap_or_default();
        assert!(ch.contains("error=\"insufficient_scope\"") && ch.contains(&format!("scope=\"{scope}\"")), "{case}: {ch}");
    }
    assert_untouched(&fx.h, "session used beyond its access");
}

/// The token server grants the intersection of what is asked and what is held: wildcard,
/// pattern-like or invalid names, other repositories and another user named in `account`
/// add nothing, and form credentials in a POST are checked, never replaced by a Basic
/// header of someone else.
#[tokio::test]
async fn token_requests_get_nothing_beyond_what_the_caller_holds() {
    let fx = fixture().await;
    let queries = [
        ("wildcard name", "scope=repository:*:*"),
        ("prefix pattern", "scope=repository:mine/*:pull,push"),
        ("another repository", "scope=repository:victim:pull,push,delete"),
        ("upper-case twin", "scope=repository:Mine:pull"),
        ("dot segments", "scope=repository:mine/../victim:pull"),
        ("host-qualified", "scope=repository:localhost:5000/victim:pull"),
        ("resource class", "scope=repository(plugin):victim:pull"),
        ("space-joined", "scope=repository:victim:pull%20repository:victim:push"),
        ("account of another user", "scope=repository:victim:pull&account=root"),
        ("unknown type", "scope=admin:all:*"),
    ];
    for (case, q) in queries {
        let w = fx.send(closing("GET", &format!("/token?service=scopegate&{q}"), &[("Authorization", &fx.mine)], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 200, "{case}: {}", w.text);
        let claims = payload(r.json()["token"].as_str().unwrap());
        assert_eq!(claims["sub"], "ci", "{case}");
        assert_eq!(claims["access"], Value::Null, "{case}: {}", claims["access"]);
    }
    let form = "grant_type=password&service=scopegate&client_id=x&username=ci&password=sgp_wrong&scope=repository%3Amine%3Apull";
    let w = fx.send(closing("POST", "/token", &[("Authorization", &fx.root), ("Content-Type", "application/x-www-form-urlencoded")], form)).await;
    let r = w.one("wrong form password with another user's Basic header");
    assert_eq!(r.status, 401, "{}", w.text);
    assert!(!r.body.contains("token"), "{}", r.body);
}

const ISS: &str = "https://idp.example.test";
const AUD: &str = "containerregistry";

/// A gateway trusting one external issuer whose keys (RS256 `rs-1`, ES256 `es-1`) come
/// from a JWKS file; role `containerregistry/admin/ctx-1` maps to `_repositories_admin`,
/// group `pushers` to a map granting push on `team/*`.
async fn federated() -> (Fx, TestKey, TestKey, tempfile::TempDir) {
    let rs = TestKey::generate("rs-1", Algorithm::RS256);
    let es = TestKey::generate("es-1", Algorithm::ES256);
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [rs.jwk, es.jwk]}).to_string()).unwrap();
    let h = Harness::start_configured(FakeRegistry::start().await, tempfile::tempdir().unwrap(), move |raw: &mut RawConfig| {
        no_throttle(raw);
        let rule = |claim: &str, value: &str, map: &str| RawRule { claim: claim.into(), value: value.into(), scope_map: map.into() };
        raw.issuers = vec![RawIssuer {
            name: "idp".into(),
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks_url: None,
            jwks_file: Some(jwks),
            ca_file: None,
            algorithms: vec!["RS256".into(), "ES256".into()],
            refetch_interval_secs: 60,
            cache_secs: 3600,
            leeway_secs: 5,
            required_claims: vec![],
            context: Some("ctx-1".into()),
            rules: vec![rule("roles", "containerregistry/admin/{context}", "_repositories_admin"), rule("groups", "pushers", "pushers")],
        }];
    })
    .await;
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "pushers", "repositories": [{"repository": "team/*", "actions": ["content/read", "content/write"]}]}))).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
    (fixture_on(h).await, rs, es, dir)
}

fn idp_claims(now: i64, extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "alice@example.test", "iat": now, "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// External JWTs that are forged or invalid: `alg: none`, HS256 keyed with the issuer's
/// public key, keys offered in the header (`jwk`, `jku`, `x5u`, `x5c`), unknown or mismatched
/// `kid`, a foreign key reusing a trusted `kid`, wrong issuer (including the gateway's own
/// name) or audience, expired, not yet valid, missing or non-numeric dates. Each is refused
/// at the token endpoint (`bearer:<jwt>`) and on `/v2` (`Bearer <jwt>`); no key URL is
/// fetched and nothing is forwarded.
#[tokio::test]
async fn forged_external_tokens_and_keys_offered_in_their_headers_are_refused() {
    let (fx, rs, es, _dir) = federated().await;
    let now = fx.h.gw.state.clock.now().unix_timestamp();
    let admin = json!({"roles": ["containerregistry/admin/ctx-1"]});
    let grant = idp_claims(now, admin.clone());
    let attacker = TestKey::generate("rs-1", Algorithm::RS256);
    let trap = Trap::new();
    let signed = |key: &TestKey, f: &dyn Fn(&mut Header)| {
        let mut h = Header::new(key.alg);
        h.kid = Some(key.kid.clone());
        f(&mut h);
        jsonwebtoken::encode(&h, &grant, &key.encoding).unwrap()
    };
    let hs256 = |secret: &[u8], kid: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &grant, &EncodingKey::from_secret(secret)).unwrap()
    };
    let with = |extra: Value| {
        let mut c = grant.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        rs.sign(&c)
    };
    let cases: Vec<(&str, String)> = vec![
        ("alg none", format!("{}.{}.", b64json(&json!({"alg": "none", "typ": "JWT", "kid": "rs-1"})), b64json(&grant))),
        ("alg none without kid", format!("{}.{}.", b64json(&json!({"alg": "none"})), b64json(&grant))),
        ("HS256 keyed with the RSA modulus", hs256(rs.jwk["n"].as_str().unwrap().as_bytes(), "rs-1")),
        ("HS256 keyed with the RSA JWK", hs256(rs.jwk.to_string().as_bytes(), "rs-1")),
        ("HS256 keyed with the EC public key PEM", hs256(ec_public_pem(&es.jwk).as_bytes(), "es-1")),
        ("key offered as jwk", signed(&attacker, &|h| h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap()))),
        ("key offered as jku", signed(&attacker, &|h| h.jku = Some(trap.url()))),
        ("key offered as x5u", signed(&attacker, &|h| h.x5u = Some(trap.url()))),
        ("key offered as x5c", signed(&attacker, &|h| h.x5c = Some(vec![STANDARD.encode(b"not a certificate")]))),
        ("foreign key reusing a trusted kid", attacker.sign(&grant)),
        ("unknown kid", signed(&TestKey::generate("rs-9", Algorithm::RS256), &|_| {})),
        ("kid of the other key", signed(&rs, &|h| h.kid = Some("es-1".into()))),
        ("no kid with two keys", signed(&rs, &|h| h.kid = None)),
        ("path-like kid", signed(&rs, &|h| h.kid = Some("../../jwks.json".into()))),
        ("PS256 under an RS256 key", {
            let mut h = Header::new(Algorithm::PS256);
            h.kid = Some("rs-1".into());
            jsonwebtoken::encode(&h, &grant, &rs.encoding).unwrap()
        }),
        ("unknown issuer", with(json!({"iss": "https://evil.example"}))),
        ("the gateway's own issuer name", with(json!({"iss": "scopegate"}))),
        ("issuer with a trailing slash", with(json!({"iss": format!("{ISS}/")}))),
        ("wrong audience", with(json!({"aud": "other"}))),
        ("audience list without ours", with(json!({"aud": ["other", "another"]}))),
        ("expired", with(json!({"exp": now - 120}))),
        ("not yet valid", with(json!({"nbf": now + 600}))),
        ("no expiry", rs.sign(&json!({"iss": ISS, "aud": AUD, "sub": "a", "roles": ["containerregistry/admin/ctx-1"]}))),
        ("string expiry", with(json!({"exp": (now + 600).to_string()}))),
        ("string not-before", with(json!({"nbf": now.to_string()}))),
        ("string issued-at", with(json!({"iat": "yesterday"}))),
        ("boolean expiry", with(json!({"exp": true}))),
        ("null issuer", with(json!({"iss": null}))),
    ];
    for (case, jwt) in &cases {
        let w = fx.send(closing("GET", "/token?service=scopegate&scope=repository:victim:pull", &[("Authorization", &basic("bearer", jwt))], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 401, "{case} at /token: {}", w.text);
        assert!(!r.body.contains("\"token\""), "{case}: a token was issued");
        let w = fx.send(closing("GET", "/v2/victim/manifests/v1", &[("Authorization", &format!("Bearer {jwt}"))], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 401, "{case} on /v2: {}", w.text);
        assert!(r.header("www-authenticate").unwrap_or_default().contains("error=\"invalid_token\""), "{case}: {}", r.head);
    }
    assert_untouched(&fx.h, "forged external tokens");
    assert!(!trap.touched(), "the gateway fetched a key URL named in a token header");
    for (case, good) in [("RS256", rs.sign(&grant)), ("ES256", es.sign(&grant))] {
        let w = fx.send(closing("GET", "/v2/victim/manifests/v1", &[("Authorization", &format!("Bearer {good}"))], "")).await;
        assert_eq!(w.one(case).status, 200, "control {case}: the genuine article passes: {}", w.text);
    }
}

/// A verified external token grants only what the configured rules map its claims to: an
/// `access` claim in distribution's format, a role for another context or a group no rule
/// names grants nothing, at the token endpoint or on `/v2`.
#[tokio::test]
async fn external_token_claims_grant_only_what_the_rules_map() {
    let (fx, _rs, es, _dir) = federated().await;
    let now = fx.h.gw.state.clock.now().unix_timestamp();
    let jwt = es.sign(&idp_claims(
        now,
        json!({
            "groups": ["pushers", "admins"],
            "roles": ["containerregistry/admin/ctx-2", "containerregistry/admin/*"],
            "access": [{"type": "repository", "name": "victim", "actions": ["*"]}, {"type": "registry", "name": "catalog", "actions": ["*"]}],
            "scope": "repository:victim:*",
        }),
    ));
    let auth = format!("Bearer {jwt}");
    let w = fx.send(closing("PUT", "/v2/team/app/manifests/v1", &[("Authorization", &auth)], "")).await;
    assert_eq!(w.one("control: the pushers rule").status, 201, "{}", w.text);
    fx.h.upstream.clear();
    for (m, target) in [("GET", "/v2/victim/manifests/v1"), ("DELETE", "/v2/team/app/manifests/v1"), ("GET", "/v2/team/app/tags/list")] {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[("Authorization", &auth)], "")).await;
        let r = w.one(&case);
        assert_eq!((r.status, r.code().as_str()), (403, "DENIED"), "{case}: {}", w.text);
    }
    assert_untouched(&fx.h, "claims outside the rules");
    let w = fx.send(closing("GET", "/token?service=scopegate&scope=repository:victim:pull,push&scope=repository:team/app:pull", &[("Authorization", &basic("bearer", &jwt))], "")).await;
    let r = w.one("token endpoint");
    assert_eq!(r.status, 200, "{}", w.text);
    let access = payload(r.json()["token"].as_str().unwrap())["access"].clone();
    assert_eq!(access, json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}]), "nothing on victim");
}

/// A trusted issuer's token with an expiry or not-before far outside any real clock must
/// get an answer (a refusal or a grant), never a dropped connection. Today `exp + leeway`
/// and `nbf - leeway` overflow: the debug build panics in the request task, the release
/// build wraps around.
#[tokio::test]
async fn external_token_with_out_of_range_dates_is_answered_without_a_panic() {
    let (fx, rs, _es, _dir) = federated().await;
    let now = fx.h.gw.state.clock.now().unix_timestamp();
    let cases = [
        ("exp i64::MAX", json!({"exp": i64::MAX})),
        ("exp 2^62", json!({"exp": 1_i64 << 62})),
        ("exp 1e300", json!({"exp": 1e300})),
        ("nbf i64::MIN", json!({"nbf": i64::MIN})),
        ("nbf -1e300", json!({"nbf": -1e300})),
    ];
    let mut dropped = Vec::new();
    for (case, extra) in cases {
        let mut claims = idp_claims(now, json!({"roles": ["containerregistry/admin/ctx-1"]}));
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let jwt = rs.sign(&claims);
        let w = fx.send(closing("GET", "/v2/victim/manifests/v1", &[("Authorization", &format!("Bearer {jwt}"))], "")).await;
        match w.replies.first().map(|r| r.status) {
            Some(200 | 401) => {}
            other => dropped.push(format!("{case}: {other:?}")),
        }
    }
    assert!(dropped.is_empty(), "expected an answer (401, or 200 for a far-future expiry) for every case: {dropped:?}");
}

// ===================================================================================
// Credential handling
// ===================================================================================

/// An unknown user and a wrong password get the same status, body and challenge, at the
/// token endpoint (GET and POST) and on `/v2`, so names cannot be enumerated.
#[tokio::test]
async fn unknown_user_and_wrong_password_get_identical_answers() {
    let fx = fixture().await;
    let pw = fx.h.token("ci2", &[("mine", &["content/read"])]).await;
    let form = |u: &str, p: &str| {
        format!(
            "grant_type=password&service=scopegate&client_id=x&username={}&password={}",
            form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>(),
            form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
        )
    };
    let pairs = [
        ("wrong password", "ci2", "sgp_wrong"),
        ("unknown user", "nobody", pw.as_str()),
        ("user in another case", "CI2", pw.as_str()),
        ("user with a trailing space", "ci2 ", pw.as_str()),
        ("empty user", "", pw.as_str()),
        ("empty password", "ci2", ""),
        ("another token's password", "ci", pw.as_str()),
    ];
    let mut answers = Vec::new();
    for (case, u, p) in pairs {
        let get = fx.send(closing("GET", "/token?service=scopegate&scope=repository:mine:pull", &[("Authorization", &basic(u, p))], "")).await;
        let post = fx.send(closing("POST", "/token", &[("Content-Type", "application/x-www-form-urlencoded")], &form(u, p))).await;
        let v2 = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &basic(u, p))], "")).await;
        let (g, po, v) = (get.one(case), post.one(case), v2.one(case));
        assert_eq!((g.status, po.status, v.status), (401, 401, 401), "{case}");
        answers.push((case, g.body.clone(), po.body.clone(), v.body.clone(), v.header("www-authenticate").map(str::to_owned)));
    }
    let (first_case, ..) = answers[0].clone();
    for a in &answers[1..] {
        assert_eq!((&a.1, &a.2, &a.3, &a.4), (&answers[0].1, &answers[0].2, &answers[0].3, &answers[0].4), "{} differs from {first_case}", a.0);
    }
    assert_untouched(&fx.h, "failed logins");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// An unknown user costs the same digest and comparisons as a known one: 200 attempts of
/// each, interleaved, have medians within a generous bound (twice the smaller plus 2 ms),
/// loose enough for a busy machine and tight enough to catch a check that skips the work
/// for unknown names (or does slow work only for known ones).
#[tokio::test]
async fn unknown_user_and_wrong_password_take_the_same_time() {
    let fx = fixture().await;
    let pw = fx.h.token("ci2", &[("mine", &["content/read"])]).await;
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    let addr = fx.h.gw.public_addr;
    let attempt = |auth: String| async move {
        let req = closing("GET", "/token?service=scopegate", &[("Authorization", &auth)], "");
        let started = Instant::now();
        let w = wire(addr, req.as_bytes()).await;
        let took = started.elapsed();
        assert_eq!(w.statuses(), [401], "{}", w.text);
        took
    };
    for i in 0..200 {
        let u = basic(&format!("nobody{i}"), &pw);
        let p = basic("ci2", &format!("sgp_wrong{i:040}"));
        // alternate which goes first, so neither always runs on a warmer path
        if i % 2 == 0 {
            unknown.push(attempt(u).await);
            wrong.push(attempt(p).await);
        } else {
            wrong.push(attempt(p).await);
            unknown.push(attempt(u).await);
        }
    }
    let (u, w) = (median(unknown), median(wrong));
    let (lo, hi) = (u.min(w), u.max(w));
    assert!(hi <= lo * 2 + Duration::from_millis(2), "median unknown user {u:?}, median wrong password {w:?}");
}

/// Credentials that were disabled, deleted, regenerated or removed stop at once everywhere:
/// Basic on `/v2`, the token endpoint, sessions and refresh tokens issued before the change.
/// A name deleted and created again does not revive the old secret. A healthy token keeps
/// working throughout, so each refusal is for its own change.
#[tokio::test]
async fn disabled_deleted_and_regenerated_credentials_are_refused_everywhere() {
    let fx = fixture().await;
    let h = &fx.h;
    let r = h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "reader", "repositories": [{"repository": "mine", "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status.as_u16(), 201);
    let new_token = |name: &'static str| async move {
        let r = h.admin("POST", "/api/v1/tokens", Some(json!({"name": name, "scopeMap": "reader"}))).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text());
        basic(name, r.json()["credentials"]["passwords"][0]["value"].as_str().unwrap())
    };
    let new_key = |name: &'static str| async move {
        let r = h.admin("POST", "/api/v1/apikeys", Some(json!({"name": name, "scopeMap": "reader"}))).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text());
        basic("apikey", r.json()["key"].as_str().unwrap())
    };
    // (case, Basic credentials, the change)
    let mut cases = Vec::new();
    for (case, name) in [
        ("token disabled", "t-disabled"),
        ("token deleted", "t-deleted"),
        ("password1 regenerated", "t-regenerated"),
        ("password1 removed", "t-removed"),
        ("token deleted and created again", "t-recreated"),
    ] {
        cases.push((case, name, new_token(name).await));
    }
    for (case, name) in [("API key disabled", "k-disabled"), ("API key deleted", "k-deleted"), ("API key deleted and created again", "k-recreated")] {
        cases.push((case, name, new_key(name).await));
    }
    let healthy = new_token("t-healthy").await;
    let mut before = Vec::new();
    for (case, _, auth) in &cases {
        let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", auth)], "")).await;
        assert_eq!(w.one(case).status, 200, "{case} works before the change");
        let w = fx.send(closing("GET", "/token?service=scopegate&offline_token=true&scope=repository:mine:pull", &[("Authorization", auth)], "")).await;
        let v = w.one(case).json();
        before.push((v["token"].as_str().unwrap().to_owned(), v["refresh_token"].as_str().unwrap().to_owned()));
    }
    for (case, name, _) in &cases {
        let (method, path, body) = match *case {
            "token disabled" => ("PATCH", format!("/api/v1/tokens/{name}"), Some(json!({"status": "disabled"}))),
            "token deleted" | "token deleted and created again" => ("DELETE", format!("/api/v1/tokens/{name}"), None),
            "password1 regenerated" => ("POST", format!("/api/v1/tokens/{name}/credentials"), Some(json!({"password1": true}))),
            "password1 removed" => ("DELETE", format!("/api/v1/tokens/{name}/credentials/password1"), None),
            "API key disabled" => ("PATCH", format!("/api/v1/apikeys/{name}"), Some(json!({"status": "disabled"}))),
            _ => ("DELETE", format!("/api/v1/apikeys/{name}"), None),
        };
        let r = h.admin(method, &path, body).await;
        assert_eq!(r.status.as_u16(), 200, "{case}: {}", r.text());
        if case.ends_with("created again") {
            if name.starts_with("t-") {
                new_token(name).await;
            } else {
                new_key(name).await;
            }
        }
    }
    h.upstream.clear();
    for ((case, _, auth), (session, refresh)) in cases.iter().zip(&before) {
        let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", auth)], "")).await;
        assert_eq!(w.one(case).status, 401, "{case}: Basic on /v2: {}", w.text);
        let w = fx.send(closing("GET", "/token?service=scopegate", &[("Authorization", auth)], "")).await;
        assert_eq!(w.one(case).status, 401, "{case}: token endpoint: {}", w.text);
        let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &format!("Bearer {session}"))], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 401, "{case}: earlier session: {}", w.text);
        assert!(r.header("www-authenticate").unwrap_or_default().contains("error=\"invalid_token\""), "{case}");
        let form = format!("grant_type=refresh_token&service=scopegate&refresh_token={refresh}");
        let w = fx.send(closing("POST", "/token", &[("Content-Type", "application/x-www-form-urlencoded")], &form)).await;
        assert_eq!(w.one(case).status, 401, "{case}: earlier refresh token: {}", w.text);
    }
    assert_untouched(h, "dead credentials");
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &healthy)], "")).await;
    assert_eq!(w.one("healthy token").status, 200, "{}", w.text);
}

/// Passwords and API keys with an expiry stop at it, on `/v2` and at the token endpoint.
#[tokio::test]
async fn expired_credentials_are_refused_everywhere() {
    let fx = fixture().await;
    let h = &fx.h;
    h.token("t-expiring", &[("mine", &["content/read"])]).await;
    let r = h.admin("POST", "/api/v1/tokens/t-expiring/credentials", Some(json!({"password1": true, "expirationInDays": 1}))).await;
    let token = basic("t-expiring", r.json()["passwords"][0]["value"].as_str().unwrap());
    let r = h.admin("POST", "/api/v1/apikeys", Some(json!({"name": "k-expiring", "scopeMap": "_repositories_pull", "expirationInDays": 1}))).await;
    let key = basic("apikey", r.json()["key"].as_str().unwrap());
    for (case, auth) in [("token password", &token), ("API key", &key)] {
        let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", auth)], "")).await;
        assert_eq!(w.one(case).status, 200, "{case} before expiry");
    }
    h.gw.state.clock.advance(Duration::from_secs(2 * 24 * 3600));
    h.upstream.clear();
    for (case, auth) in [("token password", &token), ("API key", &key)] {
        let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", auth)], "")).await;
        let r = w.one(case);
        assert_eq!(r.status, 401, "{case}: {}", w.text);
        assert!(r.body.contains("expired at"), "{case}: {}", r.body);
        let w = fx.send(closing("GET", "/token?service=scopegate", &[("Authorization", auth)], "")).await;
        assert_eq!(w.one(case).status, 401, "{case} at the token endpoint");
    }
    assert_untouched(h, "expired credentials");
}

// ===================================================================================
// Anonymous access
// ===================================================================================

/// Without an anonymous scope map nothing is open: every route challenges, nothing is
/// forwarded, and an anonymous token carries no access.
#[tokio::test]
async fn anonymous_callers_get_nothing_by_default() {
    let fx = fixture().await;
    let cases = [
        ("GET", "/v2/".to_owned()),
        ("GET", "/v2/mine/manifests/v1".to_owned()),
        ("GET", format!("/v2/pub/base/blobs/{DIGEST}")),
        ("GET", "/v2/mine/tags/list".to_owned()),
        ("GET", "/v2/_catalog".to_owned()),
        ("POST", "/v2/mine/blobs/uploads/".to_owned()),
        ("GET", "/scopegate/v1/mine".to_owned()),
    ];
    for (m, target) in &cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[], "")).await;
        let r = w.one(&case);
        assert_eq!((r.status, r.code().as_str()), (401, "UNAUTHORIZED"), "{case}: {}", w.text);
        assert!(r.header("www-authenticate").unwrap_or_default().starts_with("Bearer realm="), "{case}");
    }
    assert_untouched(&fx.h, "anonymous by default");
    let w = fx.send(closing("GET", "/token?service=scopegate&scope=repository:mine:pull&scope=registry:catalog:*", &[], "")).await;
    let r = w.one("anonymous token");
    assert_eq!(r.status, 200, "{}", w.text);
    assert_eq!(payload(r.json()["token"].as_str().unwrap())["access"], Value::Null, "no access at all");
}

/// With an anonymous map granting pull on `public/*`, anonymous callers get exactly that:
/// no push, delete, tag listing, catalog, other repositories, or more in a token.
#[tokio::test]
async fn anonymous_pull_grants_exactly_the_anonymous_map() {
    let fx = fixture().await;
    let r = fx.h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "public-pull", "repositories": [{"repository": "public/*", "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status.as_u16(), 201);
    assert_eq!(fx.h.admin("PUT", "/api/v1/anonymous", Some(json!({"scopeMap": "public-pull"}))).await.status.as_u16(), 200);
    let cases = [
        ("GET", "/v2/public/base/manifests/v1".to_owned(), 200),
        ("GET", format!("/v2/public/base/blobs/{DIGEST}"), 200),
        ("PUT", "/v2/public/base/manifests/v1".to_owned(), 401),
        ("DELETE", format!("/v2/public/base/manifests/{DIGEST}"), 401),
        ("POST", "/v2/public/base/blobs/uploads/".to_owned(), 401),
        ("POST", format!("/v2/public/base/blobs/uploads/?mount={DIGEST}&from=public/other"), 401),
        ("GET", "/v2/public/base/tags/list".to_owned(), 401),
        ("GET", "/v2/public/manifests/v1".to_owned(), 401),
        ("GET", "/v2/publicity/manifests/v1".to_owned(), 401),
        ("GET", "/v2/mine/manifests/v1".to_owned(), 401),
        ("GET", "/v2/_catalog".to_owned(), 401),
        ("GET", "/v2/".to_owned(), 401),
        ("PATCH", "/scopegate/v1/public/base".to_owned(), 401),
    ];
    for (m, target, status) in &cases {
        let case = format!("{m} {target}");
        let w = fx.send(closing(m, target, &[], if *m == "PATCH" { "{\"readEnabled\": false}" } else { "" })).await;
        assert_eq!(w.one(&case).status, *status, "{case}: {}", w.text);
    }
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/public/base/manifests/v1".to_owned(), format!("GET /v2/public/base/blobs/{DIGEST}")]);
    let w = fx
        .send(closing("GET", "/token?service=scopegate&scope=repository:public/base:pull,push,delete&scope=repository:mine:pull&scope=registry:catalog:*", &[], ""))
        .await;
    let r = w.one("anonymous token");
    assert_eq!(r.status, 200, "{}", w.text);
    assert_eq!(payload(r.json()["token"].as_str().unwrap())["access"], json!([{"type": "repository", "name": "public/base", "actions": ["pull"]}]));
}

/// A credential that is wrong or malformed is a failed login, never "no credential": with
/// anonymous pull open, each still gets 401 and nothing is forwarded; the token endpoint
/// never hands out an anonymous token for them.
#[tokio::test]
async fn wrong_or_malformed_credentials_never_fall_back_to_anonymous_access() {
    let fx = fixture().await;
    let r = fx.h.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "public-pull", "repositories": [{"repository": "public/*", "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status.as_u16(), 201);
    assert_eq!(fx.h.admin("PUT", "/api/v1/anonymous", Some(json!({"scopeMap": "public-pull"}))).await.status.as_u16(), 200);
    let target = "/v2/public/base/manifests/v1";
    let w = fx.send(closing("GET", target, &[], "")).await;
    assert_eq!(w.one("control: anonymous").status, 200);
    fx.h.upstream.clear();
    let bad_utf8 = format!("Basic {}", STANDARD.encode(b"ci:\xff\xfe"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("wrong password", basic("ci", "sgp_wrong").into_bytes()),
        ("unknown user", basic("nobody", "x").into_bytes()),
        ("wrong API key", basic("apikey", "sgk_wrong").into_bytes()),
        ("garbage external JWT", basic("bearer", "not.a.jwt").into_bytes()),
        ("not base64", b"Basic !!!not-base64!!!".to_vec()),
        ("no colon", format!("Basic {}", STANDARD.encode("justauser")).into_bytes()),
        ("not UTF-8 inside", bad_utf8.into_bytes()),
        ("empty Basic", b"Basic ".to_vec()),
        ("bare scheme", b"Basic".to_vec()),
        ("empty Bearer", b"Bearer ".to_vec()),
        ("Bearer with a space", b"Bearer abc def".to_vec()),
        ("Bearer garbage", b"Bearer garbage".to_vec()),
        ("unknown scheme", b"Digest username=\"ci\"".to_vec()),
        ("Negotiate", b"Negotiate YIIB".to_vec()),
        ("empty value", Vec::new()),
        ("obs-text bytes", b"Basic \xe9\xe9\xe9".to_vec()),
    ];
    for (case, value) in &cases {
        for (path, status) in [(target, 401u16), ("/token?service=scopegate&scope=repository:public/base:pull", 401)] {
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: ").into_bytes();
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            let w = fx.send(&req).await;
            let r = w.one(case);
            assert_eq!(r.status, status, "{case} on {path}: {}", w.text);
            assert!(!r.body.contains("\"token\""), "{case}: a token was issued");
        }
    }
    let w = fx.send(format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nAuthorization: Basic eDp5\r\nConnection: close\r\n\r\n", fx.mine)).await;
    assert_eq!(w.one("two Authorization headers").status, 401, "{}", w.text);
    assert_untouched(&fx.h, "wrong or malformed credentials");
}

// ===================================================================================
// Catalog leaks and pagination
// ===================================================================================

/// Repositories the `cat` token can list (metadata/read): alpha, charlie, echo. Pull-only
/// and foreign repositories are hidden. The gateway pages the registry two names at a
/// time, so hidden names sit at page ends and are the registry's own cursors.
async fn catalog_fixture() -> (Harness, String) {
    let h = Harness::start_configured(FakeRegistry::start().await, tempfile::tempdir().unwrap(), |raw: &mut RawConfig| {
        no_throttle(raw);
        raw.limits.catalog_max_n = 2;
    })
    .await;
    *h.upstream.repos.lock().unwrap() =
        ["alpha", "bravo-hidden", "charlie", "delta-hidden", "echo", "foxtrot-pull-only", "zulu-hidden"].map(String::from).to_vec();
    let pw = h
        .token("cat", &[("alpha", &["metadata/read"]), ("charlie", &["metadata/read"]), ("echo", &["metadata/read"]), ("foxtrot-pull-only", &["content/read"])])
        .await;
    (h, basic("cat", &pw))
}

/// Walking the catalog page by page through `Link` yields exactly the visible names;
/// neither a body nor a `Link` cursor ever names a hidden repository, and the last page has
/// no `Link` even though hidden names follow it.
#[tokio::test]
async fn the_catalog_never_names_a_hidden_repository_in_a_body_or_a_link() {
    let (h, auth) = catalog_fixture().await;
    for n in [1, 2, 3] {
        let mut next = Some(format!("/v2/_catalog?n={n}"));
        let mut listed: Vec<String> = Vec::new();
        let mut pages = 0;
        while let Some(target) = next.take() {
            pages += 1;
            assert!(pages <= 5, "n={n}: too many pages");
            let w = wire(h.gw.public_addr, closing("GET", &target, &[("Authorization", &auth)], "").as_bytes()).await;
            let r = w.one(&target);
            assert_eq!(r.status, 200, "{target}: {}", w.text);
            assert!(!r.head.contains("hidden") && !r.body.contains("hidden") && !r.head.contains("foxtrot") && !r.body.contains("foxtrot"), "{target}: {}", w.text);
            listed.extend(r.json()["repositories"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()));
            next = r.header("link").map(|l| l.trim_start_matches('<').split('>').next().unwrap().to_owned());
        }
        assert_eq!(listed, ["alpha", "charlie", "echo"], "n={n}");
    }
    assert!(h.upstream.seen().iter().all(|s| s.target.starts_with("/v2/_catalog?n=2")), "the registry is paged with the configured n, never the client's");
}

/// `last` naming a hidden repository answers exactly like `last` naming a repository that
/// does not exist at the same place in the order: no existence oracle.
#[tokio::test]
async fn catalog_last_naming_a_hidden_repository_reveals_nothing() {
    let (h, auth) = catalog_fixture().await;
    let pairs = [("bravo-hidden", "bravo-hiddem"), ("delta-hidden", "delta-nothing"), ("zulu-hidden", "zulu-nothing"), ("foxtrot-pull-only", "foxtrot-absent")];
    for (hidden, absent) in pairs {
        let mut answers = Vec::new();
        for last in [hidden, absent] {
            let target = format!("/v2/_catalog?n=1&last={last}");
            let w = wire(h.gw.public_addr, closing("GET", &target, &[("Authorization", &auth)], "").as_bytes()).await;
            let r = w.one(&target);
            assert_eq!(r.status, 200, "{target}: {}", w.text);
            answers.push((r.body.clone(), r.header("link").map(str::to_owned)));
        }
        assert_eq!(answers[0], answers[1], "last={hidden} versus last={absent}");
    }
}

/// Paging numbers are validated (non-negative decimal integers, at most ten digits),
/// `last` must be a valid name or tag, and whatever passes is clamped before it reaches the
/// registry (CVE-2023-2253). Refused requests reach nothing.
#[tokio::test]
async fn pagination_parameters_are_validated_and_clamped() {
    let (h, auth) = catalog_fixture().await;
    let w = wire(h.gw.public_addr, closing("GET", "/v2/_catalog?n=0", &[("Authorization", &auth)], "").as_bytes()).await;
    let r = w.one("n=0");
    assert_eq!((r.status, r.body.as_str(), r.header("link")), (200, "{\"repositories\":[]}", None), "n=0 is an empty page");
    let cases = [
        ("/v2/_catalog?n=-1", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=abc", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=1e3", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=%2B5", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=5%20", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=99999999999", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?last=Alpha", "NAME_INVALID"),
        ("/v2/_catalog?last=../alpha", "NAME_INVALID"),
        ("/v2/_catalog?last=alpha%2F", "NAME_INVALID"),
        ("/v2/alpha/tags/list?n=-5", "PAGINATION_NUMBER_INVALID"),
        ("/v2/alpha/tags/list?n=0x10", "PAGINATION_NUMBER_INVALID"),
        ("/v2/alpha/tags/list?last=-bad", "TAG_INVALID"),
        ("/v2/alpha/tags/list?last=a%2Fb", "TAG_INVALID"),
    ];
    for (target, code) in cases {
        let w = wire(h.gw.public_addr, closing("GET", target, &[("Authorization", &auth)], "").as_bytes()).await;
        let r = w.one(target);
        assert_eq!((r.status, r.code().as_str()), (400, code), "{target}: {}", w.text);
    }
    assert_untouched(&h, "invalid paging parameters");
    let w = wire(h.gw.public_addr, closing("GET", "/v2/alpha/tags/list?n=4294967295&last=v1", &[("Authorization", &auth)], "").as_bytes()).await;
    assert_eq!(w.one("huge tags n").status, 200, "{}", w.text);
    assert_eq!(targets(&h.upstream.seen()), ["GET /v2/alpha/tags/list?n=1000&last=v1"], "n clamped to tags_max_n");
}

/// Listing the tags of a repository the caller may not list is refused before the
/// registry, with the same answer whether or not the repository exists.
#[tokio::test]
async fn tag_listing_of_a_hidden_repository_is_refused_before_the_registry() {
    let (h, auth) = catalog_fixture().await;
    let mut bodies = Vec::new();
    for repo in ["bravo-hidden", "no-such-repo", "foxtrot-pull-only"] {
        let target = format!("/v2/{repo}/tags/list");
        let w = wire(h.gw.public_addr, closing("GET", &target, &[("Authorization", &auth)], "").as_bytes()).await;
        let r = w.one(&target);
        assert_eq!((r.status, r.code().as_str()), (403, "DENIED"), "{target}: {}", w.text);
        bodies.push(r.body.replace(repo, "<repo>"));
    }
    assert_eq!(bodies[0], bodies[1], "an existing hidden repository and a missing one answer alike");
    assert_untouched(&h, "hidden tag listings");
}

// ===================================================================================
// Admin API
// ===================================================================================

/// The admin state as the admin API shows it, to prove a refused request changed nothing.
async fn admin_snapshot(h: &Harness) -> Value {
    let mut out = json!({});
    for path in ["/api/v1/tokens", "/api/v1/scope-maps", "/api/v1/apikeys", "/api/v1/anonymous"] {
        let r = h.admin("GET", path, None).await;
        assert_eq!(r.status.as_u16(), 200, "{path}");
        out[path] = r.json();
    }
    out
}

/// Every admin route refuses a missing, wrong or near-miss admin token with 401, before
/// routing (unknown routes do not answer 404 to strangers), and changes nothing.
#[tokio::test]
async fn the_admin_api_refuses_missing_wrong_and_near_miss_tokens_on_every_route() {
    let fx = fixture().await;
    let r = fx.h.admin("POST", "/api/v1/apikeys", Some(json!({"name": "k1", "scopeMap": "_repositories_pull"}))).await;
    assert_eq!(r.status.as_u16(), 201);
    let before = admin_snapshot(&fx.h).await;
    let admin = fx.h.gw.admin_addr;
    let routes: &[(&str, &str, &str)] = &[
        ("GET", "/api/v1/tokens", ""),
        ("POST", "/api/v1/tokens", r#"{"name": "evil", "scopeMap": "_repositories_admin"}"#),
        ("PATCH", "/api/v1/tokens/ci", r#"{"scopeMap": "_repositories_admin"}"#),
        ("DELETE", "/api/v1/tokens/ci", ""),
        ("POST", "/api/v1/tokens/ci/credentials", r#"{"password1": true}"#),
        ("DELETE", "/api/v1/tokens/ci/credentials/password1", ""),
        ("POST", "/api/v1/scope-maps", r#"{"name": "all", "repositories": [{"repository": "*", "actions": ["content/read"]}]}"#),
        ("PATCH", "/api/v1/scope-maps/ci-map", r#"{"addRepositories": [{"repository": "*", "actions": ["content/delete"]}]}"#),
        ("POST", "/api/v1/apikeys", r#"{"name": "k2", "scopeMap": "_repositories_admin"}"#),
        ("PATCH", "/api/v1/apikeys/k1", r#"{"scopeMap": "_repositories_admin"}"#),
        ("PUT", "/api/v1/anonymous", r#"{"scopeMap": "_repositories_admin"}"#),
        ("GET", "/api/v1/check?token=ci&repository=mine&action=content/read", ""),
        ("GET", "/api/v1/no-such-route", ""),
        ("GET", &format!("/api/v1/tokens?token={ADMIN}"), ""),
    ];
    let near_misses = [
        None,
        Some("Bearer wrong-token-0123456789abcdef".to_owned()),
        Some(format!("Bearer {ADMIN}x")),
        Some(format!("Bearer {}", &ADMIN[..ADMIN.len() - 1])),
        Some(format!("Bearer  {ADMIN}")),
        Some(format!("Token {ADMIN}")),
        Some(basic("admin", ADMIN)),
        Some(format!("Bearer {}", ADMIN.to_uppercase())),
        Some("Bearer ".to_owned()),
    ];
    for (m, path, body) in routes {
        for auth in &near_misses {
            let mut headers = vec![("Content-Type", "application/json")];
            headers.extend(auth.as_deref().map(|a| ("Authorization", a)));
            let case = format!("{m} {path} with {auth:?}");
            let w = wire(admin, closing(m, path, &headers, body).as_bytes()).await;
            let r = w.one(&case);
            assert_eq!((r.status, r.code().as_str()), (401, "UNAUTHORIZED"), "{case}: {}", w.text);
        }
    }
    assert_eq!(admin_snapshot(&fx.h).await, before, "a refused admin request changed something");
}

/// The admin API lives only on the admin listener, and the admin token is not a registry
/// credential.
#[tokio::test]
async fn the_admin_api_is_not_on_the_public_listener_and_its_token_opens_no_repository() {
    let fx = fixture().await;
    for (m, target, status) in [
        ("GET", "/api/v1/tokens", 404),
        ("POST", "/api/v1/tokens", 404),
        ("GET", "/metrics", 404),
        ("GET", "/readyz", 404),
        ("GET", "/v2/mine/manifests/v1", 401),
        ("GET", "/v2/_catalog", 401),
    ] {
        for auth in [format!("Bearer {ADMIN}"), basic("admin", ADMIN)] {
            let case = format!("{m} {target} with {}", &auth[..6]);
            let w = fx.send(closing(m, target, &[("Authorization", &auth), ("Content-Type", "application/json")], if m == "POST" { "{}" } else { "" })).await;
            assert_eq!(w.one(&case).status, status, "{case}: {}", w.text);
        }
    }
    let w = fx.send(closing("GET", "/token?service=scopegate&scope=repository:mine:pull", &[("Authorization", &basic("admin", ADMIN))], "")).await;
    assert_eq!(w.one("admin token at /token").status, 401);
    assert_untouched(&fx.h, "admin token on the public listener");
}

/// Request bodies carry only the fields each operation takes: identifiers, digests,
/// revisions, password values, creation times and view-only fields are refused with 400
/// naming the field, duplicate keys are refused, nothing changes, and no submitted secret
/// is echoed back.
#[tokio::test]
async fn the_admin_api_refuses_mass_assignment_and_changes_nothing() {
    let fx = fixture().await;
    let r = fx.h.admin("POST", "/api/v1/apikeys", Some(json!({"name": "k1", "scopeMap": "_repositories_pull"}))).await;
    assert_eq!(r.status.as_u16(), 201);
    let before = admin_snapshot(&fx.h).await;
    let secret = "sgp_chosen_by_the_attacker_0123456789";
    let repos = json!([{"repository": "a", "actions": ["content/read"]}]);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("POST", "/api/v1/scope-maps", json!({"name": "m1", "repositories": repos, "id": 7}), "id"),
        ("POST", "/api/v1/scope-maps", json!({"name": "m1", "repositories": repos, "type": "SystemDefined"}), "type"),
        ("POST", "/api/v1/scope-maps", json!({"name": "m1", "repositories": repos, "creationDate": "2000-01-01T00:00:00Z"}), "creationDate"),
        ("POST", "/api/v1/scope-maps", json!({"name": "m1", "repositories": repos, "actions": ["repositories/*/content/delete"]}), "actions"),
        ("POST", "/api/v1/scope-maps", json!({"name": "m1", "repositories": [{"repository": "a", "actions": ["content/read"], "pattern": "*"}]}), "pattern"),
        ("PATCH", "/api/v1/scope-maps/ci-map", json!({"name": "renamed"}), "name"),
        ("PATCH", "/api/v1/scope-maps/ci-map", json!({"repositories": [{"repository": "*", "actions": ["content/delete"]}]}), "repositories"),
        ("PATCH", "/api/v1/scope-maps/ci-map", json!({"revision": 99, "description": "x"}), "revision"),
        ("POST", "/api/v1/tokens", json!({"name": "t1", "scopeMap": "_repositories_admin", "id": "t0"}), "id"),
        ("POST", "/api/v1/tokens", json!({"name": "t1", "scopeMap": "_repositories_admin", "passwords": [secret]}), "passwords"),
        ("POST", "/api/v1/tokens", json!({"name": "t1", "scopeMap": "_repositories_admin", "credentials": {"passwords": [{"name": "password1", "value": secret}]}}), "credentials"),
        ("POST", "/api/v1/tokens", json!({"name": "t1", "scopeMap": "_repositories_admin", "digest": "00"}), "digest"),
        ("POST", "/api/v1/tokens", json!({"name": "t1", "scopeMap": "_repositories_admin", "revision": 5}), "revision"),
        ("POST", "/api/v1/tokens", json!({"name": "t1", "scopeMap": "_repositories_admin", "password1": secret}), "password1"),
        ("PATCH", "/api/v1/tokens/ci", json!({"name": "root"}), "name"),
        ("PATCH", "/api/v1/tokens/ci", json!({"passwords": [secret]}), "passwords"),
        ("PATCH", "/api/v1/tokens/ci", json!({"digest": "00", "status": "enabled"}), "digest"),
        ("PATCH", "/api/v1/tokens/ci", json!({"revision": 0, "status": "enabled"}), "revision"),
        ("PATCH", "/api/v1/tokens/ci", json!({"creationDate": "2000-01-01T00:00:00Z"}), "creationDate"),
        ("POST", "/api/v1/tokens/ci/credentials", json!({"password1": true, "value": secret}), "value"),
        ("POST", "/api/v1/tokens/ci/credentials", json!({"password1": "yes"}), "expected a boolean"),
        ("POST", "/api/v1/apikeys", json!({"name": "k2", "scopeMap": "_repositories_admin", "key": secret}), "key"),
        ("POST", "/api/v1/apikeys", json!({"name": "k2", "scopeMap": "_repositories_admin", "digest": "00"}), "digest"),
        ("POST", "/api/v1/apikeys", json!({"name": "k2", "scopeMap": "_repositories_admin", "id": "x"}), "id"),
        ("PATCH", "/api/v1/apikeys/k1", json!({"key": secret}), "key"),
        ("PATCH", "/api/v1/apikeys/k1", json!({"name": "k9", "status": "enabled"}), "name"),
        ("PUT", "/api/v1/anonymous", json!({"scopeMap": "_repositories_pull", "actions": ["content/delete"]}), "actions"),
        ("PATCH", "/api/v1/tokens/ci", json!({"status": "root"}), "expected enabled or disabled"),
    ];
    for (m, path, body, field) in &cases {
        let case = format!("{m} {path} {body}");
        let r = fx.h.admin(m, path, Some(body.clone())).await;
        assert_eq!(r.status.as_u16(), 400, "{case}: {}", r.text());
        // serde names an unknown field in backquotes; the other cases give their own words
        let named = if field.contains(' ') || field.starts_with('"') { (*field).to_owned() } else { format!("unknown field `{field}`") };
        assert!(r.text().contains(&named), "{case}: the refusal should say {named}: {}", r.text());
        assert!(!r.text().contains(secret), "{case}: the submitted secret was echoed");
    }
    let admin = fx.h.gw.admin_addr;
    let auth = format!("Bearer {ADMIN}");
    for (path, body) in [
        ("/api/v1/tokens", r#"{"name": "t1", "name": "root", "scopeMap": "_repositories_admin"}"#),
        ("/api/v1/apikeys", r#"{"name": "k3", "scopeMap": "_repositories_pull", "scopeMap": "_repositories_admin"}"#),
    ] {
        let w = wire(admin, closing("POST", path, &[("Authorization", &auth), ("Content-Type", "application/json")], body).as_bytes()).await;
        let r = w.one(path);
        assert_eq!(r.status, 400, "duplicate keys at {path}: {}", w.text);
        assert!(r.body.contains("duplicate field"), "{path}: {}", r.body);
    }
    assert_eq!(admin_snapshot(&fx.h).await, before, "a refused admin request changed something");
}

/// Password and key values appear only in the answer that created them: never in a list,
/// a show, an update answer or an error, and never in the store in clear.
#[tokio::test]
async fn secrets_are_returned_only_in_the_answer_that_created_them() {
    let fx = fixture().await;
    let h = &fx.h;
    let r = h.admin("POST", "/api/v1/tokens", Some(json!({"name": "t1", "scopeMap": "_repositories_pull"}))).await;
    assert_eq!(r.status.as_u16(), 201);
    let created: Vec<String> = r.json()["credentials"]["passwords"].as_array().unwrap().iter().map(|p| p["value"].as_str().unwrap().to_owned()).collect();
    assert_eq!(created.len(), 2, "both passwords shown once");
    let r = h.admin("POST", "/api/v1/tokens/t1/credentials", Some(json!({"password2": true}))).await;
    let regenerated = r.json()["passwords"].as_array().unwrap().iter().filter_map(|p| p["value"].as_str()).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(regenerated.len(), 1, "only the new password is shown: {}", r.text());
    let r = h.admin("POST", "/api/v1/apikeys", Some(json!({"name": "k1", "scopeMap": "_repositories_pull"}))).await;
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let secrets: Vec<&String> = created.iter().chain(&regenerated).chain(std::iter::once(&key)).collect();
    let reads: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/api/v1/tokens", None),
        ("GET", "/api/v1/tokens/t1", None),
        ("PATCH", "/api/v1/tokens/t1", Some(json!({"status": "enabled"}))),
        ("DELETE", "/api/v1/tokens/t1/credentials/password1", None),
        ("GET", "/api/v1/apikeys", None),
        ("GET", "/api/v1/apikeys/k1", None),
        ("PATCH", "/api/v1/apikeys/k1", Some(json!({"status": "enabled"}))),
        ("POST", "/api/v1/tokens", Some(json!({"name": "t1", "scopeMap": "_repositories_pull"}))),
        ("POST", "/api/v1/apikeys", Some(json!({"name": "k1", "scopeMap": "_repositories_pull"}))),
        ("GET", "/api/v1/check?token=t1&repository=a&action=content/read", None),
    ];
    for (m, path, body) in reads {
        let r = h.admin(m, path, body).await;
        let text = r.text();
        assert!(r.status.as_u16() < 500, "{m} {path}: {text}");
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{m} {path} returned a secret");
        }
        assert!(!text.contains("\"value\"") && !text.contains("\"key\""), "{m} {path}: {text}");
    }
    let db = std::fs::read(h.data.path().join("scopegate.db")).unwrap();
    for s in &secrets {
        assert!(!db.windows(s.len()).any(|w| w == s.as_bytes()), "a secret is stored in clear");
    }
}

/// The admin API takes JSON only, and bodies up to 1 MiB.
#[tokio::test]
async fn the_admin_api_refuses_other_media_types_and_oversized_bodies() {
    let fx = fixture().await;
    let before = admin_snapshot(&fx.h).await;
    let admin = fx.h.gw.admin_addr;
    let auth = format!("Bearer {ADMIN}");
    let body = r#"{"name": "t1", "scopeMap": "_repositories_admin"}"#;
    for ct in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=b", "application/jsonx"] {
        let w = wire(admin, closing("POST", "/api/v1/tokens", &[("Authorization", &auth), ("Content-Type", ct)], body).as_bytes()).await;
        assert_eq!(w.one(ct).status, 415, "{ct}: {}", w.text);
    }
    let big = format!(r#"{{"name": "m1", "description": "{}", "repositories": [{{"repository": "a", "actions": ["content/read"]}}]}}"#, "x".repeat(1024 * 1024));
    let w = wire(admin, closing("POST", "/api/v1/scope-maps", &[("Authorization", &auth), ("Content-Type", "application/json")], &big).as_bytes()).await;
    assert_eq!(w.one("1 MiB body").status, 400, "{}", w.text);
    assert_eq!(admin_snapshot(&fx.h).await, before);
}

// ===================================================================================
// Limits
// ===================================================================================

/// A manifest PUT declaring more than 4 MiB is refused with 413 from its head alone: the
/// body is never awaited (here it is never sent) and nothing reaches the registry. Exactly
/// 4 MiB passes.
#[tokio::test]
async fn a_manifest_declared_over_the_limit_is_refused_before_its_body_is_read() {
    let fx = fixture().await;
    let limit: usize = 4 * 1024 * 1024;
    let head = |len: usize| {
        format!(
            "PUT /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            fx.mine
        )
    };
    for (case, declared) in [("4 MiB + 1 declared", limit + 1), ("64 MiB declared", 64 * 1024 * 1024), ("1 TiB declared", 1 << 40)] {
        let w = fx.send(head(declared)).await;
        let r = w.one(case);
        assert_eq!((r.status, r.code().as_str()), (413, "MANIFEST_INVALID"), "{case}: {}", r.head);
    }
    assert_untouched(&fx.h, "oversized manifest");
    let mut at = head(limit).into_bytes();
    at.resize(at.len() + limit, b'x');
    let w = fx.send(&at).await;
    assert_eq!(w.one("exactly 4 MiB").status, 201, "{}", w.text);
    let seen = fx.h.upstream.seen();
    assert_eq!(targets(&seen), ["PUT /v2/mine/manifests/v1"]);
    assert_eq!(seen[0].body.len(), limit);
}

/// A chunked manifest PUT (no declared length) over 4 MiB should be refused with 413 and
/// never reach the registry; today it streams until the limit trips and is answered 502.
#[tokio::test]
async fn a_chunked_manifest_over_the_limit_is_refused_before_the_registry() {
    let fx = fixture().await;
    let mut req = format!(
        "PUT /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        fx.mine
    )
    .into_bytes();
    for _ in 0..5 {
        req.extend_from_slice(b"100000\r\n");
        req.resize(req.len() + 0x10_0000, b'x');
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let w = fx.send(&req).await;
    let r = w.one("5 MiB chunked manifest");
    assert_eq!(r.status, 413, "{}", w.text);
    assert_untouched(&fx.h, "chunked oversized manifest");
}

/// Heads over the HTTP layer's limits get a bare 431 (too many header lines, or a head
/// over its buffer) or 414 (target too long), the connection is closed, and nothing is
/// forwarded or answered after it.
#[tokio::test]
async fn oversized_heads_are_refused_with_431_or_414_and_the_connection_closed() {
    let fx = fixture().await;
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        ("101 header lines", format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n{many}\r\n", fx.mine), 431),
        ("one 500 KiB header", format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nX-Big: {}\r\n\r\n", fx.mine, "x".repeat(500 * 1024)), 431),
        ("500 KiB Authorization", format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic {}\r\n\r\n", "A".repeat(500 * 1024)), 431),
        // the head is over limits.max_header_bytes (64 KiB) before the target is over 64 KiB
        ("70 kB target", format!("GET /v2/mine/manifests/{} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n\r\n", "a".repeat(70_000), fx.mine), 431),
    ];
    for (case, head, status) in &cases {
        let w = fx.send(format!("{head}{SENTINEL}")).await;
        let r = w.one(case);
        assert_eq!(r.status, *status, "{case}: {}", r.head);
        assert_eq!(r.header("connection"), Some("close"), "{case}");
        assert!(!r.by_gateway(), "{case}: refused by the HTTP layer before the gateway");
    }
    // with the head limit raised, the same target meets the HTTP layer's own URI limit
    let raised = Harness::start_configured(FakeRegistry::start().await, tempfile::tempdir().unwrap(), |raw: &mut RawConfig| {
        raw.limits.max_header_bytes = 256 * 1024;
    })
    .await;
    let w = wire(raised.gw.public_addr, format!("GET /v2/mine/manifests/{} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", "a".repeat(70_000)).as_bytes()).await;
    assert_eq!(w.one("70 kB target, 256 KiB head limit").status, 414, "{}", w.text);
    assert!(raised.upstream.seen().is_empty());
    // just under the header-count limit is served
    let ninety: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    let w = fx.send(format!("GET /v2/mine/manifests/v1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n{ninety}Connection: close\r\n\r\n", fx.mine)).await;
    assert_eq!(w.one("90 header lines").status, 200, "{}", w.text);
    assert_eq!(targets(&fx.h.upstream.seen()), ["GET /v2/mine/manifests/v1"], "only the request under the limits was forwarded");
}

/// Bodies the gateway reads itself are capped: the token endpoint's form (64 KiB) and the
/// repository API's attributes (64 KiB). Over the cap is a 4xx, never a 5xx, and changes
/// nothing.
#[tokio::test]
async fn bodies_the_gateway_reads_itself_are_capped() {
    let fx = fixture().await;
    let pad = "x".repeat(65 * 1024);
    let form = format!("grant_type=password&service=scopegate&username=ci&password=x&client_id={pad}");
    let w = fx.send(closing("POST", "/token", &[("Content-Type", "application/x-www-form-urlencoded")], &form)).await;
    let r = w.one("token form");
    assert!((400..500).contains(&r.status), "token form over 64 KiB: {}", w.text);
    let attrs = format!(r#"{{"readEnabled": false, "pad": "{pad}"}}"#);
    let w = fx.send(closing("PATCH", "/scopegate/v1/mine", &[("Authorization", &fx.mine), ("Content-Type", "application/json")], &attrs)).await;
    let r = w.one("repository attributes");
    assert_eq!((r.status, r.code().as_str()), (400, "INVALID_REQUEST"), "{}", w.text);
    let w = fx.send(closing("GET", "/v2/mine/manifests/v1", &[("Authorization", &fx.mine)], "")).await;
    assert_eq!(w.one("still readable").status, 200, "the refused PATCH locked nothing");
}
