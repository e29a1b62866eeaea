//! End-to-end tests of operating scopegate: metrics read back through a real Prometheus
//! server and linted by `promtool`, TLS on the public listener with certificates made at
//! test time (and replaced on disk while serving), graceful shutdown in the middle of a
//! 200 MiB push, configuration reloads (valid ones under load with zero failed requests;
//! invalid ones refused while the old configuration keeps serving), and an HTTPS upstream
//! verified against the configured CA (and refused, promptly and visibly, under another).
//!
//! The real `scopegate` binary, started with `serve --config FILE`, in front of Debian's
//! `docker-registry` (distribution 2.8), driven by skopeo, curl and hand-written HTTP. The
//! harness (independent servers per test, isolation, `timeout` on every command, loud
//! failure when a tool is missing) is `tests/e2e/harness.rs`, shared with `tests/e2e.rs`,
//! `tests/lifecycle.rs` and `tests/federated_e2e.rs`. Nothing here waits a fixed time for something to happen: every
//! wait polls a condition against a deadline.
//!
//! Prerequisites, besides the harness's (`docker-registry`, `skopeo`, `podman`, `jq`, root
//! for `unshare`): Debian's `prometheus` (`/usr/bin/prometheus`, `/usr/bin/promtool`) and
//! `curl`. When one is missing the tests FAIL and name the package to install.
//! `E2E_KEEP=1` keeps the temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "e2e/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::*;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

// ---------------------------------------------------------------------------------------
// Prerequisites and small helpers
// ---------------------------------------------------------------------------------------

/// Fails (never skips) when a tool is missing, naming the Debian package that has it.
fn require_tools(tools: &[(&str, &str)]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| if tool.starts_with('/') { !Path::new(tool).is_file() } else { !in_path(tool) })
        .map(|(tool, package)| format!("{tool} (Debian package `{package}`)"))
        .collect();
    assert!(
        missing.is_empty(),
        "the operations tests need {missing:?}, which this machine lacks: apt-get install {}",
        tools.iter().map(|(_, p)| *p).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(" ")
    );
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `deadline` with `what`
/// and the last state `f` described through `last`.
fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut(&mut String) -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not seen within {deadline:?}; last seen: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces `path` atomically (write a sibling, then rename), as an operator's tooling (or
/// a Kubernetes ConfigMap update) does, so the gateway never reads a half-written file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename onto {}: {e}", path.display()));
}

fn host_port(url: &str) -> &str {
    url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url)
}

/// A URL query value.
fn enc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// The gateway, started from a configuration file
// ---------------------------------------------------------------------------------------

/// The gateway's configuration file: the fixed part (ports 0 from the file, not from
/// flags, so that a changed `listen` in the file is something a reload sees) plus a part
/// each test writes and rewrites.
#[derive(Clone)]
struct ConfigFile {
    path: PathBuf,
    /// The registry's origin, `http://` or `https://127.0.0.1:PORT`.
    upstream: String,
    data_dir: PathBuf,
}

impl ConfigFile {
    fn render(&self, extra: &str) -> String {
        format!(
            "# written by tests/operations.rs\nlisten: 127.0.0.1:0\nupstream: {}\ndata_dir: {}\nadmin:\n  listen: 127.0.0.1:0\n{extra}",
            self.upstream,
            self.data_dir.display()
        )
    }

    /// Replaces the live file (atomically) with the fixed part plus `extra`.
    fn write(&self, extra: &str) {
        write_atomically(&self.path, &self.render(extra));
    }

    /// A sibling file holding the fixed part plus `extra` (for `scopegate config check`).
    fn write_beside(&self, name: &str, extra: &str) -> PathBuf {
        let p = self.path.with_file_name(name);
        std::fs::write(&p, self.render(extra)).expect("write a config file");
        p
    }
}

/// Starts registry + gateway, the gateway as `scopegate serve --config <file>` with `extra`
/// appended to the fixed part of the file. `scheme` is what the ready line must announce.
fn start_from_config(test: &str, scheme: &str, extra: impl FnOnce(&Path) -> String) -> (Env, ConfigFile) {
    start_from_config_with(test, scheme, None, extra)
}

/// [`start_from_config`] in front of a registry serving HTTPS with `registry_tls` when
/// given (the file then names an `https://` upstream; trust is for `extra` to configure).
fn start_from_config_with(test: &str, scheme: &str, registry_tls: Option<RegistryTls>, extra: impl FnOnce(&Path) -> String) -> (Env, ConfigFile) {
    let mut file = None;
    let upstream_scheme = if registry_tls.is_some() { "https" } else { "http" };
    let env = Env::start_with_registry(test, registry_tls, |root, upstream| {
        let dir = root.join("gateway");
        std::fs::create_dir_all(&dir).expect("gateway dir");
        let cfg = ConfigFile { path: dir.join("scopegate.yaml"), upstream: format!("{upstream_scheme}://{upstream}"), data_dir: dir.join("data") };
        cfg.write(&extra(root));
        let launched = launch_gateway(&dir, &["serve".into(), "--config".into(), cfg.path.clone().into_os_string()], scheme);
        file = Some(cfg);
        launched
    });
    (env, file.expect("the gateway was launched"))
}

// ---------------------------------------------------------------------------------------
// Metrics as the gateway serves them
// ---------------------------------------------------------------------------------------

fn metrics_text(env: &Env) -> String {
    let r = http(host_port(&env.admin_url), "GET", "/metrics", &[]).unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    r.text()
}

/// One exposition line `name{k="v",...} value`: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
        .collect();
    Some((name, labels, value))
}

