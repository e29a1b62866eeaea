//! Test support: an in-process gateway on port 0 in front of a recording fake registry,
//! an HTTP client for well-formed requests and a raw socket for malformed ones.
//! The fake registry records every request it receives, so tests can prove that rejected
//! requests never reached it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scopegate::auth::secret::Secret;
use scopegate::config::{Overrides, RawConfig};
use scopegate::server::{self, AdminToken, Running};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN: &str = "admin-token-for-tests-0123456789";
pub const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// What the fake registry received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A fake registry: records requests; answers catalog pages from `repos`, upload starts
/// with an absolute Location on its own origin, and everything else with 200 `ok`.
/// `reply_headers` are set on every answer (replacing any of the same name), for tests of
/// what the gateway does with the registry's headers.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub repos: Arc<Mutex<Vec<String>>>,
    pub reply_headers: Arc<Mutex<Vec<(String, String)>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let repos = Arc::new(Mutex::new(Vec::new()));
        let reply_headers: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let (s, r, x) = (Arc::clone(&seen), Arc::clone(&repos), Arc::clone(&reply_headers));
        let task = tokio::spawn(async move {
            // connections live in this set, so stopping the registry closes them all
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (s, r, x) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&x));
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, r, x) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&x));
                        async move {
                            let mut resp = answer(req, addr, &s, &r).await;
                            let extra = x.lock().unwrap().clone();
                            for (k, v) in extra {
                                resp.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeRegistry { addr, seen, repos, reply_headers, task: Mutex::new(Some(task)) }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting, closes every open connection, and waits until the listening socket
    /// is closed: a registry that died.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

async fn answer(req: Request<Incoming>, addr: SocketAddr, seen: &Mutex<Vec<Seen>>, repos: &Mutex<Vec<String>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    seen.lock().unwrap().push(Seen { method: parts.method.clone(), target: target.clone(), headers: parts.headers.clone(), body });
    let path = parts.uri.path();
    if path == "/v2/_catalog" {
        let q: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
        let n: usize = q.iter().find(|(k, _)| k == "n").and_then(|(_, v)| v.parse().ok()).unwrap_or(100);
        let last = q.iter().find(|(k, _)| k == "last").map(|(_, v)| v.clone());
        let all = repos.lock().unwrap().clone();
        let rest: Vec<String> = all.into_iter().filter(|r| last.as_ref().is_none_or(|l| r > l)).collect();
        let page: Vec<String> = rest.iter().take(n).cloned().collect();
        let mut resp = Response::new(Full::new(Bytes::from(json!({"repositories": page}).to_string())));
        if rest.len() > n {
            let l = page.last().cloned().unwrap_or_default();
            resp.headers_mut().insert("link", format!("</v2/_catalog?last={l}&n={n}>; rel=\"next\"").parse().unwrap());
        }
        return resp;
    }
    if parts.method == Method::POST && path.ends_with("/blobs/uploads/") {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::ACCEPTED;
        let loc = format!("http://{addr}{path}f00d-1?_state=abc");
        resp.headers_mut().insert("location", loc.parse().unwrap());
        return resp;
    }
    if let Some(repo) = path.strip_prefix("/v2/").and_then(|p| p.strip_suffix("/tags/list")) {
        return Response::new(Full::new(Bytes::from(json!({"name": repo, "tags": ["v2", "v1"]}).to_string())));
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    if path.contains("/manifests/") {
        match parts.method {
            Method::PUT => *resp.status_mut() = StatusCode::CREATED,
            Method::DELETE => *resp.status_mut() = StatusCode::ACCEPTED,
            _ => {
                resp.headers_mut().insert("docker-content-digest", DIGEST.parse().unwrap());
                resp.headers_mut().insert("content-type", "application/vnd.oci.image.manifest.v1+json".parse().unwrap());
            }
        }
    }
    resp
}

/// A gateway in front of a fake registry, with an HTTP client.
pub struct Harness {
    pub gw: Running,
    pub upstream: FakeRegistry,
    pub data: tempfile::TempDir,
    pub http: Client<HttpConnector, Full<Bytes>>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

impl Harness {
    pub async fn start() -> Harness {
        let upstream = FakeRegistry::start().await;
        let data = tempfile::tempdir().unwrap();
        Self::start_on(upstream, data).await
    }

    pub async fn start_on(upstream: FakeRegistry, data: tempfile::TempDir) -> Harness {
        Self::start_configured(upstream, data, |_| {}).await
    }

    /// Starts with a configuration adjusted by `f` (listeners, upstream and data directory
    /// are the harness's).
    pub async fn start_configured(upstream: FakeRegistry, data: tempfile::TempDir, f: impl FnOnce(&mut RawConfig)) -> Harness {
        let addr = upstream.addr;
        Self::start_in_front_of(addr, upstream, data, f).await
    }

    /// Like [`Harness::start_configured`], but the gateway forwards to `upstream_addr`
    /// (a test's own upstream, such as one that never answers) instead of the fake registry.
    pub async fn start_in_front_of(upstream_addr: SocketAddr, upstream: FakeRegistry, data: tempfile::TempDir, f: impl FnOnce(&mut RawConfig)) -> Harness {
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{upstream_addr}")),
            data_dir: Some(data.path().to_owned()),
            public_url: None,
            database_url: None,
        };
        let mut raw = RawConfig::default();
        // tests that look at the audit log point it at a file
        raw.audit.output = "off".into();
        f(&mut raw);
        let config = raw.apply(&o).validate().unwrap();
        let public = TcpListener::bind(config.listen).await.unwrap();
        let admin = TcpListener::bind(config.admin_listen).await.unwrap();
        let gw = server::start(config, public, admin, AdminToken::Given(Secret::new(ADMIN.into()))).await.unwrap();
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Harness { gw, upstream, data, http }
    }

    /// Stops the gateway and starts a new one on the same data directory and upstream.
    pub async fn restart(self) -> Harness {
        let Harness { gw, upstream, data, .. } = self;
        gw.shutdown().await;
        Self::start_on(upstream, data).await
    }

    pub fn public(&self) -> String {
        format!("http://{}", self.gw.public_addr)
    }

    pub async fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut b = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.http.request(b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        Resp { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    }

    /// A request to the public listener.
    pub async fn v2(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(method, &format!("{}{target}", self.public()), headers, b"").await
    }

    /// A request to the admin API.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = format!("http://{}{path}", self.gw.admin_addr);
        let auth = format!("Bearer {ADMIN}");
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        self.request(method, &url, &[("authorization", &auth), ("content-type", "application/json")], bytes.as_bytes()).await
    }

    /// Creates a scope map and a token on it; returns password1.
    pub async fn token(&self, name: &str, repos: &[(&str, &[&str])]) -> String {
        let map = format!("{name}-map");
        let repositories: Vec<Value> = repos.iter().map(|(r, a)| json!({"repository": r, "actions": a})).collect();
        let r = self.admin("POST", "/api/v1/scope-maps", Some(json!({"name": map, "repositories": repositories}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let r = self.admin("POST", "/api/v1/tokens", Some(json!({"name": name, "scopeMap": map}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        r.json()["credentials"]["passwords"][0]["value"].as_str().unwrap().to_owned()
    }

    /// Fetches a session token for the given scopes with Basic credentials.
    pub async fn session(&self, user: &str, password: &str, scopes: &[&str]) -> String {
        let q: String = scopes.iter().map(|s| format!("&scope={}", form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())).collect();
        let r = self.v2("GET", &format!("/token?service=scopegate{q}"), &[("authorization", &basic(user, password))]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// Sends raw bytes to the public listener and returns the status line's code and the rest.
    pub async fn raw(&self, bytes: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(self.gw.public_addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text)
    }
}
