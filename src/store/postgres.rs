//! The shared store: PostgreSQL, for several replicas. Same records and rules as the SQLite
//! store, with versioned migrations (run under an advisory lock, so replicas starting
//! together do not race) and a shared epoch that every write bumps in its transaction;
//! replicas watch it to pick up each other's changes. Writes check the revision a record
//! was read at, so two replicas changing the same record never lose an update: the second
//! is refused as stale.
//!
//! Only this file speaks SQL for PostgreSQL. A lost connection is reported as
//! `Unavailable` and re-opened on the next call; nothing here retries a write.

use std::collections::BTreeMap;
use std::sync::Mutex;

use postgres::{Client, NoTls, Row, Transaction};

use super::{
    actions_parse, actions_text, backend, digest32, from_ts, log_covers, read_all, read_changed, revision, select, token_changes, ts, Changed,
    KeyRecord, PolicyChanges, PolicyRecords, RecordReader, Store, StoreError, StoredAnonymous, UntagJournal, CHANGE_LOG_SPAN,
};
use crate::oci::{Digest, RepoName, Tag};
use crate::policy::{ApiKey, Attributes, KeyName, MapName, Password, RepoPattern, ScopeMap, Slot, Status, Token, TokenName};

/// Migrations in order; `scopegate_schema.version` records how many have run.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE settings (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE epoch (id INT PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
INSERT INTO epoch (id, value) VALUES (1, 0);
CREATE TABLE scope_maps (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revision BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE scope_map_rules (
    map TEXT NOT NULL REFERENCES scope_maps(name) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    actions TEXT NOT NULL,
    PRIMARY KEY (map, pattern)
);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    scope_map TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at BIGINT NOT NULL,
    revision BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE token_passwords (
    token TEXT NOT NULL REFERENCES tokens(name) ON DELETE CASCADE,
    slot TEXT NOT NULL CHECK (slot IN ('password1', 'password2')),
    id TEXT NOT NULL,
    digest BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (token, slot)
);
CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    digest BYTEA NOT NULL UNIQUE,
    scope_map TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revision BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE signing_keys (id BIGSERIAL PRIMARY KEY, pkcs8 BYTEA NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE repositories (
    name TEXT PRIMARY KEY,
    read_enabled BOOLEAN NOT NULL,
    write_enabled BOOLEAN NOT NULL,
    delete_enabled BOOLEAN NOT NULL,
    list_enabled BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE untag_journal (
    id BIGSERIAL PRIMARY KEY,
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    manifest BYTEA NOT NULL,
    keep_tags TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"#, r#"
CREATE TABLE changes (epoch BIGINT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL);
CREATE INDEX changes_by_epoch ON changes (epoch);
ALTER TABLE epoch ADD COLUMN changes_from BIGINT NOT NULL DEFAULT 0;
UPDATE epoch SET changes_from = value;
"#];

/// Advisory lock key held while migrating.
const MIGRATION_LOCK: i64 = 0x5c09_e6a7;
const ANONYMOUS_KEY: &str = "anonymous_scope_map";

pub struct PostgresStore {
    url: String,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the URL may hold a password
        f.write_str("PostgresStore")
    }
}

/// A database error: the connection's fault (unavailable) or the statement's. SQLSTATE
/// classes 08 (connection exception) and 57 (operator intervention, e.g. a shutdown) are
/// the database going away.
fn pg(e: postgres::Error) -> StoreError {
    let class = e.code().map(|c| c.code().get(..2).unwrap_or_default().to_owned());
    let gone = e.is_closed() || e.as_db_error().is_none() || matches!(class.as_deref(), Some("08" | "57"));
    // the driver's own Display says only "db error": name the server's code and message
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    if gone {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

fn get<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(backend)
}

fn rev(r: u64) -> Result<i64, StoreError> {
    i64::try_from(r).map_err(backend)
}

impl PostgresStore {
    /// Connects and migrates. The URL is `postgres://user:password@host:port/database`.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore { url: url.to_owned(), client: Mutex::new(None) };
        store.with(|c| {
            c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
            let result = migrate(c);
            let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
            result
        })?;
        Ok(store)
    }

    /// Runs `f` on a connection, opening one if needed; a broken connection is dropped.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut guard = self.client.lock().map_err(|_| backend("store lock poisoned"))?;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(Client::connect(&self.url, NoTls).map_err(|e| StoreError::Unavailable(e.to_string()))?);
        }
        let client = guard.as_mut().ok_or_else(|| backend("no connection"))?;
        let out = f(client);
        if matches!(out, Err(StoreError::Unavailable(_))) {
            *guard = None;
        }
        out
    }

    /// A write: one transaction, which also bumps the shared epoch and logs the records it
    /// touched. The epoch row stays locked until the commit, so writes commit in epoch order
    /// and a reader that sees epoch E sees every write up to E.
    fn write<T>(&self, changed: &[Changed], f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(pg)?;
            let out = f(&mut tx)?;
            let epoch: i64 = get(&tx.query_one("UPDATE epoch SET value = value + 1 WHERE id = 1 RETURNING value", &[]).map_err(pg)?, 0)?;
            for ch in changed {
                let (kind, name) = ch.columns();
                tx.execute("INSERT INTO changes (epoch, kind, name) VALUES ($1, $2, $3)", &[&epoch, &kind, &name]).map_err(pg)?;
            }
            tx.execute("DELETE FROM changes WHERE epoch <= $1", &[&(epoch - rev(CHANGE_LOG_SPAN)?)]).map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(out)
        })
    }

    /// Reads that must agree: one read-only, repeatable-read transaction.
    fn snapshot<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with(|c| {
            let mut tx = c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).read_only(true).start().map_err(pg)?;
            let out = f(&mut tx)?;
            tx.commit().map_err(pg)?;
            Ok(out)
        })
    }
}

