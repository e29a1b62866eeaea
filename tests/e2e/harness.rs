//! The end-to-end harness shared by `tests/e2e.rs`, `tests/lifecycle.rs`,
//! `tests/operations.rs` and `tests/federated_e2e.rs` (each includes it with
//! `#[path = "e2e/harness.rs"] mod harness;`): the real `scopegate` binary in front
//! of Debian's `docker-registry` (distribution 2.8), driven by the real clients — skopeo,
//! podman, the `scopegate` CLI — and by hand-written HTTP where the protocol itself is the
//! subject.
//!
//! Every test is independent: its own registry on a free port (plain HTTP, or HTTPS with a
//! certificate of the test's making: [`Env::start_with_registry`]), its own gateway (port
//! 0, read from the ready line), its own temporary directory holding the registry storage,
//! the gateway's data dir, the images and an isolated containers environment (see
//! `tests/e2e/isolate.sh`). Both servers are killed when the test ends, pass or fail
//! (`Proc`'s `Drop`); every external command runs under `timeout`.
//!
//! Prerequisites: `/usr/bin/docker-registry`, `skopeo`, `podman`, `jq`, `unshare` and root
//! (for the private mount namespace). When they are missing the tests FAIL and say so — run
//! them through `.ci/run`, or `apt-get install docker-registry skopeo podman jq`.
//!
//! Set `E2E_KEEP=1` to keep the temporary directories (their paths are printed).

// Each test binary uses a different part of the harness.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_scopegate");
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
/// Upper bound for one skopeo/podman command (the whole suite takes seconds).
pub const TOOL_SECS: &str = "120";
/// Upper bound for one admin CLI call or helper script.
pub const CLI_SECS: &str = "60";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------