/// The sum of the samples of `name` carrying all of `labels`; `None` when there is none.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((n, ls, v)) = parse_sample(line) {
            if n == name && labels.iter().all(|want| ls.contains(want)) {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

fn reloads(env: &Env, result: &str) -> f64 {
    metric(&metrics_text(env), "scopegate_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
}

/// `expires_in` of a fresh token from the token server (the configured lifetime).
fn expires_in(env: &Env, t: &Token) -> u64 {
    let r = env.token_request(&t.name, &t.password1, "repository:samples/app:pull");
    assert_eq!(r.status, 200, "token request: {}", r.text());
    r.json()["expires_in"].as_u64().unwrap_or_else(|| panic!("no integer expires_in: {}", r.text()))
}

// ---------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------

struct Prometheus {
    _proc: Proc,
    addr: String,
}

impl Prometheus {
    /// A real Prometheus server scraping `target` (`host:port` serving `/metrics`) every
    /// second, with its own storage; returns once it is ready and has scraped the target.
    fn start(dir: &Path, target: &str) -> Prometheus {
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: scopegate\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus config");
        let mut last_log = String::new();
        // The port is found free and then released: try a few before giving up.
        for attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let mut proc = spawn_server(
                "prometheus",
                Command::new(PROMETHEUS)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                    .arg(format!("--web.listen-address={addr}"))
                    .arg("--log.level=warn"),
                &log,
            );
            let end = Instant::now() + Duration::from_secs(60);
            let ready = loop {
                if let Ok(r) = http(&addr, "GET", "/-/ready", &[]) {
                    if r.status == 200 && r.text().contains("Prometheus") {
                        break true;
                    }
                }
                if proc.exited().is_some() || Instant::now() > end {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if ready {
                let p = Prometheus { _proc: proc, addr };
                poll("Prometheus scrapes the gateway (up == 1)", Duration::from_secs(60), |last| {
                    let v = p.query("up{job=\"scopegate\"}");
                    *last = format!("{v:?}");
                    (v == Some(1.0)).then_some(())
                });
                return p;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            drop(proc);
        }
        panic!("prometheus did not become ready on any of 5 ports; last log:\n{last_log}");
    }

    /// The value of an instant query whose result is one sample (use `sum(...)`); `None`
    /// when the result is empty.
    fn query(&self, q: &str) -> Option<f64> {
        let r = http(&self.addr, "GET", &format!("/api/v1/query?query={}", enc(q)), &[]).unwrap_or_else(|e| panic!("query {q}: {e}"));
        assert_eq!(r.status, 200, "query {q}: {}", r.text());
        let v = r.json();
        assert_eq!(v["status"], "success", "query {q}: {v}");
        let result = v["data"]["result"].as_array().unwrap_or_else(|| panic!("query {q}: no result list: {v}"));
        assert!(result.len() <= 1, "query {q} should give one sample (wrap it in sum()): {v}");
        result.first().map(|s| s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("query {q}: bad value {s}")))
    }

    /// Every series of the scopegate job Prometheus holds, as label sets.
    fn series(&self) -> Vec<serde_json::Map<String, Value>> {
        let r = http(&self.addr, "GET", &format!("/api/v1/series?match[]={}", enc("{job=\"scopegate\"}")), &[]).expect("series API");
        assert_eq!(r.status, 200, "series: {}", r.text());
        r.json()["data"].as_array().expect("series list").iter().map(|s| s.as_object().expect("label set").clone()).collect()
    }
}

/// Total size of the blobs of the (single-image) OCI layout `dir`: what a push uploads.
fn layout_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("blobs/sha256")).expect("blobs dir").map(|e| e.expect("dir entry").metadata().expect("blob metadata").len()).sum()
}

/// The manifest (JSON) of `digest` in the OCI layout `dir`.
fn layout_manifest(dir: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).expect("manifest blob")).expect("manifest JSON")
}

// ---------------------------------------------------------------------------------------
// 1. Prometheus
// ---------------------------------------------------------------------------------------

