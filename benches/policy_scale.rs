//! Policy scale: how long loading a policy of 10, 10,000 and 100,000 tokens (with a tenth as
//! many scope maps) takes, how long an incremental change takes (one token disabled: read
//! the change log and that token, patch the snapshot), what one decision costs at each
//! size, and the memory per token.
//!
//!     cargo bench --bench policy_scale
//!
//! The store is filled directly in one transaction (this measures loading, not inserting).

#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::Instant;

use scopegate::access::{Action, Requirement};
use scopegate::oci::RepoName;
use scopegate::policy::{CredentialKind, Policy, Principal, Status, Subject, TokenName};
use scopegate::store::sqlite::SqliteStore;
use scopegate::store::Store;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn fill(dir: &std::path::Path, tokens: usize, maps: usize) {
    drop(SqliteStore::open(dir).expect("store"));
    let mut c = rusqlite::Connection::open(dir.join("scopegate.db")).expect("db");
    let tx = c.transaction().expect("tx");
    for m in 0..maps {
        tx.execute("INSERT INTO scope_maps (name, description, created_at) VALUES (?1, '', 0)", [format!("map-{m}")]).expect("map");
        for (pattern, actions) in [(format!("team{m}/app"), "content/read content/write"), (format!("team{m}/*"), "content/read"), ("shared/base".to_owned(), "content/read")] {
            tx.execute("INSERT INTO scope_map_rules (map, pattern, actions) VALUES (?1, ?2, ?3)", [format!("map-{m}"), pattern, actions.to_owned()]).expect("rule");
        }
    }
    for t in 0..tokens {
        let name = format!("device-{t}");
        tx.execute("INSERT INTO tokens (name, scope_map, status, created_at) VALUES (?1, ?2, 'enabled', 0)", [&name, &format!("map-{}", t % maps)]).expect("token");
        for slot in ["password1", "password2"] {
            tx.execute(
                "INSERT INTO token_passwords (token, slot, id, digest, created_at) VALUES (?1, ?2, ?3, ?4, 0)",
                rusqlite::params![name, slot, format!("{t}{slot}"), vec![7u8; 32]],
            )
            .expect("password");
        }
    }
    tx.commit().expect("commit");
}

fn main() {
    println!("{:>8} {:>6} | {:>10} | {:>16} | {:>12} | {:>14}", "tokens", "maps", "load (ms)", "1 change (ms)", "decide (ns)", "memory/token");
    for tokens in [10usize, 10_000, 100_000] {
        let maps = (tokens / 10).max(1);
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), tokens, maps);
        let store = SqliteStore::open(dir.path()).expect("store");
        let before = rss_bytes();
        let start = Instant::now();
        let r = store.load().expect("load");
        let policy = Arc::new(Policy::new(r.epoch, r.maps, r.tokens, None).with_api_keys(r.api_keys).with_attributes(r.attributes));
        let load = start.elapsed();
        let grown = rss_bytes().saturating_sub(before);
        // an incremental change: one token disabled, then the snapshot brought up to date
        let mut t = policy.token(&TokenName::parse("device-0").expect("name")).expect("token").clone();
        t.status = Status::Disabled;
        store.update_token(&t).expect("update");
        let start = Instant::now();
        let changes = store.changes_since(policy.epoch).expect("changes").expect("covered by the change log");
        let patched = policy.patched(changes, None);
        let change = start.elapsed();
        assert_eq!(patched.token(&t.name).map(|t| t.status), Some(Status::Disabled));
        drop(patched);
        // decisions for tokens spread over the whole policy
        let principals: Vec<(Principal, RepoName)> = (0..1024)
            .map(|i| {
                let t = (i * 7919) % tokens;
                let p = Principal { subject: Subject::Token(TokenName::parse(&format!("device-{t}")).expect("name")), credential: CredentialKind::Basic, session: None };
                (p, RepoName::parse(&format!("team{}/app/sub", t % maps)).expect("repo"))
            })
            .collect();
        let rounds = 1_000_000;
        let start = Instant::now();
        let mut allowed = 0usize;
        for i in 0..rounds {
            let (p, repo) = &principals[i % principals.len()];
            allowed += usize::from(policy.decide(p, Requirement::Repository { repo, action: Action::ContentRead, mount_from: None, locks: true }).is_ok());
        }
        let per = start.elapsed().as_nanos() / rounds as u128;
        assert_eq!(allowed, rounds, "every decision should be allowed");
        println!(
            "{tokens:>8} {maps:>6} | {:>10.1} | {:>16.2} | {per:>12} | {:>11} B",
            load.as_secs_f64() * 1000.0,
            change.as_secs_f64() * 1000.0,
            grown / tokens as u64
        );
    }
}
