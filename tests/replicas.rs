//! Several replicas sharing one PostgreSQL store: a real PostgreSQL server (Debian's
//! `postgresql`) is started on loopback by the test, in its own directory, and two
//! in-process gateways use it. Each test is named after the case it guards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;
#[path = "support/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use http::StatusCode;
use postgres::Postgres;
use serde_json::json;
use support::{basic, FakeRegistry, Harness};

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
async fn a_change_through_one_replica_is_patched_into_the_others_snapshot_not_reloaded() {
    let pg = Postgres::start();
    let (a, b) = (replica(&pg).await, replica(&pg).await);
    let pw = a.token("ci", &[("team/app", &["content/read"])]).await;
    let auth = basic("ci", &pw);
    until(Duration::from_secs(5), async || b.v2("GET", "/v2/team/app/manifests/v1", &[("authorization", &auth)]).await.status == StatusCode::OK).await;
    let reloads = |kind: &str| b.gw.state.metrics.policy_reloads.with_label_values(&[kind]).get();
    let full_before = reloads("full");
    let incremental_before = reloads("incremental");
    // one write of every kind, through A
    let r = a.admin("POST", "/api/v1/scope-maps", Some(json!({"name": "public", "repositories": [{"repository": "pub/*", "actions": ["content/read"]}]}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(a.admin("PUT", "/api/v1/anonymous", Some(json!({"scopeMap": "public"}))).await.status, StatusCode::OK);
    let r = a.admin("POST", "/api/v1/apikeys", Some(json!({"name": "robot", "scopeMap": "public"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(a.admin("PATCH", "/api/v1/tokens/ci", Some(json!({"status": "disabled"}))).await.status, StatusCode::OK);
    assert_eq!(a.admin("DELETE", "/api/v1/apikeys/robot", None).await.status, StatusCode::OK);
    let target = a.gw.state.policy().epoch;
    until(Duration::from_secs(2), async || b.gw.state.policy().epoch == target).await;
    assert_eq!(b.v2("GET", "/v2/team/app/manifests/v1", &[("authorization", &auth)]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(b.v2("GET", "/v2/pub/x/manifests/v1", &[]).await.status, StatusCode::OK);
    // B patched its snapshot (never re-read everything), and the patch is exactly what a
    // full load gives
    assert_eq!(reloads("full"), full_before, "a full reload happened");
    assert!(reloads("incremental") > incremental_before);
    let state = std::sync::Arc::clone(&b.gw.state);
    let loaded = tokio::task::spawn_blocking(move || scopegate::state::State::load_policy(state.store.as_ref(), &state.runtime().config).unwrap());
    assert_eq!(*b.gw.state.policy(), loaded.await.unwrap());
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