/// A real Prometheus scrapes the admin listener every second while skopeo pushes (allowed),
/// pushes and pulls outside the token's scope (denied), fails a login, and an "attacker"
/// sends requests for random repository names. The expected series are then read back
/// through Prometheus' query API; no label value ever names a repository or a token; the
/// probes answer, the audit log holds the same denials and no secret; and `promtool check
/// metrics` has nothing to say about the exposition.
#[test]
fn prometheus_scrapes_pushes_and_denials() {
    require_tools(&[(PROMETHEUS, "prometheus"), (PROMTOOL, "prometheus")]);
    let (env, _cfg) = start_from_config("prom", "http", |_| String::new());
    let prom = Prometheus::start(&env.path("prometheus"), host_port(&env.admin_url));

    let pusher = env.create_token(&["--name", "pusher", "--repository", "samples/app", "content/read", "content/write"]);
    let reader = env.create_token(&["--name", "reader", "--repository", "samples/app", "content/read"]);
    // Passwords expiring in 3 days: inside the 7-day warning window.
    env.cli_ok(&["token", "create", "--name", "tok-expiring", "--scope-map", "_repositories_pull", "--expiration-in-days", "3"]);

    // A 4 MiB (random, so incompressible) layer: a push must move at least that much.
    let digest = env.make_image_with("images", "v1", &[("LAYER_RANDOM_MIB", "4")]);
    let image_bytes = layout_bytes(&env.path("images"));
    let layer_bytes = layout_manifest(&env.path("images"), &digest)["layers"][0]["size"].as_u64().expect("layer size");
    assert!(layer_bytes > 4 << 20, "layer of {layer_bytes} bytes");

    // Allowed: a push and a pull.
    let r = env.skopeo_push(&pusher, &env.oci("images", "v1"), "samples/app:v1");
    assert!(r.ok(), "push as pusher: {}", r.all());
    assert_eq!(env.upstream_digest("samples/app", "v1").as_deref(), Some(digest.as_str()));
    let r = env.skopeo_pull(&pusher, "samples/app:v1", &format!("oci:{}:v1", env.path("pulled").display()));
    assert!(r.ok(), "pull as pusher: {}", r.all());

    // Denied: a push without content/write, a push and a pull outside the token's map.
    let r = env.skopeo_push(&reader, &env.oci("images", "v1"), "samples/app:denied");
    assert!(!r.ok() && r.says_denied(), "push as reader must be denied: {}", r.all());
    let r = env.skopeo_push(&pusher, &env.oci("images", "v1"), "other/app:v1");
    assert!(!r.ok() && r.says_denied(), "push outside the map must be denied: {}", r.all());
    let r = env.skopeo_pull(&reader, "other/app:v1", &format!("oci:{}:x", env.path("nothing").display()));
    assert!(!r.ok() && r.says_denied(), "pull outside the map must be denied: {}", r.all());
    assert!(env.upstream_tags("other/app").is_empty() && !env.upstream_tags("samples/app").contains(&"denied".to_owned()));
    // Three more, by hand: Basic credentials lacking the action get 403 on each.
    for _ in 0..3 {
        let r = env.gateway("HEAD", "/v2/other/app/manifests/v1", &[("Authorization", &basic(&reader.name, &reader.password1))]);
        assert_eq!(r.status, 403, "{:?}", r.headers);
    }
    let denied_at_least = 3.0 + 3.0;

    // A failed login: the token server refuses a wrong password.
    let login = env.tool(&["skopeo", "login", "--tls-verify=false", "-u", "pusher", "-p", "not-the-password", &env.public]);
    assert!(!login.ok() && login.all().contains("invalid username/password"), "login with a wrong password must fail: {}", login.all());

    // An attacker's random repository names, without credentials: 401 each.
    for i in 0..20 {
        let r = env.gateway("GET", &format!("/v2/attacker-{i}-x{:x}/manifests/latest", i * 7919), &[]);
        assert_eq!(r.status, 401);
    }

    let now = now_unix();
    type Check = (&'static str, String, Box<dyn Fn(f64) -> bool>);
    let checks: Vec<Check> = vec![
        ("sum(scopegate_requests_total{outcome=\"allowed\"})", ">= 10".into(), Box::new(|v| v >= 10.0)),
        ("sum(scopegate_requests_total{outcome=\"denied\"})", format!(">= {denied_at_least}"), Box::new(move |v| v >= denied_at_least)),
        ("sum(scopegate_requests_total{outcome=\"unauthenticated\"})", ">= 20".into(), Box::new(|v| v >= 20.0)),
        // the three by hand came with Basic credentials, skopeo's with session tokens
        ("sum(scopegate_requests_total{outcome=\"denied\",credential=\"basic\"})", ">= 3".into(), Box::new(|v| v >= 3.0)),
        ("sum(scopegate_requests_total{outcome=\"denied\",credential=\"session\"})", ">= 3".into(), Box::new(|v| v >= 3.0)),
        ("sum(scopegate_requests_total{outcome=\"unauthenticated\",credential=\"none\"})", ">= 20".into(), Box::new(|v| v >= 20.0)),
        ("sum(scopegate_requests_total{outcome=\"allowed\",credential=\"session\"})", ">= 10".into(), Box::new(|v| v >= 10.0)),
        ("sum(scopegate_token_requests_total{outcome=\"refused\"})", ">= 1".into(), Box::new(|v| v >= 1.0)),
        ("sum(scopegate_token_requests_total{outcome=\"issued\"})", ">= 4".into(), Box::new(|v| v >= 4.0)),
        (
            "sum(scopegate_proxied_bytes_total{direction=\"to_upstream\"})",
            format!(">= the image's {image_bytes} bytes"),
            Box::new(move |v| v >= image_bytes as f64),
        ),
        (
            "sum(scopegate_proxied_bytes_total{direction=\"to_client\"})",
            format!(">= the layer's {layer_bytes} bytes"),
            Box::new(move |v| v >= layer_bytes as f64),
        ),
        ("sum(scopegate_upstream_request_duration_seconds_count)", ">= 5".into(), Box::new(|v| v >= 5.0)),
        ("sum(scopegate_upstream_responses_total{class=\"2xx\"})", ">= 5".into(), Box::new(|v| v >= 5.0)),
        ("sum(scopegate_credential_cache_total)", ">= 1".into(), Box::new(|v| v >= 1.0)),
        ("sum(scopegate_requests_in_flight)", "== 0".into(), Box::new(|v| v == 0.0)),
        ("sum(scopegate_policy_objects{kind=\"token\"})", "== 3".into(), Box::new(|v| v == 3.0)),
        ("sum(scopegate_credentials_expiring_soon{kind=\"token_password\"})", ">= 1 (token tok-expiring)".into(), Box::new(|v| v >= 1.0)),
        (
            "sum(scopegate_credentials_earliest_expiry_timestamp_seconds{kind=\"token_password\"})",
            "about now + 3 days".into(),
            Box::new(move |v| (v - (now + 3.0 * 86400.0)).abs() < 3600.0),
        ),
        ("sum(process_resident_memory_bytes)", "> 0".into(), Box::new(|v| v > 0.0)),
    ];
    poll("the expected series in Prometheus", Duration::from_secs(60), |last| {
        let mut wrong = Vec::new();
        for (q, want, ok) in &checks {
            match prom.query(q) {
                Some(v) if ok(v) => {}
                got => wrong.push(format!("{q} = {got:?}, want {want}")),
            }
        }
        *last = wrong.join("; ");
        wrong.is_empty().then_some(())
    });

    // Labels come from closed sets: no series names a repository, a token or a user.
    let series = prom.series();
    assert!(series.len() > 20, "{} series", series.len());
    for s in &series {
        for (k, v) in s.iter().filter(|(k, _)| k.as_str() != "__name__") {
            let v = v.as_str().unwrap_or_default();
            for secret_or_name in ["attacker", "samples", "other/app", "pusher", "reader", "tok-expiring", &pusher.password1] {
                assert!(!v.contains(secret_or_name), "label {k}={v:?} of {s:?} names {secret_or_name:?}");
            }
        }
    }
    let requests: Vec<_> = series.iter().filter(|s| s["__name__"] == "scopegate_requests_total").collect();
    assert!(!requests.is_empty());
    for s in requests {
        let mut keys: Vec<&str> = s.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["__name__", "action", "credential", "endpoint", "instance", "job", "outcome"], "{s:?}");
    }

    // Health as a probe sees it, on the same admin listener.
    let admin = host_port(&env.admin_url).to_owned();
    assert_eq!(http(&admin, "GET", "/healthz", &[]).expect("healthz").status, 200);
    let ready = http(&admin, "GET", "/readyz", &[]).expect("readyz");
    assert_eq!((ready.status, &ready.json()["ready"]), (200, &Value::Bool(true)), "{}", ready.text());

    // The same decisions in the audit log (stdout): one JSON line each, no secret in any.
    let audit = std::fs::read_to_string(env.path("gateway/gateway.stdout")).expect("gateway stdout");
    let events: Vec<Value> = audit.lines().skip(1).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))).collect();
    let denied_by_hand = events.iter().filter(|e| e["outcome"] == "denied" && e["repository"] == "other/app" && e["credential"] == "basic").count();
    assert!(denied_by_hand >= 3, "{denied_by_hand} audit lines for the denials by hand:\n{audit}");
    for secret in [pusher.password1.as_str(), &pusher.password2, &reader.password1, "not-the-password"] {
        assert!(!audit.contains(secret), "the audit log holds a secret");
    }

    // promtool's linter on the exposition as served now (every family populated).
    let text = metrics_text(&env);
    let mut lint = Command::new("timeout")
        .args([CLI_SECS, PROMTOOL, "check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    lint.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = lint.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics ({}): {said}\n--- exposition ---\n{text}", out.status);
}

// ---------------------------------------------------------------------------------------
// 2. TLS
// ---------------------------------------------------------------------------------------

