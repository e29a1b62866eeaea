//! End-to-end tests: the real `scopegate` binary in front of Debian's `docker-registry`
//! (distribution 2.8), driven by the real clients — skopeo, podman — and by hand-written
//! HTTP where the protocol itself is the subject.
//!
//! Every test is independent: its own registry on a free port, its own gateway (port 0,
//! read from the ready line), its own temporary directory holding the registry storage, the
//! gateway's data dir, the images and an isolated containers environment (see
//! `tests/e2e/isolate.sh`). Both servers are killed when the test ends, pass or fail
//! (`Proc`'s `Drop`); every external command runs under `timeout`.
//!
//! Prerequisites: `/usr/bin/docker-registry`, `skopeo`, `podman`, `jq`, `unshare` and root
//! (for the private mount namespace). When they are missing the tests FAIL and say so — run
//! them through `.ci/run`, or `apt-get install docker-registry skopeo podman jq`.
//!
//! Set `E2E_KEEP=1` to keep the temporary directories (their paths are printed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_scopegate");
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
/// Upper bound for one skopeo/podman command (the whole suite takes seconds).
const TOOL_SECS: &str = "120";
/// Upper bound for one admin CLI call or helper script.
const CLI_SECS: &str = "60";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------

fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Fails (never skips) when the environment cannot run the suite.
fn require_prerequisites() {
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

fn helpers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A spawned server, killed (by its own PID) and reaped when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
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
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// The refusal a registry client prints when the gateway said no.
    fn says_denied(&self) -> bool {
        let s = self.all().to_lowercase();
        s.contains("denied") || s.contains("unauthorized")
    }
}

