//! Persistent state: scope maps, tokens (password digests only), signing keys and a few
//! settings, behind the [`Store`] trait. The policy snapshot is built from what `load`
//! returns; every write bumps an epoch, so a reader can tell that something changed, and
//! names the records it touched in a change log written in the same transaction, so a
//! reader that is a few epochs behind re-reads only those records (`changes_since`).
//!
//! The store keeps records and enforces integrity (a map in use cannot be deleted, names
//! are unique); it never decides access and never sees a secret value. Calls are blocking;
//! async callers run them on the blocking pool.

pub mod postgres;
pub mod sqlite;

use time::OffsetDateTime;

use crate::oci::{Digest, RepoName, Tag};
use crate::policy::{ApiKey, Attributes, KeyName, MapName, ScopeMap, Token, TokenName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0}")]
    InUse(String),
    /// A write its caller refused after reading the current records (a bad request).
    #[error("{0}")]
    Invalid(String),
    /// The record changed since it was read (another writer, e.g. another replica).
    #[error("{0} was changed by another writer since it was read; read it again and retry")]
    Stale(String),
    /// The store cannot be reached.
    #[error("the policy store is unavailable: {0}")]
    Unavailable(String),
    #[error("store failure: {0}")]
    Backend(String),
}

/// The anonymous scope map as stored: `None` if never set (the configuration then decides),
/// `Some(None)` if explicitly switched off.
pub type StoredAnonymous = Option<Option<MapName>>;

/// How many epochs the change log keeps; a reader further behind loads everything.
pub const CHANGE_LOG_SPAN: u64 = 4096;

/// One record a write touched; the change log holds these, readers re-read the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    Map(MapName),
    Token(TokenName),
    ApiKey(KeyName),
    Repository(RepoName),
    Anonymous,
}

impl Changed {
    /// The (kind, name) pair stored in the change log.
    pub(crate) fn columns(&self) -> (&'static str, &str) {
        match self {
            Changed::Map(n) => ("map", n.as_str()),
            Changed::Token(n) => ("token", n.as_str()),
            Changed::ApiKey(n) => ("api_key", n.as_str()),
            Changed::Repository(n) => ("repository", n.as_str()),
            Changed::Anonymous => ("anonymous", ""),
        }
    }

    pub(crate) fn from_columns(kind: &str, name: &str) -> Result<Changed, StoreError> {
        match kind {
            "map" => MapName::parse(name).map(Changed::Map).map_err(backend),
            "token" => TokenName::parse(name).map(Changed::Token).map_err(backend),
            "api_key" => KeyName::parse(name).map(Changed::ApiKey).map_err(backend),
            "repository" => RepoName::parse(name).map(Changed::Repository).map_err(backend),
            "anonymous" => Ok(Changed::Anonymous),
            other => Err(backend(format!("unknown change kind {other:?} in store"))),
        }
    }
}

/// Whether the change log still covers every write after `since` (it holds the writes
/// after `log_start` and the last [`CHANGE_LOG_SPAN`] epochs). A `since` ahead of the
/// store (a database restored from a backup) is not covered either.
pub(crate) fn log_covers(since: u64, log_start: u64, current: u64) -> bool {
    since >= log_start && since <= current && current - since <= CHANGE_LOG_SPAN
}

/// Everything the policy is built from.
#[derive(Debug, Default)]
pub struct PolicyRecords {
    pub epoch: u64,
    pub maps: Vec<ScopeMap>,
    pub tokens: Vec<Token>,
    pub api_keys: Vec<ApiKey>,
    /// Repositories with stored attributes.
    pub attributes: Vec<(RepoName, Attributes)>,
    /// The anonymous scope map set at runtime.
    pub anonymous: StoredAnonymous,
}

/// The records written after some epoch, each as it is now (`None`: it was deleted).
#[derive(Debug, Default)]
pub struct PolicyChanges {
    /// The epoch these changes bring a reader to.
    pub epoch: u64,
    pub maps: Vec<(MapName, Option<ScopeMap>)>,
    pub tokens: Vec<(TokenName, Option<Token>)>,
    pub api_keys: Vec<(KeyName, Option<ApiKey>)>,
    /// A repository's attributes now (default attributes when its record was removed).
    pub attributes: Vec<(RepoName, Attributes)>,
    /// The anonymous setting now, if it changed.
    pub anonymous: Option<StoredAnonymous>,
}

/// An untag in progress on a registry that cannot remove a single tag: the manifest is
/// deleted and put back without the tag; the journal holds what is needed to put it back
/// if the gateway stops half-way.
#[derive(Debug, Clone)]
pub struct UntagJournal {
    pub id: i64,
    pub repo: RepoName,
    pub digest: Digest,
    pub media_type: String,
    pub manifest: Vec<u8>,
    /// Tags to put back on the manifest (every tag it had but the removed one).
    pub keep_tags: Vec<Tag>,
}

/// A stored signing key (PKCS#8, private).
pub struct KeyRecord {
    pub pkcs8: Vec<u8>,
    pub created: OffsetDateTime,
}

