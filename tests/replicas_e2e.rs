//! Replicas end to end: two real `scopegate serve` processes sharing one real PostgreSQL
//! (`--database-url`), in front of one Debian `docker-registry`, driven by the admin CLI,
//! skopeo and hand-written HTTP. The PostgreSQL helper is `tests/support/postgres.rs`
//! (shared with `tests/replicas.rs`), the rest of the harness `tests/e2e/harness.rs`.
//!
//! Prerequisites: those of `tests/e2e.rs` plus Debian's `postgresql`; run through `.ci/run`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "e2e/harness.rs"]
mod harness;
#[path = "support/postgres.rs"]
mod postgres;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use postgres::Postgres;

const MANIFEST: &str = "/v2/team/app/manifests/v1";

/// One replica: `scopegate serve` on ports 0 with `--database-url`, its own data dir. The
/// tests poll a replica every 10 ms with a token it may not know yet (it was just created
/// through the other one); the failed-login throttle, which has tests of its own, would
/// answer those polls 429, so it is off here.
fn start_replica(dir: &Path, upstream: &str, database_url: &str) -> (Proc, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("scopegate.yaml");
    std::fs::write(&config, "limits:\n  failed_logins:\n    enabled: false\n").unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--config".into(),
        config.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        format!("http://{upstream}").into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--database-url".into(),
        database_url.into(),
    ];
    let g = spawn_gateway(dir, &args);
    let public = g.public.strip_prefix("http://").unwrap_or_else(|| panic!("public is not http:// in {:?}", g.ready_line)).to_owned();
    let mut proc = g.proc;
    wait_until(
        "replica",
        Duration::from_secs(10),
        || proc.exited().map_or(Ok(()), |s| Err(format!("exited with {s}"))),
        || http(&public, "GET", "/v2/", &[]).is_ok(),
    );
    (proc, public, g.admin_url)
}

/// The admin CLI against the replica whose admin listener is `admin_url`.
fn cli_at(admin_url: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new("timeout");
    run(scrubbed(&mut cmd).arg(CLI_SECS).arg(BIN).args(["--server", admin_url, "-o", "json"]).args(args).env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN))
}

/// One admin API request with a JSON body (the harness's `http` sends none).
fn admin_json(admin_url: &str, method: &str, path: &str, body: &str) -> Result<Resp, String> {
    let addr = admin_url.strip_prefix("http://").unwrap_or(admin_url);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("no header end in {raw:?}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line in {head:?}"))?;
    // good enough for the small JSON error bodies asserted on here (chunking markers are harmless)
    Ok(Resp { status, headers: vec![], body: raw[split + 4..].to_vec() })
}

/// HEAD of the test manifest at `public` with `auth`: the status, or the transport error.
fn head_manifest(public: &str, auth: &str) -> Result<u16, String> {
    http(public, "HEAD", MANIFEST, &[("Authorization", auth), ("Accept", OCI_MANIFEST)]).map(|r| r.status)
}

