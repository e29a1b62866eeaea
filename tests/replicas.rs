//! Several replicas sharing one PostgreSQL store: a real PostgreSQL server (Debian's
//! `postgresql`) is started on loopback by the test, in its own directory, and two
//! in-process gateways use it. Each test is named after the case it guards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use support::{basic, FakeRegistry, Harness};

/// A PostgreSQL server in a temporary directory, stopped on drop.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().expect("PostgreSQL is not installed: run .ci/run (apt-get install postgresql)")
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (it refuses root).
fn pg_tool(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        // the server runs as postgres: it must own its directory
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let data = dir.path().join("data");
        let out = pg_tool(&bin, "initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.path().display());
        let log = dir.path().join("server.log");
        let out = pg_tool(&bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
        assert!(out.status.success(), "pg_ctl start: {} {}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        Postgres { bin, dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log");
        let out = pg_tool(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-m", "fast", "-w", "-t", "60", action]);
        assert!(out.status.success(), "pg_ctl {action}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg_tool(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}

async fn replica(pg: &Postgres) -> Harness {
    let url = pg.url();
    Harness::start_configured(FakeRegistry::start().await, tempfile::tempdir().unwrap(), move |raw| raw.database_url = Some(url)).await
}

/// Polls `f` every 10 ms until it holds; returns how long that took.
async fn until(deadline: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_token_disabled_through_one_replica_is_refused_by_the_other_within_a_second() {
    let pg = Postgres::start();
    let (a, b) = (replica(&pg).await, replica(&pg).await);
    let pw = a.token("ci", &[("team/app", &["content/read"])]).await;
    let target = "/v2/team/app/manifests/v1";
    let auth = basic("ci", &pw);
    until(Duration::from_secs(5), async || b.v2("GET", target, &[("authorization", &auth)]).await.status == StatusCode::OK).await;
    // a session token minted by A works on B: the signing key is shared
    let tok = a.session("ci", &pw, &["repository:team/app:pull"]).await;
    assert_eq!(b.v2("GET", target, &[("authorization", &format!("Bearer {tok}"))]).await.status, StatusCode::OK);
    let mut latencies = Vec::new();
    for _ in 0..10 {
        assert_eq!(a.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await.status, StatusCode::OK);
        latencies.push(until(Duration::from_secs(1), async || b.v2("GET", target, &[("authorization", &auth)]).await.status == StatusCode::UNAUTHORIZED).await);
        assert_eq!(a.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "enabled"}))).await.status, StatusCode::OK);
        until(Duration::from_secs(1), async || b.v2("GET", target, &[("authorization", &auth)]).await.status == StatusCode::OK).await;
    }
    latencies.sort();
    eprintln!("disable on A -> refused on B: min {:?}, median {:?}, max {:?}", latencies[0], latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(1));
}

#[tokio::test]
async fn concurrent_updates_through_two_replicas_are_never_lost() {
    let pg = Postgres::start();
    let (a, b) = (replica(&pg).await, replica(&pg).await);
    let r = a.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "shared", "repositories": [{"repository": "base", "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    until(Duration::from_secs(5), async || b.admin("GET", "/api/v1/scope-maps/shared", None).await.status == StatusCode::OK).await;
    let mut applied = Vec::new();
    for round in 0..10 {
        let (ra, rb) = (format!("a{round}"), format!("b{round}"));
        let add = |repo: &str| json!({"addRepositories": [{"repository": repo, "actions": ["content/read"]}]});
        let (x, y) = tokio::join!(
            a.admin("PATCH", "/api/v1/scope-maps/shared", Some(add(&ra))),
            b.admin("PATCH", "/api/v1/scope-maps/shared", Some(add(&rb)))
        );
        for (resp, repo) in [(x, ra), (y, rb)] {
            match resp.status {
                StatusCode::OK => applied.push(repo),
                StatusCode::CONFLICT => assert!(resp.text().contains("changed by another writer"), "{}", resp.text()),
                other => panic!("unexpected {other}: {}", resp.text()),
            }
        }
        // let both replicas catch up before the next round
        let want = applied.len() + 1;
        for h in [&a, &b] {
            until(Duration::from_secs(2), async || {
                h.admin("GET", "/api/v1/scope-maps/shared", None).await.json()["actions"].as_array().map_or(0, Vec::len) == want
            })
            .await;
        }
    }
    let actions = a.admin("GET", "/api/v1/scope-maps/shared", None).await.json()["actions"].clone();
    for repo in &applied {
        assert!(actions.to_string().contains(&format!("repositories/{repo}/content/read")), "{repo} was acknowledged but lost: {actions}");
    }
    assert!(!applied.is_empty());
}

#[tokio::test]
async fn the_database_going_away_keeps_decisions_and_refuses_writes_until_it_returns() {
    let pg = Postgres::start();
    let a = replica(&pg).await;
    let pw = a.token("ci", &[("team/app", &["content/read"])]).await;
    let (target, auth) = ("/v2/team/app/manifests/v1", basic("ci", &pw));
    pg.ctl("stop");
    // decisions continue from the last loaded policy
    for _ in 0..5 {
        assert_eq!(a.v2("GET", target, &[("authorization", &auth)]).await.status, StatusCode::OK);
    }
    // admin writes fail with a clear error, and change nothing
    let r = a.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("policy store is unavailable"), "{}", r.text());
    // past max_staleness_secs (300 by default) the gateway stops deciding on the old policy
    a.gw.state.clock.advance(Duration::from_secs(301));
    let r = a.v2("GET", target, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("max_staleness_secs"), "{}", r.text());
    pg.ctl("start");
    // the store answers again: decisions resume without a restart
    until(Duration::from_secs(10), async || a.v2("GET", target, &[("authorization", &auth)]).await.status == StatusCode::OK).await;
    // without a restart, writes work again and bite
    until(Duration::from_secs(10), async || a.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await.status == StatusCode::OK).await;
    assert_eq!(a.v2("GET", target, &[("authorization", &auth)]).await.status, StatusCode::UNAUTHORIZED);
}