fn migrate(c: &mut Client) -> Result<(), StoreError> {
    c.batch_execute("CREATE TABLE IF NOT EXISTS scopegate_schema (version INT NOT NULL)").map_err(pg)?;
    let rows = c.query("SELECT version FROM scopegate_schema", &[]).map_err(pg)?;
    let version: i32 = match rows.first() {
        Some(r) => get(r, 0)?,
        None => {
            c.execute("INSERT INTO scopegate_schema (version) VALUES (0)", &[]).map_err(pg)?;
            0
        }
    };
    let version = usize::try_from(version).map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(backend(format!("database schema version {version} is newer than this scopegate ({})", MIGRATIONS.len())));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let mut tx = c.transaction().map_err(pg)?;
        tx.batch_execute(sql).map_err(pg)?;
        let v = i32::try_from(i + 1).map_err(backend)?;
        tx.execute("UPDATE scopegate_schema SET version = $1", &[&v]).map_err(pg)?;
        tx.commit().map_err(pg)?;
    }
    Ok(())
}

fn write_rules(tx: &mut Transaction<'_>, map: &ScopeMap) -> Result<(), StoreError> {
    tx.execute("DELETE FROM scope_map_rules WHERE map = $1", &[&map.name.as_str()]).map_err(pg)?;
    for (p, a) in map.rules() {
        tx.execute("INSERT INTO scope_map_rules (map, pattern, actions) VALUES ($1, $2, $3)", &[&map.name.as_str(), &p.to_string(), &actions_text(*a)])
            .map_err(pg)?;
    }
    Ok(())
}

fn insert_map(tx: &mut Transaction<'_>, map: &ScopeMap) -> Result<(), StoreError> {
    let n = tx
        .execute(
            "INSERT INTO scope_maps (name, description, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&map.name.as_str(), &map.description, &ts(map.created)],
        )
        .map_err(pg)?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("scope map {}", map.name)));
    }
    write_rules(tx, map)
}

fn write_passwords(tx: &mut Transaction<'_>, t: &Token) -> Result<(), StoreError> {
    tx.execute("DELETE FROM token_passwords WHERE token = $1", &[&t.name.as_str()]).map_err(pg)?;
    for (slot, p) in t.passwords() {
        tx.execute(
            "INSERT INTO token_passwords (token, slot, id, digest, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&t.name.as_str(), &slot.as_str(), &p.id, &&p.digest[..], &ts(p.created), &p.expiry.map(ts)],
        )
        .map_err(pg)?;
    }
    Ok(())
}