pub fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Fails (never skips) when the environment cannot run the suite.
pub fn require_prerequisites() {
    let mut missing = Vec::new();
    if !Path::new(REGISTRY_BIN).is_file() {
        missing.push(REGISTRY_BIN.to_owned());
    }
    for tool in ["skopeo", "podman", "jq", "unshare", "timeout", "tar", "gzip"] {
        if !in_path(tool) {
            missing.push(tool.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "the end-to-end tests need {missing:?}, which this machine lacks. Run the suite through `.ci/run`, \
         or install the Debian packages: apt-get install docker-registry skopeo podman jq"
    );
}

pub fn helpers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A spawned server, killed (by its own PID) and reaped when dropped.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its stderr (and, for the registry, stdout) goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits up to `deadline` for the process to exit on its own; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts a helper server (e.g. Prometheus) with stdout and stderr to `log`; killed and
/// reaped when the returned [`Proc`] is dropped, its log tail shown if the test failed.
pub fn spawn_server(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let shown = format!("{cmd:?}");
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{name} log {}: {e}", log.display()));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    eprintln!("$ {shown} &  (pid {})", child.id());
    Proc { name, child, log: log.to_owned() }
}

/// Sends `signal` (`TERM`, `HUP`, ...) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let r = run(Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()));
    assert!(r.ok(), "kill -{signal} {pid}: {}", r.all());
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("----- last lines of the {} log ({}) -----", self.name, self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// The refusal a registry client prints when the gateway said no.
    pub fn says_denied(&self) -> bool {
        let s = self.all().to_lowercase();
        s.contains("denied") || s.contains("unauthorized")
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let r = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Captured by the test harness; shown when a test fails.
    eprintln!("$ {shown}\n  -> {:?}\n  stdout: {}\n  stderr: {}", r.code, r.stdout.trim(), r.stderr.trim());
    assert_ne!(r.code, Some(124), "timed out: {shown}");
    r
}

/// `cmd` without the caller's `SCOPEGATE_*` variables (an exported SCOPEGATE_SERVER or
/// SCOPEGATE_PASSWORD must not leak into a test); the test sets what it means to.
pub fn scrubbed(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCOPEGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Polls `ready` until it holds or the deadline passes; `alive` is checked on every round so
/// that a server that died fails at once.
pub fn wait_until(what: &str, deadline: Duration, mut alive: impl FnMut() -> Result<(), String>, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if ready() {
            return;
        }
        if let Err(e) = alive() {
            panic!("{what}: {e}");
        }
        assert!(Instant::now() < end, "{what}: not ready after {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// Plain HTTP/1.1 over TcpStream
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on its own connection (`Connection: close`, so the body ends at EOF unless
/// chunked). `addr` is `host:port`.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    http_on(s, addr, method, path, headers)
}

/// [`http`] over TLS, trusting only the CA certificates of `ca_pem` (verification on, the
/// server name being `addr`'s host).
pub fn https(addr: &str, ca_pem: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let config = tls_client_config(ca_pem)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']').to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| format!("server name of {addr}: {e}"))?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|e| format!("TLS client: {e}"))?;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    http_on(rustls::StreamOwned::new(conn, tcp), addr, method, path, headers)
}

/// A rustls client configuration trusting only the certificates of `ca_pem`.
pub fn tls_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("CA PEM: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One request on the connection `s` (plain or TLS) to `addr`, as [`http`] sends it.
pub fn http_on(mut s: impl Read + Write, addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: scopegate-e2e\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: what arrived is the whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("no header end in {raw:?}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_lowercase().contains("chunked"));
    if chunked && method != "HEAD" {
        body = dechunk(&body)?;
    }
    Ok(Resp { status, headers, body })
}

pub fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk size line")?;
        let size_text = String::from_utf8_lossy(&b[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("short chunk")?);
        b = b.get(size + 2..).ok_or("short chunk trailer")?;
    }
}

pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

// ---------------------------------------------------------------------------------------
// The environment of one test: registry + gateway + temp dir
// ---------------------------------------------------------------------------------------

pub struct Env {
    // Field order is drop order: the gateway dies before the registry, both before the
    // directory goes.
    pub _gateway: Proc,
    pub _registry: Proc,
    /// `127.0.0.1:PORT` of the gateway's public listener (what clients are given).
    pub public: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin_url: String,
    /// `127.0.0.1:PORT` of the registry itself (to check what did or did not reach it).
    pub upstream: String,
    /// The CA (PEM) of the registry's certificate when it serves HTTPS
    /// ([`Env::start_with_registry`]); `None`: plain HTTP.
    pub upstream_ca: Option<String>,
    pub dir: tempfile::TempDir,
}

/// The certificate (chain) and key the registry serves HTTPS with, and the CA that signed
/// them (PEM, all three).
#[derive(Clone)]
pub struct RegistryTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

pub struct Token {
    pub name: String,
    pub password1: String,
    pub password2: String,
}

impl Token {
    /// The same token presenting `password` instead (the skopeo helpers use password1).
    pub fn using(&self, password: &str) -> Token {
        Token { name: self.name.clone(), password1: password.to_owned(), password2: self.password2.clone() }
    }
}

impl Env {
    pub fn start(test: &str) -> Env {
        Env::start_with(test, |root, upstream| start_gateway(&root.join("gateway"), upstream))
    }

    /// [`Env::start`] with a gateway of the caller's making: `launch` gets the test's
    /// directory and the registry's `127.0.0.1:PORT`, and returns the running gateway with
    /// its public `host:port` and admin URL (e.g. from [`spawn_gateway`]).
    pub fn start_with(test: &str, launch: impl FnOnce(&Path, &str) -> (Proc, String, String)) -> Env {
        Env::start_with_registry(test, None, launch)
    }

    /// [`Env::start_with`] with a registry serving HTTPS with `tls` when given (`launch`
    /// still gets the registry's `127.0.0.1:PORT`; the scheme is the caller's to add).
    pub fn start_with_registry(test: &str, tls: Option<RegistryTls>, launch: impl FnOnce(&Path, &str) -> (Proc, String, String)) -> Env {
        require_prerequisites();
        let mut dir = tempfile::Builder::new().prefix(&format!("scopegate-e2e-{test}-")).tempdir().expect("temp dir");
        if std::env::var_os("E2E_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("E2E_KEEP: keeping {}", dir.path().display());
        }
        let root = dir.path().to_owned();
        let (registry, upstream) = start_registry_with(&root.join("registry"), tls.as_ref());
        let (gateway, public, admin_url) = launch(&root, &upstream);
        let upstream_ca = tls.map(|t| t.ca_pem);
        let env = Env { _gateway: gateway, _registry: registry, public, admin_url, upstream, upstream_ca, dir };
        // The isolation needs a private mount namespace: fail clearly if we cannot have one.
        let probe = env.tool(&["true"]);
        assert!(
            probe.ok(),
            "cannot isolate the container tools (tests/e2e/isolate.sh needs root for `unshare --mount`): {}; run the suite through `.ci/run`",
            probe.all()
        );
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The gateway process (its PID for signals, its exit status, its log).
    pub fn gateway_proc(&mut self) -> &mut Proc {
        &mut self._gateway
    }

    /// What the gateway logged on stderr so far.
    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self._gateway.log()).unwrap_or_default()
    }

    pub fn iso_base(&self) -> PathBuf {
        self.path("iso")
    }

    /// skopeo/podman (or any command) in the test's isolated containers environment.
    pub fn tool(&self, args: &[&str]) -> Run {
        run(Command::new("bash").arg(helpers().join("isolate.sh")).arg(self.iso_base()).arg(TOOL_SECS).args(args))
    }

    /// The admin CLI against this gateway.
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new("timeout");
        run(scrubbed(&mut cmd)
            .arg(CLI_SECS)
            .arg(BIN)
            .args(["--server", &self.admin_url, "-o", "json"])
            .args(args)
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN))
    }

    /// The admin CLI, which must succeed; its JSON output (`Null` when it printed nothing).
    pub fn cli_ok(&self, args: &[&str]) -> Value {
        let r = self.cli(args);
        assert!(r.ok(), "scopegate {args:?} failed: {}", r.all());
        if r.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("scopegate {args:?}: not JSON ({e}): {}", r.stdout))
        }
    }

    pub fn create_token(&self, args: &[&str]) -> Token {
        let v = self.cli_ok(&[&["token", "create"][..], args].concat());
        assert_eq!(v["status"], "enabled", "{v}");
        let pw = |slot: &str| -> String {
            let p = v["credentials"]["passwords"].as_array().and_then(|a| a.iter().find(|p| p["name"] == slot)).unwrap_or_else(|| panic!("no {slot} in {v}"));
            let value = p["value"].as_str().unwrap_or_else(|| panic!("{slot} has no value: {v}"));
            assert!(value.len() >= 43, "a password of 256 bits or more, got {value:?}");
            value.to_owned()
        };
        let name = v["credentials"]["username"].as_str().unwrap_or_else(|| panic!("no username: {v}")).to_owned();
        assert_eq!(v["name"], name.as_str());
        Token { password1: pw("password1"), password2: pw("password2"), name }
    }

    /// A fresh OCI layout `<dir>` with one image per tag; returns the manifest digests.
    pub fn make_images(&self, dir: &str, tags: &[&str]) -> Vec<String> {
        tags.iter()
            .map(|tag| {
                let r = run(Command::new("timeout").arg(CLI_SECS).arg("bash").arg(helpers().join("make-oci.sh")).arg(self.path(dir)).arg(tag));
                assert!(r.ok(), "make-oci.sh failed: {}", r.all());
                r.stdout.trim().to_owned()
            })
            .collect()
    }

    /// One image `tag` in the OCI layout `<dir>`, made by make-oci.sh with `vars` in its
    /// environment (`LAYER_RANDOM_MIB`, `LAYER_COMPRESS`); returns the manifest digest.
    pub fn make_image_with(&self, dir: &str, tag: &str, vars: &[(&str, &str)]) -> String {
        let mut cmd = Command::new("timeout");
        cmd.arg(CLI_SECS).arg("bash").arg(helpers().join("make-oci.sh")).arg(self.path(dir)).arg(tag);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let r = run(&mut cmd);
        assert!(r.ok(), "make-oci.sh failed: {}", r.all());
        r.stdout.trim().to_owned()
    }

    /// [`Env::tool`] started in the background (stdout and stderr to `<name>.out` and
    /// `<name>.err` in the test directory); wait for it with [`Background::wait`].
    pub fn tool_background(&self, name: &str, args: &[&str]) -> Background {
        let out = self.path(&format!("{name}.out"));
        let err = self.path(&format!("{name}.err"));
        let mut cmd = Command::new("bash");
        cmd.arg(helpers().join("isolate.sh")).arg(self.iso_base()).arg(TOOL_SECS).args(args);
        let shown = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        eprintln!("$ {shown} &  (pid {})", child.id());
        Background { shown, child: Some(child), out, err }
    }

    pub fn oci(&self, dir: &str, tag: &str) -> String {
        format!("oci:{}:{tag}", self.path(dir).display())
    }

    pub fn at_gateway(&self, reference: &str) -> String {
        format!("docker://{}/{reference}", self.public)
    }

    /// skopeo copy from a local OCI layout through the gateway.
    pub fn skopeo_push(&self, t: &Token, src: &str, dest: &str) -> Run {
        let creds = format!("{}:{}", t.name, t.password1);
        self.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", &creds, src, &self.at_gateway(dest)])
    }

    /// skopeo copy through the gateway into a local OCI layout.
    pub fn skopeo_pull(&self, t: &Token, src: &str, dest: &str) -> Run {
        let creds = format!("{}:{}", t.name, t.password1);
        self.tool(&["skopeo", "copy", "-q", "--src-tls-verify=false", "--src-creds", &creds, &self.at_gateway(src), dest])
    }

    pub fn skopeo_list_tags(&self, t: &Token, repo: &str) -> Run {
        let creds = format!("{}:{}", t.name, t.password1);
        self.tool(&["skopeo", "list-tags", "--tls-verify=false", "--creds", &creds, &self.at_gateway(repo)])
    }

    /// The tags the registry itself holds for `repo` (bypassing the gateway): what reached
    /// it. Sorted (distribution 2.8 lists them in no particular order).
    pub fn upstream_tags(&self, repo: &str) -> Vec<String> {
        let r = self.at_upstream("GET", &format!("/v2/{repo}/tags/list"), &[]).expect("registry answers");
        let mut tags: Vec<String> = match r.status {
            404 => vec![],
            200 => r.json()["tags"].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()).unwrap_or_default(),
            s => panic!("registry tags/list for {repo}: {s} {}", r.text()),
        };
        tags.sort();
        tags
    }

    /// One request straight to the registry (bypassing the gateway), over HTTPS trusting
    /// its CA when it serves HTTPS.
    pub fn at_upstream(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        match &self.upstream_ca {
            Some(ca) => https(&self.upstream, ca, method, path, headers),
            None => http(&self.upstream, method, path, headers),
        }
    }

    pub fn gateway(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        http(&self.public, method, path, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Copies `src` (e.g. from [`Env::oci`]) straight into the registry as `dest`
    /// (`repo:tag`), bypassing the gateway: for tests about something other than pushing.
    pub fn seed(&self, src: &str, dest: &str) {
        let to = format!("docker://{}/{dest}", self.upstream);
        let r = self.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", src, &to]);
        assert!(r.ok(), "seeding the registry with {dest}: {}", r.all());
    }

    /// The digest of `repo`'s manifest `reference` (a tag or a digest) as the registry itself
    /// (bypassing the gateway) has it; `None` when it has no such manifest.
    pub fn upstream_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let r = self.at_upstream("HEAD", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", OCI_MANIFEST)]).expect("registry answers");
        match r.status {
            200 => Some(r.header("Docker-Content-Digest").unwrap_or_else(|| panic!("no digest for {repo}:{reference}: {:?}", r.headers)).to_owned()),
            404 => None,
            s => panic!("registry HEAD {repo}:{reference}: {s} {:?}", r.headers),
        }
    }

    /// `GET /token` for `scope` with Basic credentials, as a registry client asks for one.
    pub fn token_request(&self, user: &str, password: &str, scope: &str) -> Resp {
        let q: String = form_urlencoded::Serializer::new(String::new()).append_pair("service", "scopegate").append_pair("scope", scope).finish();
        self.gateway("GET", &format!("/token?{q}"), &[("Authorization", &basic(user, password))])
    }

    /// A bearer token (`Bearer …`, ready for an `Authorization` header) for `scope`.
    pub fn bearer(&self, user: &str, password: &str, scope: &str) -> String {
        let r = self.token_request(user, password, scope);
        assert_eq!(r.status, 200, "token request for {scope} as {user}: {}", r.text());
        format!("Bearer {}", r.json()["token"].as_str().unwrap_or_else(|| panic!("no token in {}", r.text())))
    }

    /// `scopegate repository <args>` as a registry client: the gateway's public URL, the
    /// username and the password come through SCOPEGATE_REGISTRY, SCOPEGATE_USERNAME and
    /// SCOPEGATE_PASSWORD (as the help recommends: no password in the process list), and no
    /// admin token is in reach.
    pub fn repo_cli(&self, user: &str, password: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new("timeout");
        run(scrubbed(&mut cmd)
            .arg(CLI_SECS)
            .arg(BIN)
            .args(["repository"])
            .args(args)
            .args(["-o", "json"])
            .env("SCOPEGATE_REGISTRY", format!("http://{}", self.public))
            .env("SCOPEGATE_USERNAME", user)
            .env("SCOPEGATE_PASSWORD", password))
    }

    /// [`Env::repo_cli`] with `t`'s password1.
    pub fn repo_as(&self, t: &Token, args: &[&str]) -> Run {
        self.repo_cli(&t.name, &t.password1, args)
    }

    /// [`Env::repo_as`], which must succeed; its JSON output.
    pub fn repo_ok(&self, t: &Token, args: &[&str]) -> Value {
        let r = self.repo_as(t, args);
        assert!(r.ok(), "scopegate repository {args:?} as {} failed: {}", t.name, r.all());
        stdout_json(&r)
    }

    /// `scopegate check <args>`: its exit code and its JSON answer (printed either way).
    pub fn check(&self, args: &[&str]) -> (Option<i32>, Value) {
        let r = self.cli(&[&["check"][..], args].concat());
        (r.code, stdout_json(&r))
    }
}

/// A command's stdout as JSON.
pub fn stdout_json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.all()))
}

