//! Fault injection: what the gateway does when the parts it depends on misbehave.
//!
//! The registry misbehaving: the gateway runs in-process (port 0) in front of a small
//! raw-TCP fake registry written here, which refuses connections, accepts and never
//! answers, answers bytes that are not HTTP, cuts a response body half-way with a reset,
//! or answers with hop-by-hop headers or a head too large to parse. Each fault must come
//! back as the Docker JSON error the README promises (503, 504, 502) or as a body the
//! client can tell was cut, the gateway must serve the next good request once the fake is
//! healthy again, and 200 faulty requests of each kind must leave the process's open file
//! descriptors where they were.
//!
//! The policy store failing: the real `scopegate` binary (tests/e2e/harness.rs) keeps its
//! SQLite store on a small filesystem mounted for the test, which is then filled up (a
//! 4 MiB tmpfs) or turned read-only under the running gateway (an ext4 image forced
//! read-only by a filesystem error, as `errors=remount-ro` does: Linux refuses `mount -o
//! remount,ro` while the gateway holds the database open for writing). Admin writes must
//! then fail with a clear 5xx JSON error and change nothing, while registry requests of
//! existing tokens are still decided; once the filesystem is writable again, writes work
//! (the full disk without a restart; the read-only one, which Linux keeps read-only until
//! it is unmounted, after a restart, having shown that a gateway restarted on the still
//! read-only store either refuses to start or decides and refuses writes).
//!
//! Every test takes one lock, so no two run at once: the file-descriptor counts are of
//! the whole test process. Nothing waits a fixed time for something to happen: every wait
//! polls a condition against a deadline.
//!
//! Prerequisites: those of the e2e harness (`docker-registry`, `skopeo`, `podman`, `jq`,
//! root for `unshare`), plus root for `mount` (tmpfs, loop), `mkfs.ext4` and a writable
//! `/sys/fs/ext4`. When one is missing the store tests FAIL and say so; `.ci/run` installs
//! everything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

#[path = "e2e/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scopegate::auth::secret::Secret;
use scopegate::config::{Overrides, RawConfig};
use scopegate::server::{self, AdminToken};
use serde_json::{json, Value};
use support::{basic, FakeRegistry, Harness, ADMIN, DIGEST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One test at a time (see the module comment).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

const REPO: &str = "faults/app";
/// Faulty requests of each kind in the file-descriptor checks.
const ROUNDS: usize = 200;
/// How many of them are in flight at once.
const PARALLEL: usize = 20;
/// Open descriptors allowed above the baseline once the faulty requests are over.
const FD_SLACK: usize = 8;

// =======================================================================================
// The registry misbehaving
// =======================================================================================

/// What the fake registry does with the next connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Passes one request to the recording [`FakeRegistry`] and its answer back, then closes
    /// (so no healthy connection outlives a switch to a fault).
    Healthy,
    /// Reads the request and never answers, until the gateway hangs up.
    Silent,
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Answers a head announcing 1,000,000 bytes, sends 1,000, then resets the connection.
    CutBody,
    /// Answers 200 with every hop-by-hop header (and one its `Connection` names) beside
    /// end-to-end ones, with a chunked body.
    HopByHop,
    /// Answers 200 with 1,000 headers of 1 KiB each.
    HugeHead,
}