/// After an update touched no row: the record is gone, or it moved on since it was read.
fn missing_or_stale(tx: &mut Transaction<'_>, table: &str, name: &str, what: String) -> StoreError {
    match tx.query(&format!("SELECT 1 FROM {table} WHERE name = $1"), &[&name]) {
        Ok(rows) if rows.is_empty() => StoreError::NotFound(what),
        Ok(_) => StoreError::Stale(what),
        Err(e) => pg(e),
    }
}

fn delete_named(tx: &mut Transaction<'_>, table: &str, name: &str, what: String) -> Result<(), StoreError> {
    let n = tx.execute(&format!("DELETE FROM {table} WHERE name = $1"), &[&name]).map_err(pg)?;
    if n == 0 {
        return Err(StoreError::NotFound(what));
    }
    Ok(())
}

/// Policy-record reads inside one transaction.
struct Reader<'a, 'b>(&'a mut Transaction<'b>);

impl Reader<'_, '_> {
    /// Runs `sql` (restricted to `only` when set).
    fn rows(&mut self, sql: &str, only: Option<&str>) -> Result<Vec<Row>, StoreError> {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = only.iter().map(|n| n as &(dyn postgres::types::ToSql + Sync)).collect();
        self.0.query(sql, &params).map_err(pg)
    }
}

impl RecordReader for Reader<'_, '_> {
    fn maps(&mut self, only: Option<&str>) -> Result<Vec<ScopeMap>, StoreError> {
        let mut rules: BTreeMap<String, BTreeMap<RepoPattern, crate::access::ActionSet>> = BTreeMap::new();
        for r in self.rows(&select("SELECT map, pattern, actions FROM scope_map_rules", "map", only, "$1"), only)? {
            let (map, pattern, actions): (String, String, String) = (get(&r, 0)?, get(&r, 1)?, get(&r, 2)?);
            rules.entry(map).or_default().insert(RepoPattern::parse(&pattern).map_err(backend)?, actions_parse(&actions)?);
        }
        self.rows(&select("SELECT name, description, created_at, revision FROM scope_maps", "name", only, "$1"), only)?
            .iter()
            .map(|r| {
                let name: String = get(r, 0)?;
                let rs = rules.remove(&name).unwrap_or_default();
                let mut m = ScopeMap::new(MapName::parse(&name).map_err(backend)?, get(r, 1)?, from_ts(get(r, 2)?)?, rs);
                m.revision = revision(get(r, 3)?)?;
                Ok(m)
            })
            .collect()
    }

    fn tokens(&mut self, only: Option<&str>) -> Result<Vec<Token>, StoreError> {
        let mut passwords: BTreeMap<String, Vec<(Slot, Password)>> = BTreeMap::new();
        for r in self.rows(&select("SELECT token, slot, id, digest, created_at, expires_at FROM token_passwords", "token", only, "$1"), only)? {
            let slot: String = get(&r, 1)?;
            let slot = Slot::parse(&slot).ok_or_else(|| backend("bad slot in store"))?;
            let expiry: Option<i64> = get(&r, 5)?;
            let p = Password { id: get(&r, 2)?, digest: digest32(get(&r, 3)?)?, created: from_ts(get(&r, 4)?)?, expiry: expiry.map(from_ts).transpose()? };
            passwords.entry(get(&r, 0)?).or_default().push((slot, p));
        }
        self.rows(&select("SELECT name, scope_map, status, created_at, revision FROM tokens", "name", only, "$1"), only)?
            .iter()
            .map(|r| {
                let (name, map, status): (String, String, String) = (get(r, 0)?, get(r, 1)?, get(r, 2)?);
                let mut t = Token::new(
                    TokenName::parse(&name).map_err(backend)?,
                    MapName::parse(&map).map_err(backend)?,
                    Status::parse(&status).map_err(backend)?,
                    from_ts(get(r, 3)?)?,
                );
                for (slot, p) in passwords.remove(&name).unwrap_or_default() {
                    t.set_password(slot, Some(p));
                }
                t.revision = revision(get(r, 4)?)?;
                Ok(t)
            })
            .collect()
    }