/// The RFC 3339 time (UTC, whole seconds, `Z`) at least `ahead` from now: what
/// `--expiration` takes and what the gateway prints back.
pub fn rfc3339_in(ahead: Duration) -> String {
    let at = std::time::SystemTime::now() + ahead + Duration::from_secs(1);
    let t = time::OffsetDateTime::from(at).replace_nanosecond(0).expect("zero nanoseconds are valid");
    t.format(&time::format_description::well_known::Rfc3339).expect("an RFC 3339 time")
}

/// The value of password `slot` in a `{passwords: [{name, value}, …]}` answer.
pub fn password_value(v: &Value, slot: &str) -> String {
    v["passwords"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == slot))
        .and_then(|p| p["value"].as_str())
        .unwrap_or_else(|| panic!("no value for {slot} in {v}"))
        .to_owned()
}

pub fn start_registry(dir: &Path) -> (Proc, String) {
    start_registry_with(dir, None)
}

/// [`start_registry`], serving HTTPS with `tls` when given (its files written to `dir`).
pub fn start_registry_with(dir: &Path, tls: Option<&RegistryTls>) -> (Proc, String) {
    std::fs::create_dir_all(dir.join("data")).expect("registry dir");
    let tls_section = match tls {
        Some(t) => {
            let (cert, key) = (dir.join("registry.crt"), dir.join("registry.key"));
            std::fs::write(&cert, &t.cert_pem).expect("registry certificate");
            std::fs::write(&key, &t.key_pem).expect("registry key");
            format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
        }
        None => String::new(),
    };
    let probe = |addr: &str| match tls {
        Some(t) => https(addr, &t.ca_pem, "GET", "/v2/", &[]),
        None => http(addr, "GET", "/v2/", &[]),
    };
    // Every response of this registry carries this header, so readiness cannot be confused
    // with another registry that took the port first.
    let instance = dir.display().to_string();
    let mut last_log = String::new();
    // The port is found free and then released, so another process may take it first:
    // try a few ports before giving up.
    for _attempt in 0..5 {
        let port = free_port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
                 cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n{tls_section}  headers:\n    X-E2e-Instance: [\"{instance}\"]\n\
                 health:\n  storagedriver:\n    enabled: false\n",
                data = dir.join("data").display()
            ),
        )
        .expect("registry config");
        let log = dir.join("registry.log");
        let log_file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        let mut proc = Proc { name: "registry", child, log: log.clone() };
        let addr = format!("127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match probe(&addr) {
                Ok(r) if r.status == 200 && r.header("X-E2e-Instance") == Some(instance.as_str()) => return (proc, addr),
                Ok(r) if r.header("X-E2e-Instance") != Some(instance.as_str()) => {
                    eprintln!("port {port} is answered by another server ({} {:?}); trying another", r.status, r.headers);
                    break;
                }
                _ => {}
            }
            if proc.exited().is_some() || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last_log = std::fs::read_to_string(&log).unwrap_or_default();
        drop(proc);
    }
    panic!("docker-registry did not become ready on any of 5 ports; last log:\n{last_log}");
}