fn run(cmd: &mut Command) -> Run {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Polls `ready` until it holds or the deadline passes; `alive` is checked on every round so
/// that a server that died fails at once.
fn wait_until(what: &str, deadline: Duration, mut alive: impl FnMut() -> Result<(), String>, mut ready: impl FnMut() -> bool) {
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
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on its own connection (`Connection: close`, so the body ends at EOF unless
/// chunked). `addr` is `host:port`.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: scopegate-e2e\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
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

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
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

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

// ---------------------------------------------------------------------------------------
// The environment of one test: registry + gateway + temp dir
// ---------------------------------------------------------------------------------------

struct Env {
    // Field order is drop order: the gateway dies before the registry, both before the
    // directory goes.
    _gateway: Proc,
    _registry: Proc,
    /// `127.0.0.1:PORT` of the gateway's public listener (what clients are given).
    public: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    admin_url: String,
    /// `127.0.0.1:PORT` of the registry itself (to check what did or did not reach it).
    upstream: String,
    dir: tempfile::TempDir,
}

struct Token {
    name: String,
    password1: String,
    password2: String,
}

impl Env {
    fn start(test: &str) -> Env {
        require_prerequisites();
        let mut dir = tempfile::Builder::new().prefix(&format!("scopegate-e2e-{test}-")).tempdir().expect("temp dir");
        if std::env::var_os("E2E_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("E2E_KEEP: keeping {}", dir.path().display());
        }
        let root = dir.path().to_owned();
        let (registry, upstream) = start_registry(&root.join("registry"));
        let (gateway, public, admin_url) = start_gateway(&root.join("gateway"), &upstream);
        let env = Env { _gateway: gateway, _registry: registry, public, admin_url, upstream, dir };
        // The isolation needs a private mount namespace: fail clearly if we cannot have one.
        let probe = env.tool(&["true"]);
        assert!(
            probe.ok(),
            "cannot isolate the container tools (tests/e2e/isolate.sh needs root for `unshare --mount`): {}; run the suite through `.ci/run`",
            probe.all()
        );
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn iso_base(&self) -> PathBuf {
        self.path("iso")
    }

    /// skopeo/podman (or any command) in the test's isolated containers environment.
    fn tool(&self, args: &[&str]) -> Run {
        run(Command::new("bash").arg(helpers().join("isolate.sh")).arg(self.iso_base()).arg(TOOL_SECS).args(args))
    }

    /// The admin CLI against this gateway.
    fn cli(&self, args: &[&str]) -> Run {
        run(Command::new("timeout")
            .arg(CLI_SECS)
            .arg(BIN)
            .args(["--server", &self.admin_url, "-o", "json"])
            .args(args)
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN))
    }

    /// The admin CLI, which must succeed; its JSON output (`Null` when it printed nothing).
    fn cli_ok(&self, args: &[&str]) -> Value {
        let r = self.cli(args);
        assert!(r.ok(), "scopegate {args:?} failed: {}", r.all());
        if r.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("scopegate {args:?}: not JSON ({e}): {}", r.stdout))
        }
    }

    fn create_token(&self, args: &[&str]) -> Token {
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
    fn make_images(&self, dir: &str, tags: &[&str]) -> Vec<String> {
        tags.iter()
            .map(|tag| {
                let r = run(Command::new("timeout").arg(CLI_SECS).arg("bash").arg(helpers().join("make-oci.sh")).arg(self.path(dir)).arg(tag));
                assert!(r.ok(), "make-oci.sh failed: {}", r.all());
                r.stdout.trim().to_owned()
            })
            .collect()
    }

    fn oci(&self, dir: &str, tag: &str) -> String {
        format!("oci:{}:{tag}", self.path(dir).display())
    }

    fn at_gateway(&self, reference: &str) -> String {
        format!("docker://{}/{reference}", self.public)
    }

    /// skopeo copy from a local OCI layout through the gateway.
    fn skopeo_push(&self, t: &Token, src: &str, dest: &str) -> Run {
        let creds = format!("{}:{}", t.name, t.password1);
        self.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", &creds, src, &self.at_gateway(dest)])
    }

    /// skopeo copy through the gateway into a local OCI layout.
    fn skopeo_pull(&self, t: &Token, src: &str, dest: &str) -> Run {
        let creds = format!("{}:{}", t.name, t.password1);
        self.tool(&["skopeo", "copy", "-q", "--src-tls-verify=false", "--src-creds", &creds, &self.at_gateway(src), dest])
    }

    fn skopeo_list_tags(&self, t: &Token, repo: &str) -> Run {
        let creds = format!("{}:{}", t.name, t.password1);
        self.tool(&["skopeo", "list-tags", "--tls-verify=false", "--creds", &creds, &self.at_gateway(repo)])
    }

    /// The tags the registry itself holds for `repo` (bypassing the gateway): what reached it.
    fn upstream_tags(&self, repo: &str) -> Vec<String> {
        let r = http(&self.upstream, "GET", &format!("/v2/{repo}/tags/list"), &[]).expect("registry answers");
        match r.status {
            404 => vec![],
            200 => r.json()["tags"].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()).unwrap_or_default(),
            s => panic!("registry tags/list for {repo}: {s} {}", r.text()),
        }
    }

    fn gateway(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        http(&self.public, method, path, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

fn start_registry(dir: &Path) -> (Proc, String) {
    std::fs::create_dir_all(dir.join("data")).expect("registry dir");
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
                 http:\n  addr: 127.0.0.1:{port}\n  headers:\n    X-E2e-Instance: [\"{instance}\"]\n\
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
            match http(&addr, "GET", "/v2/", &[]) {
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

fn start_gateway(dir: &Path, upstream: &str) -> (Proc, String, String) {
    std::fs::create_dir_all(dir.join("data")).expect("gateway dir");
    let log = dir.join("gateway.log");
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCOPEGATE_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--upstream")
        .arg(format!("http://{upstream}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SCOPEGATE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("gateway log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let mut proc = Proc { name: "gateway", child, log };
    // Read stdout on a thread (and keep draining it), so that a gateway that never prints
    // the ready line fails the test at the deadline instead of hanging it.
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
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
    let admin = field("admin=");
    let public = public.strip_prefix("http://").unwrap_or_else(|| panic!("public is not http:// in {line:?}")).to_owned();
    // Listening already (the ready line comes after bind), but prove the public side answers.
    wait_until(
        "gateway",
        Duration::from_secs(10),
        || proc.exited().map_or(Ok(()), |s| Err(format!("exited with {s}"))),
        || http(&public, "GET", "/v2/", &[]).is_ok(),
    );
    (proc, public, admin)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The walk-through of Azure's "repository-scoped permissions" article, with skopeo as the
/// client: a scope map on samples/hello-world, a token on it, pushes allowed and refused,
/// a map update that moves write permission between repositories (effective on the next
/// request), tag listing gated by metadata/read, deletion by content/delete, and disabling.
#[test]
fn acr_tokens_article_scenario_with_skopeo() {
    let env = Env::start("acr");
    let digests = env.make_images("images", &["hello-v1", "hello-v2", "nginx-v1"]);
    let (hello_v1, nginx_v1) = (&digests[0], &digests[2]);

    // az acr scope-map create --name MyScopeMap --repository samples/hello-world content/write content/read
    let map = env.cli_ok(&[
        "scope-map", "create", "--name", "MyScopeMap", "--repository", "samples/hello-world", "content/write", "content/read",
        "--description", "Sample scope map",
    ]);
    assert_eq!(map["name"], "MyScopeMap");
    assert_eq!(map["type"], "UserDefined");
    assert_eq!(map["description"], "Sample scope map");
    assert_eq!(
        map["actions"],
        serde_json::json!(["repositories/samples/hello-world/content/read", "repositories/samples/hello-world/content/write"])
    );
    // az acr token create --name MyToken --scope-map MyScopeMap
    let t = env.create_token(&["--name", "MyToken", "--scope-map", "MyScopeMap"]);
    assert_eq!(t.name, "MyToken");

    // Push to the repository in the map: allowed.
    let r = env.skopeo_push(&t, &env.oci("images", "hello-v1"), "samples/hello-world:v1");
    assert!(r.ok(), "push samples/hello-world:v1 should succeed: {}", r.all());
    assert_eq!(env.upstream_tags("samples/hello-world"), ["v1"]);

    // Push to a repository outside it: refused, and nothing reaches the registry.
    let r = env.skopeo_push(&t, &env.oci("images", "nginx-v1"), "samples/nginx:v1");
    assert!(!r.ok(), "push samples/nginx:v1 must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert!(env.upstream_tags("samples/nginx").is_empty(), "a refused push must not reach the registry");

    // az acr scope-map update --add-repository samples/nginx content/write content/read
    //                        --remove-repository samples/hello-world content/write
    let map = env.cli_ok(&[
        "scope-map", "update", "--name", "MyScopeMap",
        "--add-repository", "samples/nginx", "content/write", "content/read",
        "--remove-repository", "samples/hello-world", "content/write",
    ]);
    assert_eq!(
        map["actions"],
        serde_json::json!([
            "repositories/samples/hello-world/content/read",
            "repositories/samples/nginx/content/read",
            "repositories/samples/nginx/content/write"
        ])
    );
    // Effective on the next request, with the same token and no new login.
    let r = env.skopeo_push(&t, &env.oci("images", "nginx-v1"), "samples/nginx:v1");
    assert!(r.ok(), "after the update, push samples/nginx:v1 should succeed: {}", r.all());
    let r = env.skopeo_push(&t, &env.oci("images", "hello-v2"), "samples/hello-world:v2");
    assert!(!r.ok(), "after the update, push samples/hello-world:v2 must be refused");
    assert!(r.all().to_lowercase().contains("denied"), "the refusal should say denied: {}", r.all());
    assert_eq!(env.upstream_tags("samples/hello-world"), ["v1"]);
    assert_eq!(env.upstream_tags("samples/nginx"), ["v1"]);

    // Pulls of both still work (content/read on both), byte-identical manifests.
    for (repo, digest) in [("samples/hello-world", hello_v1), ("samples/nginx", nginx_v1)] {
        let dest = format!("pulled-{}", repo.replace('/', "-"));
        let r = env.skopeo_pull(&t, &format!("{repo}:v1"), &env.oci(&dest, "v1"));
        assert!(r.ok(), "pull {repo}:v1 should succeed: {}", r.all());
        let index: Value = serde_json::from_str(&std::fs::read_to_string(env.path(&dest).join("index.json")).expect("pulled index.json")).expect("index JSON");
        assert_eq!(index["manifests"][0]["digest"], digest.as_str(), "pulled {repo}:v1 is the pushed image");
    }

    // Tag listing needs metadata/read.
    let r = env.skopeo_list_tags(&t, "samples/nginx");
    assert!(!r.ok(), "list-tags without metadata/read must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    env.cli_ok(&["scope-map", "update", "--name", "MyScopeMap", "--add-repository", "samples/nginx", "metadata/read"]);
    let r = env.skopeo_list_tags(&t, "samples/nginx");
    assert!(r.ok(), "list-tags with metadata/read should succeed: {}", r.all());
    let tags: Value = serde_json::from_str(&r.stdout).expect("list-tags JSON");
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));

    // Deletion needs content/delete.
    let nginx_ref = env.at_gateway("samples/nginx:v1");
    let creds = format!("{}:{}", t.name, t.password1);
    let delete = || env.tool(&["skopeo", "delete", "--tls-verify=false", "--creds", &creds, &nginx_ref]);
    let r = delete();
    assert!(!r.ok(), "delete without content/delete must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert_eq!(env.upstream_tags("samples/nginx"), ["v1"]);
    env.cli_ok(&["scope-map", "update", "--name", "MyScopeMap", "--add-repository", "samples/nginx", "content/delete"]);
    let r = delete();
    assert!(r.ok(), "delete with content/delete should succeed: {}", r.all());
    let r = env.skopeo_list_tags(&t, "samples/nginx");
    assert!(r.ok(), "list-tags after the delete: {}", r.all());
    let tags: Value = serde_json::from_str(&r.stdout).expect("list-tags JSON");
    let listed: Vec<&str> = tags["Tags"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    assert!(!listed.contains(&"v1"), "v1 was deleted but is still listed: {tags}");
    assert!(env.upstream_tags("samples/nginx").is_empty());

    // az acr token update --status disabled: refused at once, for push and pull alike.
    let v = env.cli_ok(&["token", "update", "--name", "MyToken", "--status", "disabled"]);
    assert_eq!(v["status"], "disabled");
    let r = env.skopeo_pull(&t, "samples/hello-world:v1", &env.oci("pulled-after-disable", "v1"));
    assert!(!r.ok(), "a disabled token must not pull");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    let r = env.skopeo_push(&t, &env.oci("images", "nginx-v1"), "samples/nginx:v2");
    assert!(!r.ok(), "a disabled token must not push");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert!(env.upstream_tags("samples/nginx").is_empty());
    assert_eq!(env.cli_ok(&["token", "show", "--name", "MyToken"])["status"], "disabled");
}

/// A bearer token obtained before a change is judged by the policy of now: disabling the
/// token kills it (401 invalid_token), re-enabling revives it, and regenerating password1
/// kills every bearer token earned with the old password1 — but not one earned with
/// password2.
#[test]
fn disabled_token_refuses_a_bearer_token_fetched_before() {
    let env = Env::start("bearer");
    let digest = env.make_images("images", &["v1"]).remove(0);
    // Seed the registry directly: this test is about the gateway's answers, not about pushing.
    let seeded = format!("docker://{}/samples/hello-world:v1", env.upstream);
    let r = env.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", &env.oci("images", "v1"), &seeded]);
    assert!(r.ok(), "seeding the registry: {}", r.all());

    let t = env.create_token(&["--name", "ci-reader", "--repository", "samples/hello-world", "content/read"]);
    assert_eq!(env.cli_ok(&["token", "show", "--name", "ci-reader"])["scopeMap"], "ci-reader-scope-map");

    let realm = format!("http://{}/token", env.public);
    let manifest = "/v2/samples/hello-world/manifests/v1";
    let fetch = |password: &str| -> Resp {
        env.gateway(
            "GET",
            "/token?service=scopegate&scope=repository:samples/hello-world:pull",
            &[("Authorization", &basic(&t.name, password))],
        )
    };
    let bearer_of = |r: &Resp| -> String {
        assert_eq!(r.status, 200, "token request: {}", r.text());
        let v = r.json();
        assert_eq!(v["token"], v["access_token"], "token and access_token are identical");
        assert!(v["expires_in"].as_u64().is_some_and(|n| n > 0), "integer expires_in: {v}");
        assert!(v["issued_at"].as_str().is_some_and(|s| s.contains('T')), "RFC 3339 issued_at: {v}");
        format!("Bearer {}", v["token"].as_str().expect("token string"))
    };
    let head = |auth: Option<&str>| -> Resp {
        let mut h = vec![("Accept", OCI_MANIFEST)];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        env.gateway("HEAD", manifest, &h)
    };
    let assert_works = |auth: &str, when: &str| {
        let r = head(Some(auth));
        assert_eq!(r.status, 200, "{when}: HEAD {manifest} with the bearer token: {:?}", r.headers);
        assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()), "{when}");
    };
    let assert_invalid_token = |auth: &str, when: &str| {
        let r = head(Some(auth));
        assert_eq!(r.status, 401, "{when}: the bearer token must be refused: {:?}", r.headers);
        let challenge = r.header("WWW-Authenticate").unwrap_or_else(|| panic!("{when}: 401 without a challenge"));
        assert!(challenge.contains("error=\"invalid_token\""), "{when}: {challenge}");
        assert!(challenge.contains(&format!("realm=\"{realm}\"")), "{when}: {challenge}");
        assert_eq!(r.header("Docker-Distribution-API-Version"), Some("registry/2.0"), "{when}");
    };

    // No credential: a challenge pointing at the token server.
    let r = head(None);
    assert_eq!(r.status, 401);
    let challenge = r.header("WWW-Authenticate").expect("challenge").to_owned();
    assert!(challenge.starts_with(&format!("Bearer realm=\"{realm}\"")), "{challenge}");
    assert!(challenge.contains("scope=\"repository:samples/hello-world:pull\""), "{challenge}");

    let bearer1 = bearer_of(&fetch(&t.password1));
    let bearer2 = bearer_of(&fetch(&t.password2));
    assert_works(&bearer1, "fresh token");
    assert_works(&bearer2, "fresh token (password2)");

    // Disable: the token already in the client's hands dies on the next request.
    assert_eq!(env.cli_ok(&["token", "update", "--name", "ci-reader", "--status", "disabled"])["status"], "disabled");
    assert_invalid_token(&bearer1, "after disabling");
    let r = fetch(&t.password1);
    assert_eq!(r.status, 401, "a disabled token earns no bearer token: {}", r.text());

    // Re-enable: the same bearer token works again.
    assert_eq!(env.cli_ok(&["token", "update", "--name", "ci-reader", "--status", "enabled"])["status"], "enabled");
    assert_works(&bearer1, "after re-enabling");

    // Regenerate password1: bearer tokens earned with the old one die, password2's live on.
    let v = env.cli_ok(&["token", "credential", "generate", "--name", "ci-reader", "--password1"]);
    assert_eq!(v["username"], "ci-reader");
    let passwords = v["passwords"].as_array().expect("passwords");
    let new1 = passwords.iter().find(|p| p["name"] == "password1").and_then(|p| p["value"].as_str()).expect("new password1 value").to_owned();
    assert_ne!(new1, t.password1);
    assert!(
        passwords.iter().filter(|p| p["name"] == "password2").all(|p| p.get("value").is_none_or(Value::is_null)),
        "password2 was not regenerated, so its value must not be shown: {v}"
    );
    assert_invalid_token(&bearer1, "after regenerating password1");
    assert_eq!(fetch(&t.password1).status, 401, "the old password1 no longer earns a token");
    assert_works(&bearer_of(&fetch(&new1)), "token from the new password1");
    assert_works(&bearer2, "token from password2 after regenerating password1");
}

/// podman, isolated (vfs storage, own auth file, private mount namespace): login with the
/// token's credentials (and not with a wrong password), push to the repository the token
/// may write, refused push elsewhere, pull back.
#[test]
fn podman_push_pull_through_the_gateway() {
    let env = Env::start("podman");
    env.make_images("images", &["v1"]);
    let t = env.create_token(&["--name", "podman-user", "--repository", "samples/allowed", "content/read", "content/write"]);
    let reg = env.public.clone();
    let auth_file = env.iso_base().join("podman/auth.json");

    // Wrong password: refused, nothing stored.
    let r = env.tool(&["podman", "login", "--tls-verify=false", "-u", &t.name, "-p", "not-the-password", &reg]);
    assert!(!r.ok(), "podman login with a wrong password must fail");
    let lower = r.all().to_lowercase();
    assert!(lower.contains("invalid username/password") || lower.contains("unauthorized"), "{}", r.all());
    assert!(!std::fs::read_to_string(&auth_file).unwrap_or_default().contains(&reg));

    let r = env.tool(&["podman", "login", "--tls-verify=false", "-u", &t.name, "-p", &t.password1, &reg]);
    assert!(r.ok(), "podman login should succeed: {}", r.all());
    assert!(r.stdout.contains("Login Succeeded"), "{}", r.all());
    assert!(std::fs::read_to_string(&auth_file).expect("auth file").contains(&reg), "login stored the credential");

    // Local image in the isolated containers-storage (from the OCI layout; no network).
    let r = env.tool(&["skopeo", "copy", "-q", &env.oci("images", "v1"), "containers-storage:localhost/e2e/hello:v1"]);
    assert!(r.ok(), "importing the image: {}", r.all());

    // From here on podman uses the stored login.
    let r = env.tool(&["podman", "push", "-q", "--tls-verify=false", "localhost/e2e/hello:v1", &format!("docker://{reg}/samples/allowed:v1")]);
    assert!(r.ok(), "push to samples/allowed should succeed: {}", r.all());
    assert_eq!(env.upstream_tags("samples/allowed"), ["v1"]);

    let r = env.tool(&["podman", "push", "-q", "--tls-verify=false", "localhost/e2e/hello:v1", &format!("docker://{reg}/samples/forbidden:v1")]);
    assert!(!r.ok(), "push to samples/forbidden must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
    assert!(env.upstream_tags("samples/forbidden").is_empty(), "a refused push must not reach the registry");

    // Pull back what was pushed, after removing the local copy.
    let r = env.tool(&["podman", "rmi", "localhost/e2e/hello:v1"]);
    assert!(r.ok(), "{}", r.all());
    let pulled = format!("{reg}/samples/allowed:v1");
    let r = env.tool(&["podman", "pull", "-q", "--tls-verify=false", &pulled]);
    assert!(r.ok(), "pull samples/allowed:v1 should succeed: {}", r.all());
    let r = env.tool(&["podman", "image", "exists", &pulled]);
    assert!(r.ok(), "the pulled image is in local storage: {}", r.all());
    let r = env.tool(&["podman", "image", "inspect", "--format", "{{.Config.Cmd}}", &pulled]);
    assert!(r.ok() && r.stdout.contains("/bin/hello"), "the pulled image is the pushed one: {}", r.all());

    let r = env.tool(&["podman", "logout", &reg]);
    assert!(r.ok(), "{}", r.all());
    let r = env.tool(&["podman", "pull", "-q", "--tls-verify=false", &pulled]);
    assert!(!r.ok(), "after logout, an anonymous pull must be refused");
    assert!(r.says_denied(), "the refusal should say denied/unauthorized: {}", r.all());
}