    fn api_keys(&mut self, only: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let sql = select("SELECT name, id, digest, scope_map, status, created_at, expires_at, revision FROM api_keys", "name", only, "$1");
        self.rows(&sql, only)?
            .iter()
            .map(|r| {
                let (name, map, status): (String, String, String) = (get(r, 0)?, get(r, 3)?, get(r, 4)?);
                let expiry: Option<i64> = get(r, 6)?;
                Ok(ApiKey {
                    name: KeyName::parse(&name).map_err(backend)?,
                    id: get(r, 1)?,
                    digest: digest32(get(r, 2)?)?,
                    scope_map: MapName::parse(&map).map_err(backend)?,
                    status: Status::parse(&status).map_err(backend)?,
                    created: from_ts(get(r, 5)?)?,
                    expiry: expiry.map(from_ts).transpose()?,
                    revision: revision(get(r, 7)?)?,
                })
            })
            .collect()
    }

    fn attributes(&mut self, only: Option<&str>) -> Result<Vec<(RepoName, Attributes)>, StoreError> {
        let sql = select("SELECT name, read_enabled, write_enabled, delete_enabled, list_enabled FROM repositories", "name", only, "$1");
        self.rows(&sql, only)?
            .iter()
            .map(|r| {
                let name: String = get(r, 0)?;
                let a = Attributes { read_enabled: get(r, 1)?, write_enabled: get(r, 2)?, delete_enabled: get(r, 3)?, list_enabled: get(r, 4)? };
                Ok((RepoName::parse(&name).map_err(backend)?, a))
            })
            .collect()
    }

    fn anonymous(&mut self) -> Result<StoredAnonymous, StoreError> {
        match self.0.query("SELECT value FROM settings WHERE key = $1", &[&ANONYMOUS_KEY]).map_err(pg)?.first() {
            None => Ok(None),
            Some(r) => {
                let name = String::from_utf8(get::<Vec<u8>>(r, 0)?).map_err(backend)?;
                Ok(Some(if name.is_empty() { None } else { Some(MapName::parse(&name).map_err(backend)?) }))
            }
        }
    }
}

impl Store for PostgresStore {
    fn load(&self) -> Result<PolicyRecords, StoreError> {
        self.snapshot(|tx| {
            let epoch: i64 = get(&tx.query_one("SELECT value FROM epoch WHERE id = 1", &[]).map_err(pg)?, 0)?;
            read_all(&mut Reader(tx), revision(epoch)?)
        })
    }

    fn changes_since(&self, since: u64) -> Result<Option<PolicyChanges>, StoreError> {
        self.snapshot(|tx| {
            let row = tx.query_one("SELECT value, changes_from FROM epoch WHERE id = 1", &[]).map_err(pg)?;
            let (epoch, from) = (revision(get(&row, 0)?)?, revision(get(&row, 1)?)?);
            if !log_covers(since, from, epoch) {
                return Ok(None);
            }
            let changed = tx
                .query("SELECT DISTINCT kind, name FROM changes WHERE epoch > $1 ORDER BY kind, name", &[&rev(since)?])
                .map_err(pg)?
                .iter()
                .map(|r| Changed::from_columns(&get::<String>(r, 0)?, &get::<String>(r, 1)?))
                .collect::<Result<Vec<_>, _>>()?;
            read_changed(&mut Reader(tx), epoch, changed).map(Some)
        })
    }

    fn epoch(&self) -> Result<u64, StoreError> {
        self.with(|c| revision(get(&c.query_one("SELECT value FROM epoch WHERE id = 1", &[]).map_err(pg)?, 0)?))
    }

    fn create_scope_map(&self, map: &ScopeMap) -> Result<(), StoreError> {
        self.write(&[Changed::Map(map.name.clone())], |tx| insert_map(tx, map))
    }

