//! The embedded store: one SQLite file in the data directory (WAL mode, created 0600),
//! with versioned migrations applied on open. Each write is one transaction that also
//! bumps the epoch.
//!
//! Only this file speaks SQL for SQLite; it maps rows to policy types and back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    actions_parse, actions_text, backend, from_ts, log_covers, read_all, read_changed, select, ts, Changed, KeyRecord, PolicyChanges, PolicyRecords,
    RecordReader, Store, StoreError, StoredAnonymous, UntagJournal, CHANGE_LOG_SPAN, token_changes,
};
use crate::access::ActionSet;
use crate::oci::{Digest, RepoName, Tag};
use crate::policy::{ApiKey, Attributes, KeyName, MapName, Password, RepoPattern, ScopeMap, Slot, Status, Token, TokenName};
use super::{digest32, revision as stored_revision};

/// Migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE scope_maps (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at INTEGER NOT NULL
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
    created_at INTEGER NOT NULL
);
CREATE TABLE token_passwords (
    token TEXT NOT NULL REFERENCES tokens(name) ON DELETE CASCADE,
    slot TEXT NOT NULL CHECK (slot IN ('password1', 'password2')),
    id TEXT NOT NULL,
    digest BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (token, slot)
);
CREATE TABLE signing_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pkcs8 BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO settings (key, value) VALUES ('epoch', CAST(0 AS BLOB));
"#, r#"
CREATE TABLE repositories (
    name TEXT PRIMARY KEY,
    read_enabled INTEGER NOT NULL,
    write_enabled INTEGER NOT NULL,
    delete_enabled INTEGER NOT NULL,
    list_enabled INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE untag_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    manifest BLOB NOT NULL,
    keep_tags TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#, r#"
CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    scope_map TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
"#, r#"
ALTER TABLE scope_maps ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tokens ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE api_keys ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
"#, r#"
CREATE TABLE changes (epoch INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL);
CREATE INDEX changes_by_epoch ON changes (epoch);
INSERT INTO settings (key, value) SELECT 'changes_from', value FROM settings WHERE key = 'epoch';
"#];

/// Settings key of the anonymous scope map ("" = explicitly none).
const ANONYMOUS_KEY: &str = "anonymous_scope_map";
/// Settings key of the epoch the change log starts at (writes before it are not logged).
const CHANGES_FROM_KEY: &str = "changes_from";

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/scopegate.db` and migrates it.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| backend(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join("scopegate.db");
        let fresh = !path.exists();
        let conn = Connection::open(&path).map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
        if fresh {
            restrict_permissions(&path)?;
        }
        // name the file: "unable to open database file" alone does not say which, or why
        Self::init(conn).map_err(|e| backend(format!("{}: {e} (the data directory must be writable)", path.display())))
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(sqlite_err)?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sqlite_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sqlite_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sqlite_err)?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite_err)?;
        if version > MIGRATIONS.len() {
            return Err(backend(format!("database schema version {version} is newer than this scopegate ({})", MIGRATIONS.len())));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(sqlite_err)?;
            tx.execute_batch(sql).map_err(sqlite_err)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(sqlite_err)?;
            tx.commit().map_err(sqlite_err)?;
        }
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    /// A write: one transaction that also bumps the epoch and logs the records it touched.
    fn with_tx<T>(&self, changed: &[Changed], f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| backend("store lock poisoned"))?;
        let tx = conn.transaction().map_err(sqlite_err)?;
        let out = f(&tx)?;
        tx.execute("UPDATE settings SET value = CAST(CAST(value AS INTEGER) + 1 AS BLOB) WHERE key = 'epoch'", []).map_err(sqlite_err)?;
        let epoch = rev(read_epoch(&tx)?)?;
        for c in changed {
            let (kind, name) = c.columns();
            tx.execute("INSERT INTO changes (epoch, kind, name) VALUES (?1, ?2, ?3)", params![epoch, kind, name]).map_err(sqlite_err)?;
        }
        tx.execute("DELETE FROM changes WHERE epoch <= ?1", [epoch - rev(CHANGE_LOG_SPAN)?]).map_err(sqlite_err)?;
        tx.commit().map_err(sqlite_err)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.conn.lock().map_err(|_| backend("store lock poisoned"))?;
        f(&conn)
    }

    /// Several reads that must agree (one connection, one transaction).
    fn snapshot<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| backend("store lock poisoned"))?;
        let tx = conn.transaction().map_err(sqlite_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(sqlite_err)?;
        Ok(out)
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(backend)
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn write_rules(tx: &Transaction<'_>, map: &ScopeMap) -> Result<(), StoreError> {
    tx.execute("DELETE FROM scope_map_rules WHERE map = ?1", [map.name.as_str()]).map_err(sqlite_err)?;
    for (p, a) in map.rules() {
        tx.execute("INSERT INTO scope_map_rules (map, pattern, actions) VALUES (?1, ?2, ?3)", params![map.name.as_str(), p.to_string(), actions_text(*a)])
            .map_err(sqlite_err)?;
    }
    Ok(())
}

fn insert_map(tx: &Transaction<'_>, map: &ScopeMap) -> Result<(), StoreError> {
    let n = tx
        .execute(
            "INSERT INTO scope_maps (name, description, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![map.name.as_str(), map.description, ts(map.created)],
        )
        .map_err(sqlite_err)?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("scope map {}", map.name)));
    }
    write_rules(tx, map)
}

fn write_passwords(tx: &Transaction<'_>, t: &Token) -> Result<(), StoreError> {
    tx.execute("DELETE FROM token_passwords WHERE token = ?1", [t.name.as_str()]).map_err(sqlite_err)?;
    for (slot, p) in t.passwords() {
        tx.execute(
            "INSERT INTO token_passwords (token, slot, id, digest, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.name.as_str(), slot.as_str(), p.id, &p.digest[..], ts(p.created), p.expiry.map(ts)],
        )
        .map_err(sqlite_err)?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&self) -> Result<PolicyRecords, StoreError> {
        self.snapshot(|c| read_all(&mut Reader(c), read_epoch(c)?))
    }

    fn changes_since(&self, since: u64) -> Result<Option<PolicyChanges>, StoreError> {
        self.snapshot(|c| {
            let epoch = read_epoch(c)?;
            if !log_covers(since, read_u64_setting(c, CHANGES_FROM_KEY)?, epoch) {
                return Ok(None);
            }
            let mut st = c.prepare_cached("SELECT DISTINCT kind, name FROM changes WHERE epoch > ?1 ORDER BY kind, name").map_err(sqlite_err)?;
            let rows = st.query_map([rev(since)?], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(sqlite_err)?;
            let changed = rows.map(|r| r.map_err(sqlite_err).and_then(|(k, n)| Changed::from_columns(&k, &n))).collect::<Result<Vec<_>, _>>()?;
            read_changed(&mut Reader(c), epoch, changed).map(Some)
        })
    }

    fn epoch(&self) -> Result<u64, StoreError> {
        self.read(read_epoch)
    }

    fn create_scope_map(&self, map: &ScopeMap) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Map(map.name.clone())], |tx| insert_map(tx, map))
    }

    fn update_scope_map(&self, map: &ScopeMap) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Map(map.name.clone())], |tx| {
            let n = tx
                .execute(
                    "UPDATE scope_maps SET description = ?2, revision = revision + 1 WHERE name = ?1 AND revision = ?3",
                    params![map.name.as_str(), map.description, rev(map.revision)?],
                )
                .map_err(sqlite_err)?;
            if n == 0 {
                return Err(missing_or_stale(tx, "scope_maps", map.name.as_str(), format!("scope map {}", map.name)));
            }
            write_rules(tx, map)
        })
    }

    fn delete_scope_map(&self, name: &MapName) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Map(name.clone())], |tx| {
            for (table, what) in [("tokens", "token(s)"), ("api_keys", "API key(s)")] {
                let users: Vec<String> = {
                    let mut st = tx.prepare(&format!("SELECT name FROM {table} WHERE scope_map = ?1 ORDER BY name LIMIT 5")).map_err(sqlite_err)?;
                    let rows = st.query_map([name.as_str()], |r| r.get(0)).map_err(sqlite_err)?;
                    rows.collect::<Result<_, _>>().map_err(sqlite_err)?
                };
                if !users.is_empty() {
                    return Err(StoreError::InUse(format!("scope map {name} is used by {what} {}; assign them another map first", users.join(", "))));
                }
            }
            let n = tx.execute("DELETE FROM scope_maps WHERE name = ?1", [name.as_str()]).map_err(sqlite_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("scope map {name}")));
            }
            Ok(())
        })
    }

    fn create_token(&self, token: &Token, own_map: Option<&ScopeMap>) -> Result<(), StoreError> {
        self.with_tx(&token_changes(token, own_map), |tx| {
            if let Some(m) = own_map {
                insert_map(tx, m)?;
            }
            let n = tx
                .execute(
                    "INSERT INTO tokens (name, scope_map, status, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
                    params![token.name.as_str(), token.scope_map.as_str(), token.status.as_str(), ts(token.created)],
                )
                .map_err(sqlite_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("token {}", token.name)));
            }
            write_passwords(tx, token)
        })
    }

    fn update_token(&self, token: &Token) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Token(token.name.clone())], |tx| {
            let n = tx
                .execute(
                    "UPDATE tokens SET scope_map = ?2, status = ?3, revision = revision + 1 WHERE name = ?1 AND revision = ?4",
                    params![token.name.as_str(), token.scope_map.as_str(), token.status.as_str(), rev(token.revision)?],
                )
                .map_err(sqlite_err)?;
            if n == 0 {
                return Err(missing_or_stale(tx, "tokens", token.name.as_str(), format!("token {}", token.name)));
            }
            write_passwords(tx, token)
        })
    }

    fn delete_token(&self, name: &TokenName) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Token(name.clone())], |tx| {
            let n = tx.execute("DELETE FROM tokens WHERE name = ?1", [name.as_str()]).map_err(sqlite_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("token {name}")));
            }
            Ok(())
        })
    }

    fn create_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.with_tx(&[Changed::ApiKey(k.name.clone())], |tx| {
            let n = tx
                .execute(
                    "INSERT INTO api_keys (name, id, digest, scope_map, status, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (name) DO NOTHING",
                    params![k.name.as_str(), k.id, &k.digest[..], k.scope_map.as_str(), k.status.as_str(), ts(k.created), k.expiry.map(ts)],
                )
                .map_err(sqlite_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("API key {}", k.name)));
            }
            Ok(())
        })
    }

    fn update_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.with_tx(&[Changed::ApiKey(k.name.clone())], |tx| {
            let n = tx
                .execute(
                    "UPDATE api_keys SET scope_map = ?2, status = ?3, expires_at = ?4, revision = revision + 1 WHERE name = ?1 AND revision = ?5",
                    params![k.name.as_str(), k.scope_map.as_str(), k.status.as_str(), k.expiry.map(ts), rev(k.revision)?],
                )
                .map_err(sqlite_err)?;
            if n == 0 {
                return Err(missing_or_stale(tx, "api_keys", k.name.as_str(), format!("API key {}", k.name)));
            }
            Ok(())
        })
    }

    fn delete_api_key(&self, name: &KeyName) -> Result<(), StoreError> {
        self.with_tx(&[Changed::ApiKey(name.clone())], |tx| {
            let n = tx.execute("DELETE FROM api_keys WHERE name = ?1", [name.as_str()]).map_err(sqlite_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("API key {name}")));
            }
            Ok(())
        })
    }

    fn set_attributes(&self, repo: &RepoName, a: &Attributes) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Repository(repo.clone())], |tx| {
            if a.is_default() {
                tx.execute("DELETE FROM repositories WHERE name = ?1", [repo.as_str()]).map_err(sqlite_err)?;
            } else {
                tx.execute(
                    "INSERT INTO repositories (name, read_enabled, write_enabled, delete_enabled, list_enabled, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, strftime('%s','now'))
                     ON CONFLICT (name) DO UPDATE SET read_enabled = ?2, write_enabled = ?3, delete_enabled = ?4,
                         list_enabled = ?5, updated_at = strftime('%s','now')",
                    params![repo.as_str(), a.read_enabled, a.write_enabled, a.delete_enabled, a.list_enabled],
                )
                .map_err(sqlite_err)?;
            }
            Ok(())
        })
    }

    fn set_anonymous(&self, map: Option<&MapName>) -> Result<(), StoreError> {
        self.with_tx(&[Changed::Anonymous], |tx| {
            let v = map.map(MapName::as_str).unwrap_or("");
            tx.execute("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2", params![ANONYMOUS_KEY, v.as_bytes()])
                .map_err(sqlite_err)?;
            Ok(())
        })
    }

    fn begin_untag(&self, j: &UntagJournal) -> Result<i64, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| backend("store lock poisoned"))?;
        let tx = conn.transaction().map_err(sqlite_err)?;
        let tags: Vec<&str> = j.keep_tags.iter().map(Tag::as_str).collect();
        tx.execute(
            "INSERT INTO untag_journal (repo, digest, media_type, manifest, keep_tags, created_at) VALUES (?1, ?2, ?3, ?4, ?5, strftime('%s','now'))",
            params![j.repo.as_str(), j.digest.as_str(), j.media_type, j.manifest, tags.join(" ")],
        )
        .map_err(sqlite_err)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(sqlite_err)?;
        Ok(id)
    }

    fn finish_untag(&self, id: i64) -> Result<(), StoreError> {
        self.read(|c| c.execute("DELETE FROM untag_journal WHERE id = ?1", [id]).map(|_| ()).map_err(sqlite_err))
    }

    fn pending_untags(&self) -> Result<Vec<UntagJournal>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, repo, digest, media_type, manifest, keep_tags FROM untag_journal ORDER BY id").map_err(sqlite_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, Vec<u8>>(4)?, r.get::<_, String>(5)?))
                })
                .map_err(sqlite_err)?;
            rows.map(|row| {
                let (id, repo, digest, media_type, manifest, tags) = row.map_err(sqlite_err)?;
                Ok(UntagJournal {
                    id,
                    repo: RepoName::parse(&repo).map_err(backend)?,
                    digest: Digest::parse(&digest).map_err(backend)?,
                    media_type,
                    manifest,
                    keep_tags: tags.split(' ').filter(|t| !t.is_empty()).map(Tag::parse).collect::<Result<_, _>>().map_err(backend)?,
                })
            })
            .collect()
        })
    }

    fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT pkcs8, created_at FROM signing_keys ORDER BY id").map_err(sqlite_err)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))).map_err(sqlite_err)?;
            rows.map(|r| {
                let (pkcs8, created) = r.map_err(sqlite_err)?;
                Ok(KeyRecord { pkcs8, created: from_ts(created)? })
            })
            .collect()
        })
    }

    fn add_signing_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.with_tx(&[], |tx| {
            tx.execute("INSERT INTO signing_keys (pkcs8, created_at) VALUES (?1, ?2)", params![key.pkcs8, ts(key.created)]).map_err(sqlite_err)?;
            Ok(())
        })
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(sqlite_err))
    }

    fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with_tx(&[], |tx| {
            tx.execute("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2", params![key, value])
                .map_err(sqlite_err)?;
            Ok(())
        })
    }
}

/// Policy-record reads on one connection.
struct Reader<'a>(&'a Connection);

/// Runs `sql` (restricted to `only` when set) and maps each row.
fn rows<T>(c: &Connection, sql: &str, only: Option<&str>, f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Result<Vec<T>, StoreError> {
    let mut st = c.prepare_cached(sql).map_err(sqlite_err)?;
    let out = st.query_map(rusqlite::params_from_iter(only), f).map_err(sqlite_err)?.collect::<Result<Vec<T>, _>>().map_err(sqlite_err);
    out
}

impl RecordReader for Reader<'_> {
    fn maps(&mut self, only: Option<&str>) -> Result<Vec<ScopeMap>, StoreError> {
        let c = self.0;
        let mut rules: BTreeMap<String, BTreeMap<RepoPattern, ActionSet>> = BTreeMap::new();
        let sql = select("SELECT map, pattern, actions FROM scope_map_rules", "map", only, "?1");
        for (map, pattern, actions) in rows(c, &sql, only, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))? {
            let p = RepoPattern::parse(&pattern).map_err(backend)?;
            rules.entry(map).or_default().insert(p, actions_parse(&actions)?);
        }
        let sql = select("SELECT name, description, created_at, revision FROM scope_maps", "name", only, "?1");
        let found = rows(c, &sql, only, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))?;
        found
            .into_iter()
            .map(|(name, description, created, revision)| {
                let r = rules.remove(&name).unwrap_or_default();
                let mut m = ScopeMap::new(MapName::parse(&name).map_err(backend)?, description, from_ts(created)?, r);
                m.revision = stored_revision(revision)?;
                Ok(m)
            })
            .collect()
    }

    fn tokens(&mut self, only: Option<&str>) -> Result<Vec<Token>, StoreError> {
        let c = self.0;
        let mut passwords: BTreeMap<String, Vec<(Slot, Password)>> = BTreeMap::new();
        let sql = select("SELECT token, slot, id, digest, created_at, expires_at FROM token_passwords", "token", only, "?1");
        let found = rows(c, &sql, only, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?;
        for (token, slot, id, digest, created, expires) in found {
            let slot = Slot::parse(&slot).ok_or_else(|| backend("bad slot in store"))?;
            let expiry = expires.map(from_ts).transpose()?;
            passwords.entry(token).or_default().push((slot, Password { id, digest: digest32(digest)?, created: from_ts(created)?, expiry }));
        }
        let sql = select("SELECT name, scope_map, status, created_at, revision FROM tokens", "name", only, "?1");
        let found = rows(c, &sql, only, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
        })?;
        found
            .into_iter()
            .map(|(name, map, status, created, revision)| {
                let mut t = Token::new(
                    TokenName::parse(&name).map_err(backend)?,
                    MapName::parse(&map).map_err(backend)?,
                    Status::parse(&status).map_err(backend)?,
                    from_ts(created)?,
                );
                for (slot, p) in passwords.remove(&name).unwrap_or_default() {
                    t.set_password(slot, Some(p));
                }
                t.revision = stored_revision(revision)?;
                Ok(t)
            })
            .collect()
    }

    fn api_keys(&mut self, only: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let sql = select("SELECT name, id, digest, scope_map, status, created_at, expires_at, revision FROM api_keys", "name", only, "?1");
        let found = rows(self.0, &sql, only, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        found
            .into_iter()
            .map(|(name, id, digest, map, status, created, expires, revision)| {
                Ok(ApiKey {
                    name: KeyName::parse(&name).map_err(backend)?,
                    id,
                    digest: digest32(digest)?,
                    scope_map: MapName::parse(&map).map_err(backend)?,
                    status: Status::parse(&status).map_err(backend)?,
                    created: from_ts(created)?,
                    expiry: expires.map(from_ts).transpose()?,
                    revision: stored_revision(revision)?,
                })
            })
            .collect()
    }

    fn attributes(&mut self, only: Option<&str>) -> Result<Vec<(RepoName, Attributes)>, StoreError> {
        let sql = select("SELECT name, read_enabled, write_enabled, delete_enabled, list_enabled FROM repositories", "name", only, "?1");
        let found = rows(self.0, &sql, only, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, bool>(2)?, r.get::<_, bool>(3)?, r.get::<_, bool>(4)?))
        })?;
        found
            .into_iter()
            .map(|(name, read_enabled, write_enabled, delete_enabled, list_enabled)| {
                Ok((RepoName::parse(&name).map_err(backend)?, Attributes { read_enabled, write_enabled, delete_enabled, list_enabled }))
            })
            .collect()
    }

    fn anonymous(&mut self) -> Result<StoredAnonymous, StoreError> {
        self.0
            .query_row("SELECT value FROM settings WHERE key = ?1", [ANONYMOUS_KEY], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .map_err(sqlite_err)?
            .map(|v| {
                let name = String::from_utf8(v).map_err(backend)?;
                if name.is_empty() { Ok(None) } else { MapName::parse(&name).map(Some).map_err(backend) }
            })
            .transpose()
    }
}

/// A SQLite error: a disk that is full, read-only or failing is the store being
/// unavailable (as a lost database server is), anything else a failure of the statement.
fn sqlite_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, DiskFull | ReadOnly | SystemIoFailure | CannotOpen) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => backend(e),
    }
}

fn rev(r: u64) -> Result<i64, StoreError> {
    i64::try_from(r).map_err(backend)
}

/// After an update touched no row: the record is gone, or it moved on since it was read.
fn missing_or_stale(tx: &Transaction<'_>, table: &str, name: &str, what: String) -> StoreError {
    let exists = tx
        .query_row(&format!("SELECT 1 FROM {table} WHERE name = ?1"), [name], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .unwrap_or(false);
    if exists {
        StoreError::Stale(what)
    } else {
        StoreError::NotFound(what)
    }
}

fn read_epoch(c: &Connection) -> Result<u64, StoreError> {
    read_u64_setting(c, "epoch")
}

fn read_u64_setting(c: &Connection, key: &str) -> Result<u64, StoreError> {
    let v: i64 = c.query_row("SELECT CAST(value AS INTEGER) FROM settings WHERE key = ?1", [key], |r| r.get(0)).map_err(sqlite_err)?;
    u64::try_from(v).map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Action;
    use crate::oci::RepoName;
    use time::OffsetDateTime;

    fn map(name: &str) -> ScopeMap {
        let mut m = ScopeMap::new(MapName::parse(name).unwrap(), "d".into(), OffsetDateTime::UNIX_EPOCH, BTreeMap::new());
        m.add(RepoPattern::parse("samples/*").unwrap(), ActionSet::of(&[Action::ContentRead, Action::MetadataRead]));
        m
    }

    #[test]
    fn records_survive_a_reopen_and_bump_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            assert_eq!(s.epoch().unwrap(), 0);
            s.create_scope_map(&map("m1")).unwrap();
            let mut t = Token::new(TokenName::parse("t1").unwrap(), MapName::parse("m1").unwrap(), Status::Enabled, OffsetDateTime::UNIX_EPOCH);
            t.set_password(Slot::Password2, Some(Password { id: "x".into(), digest: [7; 32], created: OffsetDateTime::UNIX_EPOCH, expiry: Some(OffsetDateTime::UNIX_EPOCH) }));
            s.create_token(&t, None).unwrap();
            assert_eq!(s.epoch().unwrap(), 2);
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let r = s.load().unwrap();
        assert_eq!(r.epoch, 2);
        assert_eq!(r.maps.len(), 1);
        assert_eq!(r.maps[0].holds(&RepoName::parse("samples/x").unwrap()), ActionSet::of(&[Action::ContentRead, Action::MetadataRead]));
        let t = &r.tokens[0];
        assert!(t.password(Slot::Password1).is_none());
        assert_eq!(t.password(Slot::Password2).unwrap().digest, [7; 32]);
    }

    #[test]
    fn a_write_from_a_stale_copy_is_refused_not_lost() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_scope_map(&map("m1")).unwrap();
        let loaded = s.load().unwrap().maps.remove(0);
        assert_eq!(loaded.revision, 1);
        // two writers read revision 1; the first one's change lands, the second is refused
        let (mut a, mut b) = (loaded.clone(), loaded);
        a.description = "from A".into();
        b.description = "from B".into();
        s.update_scope_map(&a).unwrap();
        assert!(matches!(s.update_scope_map(&b), Err(StoreError::Stale(_))));
        let now = s.load().unwrap().maps.remove(0);
        assert_eq!((now.description.as_str(), now.revision), ("from A", 2));
        let mut gone = now.clone();
        gone.name = MapName::parse("nope").unwrap();
        assert!(matches!(s.update_scope_map(&gone), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn integrity_rules_are_enforced() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_scope_map(&map("m1")).unwrap();
        assert!(matches!(s.create_scope_map(&map("m1")), Err(StoreError::Conflict(_))));
        let t = Token::new(TokenName::parse("t1").unwrap(), MapName::parse("m1").unwrap(), Status::Enabled, OffsetDateTime::UNIX_EPOCH);
        s.create_token(&t, None).unwrap();
        assert!(matches!(s.delete_scope_map(&MapName::parse("m1").unwrap()), Err(StoreError::InUse(m)) if m.contains("t1")));
        // a failed transaction changes nothing (the token's own map is not left behind)
        assert!(matches!(s.create_token(&t, Some(&map("t1-scope-map"))), Err(StoreError::Conflict(_))));
        assert_eq!(s.load().unwrap().maps.len(), 1);
        s.delete_token(&t.name).unwrap();
        s.delete_scope_map(&MapName::parse("m1").unwrap()).unwrap();
        assert!(matches!(s.delete_token(&t.name), Err(StoreError::NotFound(_))));
    }

    fn full(s: &SqliteStore) -> crate::policy::Policy {
        let r = s.load().unwrap();
        crate::policy::Policy::new(r.epoch, r.maps, r.tokens, r.anonymous.flatten()).with_api_keys(r.api_keys).with_attributes(r.attributes)
    }

    fn key(name: &str, digest: u8) -> ApiKey {
        ApiKey {
            name: KeyName::parse(name).unwrap(),
            id: format!("id-{name}"),
            digest: [digest; 32],
            scope_map: MapName::parse("m1").unwrap(),
            status: Status::Enabled,
            created: OffsetDateTime::UNIX_EPOCH,
            expiry: None,
            revision: 0,
        }
    }

    #[test]
    fn a_patched_snapshot_equals_a_full_load_after_every_kind_of_write() {
        let s = SqliteStore::in_memory().unwrap();
        let mut p = full(&s);
        let token = |status| Token::new(TokenName::parse("t1").unwrap(), MapName::parse("m1").unwrap(), status, OffsetDateTime::UNIX_EPOCH);
        let repo = RepoName::parse("samples/app").unwrap();
        let locked = Attributes { write_enabled: false, ..Attributes::default() };
        type Write = Box<dyn Fn(&SqliteStore)>;
        let writes: Vec<(&str, Write)> = vec![
            ("create map", Box::new(|s| s.create_scope_map(&map("m1")).unwrap())),
            ("create token with its own map", Box::new(move |s| s.create_token(&token(Status::Enabled), Some(&map("t1-scope-map"))).unwrap())),
            ("update token", Box::new(move |s| {
                let mut t = token(Status::Disabled);
                t.revision = 1;
                s.update_token(&t).unwrap();
            })),
            ("create API key", Box::new(|s| s.create_api_key(&key("k1", 1)).unwrap())),
            ("update API key", Box::new(|s| s.update_api_key(&ApiKey { status: Status::Disabled, revision: 1, ..key("k1", 1) }).unwrap())),
            ("delete API key", Box::new(|s| s.delete_api_key(&KeyName::parse("k1").unwrap()).unwrap())),
            ("new API key with the old digest", Box::new(|s| s.create_api_key(&key("k2", 1)).unwrap())),
            ("lock a repository", Box::new(move |s| s.set_attributes(&repo, &locked).unwrap())),
            ("unlock it", Box::new(|s| s.set_attributes(&RepoName::parse("samples/app").unwrap(), &Attributes::default()).unwrap())),
            ("anonymous on", Box::new(|s| s.set_anonymous(Some(&MapName::parse("m1").unwrap())).unwrap())),
            ("anonymous off", Box::new(|s| s.set_anonymous(None).unwrap())),
            ("edit map rules", Box::new(|s| {
                let mut m = map("m1");
                m.revision = 1;
                m.add(RepoPattern::parse("other").unwrap(), ActionSet::of(&[Action::ContentWrite]));
                s.update_scope_map(&m).unwrap();
            })),
            ("setting only", Box::new(|s| s.set_setting("x", b"y").unwrap())),
            ("delete token", Box::new(|s| s.delete_token(&TokenName::parse("t1").unwrap()).unwrap())),
            ("delete its map", Box::new(|s| s.delete_scope_map(&MapName::parse("t1-scope-map").unwrap()).unwrap())),
        ];
        for (what, write) in writes {
            write(&s);
            let changes = s.changes_since(p.epoch).unwrap().unwrap_or_else(|| panic!("{what}: the change log must cover one write"));
            p = p.patched(changes, None);
            assert_eq!(p, full(&s), "after {what}");
        }
        // several writes at once come as one set of changes, each record once
        let since = p.epoch;
        for _ in 0..3 {
            s.set_attributes(&RepoName::parse("samples/app").unwrap(), &Attributes { read_enabled: false, ..Attributes::default() }).unwrap();
            s.set_attributes(&RepoName::parse("samples/app").unwrap(), &Attributes::default()).unwrap();
        }
        let c = s.changes_since(since).unwrap().unwrap();
        assert_eq!((c.epoch, c.attributes.len(), c.maps.len() + c.tokens.len() + c.api_keys.len()), (since + 6, 1, 0));
        assert_eq!(p.patched(c, None), full(&s));
    }

    #[test]
    fn a_reader_behind_the_change_log_is_told_to_load_everything() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_scope_map(&map("m1")).unwrap();
        let start = s.epoch().unwrap();
        for i in 0..CHANGE_LOG_SPAN {
            let a = Attributes { read_enabled: i % 2 == 0, ..Attributes::default() };
            s.set_attributes(&RepoName::parse("samples/app").unwrap(), &a).unwrap();
        }
        assert!(s.changes_since(start).unwrap().is_some(), "exactly the span is still covered");
        s.set_attributes(&RepoName::parse("samples/app").unwrap(), &Attributes::default()).unwrap();
        assert!(s.changes_since(start).unwrap().is_none(), "one write more and it is not");
        // the log is pruned as it goes
        let rows: i64 = s.read(|c| c.query_row("SELECT COUNT(*) FROM changes", [], |r| r.get(0)).map_err(sqlite_err)).unwrap();
        assert_eq!(u64::try_from(rows).unwrap(), CHANGE_LOG_SPAN);
        // an epoch the store has not reached (a database restored from an older backup)
        assert!(s.changes_since(s.epoch().unwrap() + 1).unwrap().is_none());
    }

    #[test]
    fn writes_before_the_change_log_existed_are_never_patched_over() {
        // a database created before the change log: its log starts at the epoch it had then
        assert!(!log_covers(4, 5, 9));
        assert!(log_covers(5, 5, 9));
        assert!(log_covers(9, 5, 9));
        assert!(!log_covers(10, 5, 9));
    }
}