/// A CA and a server certificate for 127.0.0.1 signed by it, made now.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki(ca_name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server params");
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "scopegate e2e");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
    Pki { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// A directory holding only `ca.crt` (what skopeo's --cert-dir options read).
fn cert_dir(env: &Env, name: &str, ca_pem: &str) -> PathBuf {
    let d = env.path(name);
    std::fs::create_dir_all(&d).expect("cert dir");
    std::fs::write(d.join("ca.crt"), ca_pem).expect("ca.crt");
    d
}

/// curl over HTTPS trusting only `ca` (or the system roots when `None`): (exit code,
/// HTTP status, response headers).
fn curl(env: &Env, url: &str, ca: Option<&Path>) -> (Option<i32>, String, String) {
    let headers = env.path("curl-headers.txt");
    let _ = std::fs::remove_file(&headers);
    let mut cmd = Command::new("timeout");
    cmd.args([CLI_SECS, "curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "-D"]).arg(&headers);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let r = run(cmd.arg(url));
    (r.code, r.stdout.trim().to_owned(), std::fs::read_to_string(&headers).unwrap_or_default())
}

/// TLS on the public listener with a CA and certificate made at test time: skopeo pushes and
/// pulls over HTTPS with verification on (trusting only that CA), curl sees the https token
/// realm, plain HTTP on the TLS port fails. Then the certificate and key files are replaced
/// with a pair from a second CA, and clients trusting only the new CA get through without a
/// restart, while those trusting only the old one no longer do.
#[test]
fn tls_with_certificates_made_at_test_time_and_a_real_client() {
    require_tools(&[("curl", "curl")]);
    let first = make_pki("scopegate e2e CA one");
    let (env, _cfg) = start_from_config("tls", "https", |root| {
        let dir = root.join("tls");
        std::fs::create_dir_all(&dir).expect("tls dir");
        std::fs::write(dir.join("server.crt"), &first.cert_pem).expect("cert");
        std::fs::write(dir.join("server.key"), &first.key_pem).expect("key");
        format!("tls:\n  cert_file: {}\n  key_file: {}\n", dir.join("server.crt").display(), dir.join("server.key").display())
    });
    let public = env.public.clone();
    let ca_one = cert_dir(&env, "ca-one", &first.ca_pem);
    let t = env.create_token(&["--name", "tlsuser", "--repository", "samples/app", "content/read", "content/write"]);
    let creds = format!("{}:{}", t.name, t.password1);
    let digest = env.make_images("images", &["v1"]).remove(0);

    // curl, trusting only the test CA: the challenge names the https realm.
    let (code, status, headers) = curl(&env, &format!("https://{public}/v2/"), Some(&ca_one.join("ca.crt")));
    assert_eq!((code, status.as_str()), (Some(0), "401"), "curl --cacert https://{public}/v2/: {headers}");
    let challenge = headers.lines().find(|l| l.to_lowercase().starts_with("www-authenticate:")).unwrap_or_else(|| panic!("no challenge: {headers}"));
    assert!(challenge.contains(&format!("realm=\"https://{public}/token\"")), "{challenge}");
    // Verification is really on: without the CA, curl refuses the certificate (exit 60).
    let (code, _, _) = curl(&env, &format!("https://{public}/v2/"), None);
    assert_eq!(code, Some(60), "curl must refuse a certificate of an unknown CA");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = http(&public, "GET", "/v2/", &[]);
    assert!(plain.is_err(), "plain HTTP on the TLS port must fail, got {plain:?}");
    let (code, _, _) = curl(&env, &format!("http://{public}/v2/"), None);
    assert_ne!(code, Some(0), "curl over plain HTTP to the TLS port must fail");

    // skopeo over HTTPS with verification on, trusting only the test CA.
    let dest = format!("docker://{public}/samples/app:v1");
    let ca_one_s = ca_one.display().to_string();
    let r = env.tool(&["skopeo", "copy", "-q", "--dest-cert-dir", &ca_one_s, "--dest-creds", &creds, &env.oci("images", "v1"), &dest]);
    assert!(r.ok(), "skopeo push over https: {}", r.all());
    assert_eq!(env.upstream_digest("samples/app", "v1").as_deref(), Some(digest.as_str()));
    let pulled = format!("oci:{}:v1", env.path("pulled-one").display());
    let r = env.tool(&["skopeo", "copy", "-q", "--src-cert-dir", &ca_one_s, "--src-creds", &creds, &dest, &pulled]);
    assert!(r.ok(), "skopeo pull over https: {}", r.all());
    // ... and without the CA, skopeo refuses the certificate.
    let r = env.tool(&["skopeo", "inspect", "--creds", &creds, &dest]);
    assert!(!r.ok() && r.all().contains("x509"), "skopeo without the CA must refuse the certificate: {}", r.all());

    // Replace the certificate and key with a pair from another CA, in place on disk.
    let second = make_pki("scopegate e2e CA two");
    let ca_two = cert_dir(&env, "ca-two", &second.ca_pem);
    write_atomically(&env.path("tls/server.crt"), &second.cert_pem);
    write_atomically(&env.path("tls/server.key"), &second.key_pem);
    poll("a client trusting only the new CA gets through", Duration::from_secs(30), |last| {
        let (code, status, _) = curl(&env, &format!("https://{public}/v2/"), Some(&ca_two.join("ca.crt")));
        *last = format!("curl exit {code:?}, status {status}");
        (code == Some(0) && status == "401").then_some(())
    });
    let (code, _, _) = curl(&env, &format!("https://{public}/v2/"), Some(&ca_one.join("ca.crt")));
    assert_eq!(code, Some(60), "after the swap, a client trusting only the old CA must refuse the new certificate");
    let ca_two_s = ca_two.display().to_string();
    let pulled = format!("oci:{}:v1", env.path("pulled-two").display());
    let r = env.tool(&["skopeo", "copy", "-q", "--src-cert-dir", &ca_two_s, "--src-creds", &creds, &dest, &pulled]);
    assert!(r.ok(), "skopeo pull over https after the certificate swap: {}", r.all());
    assert!(env.gateway_log().contains("reloaded the TLS certificate"), "the swap should be logged");
}

// ---------------------------------------------------------------------------------------
// 3. Graceful shutdown
// ---------------------------------------------------------------------------------------

/// SIGTERM while skopeo is uploading a 200 MiB layer: readiness turns off at once, the push
/// goes on and completes (exit 0), the gateway then stops accepting and exits 0 on its own,
/// well inside the grace period, and the registry holds the whole image.
#[test]
fn sigterm_during_a_200_mib_push_lets_it_finish_and_exits_zero() {
    let (mut env, _cfg) = start_from_config("sigterm", "http", |_| "shutdown_grace_secs: 120\n".into());
    let t = env.create_token(&["--name", "bigpusher", "--repository", "big/image", "content/read", "content/write"]);
    let digest = env.make_image_with("images", "v1", &[("LAYER_RANDOM_MIB", "200"), ("LAYER_COMPRESS", "none")]);
    let manifest = layout_manifest(&env.path("images"), &digest);
    let layer_bytes = manifest["layers"][0]["size"].as_u64().expect("layer size");
    assert!(layer_bytes >= 200 << 20, "layer of {layer_bytes} bytes");

    let creds = format!("{}:{}", t.name, t.password1);
    let dest = env.at_gateway("big/image:v1");
    let mut push = env.tool_background("push", &["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", &creds, &env.oci("images", "v1"), &dest]);

    // Readiness, not a sleep: the upload is under way once 20 MB went to the registry.
    let sent = poll("the 200 MiB upload is under way", Duration::from_secs(120), |last| {
        assert!(push.running(), "the push ended before the gateway was stopped");
        let v = metric(&metrics_text(&env), "scopegate_proxied_bytes_total", &[("direction", "to_upstream")]).unwrap_or(0.0);
        *last = format!("{v} bytes to the registry");
        (v > 20e6).then_some(v)
    });
    assert!(sent < layer_bytes as f64, "the upload must still be in progress ({sent} of {layer_bytes} bytes)");
    let pid = env.gateway_proc().pid();
    send_signal(pid, "TERM");
    let stopped_at = Instant::now();

    // Draining: readiness says no at once (so a load balancer sends new work elsewhere),
    // while the push in progress goes on. skopeo opens a new connection for every request
    // (containers/image disables keep-alive), so the listener stays open until requests
    // stop arriving.
    let admin = env.admin_url.trim_start_matches("http://").to_owned();
    poll("/readyz reports draining after SIGTERM", Duration::from_secs(10), |last| {
        let r = http(&admin, "GET", "/readyz", &[]).ok()?;
        *last = format!("{} {}", r.status, r.text());
        (r.status == 503 && r.text().contains("\"draining\": true")).then_some(())
    });
    assert!(push.running(), "the push should still be running while the gateway drains");
    assert!(env.gateway_proc().exited().is_none(), "the gateway must wait for the upload in flight");

    let r = push.wait();
    assert!(r.ok(), "the push in flight at SIGTERM must complete: {}", r.all());
    let status = env.gateway_proc().wait_exit(Duration::from_secs(150)).expect("the gateway exits after the push");
    assert_eq!(status.code(), Some(0), "gateway exit status after SIGTERM: {status}");
    assert!(stopped_at.elapsed() < Duration::from_secs(120), "the gateway should not need the whole grace period");

    // The registry (asked directly) holds the whole image: the tag resolves and every blob
    // its manifest names is there. (skopeo compresses the uncompressed layer on the way, so
    // the pushed digests differ from the local layout's.)
    let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json");
    let m = http(&env.upstream, "GET", "/v2/big/image/manifests/v1", &[accept]).expect("registry answers");
    assert_eq!(m.status, 200, "the manifest in the registry: {}", m.text());
    let pushed: Value = serde_json::from_str(&m.text()).expect("manifest JSON");
    let blobs: Vec<(String, u64)> = std::iter::once(&pushed["config"])
        .chain(pushed["layers"].as_array().expect("layers"))
        .map(|d| (d["digest"].as_str().expect("digest").to_owned(), d["size"].as_u64().expect("size")))
        .collect();
    assert_eq!(blobs.len(), 2, "config and one layer: {pushed}");
    assert!(blobs[1].1 > 150 << 20, "the layer holds the 200 MiB of random data: {pushed}");
    for (d, size) in &blobs {
        let blob = http(&env.upstream, "HEAD", &format!("/v2/big/image/blobs/{d}"), &[]).expect("registry answers");
        assert_eq!(blob.status, 200, "blob {d} in the registry: {:?}", blob.headers);
        assert_eq!(blob.header("Content-Length"), Some(size.to_string().as_str()), "{:?}", blob.headers);
    }

    let log = env.gateway_log();
    assert!(log.contains("shutting down") && log.contains("stopped"), "{log}");
    assert!(!log.contains("grace period over"), "no connection should have been cut: {log}");
    assert!(TcpStream::connect(&env.public).is_err(), "the listener is closed once the gateway has exited");
}

// ---------------------------------------------------------------------------------------
// 4 and 5. Reload
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 client on one keep-alive connection, which it reopens only when the server
/// closed it (counted: a reload must not drop connections).
struct KeepAlive {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    opened: usize,
}

impl KeepAlive {
    fn new(addr: &str) -> KeepAlive {
        KeepAlive { addr: addr.to_owned(), conn: None, opened: 0 }
    }

    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        let result = self.exchange(method, path, headers);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(s));
            self.opened += 1;
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: scopegate-e2e\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.get_mut().write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        conn.read_line(&mut line).map_err(|e| format!("read status: {e}"))?;
        if line.is_empty() {
            return Err("the server closed the connection".into());
        }
        let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).map_err(|e| format!("read header: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_lowercase());
        let mut body = Vec::new();
        if method != "HEAD" && status != 204 && status != 304 {
            if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    conn.read_line(&mut size).map_err(|e| format!("read chunk size: {e}"))?;
                    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).map_err(|e| format!("chunk size {size:?}: {e}"))?;
                    let mut chunk = vec![0; n + 2];
                    conn.read_exact(&mut chunk).map_err(|e| format!("read chunk: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else if let Some(n) = get("content-length") {
                let n: usize = n.parse().map_err(|e| format!("content-length {n:?}: {e}"))?;
                body = vec![0; n];
                conn.read_exact(&mut body).map_err(|e| format!("read body: {e}"))?;
            } else {
                return Err(format!("a response without a length ends the connection: {headers:?}"));
            }
        }
        if get("connection").is_some_and(|v| v.contains("close")) {
            self.conn = None;
        }
        Ok(Resp { status, headers, body })
    }
}

/// What one load thread saw.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    connections: usize,
}

/// Authorized requests in a loop on one keep-alive connection until `stop`: a token from
/// the token server (Basic), HEAD of a manifest with it (Bearer), GET /v2/ (Basic).
fn load(public: String, user: String, password: String, stop: Arc<AtomicBool>, done: Arc<std::sync::atomic::AtomicUsize>) -> Tally {
    let mut c = KeepAlive::new(&public);
    let mut tally = Tally::default();
    let basic_auth = basic(&user, &password);
    let token_path = format!("/token?service=scopegate&scope={}", enc("repository:samples/app:pull"));
    let fail = |tally: &mut Tally, what: String| {
        if tally.failures.len() < 20 {
            tally.failures.push(what);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match c.request("GET", &token_path, &[("Authorization", &basic_auth)]) {
            Ok(r) if r.status == 200 => {
                tally.ok += 1;
                let token = r.json()["token"].as_str().map(str::to_owned);
                match token {
                    Some(token) => {
                        let bearer = format!("Bearer {token}");
                        match c.request("HEAD", "/v2/samples/app/manifests/v1", &[("Accept", OCI_MANIFEST), ("Authorization", &bearer)]) {
                            Ok(r) if r.status == 200 => tally.ok += 1,
                            Ok(r) => fail(&mut tally, format!("HEAD manifest: {} {:?}", r.status, r.headers)),
                            Err(e) => fail(&mut tally, format!("HEAD manifest: {e}")),
                        }
                    }
                    None => fail(&mut tally, format!("token response without a token: {}", r.text())),
                }
            }
            Ok(r) => fail(&mut tally, format!("GET /token: {} {}", r.status, r.text())),
            Err(e) => fail(&mut tally, format!("GET /token: {e}")),
        }
        match c.request("GET", "/v2/", &[("Authorization", &basic_auth)]) {
            Ok(r) if r.status == 200 => tally.ok += 1,
            Ok(r) => fail(&mut tally, format!("GET /v2/: {} {}", r.status, r.text())),
            Err(e) => fail(&mut tally, format!("GET /v2/: {e}")),
        }
        done.store(tally.ok, Ordering::Relaxed);
    }
    tally.connections = c.opened;
    tally
}

fn token_section(lifetime: u64) -> String {
    format!("token:\n  lifetime_secs: {lifetime}\n")
}

/// Waits until the gateway logged `n` "configuration reloaded" lines (each reload, from a
/// file change or a SIGHUP, logs one) and returns the applied-reload counter then.
fn wait_for_reloads(env: &Env, n: usize, what: &str) {
    poll(what, Duration::from_secs(20), |last| {
        let seen = env.gateway_log().matches("configuration reloaded").count();
        *last = format!("{seen} reloads logged");
        (seen >= n).then_some(())
    });
}

/// Four client threads hammer the gateway with authorized requests over keep-alive
/// connections while the configuration file changes three times (token.lifetime_secs 300 →
/// 600 → 900 → 1200, the last one together with a SIGHUP) and a SIGHUP alone arrives. Not
/// one request fails and no connection is dropped; each change takes effect (a fresh
/// token's `expires_in`), and every detected change is counted as an applied reload.
#[test]
fn reload_under_load_has_zero_failed_requests() {
    let (mut env, cfg) = start_from_config("reload", "http", |_| token_section(300));
    let t = env.create_token(&["--name", "loader", "--repository", "samples/app", "content/read"]);
    env.make_images("images", &["v1"]);
    env.seed(&env.oci("images", "v1"), "samples/app:v1");
    assert_eq!(expires_in(&env, &t), 300);

    let early_bearer = env.bearer(&t.name, &t.password1, "repository:samples/app:pull");

    let load_started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<std::sync::atomic::AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let threads: Vec<_> = counters
        .iter()
        .map(|done| {
            let (public, user, password, stop, done) = (env.public.clone(), t.name.clone(), t.password1.clone(), Arc::clone(&stop), Arc::clone(done));
            std::thread::spawn(move || load(public, user, password, stop, done))
        })
        .collect();
    let total = || counters.iter().map(|c| c.load(Ordering::Relaxed)).sum::<usize>();
    let progressed = |from: usize, what: &str| {
        poll(what, Duration::from_secs(30), |last| {
            *last = format!("{} requests", total());
            (total() >= from + 100).then_some(())
        })
    };
    progressed(0, "load is running");

    let pid = env.gateway_proc().pid();
    let mut expected = 0;
    for (lifetime, also_sighup) in [(600, false), (900, false), (1200, true)] {
        let before = total();
        cfg.write(&token_section(lifetime));
        if also_sighup {
            send_signal(pid, "HUP");
        }
        expected += 1;
        wait_for_reloads(&env, expected, &format!("the change to lifetime_secs {lifetime} is applied"));
        poll(&format!("expires_in {lifetime}"), Duration::from_secs(20), |last| {
            let v = expires_in(&env, &t);
            *last = format!("expires_in {v}");
            (v == lifetime).then_some(())
        });
        progressed(before, "load goes on after the reload");
        if lifetime == 600 {
            // A SIGHUP with nothing changed is a reload too.
            let before = total();
            send_signal(pid, "HUP");
            expected += 1;
            wait_for_reloads(&env, expected, "the SIGHUP reload");
            progressed(before, "load goes on after the SIGHUP");
        }
    }
    // The session token fetched before the first change still works after the last one.
    let r = env.gateway("HEAD", "/v2/samples/app/manifests/v1", &[("Accept", OCI_MANIFEST), ("Authorization", &early_bearer)]);
    assert_eq!(r.status, 200, "a bearer token issued before the reloads: {:?}", r.headers);
    // At least 5 s of load in all, and some more requests after the last reload.
    let before = total();
    poll("5 s of load", Duration::from_secs(30), |last| {
        *last = format!("{:?} of load, {} requests", load_started.elapsed(), total());
        (load_started.elapsed() >= Duration::from_secs(5) && total() >= before + 100).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = threads.into_iter().map(|h| h.join().expect("a load thread")).collect();

    let ok: usize = tallies.iter().map(|t| t.ok).sum();
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    eprintln!("load: {ok} requests answered as expected; per thread {tallies:?}");
    assert!(failures.is_empty(), "failed requests during reloads: {failures:#?}");
    assert!(tallies.iter().all(|t| t.connections == 1), "a reload must not drop connections: {tallies:?}");
    assert!(ok >= 500, "only {ok} requests under load");

    assert_eq!(expires_in(&env, &t), 1200, "the last change is in effect");
    // The last change came with a SIGHUP, so the file poll may still apply it once more:
    // compare the counter with the log once they agree (the counter moves first).
    let logged = poll("every reload logged is counted as applied", Duration::from_secs(10), |last| {
        let logged = env.gateway_log().matches("configuration reloaded").count();
        let counted = reloads(&env, "applied");
        *last = format!("{logged} reloads logged, config_reloads_total{{result=\"applied\"}} = {counted}");
        (counted == logged as f64 && counted == reloads(&env, "applied")).then_some(logged)
    });
    assert!(logged >= expected, "{logged} reloads logged, {expected} expected");
    assert_eq!(reloads(&env, "refused"), 0.0);
    assert!(!env.gateway_log().contains("configuration refused"));
}

/// `scopegate config check --config FILE`: (exit code, everything it printed).
fn config_check(file: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new("timeout");
    let r = run(scrubbed(&mut cmd).arg(CLI_SECS).arg(BIN).args(["config", "check", "--config"]).arg(file));
    (r.code, r.all())
}

/// Invalid configurations written over the live file — an unknown key, a value out of
/// range, a listener change (valid, but needing a restart) — are refused, each with an
/// error log line and the refused counter going up, while the gateway keeps serving with
/// the old configuration (`expires_in` unchanged). `scopegate config check` says what is
/// wrong (exit 1) and accepts the good file (exit 0). A good file afterwards is applied.
#[test]
fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let (mut env, cfg) = start_from_config("badconfig", "http", |_| token_section(300));
    let t = env.create_token(&["--name", "steady", "--repository", "samples/app", "content/read"]);
    env.make_images("images", &["v1"]);
    env.seed(&env.oci("images", "v1"), "samples/app:v1");
    assert_eq!(expires_in(&env, &t), 300);
    let pid = env.gateway_proc().pid();

    // config check: the good file passes, the bad ones are refused with the reason.
    let good = cfg.write_beside("good.yaml", &token_section(300));
    let (code, out) = config_check(&good);
    assert_eq!(code, Some(0), "config check of the good file: {out}");
    assert!(out.contains("configuration OK"), "{out}");
    let unknown_key = format!("{}  lifetime_typo: 600\n", token_section(300));
    let (code, out) = config_check(&cfg.write_beside("unknown-key.yaml", &unknown_key));
    assert_eq!(code, Some(1), "config check of a file with an unknown key: {out}");
    assert!(out.contains("unknown field") && out.contains("lifetime_typo"), "the message should name the unknown key: {out}");
    let (code, out) = config_check(&cfg.write_beside("bad-value.yaml", &token_section(5)));
    assert_eq!(code, Some(1), "config check of lifetime_secs 5: {out}");
    assert!(out.contains("token.lifetime_secs") && out.contains("60"), "the message should name the field and the bounds: {out}");
    let other_port = free_port();
    let listen_change = cfg.render(&token_section(600)).replacen("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{other_port}"), 1);
    std::fs::write(env.path("gateway/listen-change.yaml"), &listen_change).expect("write");
    let (code, out) = config_check(&env.path("gateway/listen-change.yaml"));
    assert_eq!(code, Some(0), "a listener change is a valid file (only a running gateway cannot apply it): {out}");

    let still_serving = |env: &Env| {
        assert_eq!(expires_in(env, &t), 300, "the old configuration must keep serving");
        let r = env.gateway("HEAD", "/v2/samples/app/manifests/v1", &[("Accept", OCI_MANIFEST), ("Authorization", &basic(&t.name, &t.password1))]);
        assert_eq!(r.status, 200, "{:?}", r.headers);
    };
    // Each refusal logs one error line; the counter must count every one of them.
    let refusals_logged = |env: &Env| env.gateway_log().matches("configuration refused; still serving the previous one").count();
    let refused_after = |env: &Env, n: usize, what: &str| {
        poll(what, Duration::from_secs(20), |last| {
            let seen = refusals_logged(env);
            *last = format!("{seen} refusals logged");
            (seen >= n).then_some(())
        });
        // (A SIGHUP and the file poll may both refuse the same file, so compare once the
        // two agree; a counter that never moves fails here.)
        poll("config_reloads_total{result=\"refused\"} counts every refusal logged", Duration::from_secs(10), |last| {
            let (logged, counted) = (refusals_logged(env), reloads(env, "refused"));
            *last = format!("{logged} refusals logged, config_reloads_total{{result=\"refused\"}} = {counted}");
            (counted == logged as f64).then_some(())
        });
    };

    // 1. An unknown key, picked up as a file change.
    cfg.write(&unknown_key);
    refused_after(&env, 1, "the file with an unknown key is refused");
    still_serving(&env);
    assert!(env.gateway_log().contains("lifetime_typo"), "the log line should say what is wrong");

    // 2. A value out of range, with a SIGHUP (the file change may count once more).
    let before = refusals_logged(&env);
    cfg.write(&token_section(5));
    send_signal(pid, "HUP");
    refused_after(&env, before + 1, "lifetime_secs 5 is refused");
    still_serving(&env);
    assert!(env.gateway_log().contains("token.lifetime_secs"), "the log line should name the field");

    // 3. A listener change (with a valid lifetime change beside it): refused as a whole.
    let before = refusals_logged(&env);
    write_atomically(&cfg.path, &listen_change);
    refused_after(&env, before + 1, "the listener change is refused");
    still_serving(&env);
    assert!(env.gateway_log().contains("listen cannot change while running"), "{}", env.gateway_log());
    assert!(TcpStream::connect(("127.0.0.1", other_port)).is_err(), "the gateway must not have moved to port {other_port}");
    assert_eq!(reloads(&env, "applied"), 0.0, "nothing was applied");
    assert!(!env.gateway_log().contains("configuration reloaded"));

    // A good file afterwards is applied.
    cfg.write(&token_section(420));
    poll("the good file is applied", Duration::from_secs(20), |last| {
        let v = expires_in(&env, &t);
        *last = format!("expires_in {v}");
        (v == 420).then_some(())
    });
    assert_eq!(reloads(&env, "applied"), 1.0);
    assert!(env.gateway_proc().exited().is_none(), "the gateway kept running throughout");
}

// ---------------------------------------------------------------------------------------
// 6. An HTTPS upstream
// ---------------------------------------------------------------------------------------

/// `scopegate <args>` against the admin listener `admin_url` (a gateway other than the
/// [`Env`]'s own), which must succeed; its JSON output.
fn cli_at(admin_url: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new("timeout");
    let r = run(scrubbed(&mut cmd).arg(CLI_SECS).arg(BIN).args(["--server", admin_url, "-o", "json"]).args(args).env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN));
    assert!(r.ok(), "scopegate {args:?} at {admin_url} failed: {}", r.all());
    stdout_json(&r)
}

/// The manifest digest the OCI layout `dir` holds for `tag`.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json")).expect("index JSON");
    index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag))
        .and_then(|d| d["digest"].as_str())
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .to_owned()
}