/// A raw-TCP fake registry in front of the recording one. It starts *refusing*: its port
/// is bound but not listening, so connections are refused and nobody else can take the
/// port. [`FaultyRegistry::listen`] opens it.
struct FaultyRegistry {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    socket: Option<TcpSocket>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for FaultyRegistry {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl FaultyRegistry {
    fn refusing() -> FaultyRegistry {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        FaultyRegistry { addr, behaviour: Arc::new(Mutex::new(Behaviour::Healthy)), socket: Some(socket), task: None }
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Starts accepting on the bound port; each connection gets the behaviour set when it
    /// was accepted. `healthy_target` is the recording registry.
    fn listen(&mut self, healthy_target: SocketAddr) {
        let listener = self.socket.take().expect("listening already").listen(1024).unwrap();
        let behaviour = Arc::clone(&self.behaviour);
        self.task = Some(tokio::spawn(async move {
            // connections live in this set, so stopping the fake closes them all
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                while connections.try_join_next().is_some() {}
                let b = *behaviour.lock().unwrap();
                connections.spawn(misbehave(stream, b, healthy_target));
            }
        }));
    }
}

/// Reads a request head (up to the blank line); the requests here have no body.
async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

async fn misbehave(mut s: TcpStream, b: Behaviour, healthy_target: SocketAddr) {
    match b {
        Behaviour::Healthy => {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let (parts, _) = req.into_parts();
                let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                let mut up = Request::builder().method(parts.method).uri(format!("http://{healthy_target}{target}"));
                for (k, v) in &parts.headers {
                    up = up.header(k, v);
                }
                let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
                let resp = client.request(up.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                Ok::<_, std::convert::Infallible>(http::Response::from_parts(parts, Full::new(body)))
            });
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(s), svc).await;
        }
        Behaviour::Silent => {
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        Behaviour::Garbage => {
            read_head(&mut s).await;
            let _ = s.write_all(b"\x16\x03\x01\x00\xa5 this is not HTTP at all\r\n\r\n\x00\x01\x02").await;
        }
        Behaviour::CutBody => {
            read_head(&mut s).await;
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".to_vec();
            out.extend_from_slice(&[b'x'; 1000]);
            let _ = s.write_all(&out).await;
            let _ = s.flush().await;
            // a reset, not an orderly close
            let _ = s.set_zero_linger();
        }
        Behaviour::HopByHop => {
            read_head(&mut s).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\n\
                 Connection: close, X-Hop-Secret\r\n\
                 X-Hop-Secret: named-by-connection\r\n\
                 Keep-Alive: timeout=5, max=1000\r\n\
                 Proxy-Connection: keep-alive\r\n\
                 Proxy-Authenticate: Basic realm=\"upstream-proxy\"\r\n\
                 Upgrade: h2c\r\n\
                 Trailer: X-Checksum\r\n\
                 TE: trailers\r\n\
                 Transfer-Encoding: chunked\r\n\
                 Docker-Content-Digest: {DIGEST}\r\n\
                 Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                 X-End-To-End: kept\r\n\r\n\
                 2\r\nok\r\n0\r\nX-Checksum: 1\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
        }
        Behaviour::HugeHead => {
            read_head(&mut s).await;
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
            let filler = "v".repeat(1024);
            for i in 0..1000 {
                out.extend_from_slice(format!("X-Filler-{i}: {filler}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\nok");
            let _ = s.write_all(&out).await;
        }
    }
}

/// The in-process gateway (as `Harness::start_configured` starts it, with a 1 s upstream
/// response timeout) whose upstream is `fault`; the harness's `upstream` is the recording
/// registry behind it, and a token `puller` may read [`REPO`]. Returns its Basic header.
async fn gateway_before(fault: SocketAddr, registry: FakeRegistry) -> (Harness, String) {
    let data = tempfile::tempdir().unwrap();
    let o = Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(format!("http://{fault}")),
        data_dir: Some(data.path().to_owned()),
        public_url: None,
        database_url: None,
    };
    let mut raw = RawConfig::default();
    raw.audit.output = "off".into();
    raw.limits.upstream_response_timeout_secs = 1;
    let config = raw.apply(&o).validate().unwrap();
    let public = TcpListener::bind(config.listen).await.unwrap();
    let admin = TcpListener::bind(config.admin_listen).await.unwrap();
    let gw = server::start(config, public, admin, AdminToken::Given(Secret::new(ADMIN.into()))).await.unwrap();
    let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let h = Harness { gw, upstream: registry, data, http };
    let pw = h.token("puller", &[(REPO, &["content/read", "metadata/read"])]).await;
    (h, basic("puller", &pw))
}

/// What a client got: the head, and the body or why it broke off (with the bytes before).
struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, (usize, String)>,
}

impl Outcome {
    fn text(&self) -> String {
        match &self.body {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err((n, e)) => format!("<body broken after {n} bytes: {e}>"),
        }
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

/// A client that keeps no idle connections, so every request opens and closes its own:
/// the descriptor counts then include nothing parked in the test's pool.
fn unpooled() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(HttpConnector::new())
}

/// `GET /v2/<REPO>/manifests/v1` at the gateway's public origin `public` with `auth`,
/// bounded by 30 s for the head and 30 s between body frames.
async fn get_manifest(client: &Client<HttpConnector, Full<Bytes>>, public: &str, auth: &str) -> Outcome {
    let req = Request::get(format!("{public}/v2/{REPO}/manifests/v1"))
        .header("authorization", auth)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("the gateway answers within 30 s")
        .expect("the gateway sends a response head");
    let (parts, mut body) = resp.into_parts();
    let mut got = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(30), body.frame()).await.expect("the body ends or breaks within 30 s") {
            None => break Ok(Bytes::from(got)),
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    got.extend_from_slice(d);
                }
            }
            Some(Err(e)) => break Err((got.len(), e.to_string())),
        }
    };
    Outcome { status: parts.status, headers: parts.headers, body: outcome }
}