    fn update_scope_map(&self, map: &ScopeMap) -> Result<(), StoreError> {
        self.write(&[Changed::Map(map.name.clone())], |tx| {
            let n = tx
                .execute(
                    "UPDATE scope_maps SET description = $2, revision = revision + 1 WHERE name = $1 AND revision = $3",
                    &[&map.name.as_str(), &map.description, &rev(map.revision)?],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(missing_or_stale(tx, "scope_maps", map.name.as_str(), format!("scope map {}", map.name)));
            }
            write_rules(tx, map)
        })
    }

    fn delete_scope_map(&self, name: &MapName) -> Result<(), StoreError> {
        self.write(&[Changed::Map(name.clone())], |tx| {
            for (table, what) in [("tokens", "token(s)"), ("api_keys", "API key(s)")] {
                let users: Vec<String> = tx
                    .query(&format!("SELECT name FROM {table} WHERE scope_map = $1 ORDER BY name LIMIT 5"), &[&name.as_str()])
                    .map_err(pg)?
                    .iter()
                    .map(|r| get(r, 0))
                    .collect::<Result<_, _>>()?;
                if !users.is_empty() {
                    return Err(StoreError::InUse(format!("scope map {name} is used by {what} {}; assign them another map first", users.join(", "))));
                }
            }
            delete_named(tx, "scope_maps", name.as_str(), format!("scope map {name}"))
        })
    }

    fn create_token(&self, token: &Token, own_map: Option<&ScopeMap>) -> Result<(), StoreError> {
        self.write(&token_changes(token, own_map), |tx| {
            if let Some(m) = own_map {
                insert_map(tx, m)?;
            }
            let n = tx
                .execute(
                    "INSERT INTO tokens (name, scope_map, status, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                    &[&token.name.as_str(), &token.scope_map.as_str(), &token.status.as_str(), &ts(token.created)],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("token {}", token.name)));
            }
            write_passwords(tx, token)
        })
    }

    fn update_token(&self, token: &Token) -> Result<(), StoreError> {
        self.write(&[Changed::Token(token.name.clone())], |tx| {
            let n = tx
                .execute(
                    "UPDATE tokens SET scope_map = $2, status = $3, revision = revision + 1 WHERE name = $1 AND revision = $4",
                    &[&token.name.as_str(), &token.scope_map.as_str(), &token.status.as_str(), &rev(token.revision)?],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(missing_or_stale(tx, "tokens", token.name.as_str(), format!("token {}", token.name)));
            }
            write_passwords(tx, token)
        })
    }

    fn delete_token(&self, name: &TokenName) -> Result<(), StoreError> {
        self.write(&[Changed::Token(name.clone())], |tx| delete_named(tx, "tokens", name.as_str(), format!("token {name}")))
    }