/// Polls `f` every 10 ms until it holds; how long that took. Fails past `deadline`.
fn poll(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn two_gateway_processes_share_one_database() {
    let pg = Postgres::start();
    let url = pg.url();
    let env = Env::start_with("replicas-share", |root, upstream| start_replica(&root.join("gateway-a"), upstream, &url));
    let (_b, b_public, b_admin) = start_replica(&env.path("gateway-b"), &env.upstream, &url);
    let a_public = env.public.clone();

    // Written through A...
    env.cli_ok(&["scope-map", "create", "--name", "app-rw", "--repository", "team/app", "content/write", "content/read"]);
    let t = env.create_token(&["--name", "ci", "--scope-map", "app-rw"]);
    let auth = basic(&t.name, &t.password1);
    // ...known to B: the token authenticates (404: no manifest yet, but not 401)
    let seen = poll("B knows the token created through A", Duration::from_secs(5), || head_manifest(&b_public, &auth) == Ok(404));
    eprintln!("token created on A -> accepted by B after {seen:?}");

    // skopeo pushes through B with the token made on A
    env.make_images("images", &["v1"]);
    let dest = format!("docker://{b_public}/team/app:v1");
    let r = env.tool(&["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", &format!("{}:{}", t.name, t.password1), &env.oci("images", "v1"), &dest]);
    assert!(r.ok(), "skopeo push through B with a token created on A: {}", r.all());
    assert_eq!(env.upstream_tags("team/app"), ["v1"]);

    // a bearer token minted by A's /token is honoured by B: the signing key is shared
    let bearer = env.bearer(&t.name, &t.password1, "repository:team/app:pull");
    let r = http(&b_public, "HEAD", MANIFEST, &[("Authorization", &bearer), ("Accept", OCI_MANIFEST)]).unwrap();
    assert_eq!(r.status, 200, "A's bearer token on B: {:?}", r.headers);
    // and one minted by B on A
    let r = http(&b_public, "GET", "/token?service=scopegate&scope=repository:team/app:pull", &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 200, "B's /token: {}", r.text());
    let b_bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    assert_eq!(http(&a_public, "HEAD", MANIFEST, &[("Authorization", &b_bearer), ("Accept", OCI_MANIFEST)]).unwrap().status, 200);

    // disabled through B -> refused by A: how long after the CLI returned
    assert_eq!(head_manifest(&a_public, &auth), Ok(200));
    let mut latencies = Vec::new();
    for round in 0..10 {
        let r = cli_at(&b_admin, &["token", "update", "--name", "ci", "--status", "disabled"]);
        assert!(r.ok(), "round {round}: disable through B: {}", r.all());
        latencies.push(poll("A refuses the token disabled through B", Duration::from_secs(1), || head_manifest(&a_public, &auth) == Ok(401)));
        let r = cli_at(&b_admin, &["token", "update", "--name", "ci", "--status", "enabled"]);
        assert!(r.ok(), "round {round}: enable through B: {}", r.all());
        poll("A accepts the token enabled again through B", Duration::from_secs(2), || head_manifest(&a_public, &auth) == Ok(200));
    }
    let (min, median, max) = stats(&mut latencies);
    eprintln!("MEASURED disable on B (CLI returned) -> refused on A (processes): min {min:?}, median {median:?}, max {max:?} over 10");
    assert!(max < Duration::from_secs(1), "max {max:?}");
}

#[derive(Default)]
struct Tally {
    ok: [u64; 2],
    failures: Vec<String>,
}

#[test]
fn the_database_restarting_under_load_loses_no_decision() {
    let pg = Postgres::start();
    let url = pg.url();
    let mut env = Env::start_with("replicas-restart", |root, upstream| start_replica(&root.join("gateway-a"), upstream, &url));
    let (mut b_proc, b_public, b_admin) = start_replica(&env.path("gateway-b"), &env.upstream, &url);
    let a_public = env.public.clone();

    env.make_images("images", &["v1"]);
    env.seed(&env.oci("images", "v1"), "team/app:v1");
    env.cli_ok(&["scope-map", "create", "--name", "app-r", "--repository", "team/app", "content/read"]);
    let t = env.create_token(&["--name", "ci", "--scope-map", "app-r"]);
    let auth = basic(&t.name, &t.password1);
    poll("B knows the token", Duration::from_secs(5), || head_manifest(&b_public, &auth) == Ok(200));
    assert_eq!(head_manifest(&a_public, &auth), Ok(200));

    // 4 clients, each alternating between A and B, for the whole test
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let test_start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, tally, auth) = (stop.clone(), tally.clone(), auth.clone());
            let targets = [a_public.clone(), b_public.clone()];
            std::thread::spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let which = n % 2;
                    n += 1;
                    let r = head_manifest(&targets[which], &auth);
                    let mut t = tally.lock().unwrap();
                    match r {
                        Ok(200) => t.ok[which] += 1,
                        other => {
                            let at = test_start.elapsed();
                            t.failures.push(format!("{} at {at:?}: {other:?}", ["A", "B"][which]))
                        }
                    }
                }
            })
        })
        .collect();
    let count = || {
        let t = tally.lock().unwrap();
        t.ok[0] + t.ok[1] + t.failures.len() as u64
    };
    poll("the load is running", Duration::from_secs(10), || count() >= 20);

    // the store goes away
    let t0 = Instant::now();
    pg.ctl("stop");
    eprintln!("pg_ctl stop -m fast took {:?}", t0.elapsed());
    let outage_start = Instant::now();
    let before_outage = count();
    // an admin write now: 503, clearly worded, through the API and the CLI
    let r = admin_json(&env.admin_url, "PATCH", "/api/v1/tokens/ci", r#"{"status":"disabled"}"#).unwrap();
    assert_eq!(r.status, 503, "admin write during the outage: {}", r.text());
    assert!(r.text().contains("policy store is unavailable"), "{}", r.text());
    let r = cli_at(&b_admin, &["token", "create", "--name", "during-outage", "--scope-map", "app-r"]);
    assert!(!r.ok(), "a CLI write during the outage must fail");
    assert!(r.all().contains("policy store is unavailable"), "{}", r.all());
    while outage_start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let during_outage = count() - before_outage;

    // the store comes back: no gateway restarts
    let t0 = Instant::now();
    pg.ctl("start");
    eprintln!("pg_ctl start took {:?}; outage lasted {:?}", t0.elapsed(), outage_start.elapsed());
    // a write through A succeeds again (bounded), without touching the token under load
    let mut created = None;
    let writable = poll("an admin write through A after the restart", Duration::from_secs(15), || {
        let r = cli_at(&env.admin_url, &["token", "create", "--name", "after-restart", "--scope-map", "app-r"]);
        if r.ok() {
            created = Some(stdout_json(&r));
            true
        } else {
            false
        }
    });
    let v = created.unwrap();
    let after = basic("after-restart", &password_value(&v["credentials"], "password1"));
    let seen = poll("B accepts the token created through A after the restart", Duration::from_secs(1), || head_manifest(&b_public, &after) == Ok(200));
    eprintln!("MEASURED store back -> admin write through A succeeds: {writable:?}; then seen by B after {seen:?}");
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(b_proc.exited().is_none(), "replica B exited");
    assert!(env.gateway_proc().exited().is_none(), "replica A exited");
    let t = tally.lock().unwrap();
    eprintln!(
        "MEASURED load: {} requests in {:?} (A {} ok, B {} ok, {} during the outage), {} not 200",
        t.ok[0] + t.ok[1] + t.failures.len() as u64,
        test_start.elapsed(),
        t.ok[0],
        t.ok[1],
        during_outage,
        t.failures.len()
    );
    assert!(t.ok[0] > 0 && t.ok[1] > 0 && during_outage > 0, "load reached both replicas, also during the outage");
    assert!(t.failures.is_empty(), "{} requests were not 200; first ones: {:#?}", t.failures.len(), &t.failures[..t.failures.len().min(20)]);
}