/// A Docker JSON error with `status`, from the gateway, naming the registry.
fn assert_docker_error(o: &Outcome, status: StatusCode, what: &str) {
    assert_eq!(o.status, status, "{what}: {}", o.text());
    assert_eq!(o.header("docker-distribution-api-version"), "registry/2.0", "{what}");
    assert!(o.header("content-type").starts_with("application/json"), "{what}: content-type {:?}", o.header("content-type"));
    let body = o.body.as_ref().unwrap_or_else(|e| panic!("{what}: the error body broke off: {e:?}"));
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", o.text()));
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{what}: no errors list in {v}"));
    assert_eq!(errors.len(), 1, "{what}: {v}");
    assert_eq!(errors[0]["code"], "UNAVAILABLE", "{what}: {v}");
    let message = errors[0]["message"].as_str().unwrap_or_else(|| panic!("{what}: no message in {v}"));
    assert!(message.contains("registry"), "{what}: the message should say the registry failed: {message:?}");
}

/// A good request gets the recording registry's answer, and the registry saw it.
async fn assert_serves(h: &Harness, auth: &str, what: &str) {
    h.upstream.clear();
    let o = get_manifest(&unpooled(), &h.public(), auth).await;
    assert_eq!(o.status, StatusCode::OK, "{what}: a good request after the fault: {}", o.text());
    assert_eq!(o.body.as_deref().ok(), Some(&b"ok"[..]), "{what}: {}", o.text());
    assert_eq!(o.header("docker-content-digest"), DIGEST, "{what}");
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1, "{what}: the registry should see exactly the good request: {seen:?}");
    assert_eq!(seen[0].target, format!("/v2/{REPO}/manifests/v1"), "{what}");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sends [`ROUNDS`] requests ([`PARALLEL`] at a time), checks each with `check`, and then