/// Reads of the policy records, whole tables or one record by name, inside one consistent
/// snapshot of a store; `load` and `changes_since` are built on it, the same for both stores.
pub(crate) trait RecordReader {
    fn maps(&mut self, only: Option<&str>) -> Result<Vec<ScopeMap>, StoreError>;
    fn tokens(&mut self, only: Option<&str>) -> Result<Vec<Token>, StoreError>;
    fn api_keys(&mut self, only: Option<&str>) -> Result<Vec<ApiKey>, StoreError>;
    /// Repositories with stored attributes.
    fn attributes(&mut self, only: Option<&str>) -> Result<Vec<(RepoName, Attributes)>, StoreError>;
    fn anonymous(&mut self) -> Result<StoredAnonymous, StoreError>;
}

/// What creating `token` (and its own map, if given) touches.
pub(crate) fn token_changes(token: &Token, own_map: Option<&ScopeMap>) -> Vec<Changed> {
    own_map.map(|m| Changed::Map(m.name.clone())).into_iter().chain([Changed::Token(token.name.clone())]).collect()
}

/// Every record.
pub(crate) fn read_all(r: &mut impl RecordReader, epoch: u64) -> Result<PolicyRecords, StoreError> {
    Ok(PolicyRecords {
        epoch,
        maps: r.maps(None)?,
        tokens: r.tokens(None)?,
        api_keys: r.api_keys(None)?,
        attributes: r.attributes(None)?,
        anonymous: r.anonymous()?,
    })
}

/// The named records as they are now.
pub(crate) fn read_changed(r: &mut impl RecordReader, epoch: u64, changed: Vec<Changed>) -> Result<PolicyChanges, StoreError> {
    let mut out = PolicyChanges { epoch, ..PolicyChanges::default() };
    for c in changed {
        match c {
            Changed::Map(n) => {
                let now = r.maps(Some(n.as_str()))?.pop();
                out.maps.push((n, now));
            }
            Changed::Token(n) => {
                let now = r.tokens(Some(n.as_str()))?.pop();
                out.tokens.push((n, now));
            }
            Changed::ApiKey(n) => {
                let now = r.api_keys(Some(n.as_str()))?.pop();
                out.api_keys.push((n, now));
            }
            Changed::Repository(n) => {
                let now = r.attributes(Some(n.as_str()))?.pop().map(|(_, a)| a).unwrap_or_default();
                out.attributes.push((n, now));
            }
            Changed::Anonymous => out.anonymous = Some(r.anonymous()?),
        }
    }
    Ok(out)
}

/// `base`, restricted to one record when `only` is set (`placeholder` is the driver's
/// first parameter, `?1` or `$1`).
pub(crate) fn select(base: &str, column: &str, only: Option<&str>, placeholder: &str) -> String {
    match only {
        Some(_) => format!("{base} WHERE {column} = {placeholder}"),
        None => base.to_owned(),
    }
}

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<PolicyRecords, StoreError>;
    fn epoch(&self) -> Result<u64, StoreError>;
    /// The records changed after epoch `since`, read in one consistent snapshot; `None`
    /// when the change log does not cover every write since then (the caller loads
    /// everything instead).
    fn changes_since(&self, since: u64) -> Result<Option<PolicyChanges>, StoreError>;

    fn create_scope_map(&self, map: &ScopeMap) -> Result<(), StoreError>;
    fn update_scope_map(&self, map: &ScopeMap) -> Result<(), StoreError>;
    /// Refused with `InUse` while a token uses the map.
    fn delete_scope_map(&self, name: &MapName) -> Result<(), StoreError>;

    /// Creates a token, and with it its own scope map when one is given (as ACR does for
    /// `token create --repository`), in one transaction.
    fn create_token(&self, token: &Token, own_map: Option<&ScopeMap>) -> Result<(), StoreError>;
    fn update_token(&self, token: &Token) -> Result<(), StoreError>;
    fn delete_token(&self, name: &TokenName) -> Result<(), StoreError>;

    fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    fn update_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    fn delete_api_key(&self, name: &KeyName) -> Result<(), StoreError>;

    /// Stores a repository's attributes (default attributes remove the record).
    fn set_attributes(&self, repo: &RepoName, attributes: &Attributes) -> Result<(), StoreError>;
    /// Sets the anonymous scope map (`None`: anonymous access off).
    fn set_anonymous(&self, map: Option<&MapName>) -> Result<(), StoreError>;

    /// Records an untag before it starts; returns its id.
    fn begin_untag(&self, j: &UntagJournal) -> Result<i64, StoreError>;
    fn finish_untag(&self, id: i64) -> Result<(), StoreError>;
    fn pending_untags(&self) -> Result<Vec<UntagJournal>, StoreError>;

    fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    fn add_signing_key(&self, key: &KeyRecord) -> Result<(), StoreError>;

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

// === codecs shared by the implementations (text and numbers in, records out) ===

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_ts(s: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(s).map_err(backend)
}

pub(crate) fn actions_text(a: crate::access::ActionSet) -> String {
    a.iter().map(crate::access::Action::as_str).collect::<Vec<_>>().join(" ")
}

pub(crate) fn actions_parse(s: &str) -> Result<crate::access::ActionSet, StoreError> {
    s.split(' ')
        .filter(|x| !x.is_empty())
        .map(|x| crate::access::Action::parse(x).ok_or_else(|| backend(format!("bad action {x:?} in store"))))
        .collect()
}

pub(crate) fn revision(r: i64) -> Result<u64, StoreError> {
    u64::try_from(r).map_err(backend)
}

pub(crate) fn digest32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| backend("bad digest length in store"))
}