/// `/readyz` of the admin listener `admin_url`: (status, JSON answer).
fn readyz(admin_url: &str) -> (u16, Value) {
    let r = http(host_port(admin_url), "GET", "/readyz", &[]).unwrap_or_else(|e| panic!("GET /readyz: {e}"));
    (r.status, r.json())
}

/// The registry serves HTTPS only, with a certificate for 127.0.0.1 from a CA made at test
/// time; the gateway names it `upstream: https://127.0.0.1:PORT` with `upstream_tls.ca_file`
/// holding that CA. skopeo pushes and pulls through the gateway (plain HTTP on the gateway's
/// side), the registry holds the image, and `/readyz` is ready. A second gateway in front of
/// the same registry whose `ca_file` holds a different CA must not talk to it: the token
/// server still answers (it needs no upstream), but every request that would reach the
/// registry fails at once with a Docker JSON error, 502 or 503 (not a hang, not a 200), a
/// skopeo push through it fails without reaching the registry, and `/readyz` answers 503
/// saying the upstream is unreachable.
#[test]
fn an_https_upstream_is_verified_against_the_configured_ca() {
    let pki = make_pki("scopegate e2e upstream CA");
    let registry_tls = RegistryTls { cert_pem: pki.cert_pem.clone(), key_pem: pki.key_pem.clone(), ca_pem: pki.ca_pem.clone() };
    let (env, cfg) = start_from_config_with("upstream-tls", "http", Some(registry_tls), |root| {
        let ca = root.join("upstream-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).expect("upstream CA file");
        format!("upstream_tls:\n  ca_file: {}\n", ca.display())
    });
    let upstream_url = format!("https://{}", env.upstream);
    let config = std::fs::read_to_string(&cfg.path).expect("config file");
    assert!(config.contains(&format!("upstream: {upstream_url}\n")), "{config}");
    // The registry really speaks only TLS: plain HTTP gets no registry answer from it.
    let plain = http(&env.upstream, "GET", "/v2/", &[]);
    assert!(!matches!(&plain, Ok(r) if r.status == 200), "the registry must not answer plain HTTP: {plain:?}");

    let (status, ready) = readyz(&env.admin_url);
    assert_eq!((status, &ready["ready"], &ready["upstream"]), (200, &Value::Bool(true), &Value::from("reachable")), "{ready}");

    let t = env.create_token(&["--name", "tlsup", "--repository", "samples/app", "content/read", "content/write", "metadata/read"]);
    let digest = env.make_images("images", &["v1"]).remove(0);
    let r = env.skopeo_push(&t, &env.oci("images", "v1"), "samples/app:v1");
    assert!(r.ok(), "push through the gateway to the https upstream: {}", r.all());
    assert_eq!(env.upstream_digest("samples/app", "v1").as_deref(), Some(digest.as_str()), "the registry (read over https) holds the image");
    let r = env.skopeo_pull(&t, "samples/app:v1", &format!("oci:{}:v1", env.path("pulled").display()));
    assert!(r.ok(), "pull through the gateway from the https upstream: {}", r.all());
    assert_eq!(layout_digest(&env.path("pulled"), "v1"), digest);
    let r = env.gateway("GET", "/v2/samples/app/tags/list", &[("Authorization", &basic(&t.name, &t.password1))]);
    assert_eq!((r.status, &r.json()["tags"]), (200, &serde_json::json!(["v1"])), "{}", r.text());

    let registry_log = || std::fs::read_to_string(env.path("registry/registry.log")).unwrap_or_default();
    assert!(!registry_log().contains("TLS handshake error"), "the gateway trusting the right CA had a handshake fail:\n{}", registry_log());

    // A second gateway, same registry, trusting another CA.
    let other = make_pki("scopegate e2e some other CA");
    let dir = env.path("gateway-wrong-ca");
    std::fs::create_dir_all(&dir).expect("gateway dir");
    let wrong_ca = dir.join("wrong-ca.pem");
    std::fs::write(&wrong_ca, &other.ca_pem).expect("wrong CA file");
    let wrong_cfg = ConfigFile { path: dir.join("scopegate.yaml"), upstream: upstream_url.clone(), data_dir: dir.join("data") };
    wrong_cfg.write(&format!("upstream_tls:\n  ca_file: {}\n", wrong_ca.display()));
    let g = spawn_gateway(&dir, &["serve".into(), "--config".into(), wrong_cfg.path.clone().into_os_string()]);
    let mut wrong = g.proc;
    let wrong_public = g.public.strip_prefix("http://").unwrap_or_else(|| panic!("{:?}", g.ready_line)).to_owned();
    let wrong_admin = g.admin_url;
    wait_until(
        "the gateway trusting another CA",
        Duration::from_secs(10),
        || wrong.exited().map_or(Ok(()), |s| Err(format!("exited with {s}"))),
        || TcpStream::connect(&wrong_public).is_ok(),
    );
    let v = cli_at(&wrong_admin, &["token", "create", "--name", "tlsup", "--repository", "samples/app", "content/read", "content/write", "metadata/read"]);
    let password = password_value(&v["credentials"], "password1");
    let auth = basic("tlsup", &password);
    // The token server needs no upstream.
    let q = format!("/token?service=scopegate&scope={}", enc("repository:samples/app:pull,push"));
    let r = http(&wrong_public, "GET", &q, &[("Authorization", &auth)]).expect("token server answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = format!("Bearer {}", r.json()["token"].as_str().expect("a token"));

    // Requests that go to the registry: a Docker JSON 502/503 each, promptly.
    let requests: [(&str, &str, &str); 4] = [
        ("GET", "/v2/samples/app/manifests/v1", auth.as_str()),
        ("GET", "/v2/samples/app/manifests/v1", bearer.as_str()),
        ("GET", "/v2/samples/app/tags/list", auth.as_str()),
        ("POST", "/v2/samples/app/blobs/uploads/", bearer.as_str()),
    ];
    for (method, path, credential) in requests {
        let started = Instant::now();
        let r = http(&wrong_public, method, path, &[("Authorization", credential), ("Accept", OCI_MANIFEST), ("Content-Length", "0")])
            .unwrap_or_else(|e| panic!("{method} {path} through the gateway trusting another CA: {e}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{method} {path}: answered after {took:?}");
        assert!(matches!(r.status, 502 | 503), "{method} {path} must fail as a bad/unavailable upstream, got {} {}", r.status, r.text());
        assert!(r.header("Content-Type").is_some_and(|c| c.starts_with("application/json")), "{method} {path}: {:?}", r.headers);
        let v = r.json();
        let first = &v["errors"][0];
        assert!(first["code"].is_string() && first["message"].is_string(), "{method} {path}: not a Docker error body: {v}");
        assert!(r.header("Docker-Content-Digest").is_none(), "{method} {path}: {:?}", r.headers);
    }

    // A real client fails too (and promptly), and nothing reaches the registry.
    let started = Instant::now();
    let to = format!("docker://{wrong_public}/samples/app:through-wrong-ca");
    let r = env.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", &format!("tlsup:{password}"), &env.oci("images", "v1"), &to]);
    let took = started.elapsed();
    assert!(!r.ok(), "a push through the gateway trusting another CA must fail: {}", r.all());
    let said = r.all().to_lowercase();
    assert!(said.contains("503") || said.contains("502") || said.contains("unavailable"), "skopeo should report the upstream failure: {}", r.all());
    assert!(took < Duration::from_secs(60), "skopeo took {took:?} to fail");
    assert_eq!(env.upstream_tags("samples/app"), ["v1"], "nothing new reached the registry");

    let (status, ready) = readyz(&wrong_admin);
    assert_eq!((status, &ready["ready"]), (503, &Value::Bool(false)), "{ready}");
    let upstream_state = ready["upstream"].as_str().unwrap_or_default();
    assert!(upstream_state.contains("unreachable"), "/readyz should report the upstream unreachable: {ready}");
    assert_eq!((&ready["store"], &ready["keys"]), (&Value::Bool(true), &Value::Bool(true)), "only the upstream is wrong: {ready}");
    // It failed for the right reason: it reached the registry and refused its certificate
    // (Go's TLS server logs the alert the gateway sent).
    assert!(
        registry_log().contains("remote error: tls: unknown certificate authority"),
        "the registry should have seen the gateway refuse its certificate:\n{}",
        registry_log()
    );
    assert!(wrong.exited().is_none(), "the gateway trusting another CA keeps running");

    // The first gateway, trusting the right CA, was never affected.
    let (status, ready) = readyz(&env.admin_url);
    assert_eq!((status, &ready["ready"]), (200, &Value::Bool(true)), "{ready}");
    let r = env.gateway("GET", "/v2/samples/app/manifests/v1", &[("Authorization", &basic(&t.name, &t.password1)), ("Accept", OCI_MANIFEST)]);
    assert_eq!((r.status, r.header("Docker-Content-Digest")), (200, Some(digest.as_str())), "{:?}", r.headers);
}