/// that the process's open descriptors come back to within [`FD_SLACK`] of what they were
/// before (polled: closing a connection's other end takes a moment).
async fn fds_stay_flat(h: &Harness, auth: &str, what: &str, check: impl Fn(&Outcome) + Send + Sync + 'static) {
    // warm up: first connections, lazily started pools and threads
    let client = unpooled();
    for _ in 0..3 {
        check(&get_manifest(&client, &h.public(), auth).await);
    }
    let before = open_fds();
    let check = Arc::new(check);
    let h_public = h.public();
    let mut left = ROUNDS;
    while left > 0 {
        let n = left.min(PARALLEL);
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (client, check, auth, url) = (client.clone(), Arc::clone(&check), auth.to_owned(), h_public.clone());
            batch.spawn(async move {
                let o = get_manifest(&client, &url, &auth).await;
                check(&o);
            });
        }
        while let Some(r) = batch.join_next().await {
            r.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        left -= n;
    }
    drop(client);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let now = open_fds();
        if now <= before + FD_SLACK {
            eprintln!("{what}: open descriptors {before} before {ROUNDS} faulty requests, {now} after");
            return;
        }
        assert!(Instant::now() < end, "{what}: open descriptors grew from {before} to {now} over {ROUNDS} faulty requests (slack {FD_SLACK})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway in front of a fake that is healthy, then shows `b` for [`ROUNDS`] requests
/// (each checked by `check`, descriptors checked to stay flat), then is healthy again.
async fn fault_case(b: Behaviour, what: &str, check: impl Fn(&Outcome) + Send + Sync + 'static) {
    let registry = FakeRegistry::start().await;
    let target = registry.addr;
    let mut fault = FaultyRegistry::refusing();
    fault.listen(target);
    let (h, auth) = gateway_before(fault.addr, registry).await;
    assert_serves(&h, &auth, &format!("{what} (before)")).await;
    fault.set(b);
    h.upstream.clear();
    fds_stay_flat(&h, &auth, what, check).await;
    assert!(h.upstream.seen().is_empty(), "{what}: nothing reached the recording registry while the fake misbehaved");
    fault.set(Behaviour::Healthy);
    assert_serves(&h, &auth, what).await;
}

#[test]
fn a_registry_refusing_connections_gives_503_and_is_served_again_once_it_listens() {
    let _serial = serial();
    runtime().block_on(async {
        let registry = FakeRegistry::start().await;
        let target = registry.addr;
        let mut fault = FaultyRegistry::refusing();
        let (h, auth) = gateway_before(fault.addr, registry).await;
        let check = |o: &Outcome| {
            assert_docker_error(o, StatusCode::SERVICE_UNAVAILABLE, "refused connection");
            assert!(o.text().contains("unreachable"), "refused connection: {}", o.text());
        };
        fds_stay_flat(&h, &auth, "refused connections", check).await;
        assert!(h.upstream.seen().is_empty());
        fault.listen(target);
        assert_serves(&h, &auth, "refused connections").await;
    });
}

#[test]
fn a_registry_that_never_answers_gives_504_after_the_response_timeout() {
    let _serial = serial();
    runtime().block_on(async {
        let check = |o: &Outcome| {
            assert_docker_error(o, StatusCode::GATEWAY_TIMEOUT, "silent registry");
            assert!(o.text().contains("within 1 s"), "silent registry: the message should name the timeout: {}", o.text());
        };
        // one request alone, timed: the configured second, not the 60 s default
        let registry = FakeRegistry::start().await;
        let mut fault = FaultyRegistry::refusing();
        fault.listen(registry.addr);
        fault.set(Behaviour::Silent);
        let (h, auth) = gateway_before(fault.addr, registry).await;
        let started = Instant::now();
        check(&get_manifest(&unpooled(), &h.public(), &auth).await);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "504 after {took:?}, expected about 1 s");
        drop((h, fault));
        fault_case(Behaviour::Silent, "silent registry", check).await;
    });
}

#[test]
fn a_registry_answering_garbage_gives_502() {
    let _serial = serial();
    runtime().block_on(fault_case(Behaviour::Garbage, "garbage answer", |o| {
        assert_docker_error(o, StatusCode::BAD_GATEWAY, "garbage answer");
    }));
}

#[test]
fn a_body_cut_by_a_reset_reaches_the_client_cut_and_the_next_request_is_served() {
    let _serial = serial();
    runtime().block_on(fault_case(Behaviour::CutBody, "body cut by a reset", |o| {
        assert_eq!(o.status, StatusCode::OK, "the head had arrived before the cut: {}", o.text());
        match &o.body {
            Ok(b) => panic!("the client must see the body cut, not a complete body of {} bytes", b.len()),
            Err((n, _)) => assert!(*n < 1_000_000, "only part of the announced body can have arrived, got {n} bytes"),
        }
    }));
}

#[test]
fn hop_by_hop_headers_of_the_registry_never_reach_the_client() {
    let _serial = serial();
    runtime().block_on(fault_case(Behaviour::HopByHop, "hop-by-hop headers", |o| {
        assert_eq!(o.status, StatusCode::OK, "{}", o.text());
        assert_eq!(o.body.as_deref().ok(), Some(&b"ok"[..]), "the chunked body arrives whole: {}", o.text());
        for h in ["x-hop-secret", "keep-alive", "proxy-connection", "proxy-authenticate", "upgrade", "trailer", "te"] {
            assert!(o.headers.get(h).is_none(), "{h} reached the client: {:?}", o.headers);
        }
        assert!(!o.header("connection").to_ascii_lowercase().contains("x-hop-secret"), "{:?}", o.headers);
        assert_eq!(o.header("x-end-to-end"), "kept", "end-to-end headers pass: {:?}", o.headers);
        assert_eq!(o.header("docker-content-digest"), DIGEST);
    }));
}

#[test]
fn a_registry_head_too_large_to_parse_gives_502() {
    let _serial = serial();
    runtime().block_on(fault_case(Behaviour::HugeHead, "1,000 headers of 1 KiB", |o| {
        assert_docker_error(o, StatusCode::BAD_GATEWAY, "1,000 headers of 1 KiB");
        assert!(o.headers.get("x-filler-0").is_none());
    }));
}

// =======================================================================================
// The policy store failing (the real binary, its SQLite store on a filesystem of the test's)
// =======================================================================================

/// A filesystem mounted for one test on `<temp dir>/mnt`, unmounted when dropped, pass or
/// fail. Declared before the [`harness::Env`] whose gateway uses it, it is dropped after
/// the gateway is killed.
struct Scratch {
    mnt: PathBuf,
    /// The ext4 image behind a loop mount; `None` for a tmpfs.
    image: Option<PathBuf>,
    mounted: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted && !self.unmount() {
            eprintln!("umount {} failed; detaching it lazily", self.mnt.display());
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// A root-only step of the store tests, which must succeed or fail the test saying why.
fn as_root(what: &str, cmd: &mut Command) {
    let r = harness::run(cmd);
    assert!(
        r.ok(),
        "{what} failed ({}): the store fault tests need root (mount, loop devices, /sys/fs/ext4); run them through `.ci/run` as root",
        r.all().trim()
    );
}

impl Scratch {
    fn new_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new().prefix("scopegate-faults-").tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        (dir, mnt)
    }

    /// A tmpfs of `size` (e.g. `4m`).
    fn tmpfs(size: &str) -> Scratch {
        let (dir, mnt) = Self::new_dir();
        as_root(
            "mounting a tmpfs",
            Command::new("timeout").args(["30", "mount", "-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(&mnt),
        );
        Scratch { mnt, image: None, mounted: true, _dir: dir }
    }

    /// An ext4 filesystem of `mib` MiB in an image file, loop-mounted with
    /// `errors=remount-ro` (the loop device goes with the unmount).
    fn ext4(mib: u64) -> Scratch {
        let (dir, mnt) = Self::new_dir();
        let image = dir.path().join("store.ext4");
        std::fs::File::create(&image).unwrap().set_len(mib << 20).unwrap();
        // root's tools, whether or not the sbin directories are on PATH
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].into_iter().find(|p| Path::new(p).is_file()).unwrap_or("mkfs.ext4");
        as_root("mkfs.ext4 (Debian package e2fsprogs)", Command::new("timeout").args(["60", mkfs, "-q", "-F", "-O", "^has_journal"]).arg(&image));
        let mut s = Scratch { mnt, image: Some(image), mounted: false, _dir: dir };
        s.mount_image();
        s
    }

    fn mount_image(&mut self) {
        let image = self.image.clone().expect("an ext4 image");
        as_root("loop-mounting the ext4 image", Command::new("timeout").args(["30", "mount", "-o", "loop,errors=remount-ro"]).arg(&image).arg(&self.mnt));
        self.mounted = true;
    }

    fn unmount(&mut self) -> bool {
        let ok = Command::new("timeout").arg("30").arg("umount").arg(&self.mnt).status().is_ok_and(|s| s.success());
        self.mounted &= !ok;
        ok
    }

    /// Fills the filesystem with a file until the kernel says it is full; returns the file.
    fn fill(&self) -> PathBuf {
        let filler = self.mnt.join("filler");
        let r = harness::run(Command::new("timeout").arg("60").arg("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).arg("bs=64k"));
        assert!(!r.ok() && r.stderr.contains("No space left on device"), "dd should stop at a full disk: {}", r.all());
        let df = harness::run(Command::new("df").args(["--output=avail", "-B1"]).arg(&self.mnt));
        let avail: u64 = df.stdout.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df: {}", df.all()));
        assert_eq!(avail, 0, "the filesystem should be full");
        filler
    }

    /// Forces the ext4 filesystem read-only as a filesystem error does under
    /// `errors=remount-ro` (open files and all), and waits until a write is refused.
    fn force_read_only(&self) {
        let src = harness::run(Command::new("findmnt").args(["-n", "-o", "SOURCE", "--mountpoint"]).arg(&self.mnt));
        let dev = Path::new(src.stdout.trim()).file_name().unwrap_or_else(|| panic!("no device behind {}: {}", self.mnt.display(), src.all())).to_owned();
        let trigger = Path::new("/sys/fs/ext4").join(&dev).join("trigger_fs_error");
        std::fs::write(&trigger, "scopegate store fault test\n")
            .unwrap_or_else(|e| panic!("cannot write {} ({e}): the read-only test needs root and a writable /sys/fs/ext4", trigger.display()));
        let probe = self.mnt.join("probe");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::File::create(&probe) {
                Err(e) if e.raw_os_error() == Some(30) => return, // EROFS
                Err(e) => panic!("probing {}: {e}", probe.display()),
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    assert!(Instant::now() < end, "{} did not turn read-only", self.mnt.display());
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// `scopegate serve` with its store in `data`, in front of the test's registry.
fn gateway_args(upstream: &str, data: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream"].map(Into::into).to_vec();
    args.push(format!("http://{upstream}").into());
    args.push("--data-dir".into());
    args.push(data.into());
    args
}

/// One admin API request (with the admin token) and its answer.
fn admin(env: &harness::Env, method: &str, path: &str, body: Option<&Value>) -> harness::Resp {
    use std::io::{Read, Write};
    let addr = env.admin_url.strip_prefix("http://").expect("a plain admin URL");
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("admin {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        harness::ADMIN_TOKEN,
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("admin {method} {path}: no head in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = harness::dechunk(&body).unwrap();
    }
    harness::Resp { status, headers, body }
}

fn map_body(name: &str) -> Value {
    json!({"name": name, "repositories": [{"repository": REPO, "actions": ["content/read"]}]})
}

/// Everything the admin API lists: what a failed write must leave as it was.
fn listing(env: &harness::Env) -> Value {
    let mut out = json!({});
    for what in ["scope-maps", "tokens", "apikeys"] {
        let r = admin(env, "GET", &format!("/api/v1/{what}"), None);
        assert_eq!(r.status, 200, "list {what}: {}", r.text());
        out[what] = r.json();
    }
    out
}

/// A refused admin write: a 5xx Docker JSON error whose message names the store and,
/// with one of `words`, what went wrong. Returns the message.
fn assert_store_failure(r: &harness::Resp, what: &str, words: &[&str]) -> String {
    assert!((500..600).contains(&r.status), "{what}: an admin write on a failing store must fail with 5xx, got {} {}", r.status, r.text());
    let v = r.json();
    let message = v["errors"][0]["message"].as_str().unwrap_or_else(|| panic!("{what}: not a Docker error body: {v}")).to_owned();
    assert!(v["errors"][0]["code"].is_string(), "{what}: {v}");
    let lower = message.to_lowercase();
    assert!(lower.contains("store"), "{what}: the message should say the store failed: {message:?}");
    assert!(words.iter().any(|w| lower.contains(w)), "{what}: the message should say why ({words:?}): {message:?}");
    eprintln!("{what}: {} {message:?}", r.status);
    message
}

/// A gateway process of the test's own making, killed and reaped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a start that may fail went.
enum Start {
    Refused { code: Option<i32>, stderr: String },
    Ready { child: Child, public: String, admin_url: String },
}

/// `scopegate <args>` (stderr to `<dir>/gateway.log`): ready (its public `host:port` and
/// admin URL from the ready line) or exited, whichever comes first within 30 s.
fn try_start(dir: &Path, args: &[std::ffi::OsString]) -> Start {
    use std::io::BufRead;
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join("gateway.log");
    let mut cmd = Command::new(harness::BIN);
    let mut child = harness::scrubbed(&mut cmd)
        .args(args)
        .env("SCOPEGATE_ADMIN_TOKEN", harness::ADMIN_TOKEN)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", harness::BIN));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(line) = rx.try_recv() {
            if let Some(rest) = line.strip_prefix("scopegate ready: ") {
                let field = |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {line:?}")).to_owned();
                let public = field("public=").strip_prefix("http://").unwrap_or_else(|| panic!("a plain public URL in {line:?}")).to_owned();
                return Start::Ready { child, public, admin_url: field("admin=") };
            }
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("scopegate exited with {status}: {stderr}");
            return Start::Refused { code: status.code(), stderr };
        }
        assert!(Instant::now() < end, "scopegate neither became ready nor exited within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The test's registry and gateway (store in `data`), an image `faults/app:v1` in the
/// registry and a token `puller` that may read it. Returns them with the image's digest.
fn store_env(test: &str, data: &Path) -> (harness::Env, harness::Token, String) {
    let env = harness::Env::start_with(test, |root, upstream| harness::launch_gateway(&root.join("gateway"), &gateway_args(upstream, data), "http"));
    env.make_images("oci", &["v1"]);
    env.seed(&env.oci("oci", "v1"), &format!("{REPO}:v1"));
    let digest = env.upstream_digest(REPO, "v1").expect("the seeded image");
    let t = env.create_token(&["--name", "puller", "--repository", REPO, "content/read", "metadata/read"]);
    (env, t, digest)
}

/// Registry requests of `t` are still decided: allowed ones served (Basic, a bearer token
/// from `/token`, a real skopeo pull), refused ones refused.
fn assert_decides(env: &harness::Env, t: &harness::Token, digest: &str, what: &str) {
    let manifest = format!("/v2/{REPO}/manifests/v1");
    let r = env.gateway("GET", &manifest, &[("Accept", harness::OCI_MANIFEST), ("Authorization", &harness::basic(&t.name, &t.password1))]);
    assert_eq!(r.status, 200, "{what}: Basic GET of an allowed manifest: {}", r.text());
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest), "{what}");
    let bearer = env.bearer(&t.name, &t.password1, &format!("repository:{REPO}:pull"));
    let r = env.gateway("GET", &manifest, &[("Accept", harness::OCI_MANIFEST), ("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{what}: bearer GET of an allowed manifest: {}", r.text());
    let r = env.gateway("GET", "/v2/faults/other/manifests/v1", &[("Accept", harness::OCI_MANIFEST), ("Authorization", &harness::basic(&t.name, &t.password1))]);
    assert_eq!(r.status, 403, "{what}: a repository the token lacks is still refused: {}", r.text());
    let slug: String = what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let pulled = env.skopeo_pull(t, &format!("{REPO}:v1"), &env.oci(&format!("pulled-{slug}"), "v1"));
    assert!(pulled.ok(), "{what}: skopeo pull through the gateway: {}", pulled.all());
}

#[test]
fn a_full_disk_fails_admin_writes_with_a_clear_error_and_decisions_go_on() {
    let _serial = serial();
    let disk = Scratch::tmpfs("4m");
    let data = disk.mnt.join("data");
    let (env, t, digest) = store_env("faults-full", &data);
    assert_decides(&env, &t, &digest, "before the disk fills");
    let before = listing(&env);

    let filler = disk.fill();
    let r = admin(&env, "POST", "/api/v1/scope-maps", Some(&map_body("after-full")));
    assert_store_failure(&r, "scope map create on a full disk", &["full", "space"]);
    let r = admin(&env, "POST", "/api/v1/tokens", Some(&json!({"name": "after-full", "scopeMap": "_repositories_pull"})));
    assert_store_failure(&r, "token create on a full disk", &["full", "space"]);
    let cli = env.cli(&["scope-map", "create", "--name", "after-full-cli", "--repository", REPO, "content/read"]);
    assert!(!cli.ok(), "the CLI must fail on a full disk: {}", cli.all());
    assert!(cli.all().to_lowercase().contains("full"), "the CLI should say the disk is full: {}", cli.all());
    assert_eq!(listing(&env), before, "a failed write must change nothing");
    assert_eq!(admin(&env, "GET", "/api/v1/scope-maps/after-full", None).status, 404);
    assert_decides(&env, &t, &digest, "disk full");

    // space again: writes work without a restart
    std::fs::remove_file(&filler).unwrap();
    let r = admin(&env, "POST", "/api/v1/scope-maps", Some(&map_body("after-full")));
    assert_eq!(r.status, 201, "a write once the disk has space again: {}", r.text());
    let t2 = env.create_token(&["--name", "after-full", "--scope-map", "after-full"]);
    let r = env.gateway("GET", &format!("/v2/{REPO}/manifests/v1"), &[("Accept", harness::OCI_MANIFEST), ("Authorization", &harness::basic(&t2.name, &t2.password1))]);
    assert_eq!(r.status, 200, "the token written after the disk had space again decides: {}", r.text());
    assert_decides(&env, &t, &digest, "after the disk had space again");
}

#[test]
fn a_store_forced_read_only_fails_admin_writes_with_a_clear_error_and_decisions_go_on() {
    let _serial = serial();
    let mut disk = Scratch::ext4(16);
    let data = disk.mnt.join("data");
    let (mut env, t, digest) = store_env("faults-ro", &data);
    assert_decides(&env, &t, &digest, "before the store turns read-only");
    let before = listing(&env);

    disk.force_read_only();
    let r = admin(&env, "POST", "/api/v1/scope-maps", Some(&map_body("after-ro")));
    assert_store_failure(&r, "scope map create on a read-only store", &["read-only", "readonly", "i/o"]);
    let r = admin(&env, "PATCH", "/api/v1/tokens/puller", Some(&json!({"status": "disabled"})));
    assert_store_failure(&r, "token disable on a read-only store", &["read-only", "readonly", "i/o"]);
    assert_eq!(listing(&env), before, "a failed write must change nothing");
    assert_decides(&env, &t, &digest, "store read-only");

    // Linux keeps an ext4 filesystem forced read-only by an error read-only until it is
    // unmounted: writable again means stopping the gateway, mounting the filesystem
    // afresh and starting the gateway on the same store.
    let pid = env.gateway_proc().pid();
    harness::send_signal(pid, "TERM");
    let status = env.gateway_proc().wait_exit(Duration::from_secs(40)).expect("the gateway exits on SIGTERM");
    assert!(status.success(), "the gateway on a read-only store exits 0 on SIGTERM, got {status}");
    // A gateway started on the still read-only store (a restart while the volume stays
    // read-only) either refuses to start and names the store, or starts, decides from
    // what it can read and refuses writes as the running one did.
    match try_start(&env.path("gateway-on-ro"), &gateway_args(&env.upstream, &data)) {
        Start::Refused { code, stderr } => {
            assert_ne!(code, Some(0), "a refusal to start exits non-zero: {stderr}");
            assert!(stderr.contains("store"), "the refusal to start should name the store: {stderr}");
        }
        Start::Ready { mut child, public, admin_url } => {
            let (old_public, old_admin) = (std::mem::replace(&mut env.public, public), std::mem::replace(&mut env.admin_url, admin_url));
            assert_eq!(listing(&env), before, "the restarted gateway sees the store as it was");
            assert_decides(&env, &t, &digest, "restarted on the read-only store");
            let r = admin(&env, "POST", "/api/v1/scope-maps", Some(&map_body("after-ro")));
            assert_store_failure(&r, "scope map create after a restart on the read-only store", &["read-only", "readonly", "i/o"]);
            harness::send_signal(child.0.id(), "TERM");
            let end = Instant::now() + Duration::from_secs(40);
            while child.0.try_wait().unwrap().is_none() {
                assert!(Instant::now() < end, "the gateway started on the read-only store did not exit on SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
            (env.public, env.admin_url) = (old_public, old_admin);
        }
    }
    assert!(disk.unmount(), "unmount {}", disk.mnt.display());
    disk.mount_image();
    let (gateway, public, admin_url) = harness::launch_gateway(&env.path("gateway"), &gateway_args(&env.upstream, &data), "http");
    env._gateway = gateway;
    env.public = public;
    env.admin_url = admin_url;
    assert_eq!(listing(&env), before, "the store after the read-only episode holds what it held before");
    assert_decides(&env, &t, &digest, "restarted on the writable store");
    let r = admin(&env, "POST", "/api/v1/scope-maps", Some(&map_body("after-ro")));
    assert_eq!(r.status, 201, "a write on the writable store: {}", r.text());
}

#[test]
fn a_store_write_failure_is_logged_for_the_operator() {
    let _serial = serial();
    let disk = Scratch::tmpfs("4m");
    let (env, _t, _digest) = store_env("faults-log", &disk.mnt.join("data"));
    disk.fill();
    let r = admin(&env, "POST", "/api/v1/scope-maps", Some(&map_body("after-full")));
    assert_store_failure(&r, "scope map create on a full disk", &["full", "space"]);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let log = env.gateway_log();
        let named = log.lines().any(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("store") && l.contains("full"));
        if named {
            return;
        }
        assert!(Instant::now() < end, "the gateway's log should name the failed store write (WARN/ERROR, `store`, `full`); it holds:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