    fn create_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.write(&[Changed::ApiKey(k.name.clone())], |tx| {
            let n = tx
                .execute(
                    "INSERT INTO api_keys (name, id, digest, scope_map, status, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (name) DO NOTHING",
                    &[&k.name.as_str(), &k.id, &&k.digest[..], &k.scope_map.as_str(), &k.status.as_str(), &ts(k.created), &k.expiry.map(ts)],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("API key {}", k.name)));
            }
            Ok(())
        })
    }

    fn update_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.write(&[Changed::ApiKey(k.name.clone())], |tx| {
            let n = tx
                .execute(
                    "UPDATE api_keys SET scope_map = $2, status = $3, expires_at = $4, revision = revision + 1 WHERE name = $1 AND revision = $5",
                    &[&k.name.as_str(), &k.scope_map.as_str(), &k.status.as_str(), &k.expiry.map(ts), &rev(k.revision)?],
                )
                .map_err(pg)?;
            if n == 0 {
                return Err(missing_or_stale(tx, "api_keys", k.name.as_str(), format!("API key {}", k.name)));
            }
            Ok(())
        })
    }

    fn delete_api_key(&self, name: &KeyName) -> Result<(), StoreError> {
        self.write(&[Changed::ApiKey(name.clone())], |tx| delete_named(tx, "api_keys", name.as_str(), format!("API key {name}")))
    }

    fn set_attributes(&self, repo: &RepoName, a: &Attributes) -> Result<(), StoreError> {
        self.write(&[Changed::Repository(repo.clone())], |tx| {
            if a.is_default() {
                tx.execute("DELETE FROM repositories WHERE name = $1", &[&repo.as_str()]).map_err(pg)?;
            } else {
                tx.execute(
                    "INSERT INTO repositories (name, read_enabled, write_enabled, delete_enabled, list_enabled, updated_at)
                     VALUES ($1, $2, $3, $4, $5, extract(epoch from now())::bigint)
                     ON CONFLICT (name) DO UPDATE SET read_enabled = $2, write_enabled = $3, delete_enabled = $4,
                         list_enabled = $5, updated_at = extract(epoch from now())::bigint",
                    &[&repo.as_str(), &a.read_enabled, &a.write_enabled, &a.delete_enabled, &a.list_enabled],
                )
                .map_err(pg)?;
            }
            Ok(())
        })
    }

    fn set_anonymous(&self, map: Option<&MapName>) -> Result<(), StoreError> {
        let v = map.map(MapName::as_str).unwrap_or("").as_bytes().to_vec();
        self.write(&[Changed::Anonymous], |tx| {
            tx.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2", &[&ANONYMOUS_KEY, &v])
                .map_err(pg)?;
            Ok(())
        })
    }

    fn begin_untag(&self, j: &UntagJournal) -> Result<i64, StoreError> {
        let tags: Vec<&str> = j.keep_tags.iter().map(Tag::as_str).collect();
        self.with(|c| {
            let r = c
                .query_one(
                    "INSERT INTO untag_journal (repo, digest, media_type, manifest, keep_tags, created_at)
                     VALUES ($1, $2, $3, $4, $5, extract(epoch from now())::bigint) RETURNING id",
                    &[&j.repo.as_str(), &j.digest.as_str(), &j.media_type, &j.manifest, &tags.join(" ")],
                )
                .map_err(pg)?;
            get(&r, 0)
        })
    }

    fn finish_untag(&self, id: i64) -> Result<(), StoreError> {
        self.with(|c| c.execute("DELETE FROM untag_journal WHERE id = $1", &[&id]).map(|_| ()).map_err(pg))
    }

    fn pending_untags(&self) -> Result<Vec<UntagJournal>, StoreError> {
        self.with(|c| {
            c.query("SELECT id, repo, digest, media_type, manifest, keep_tags FROM untag_journal ORDER BY id", &[])
                .map_err(pg)?
                .iter()
                .map(|r| {
                    let (repo, digest, tags): (String, String, String) = (get(r, 1)?, get(r, 2)?, get(r, 5)?);
                    Ok(UntagJournal {
                        id: get(r, 0)?,
                        repo: RepoName::parse(&repo).map_err(backend)?,
                        digest: Digest::parse(&digest).map_err(backend)?,
                        media_type: get(r, 3)?,
                        manifest: get(r, 4)?,
                        keep_tags: tags.split(' ').filter(|t| !t.is_empty()).map(Tag::parse).collect::<Result<_, _>>().map_err(backend)?,
                    })
                })
                .collect()
        })
    }

    fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            c.query("SELECT pkcs8, created_at FROM signing_keys ORDER BY id", &[])
                .map_err(pg)?
                .iter()
                .map(|r| Ok(KeyRecord { pkcs8: get(r, 0)?, created: from_ts(get(r, 1)?)? }))
                .collect()
        })
    }

    fn add_signing_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.write(&[], |tx| {
            tx.execute("INSERT INTO signing_keys (pkcs8, created_at) VALUES ($1, $2)", &[&key.pkcs8, &ts(key.created)]).map_err(pg)?;
            Ok(())
        })
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| c.query("SELECT value FROM settings WHERE key = $1", &[&key]).map_err(pg)?.first().map(|r| get(r, 0)).transpose())
    }

    fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(&[], |tx| {
            tx.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2", &[&key, &value]).map_err(pg)?;
            Ok(())
        })
    }
}