/// A command running in the background ([`Env::tool_background`]); asked to stop (SIGTERM,
/// which `timeout` passes on) and reaped if dropped before it ended.
pub struct Background {
    shown: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for the end (bounded by the `timeout` it runs under) and returns what it left.
    pub fn wait(mut self) -> Run {
        let mut child = self.child.take().expect("not yet waited for");
        let status = child.wait().expect("wait for a background command");
        let r = Run {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        };
        eprintln!("$ {}  (background)\n  -> {:?}\n  stdout: {}\n  stderr: {}", self.shown, r.code, r.stdout.trim(), r.stderr.trim());
        assert_ne!(r.code, Some(124), "timed out: {}", self.shown);
        r
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            if c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(500));
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// The gateway of the other e2e tests: everything from flags (ports 0, the given upstream,
/// `<dir>/data`), no config file. Returns it with its public `host:port` and admin URL.
pub fn start_gateway(dir: &Path, upstream: &str) -> (Proc, String, String) {
    let mut args: Vec<std::ffi::OsString> = ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream"].map(Into::into).to_vec();
    args.push(format!("http://{upstream}").into());
    args.push("--data-dir".into());
    args.push(dir.join("data").into());
    launch_gateway(dir, &args, "http")
}

/// `scopegate <args>` (see [`spawn_gateway`]), whose ready line must announce `scheme`,
/// waited for until its public listener accepts connections. Returns the process, its
/// public `host:port` and its admin URL.
pub fn launch_gateway(dir: &Path, args: &[std::ffi::OsString], scheme: &str) -> (Proc, String, String) {
    let g = spawn_gateway(dir, args);
    let prefix = format!("{scheme}://");
    let public = g.public.strip_prefix(&prefix).unwrap_or_else(|| panic!("the ready line should announce {prefix}: {:?}", g.ready_line)).to_owned();
    let mut proc = g.proc;
    // Listening already (the ready line comes after bind), but prove the public side answers.
    wait_until(
        "gateway",
        Duration::from_secs(10),
        || proc.exited().map_or(Ok(()), |s| Err(format!("exited with {s}"))),
        || TcpStream::connect(&public).is_ok(),
    );
    (proc, public, g.admin_url)
}

/// A gateway started by [`spawn_gateway`].
pub struct Spawned {
    pub proc: Proc,
    /// `http://HOST:PORT` or `https://HOST:PORT`, as the ready line gives it.
    pub public: String,
    /// `http://HOST:PORT` of the admin listener.
    pub admin_url: String,
    pub ready_line: String,
    /// Where stdout (the ready line, then the audit lines) is copied.
    pub stdout_log: PathBuf,
}

/// `scopegate <args>` (e.g. `serve --config FILE`) with the e2e admin token, stderr to
/// `<dir>/gateway.log` and stdout copied to `<dir>/gateway.stdout`; waits (bounded) for the
/// ready line and returns the addresses it names. `<dir>` is created.
pub fn spawn_gateway(dir: &Path, args: &[std::ffi::OsString]) -> Spawned {
    std::fs::create_dir_all(dir.join("data")).expect("gateway dir");
    let log = dir.join("gateway.log");
    let stdout_log = dir.join("gateway.stdout");
    let mut cmd = Command::new(BIN);
    let child = scrubbed(&mut cmd)
        .args(args)
        .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SCOPEGATE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("gateway log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let mut proc = Proc { name: "gateway", child, log };
    // Read stdout on a thread (and keep draining it, into a file), so that a gateway that
    // never prints the ready line fails the test at the deadline instead of hanging it.
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let mut copy = std::fs::File::create(&stdout_log).expect("gateway stdout file");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(copy, "{line}");
            let _ = tx.send(line);
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(e) => {
            let status = proc.exited();
            panic!("scopegate printed no ready line ({e}; exit status {status:?})");
        }
    };
    let field = |key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the ready line {line:?}"))
            .to_owned()
    };
    assert!(line.starts_with("scopegate ready: "), "unexpected first stdout line {line:?}");
    let public = field("public=");
    let admin_url = field("admin=");
    Spawned { proc, public, admin_url, ready_line: line, stdout_log }
}

