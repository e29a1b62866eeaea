//! Persistent state: scope maps, tokens (password digests only), signing keys and a few
//! settings, behind the [`Store`] trait. The policy snapshot is built from what `load`
//! returns; every write bumps an epoch, so a reader can tell that something changed.
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

/// Everything the policy is built from.
#[derive(Debug, Default)]
pub struct PolicyRecords {
    pub epoch: u64,
    pub maps: Vec<ScopeMap>,
    pub tokens: Vec<Token>,
    pub api_keys: Vec<ApiKey>,
    /// Repositories with stored attributes.
    pub attributes: Vec<(RepoName, Attributes)>,
    /// The anonymous scope map set at runtime: `None` if never set (the configuration then
    /// decides), `Some(None)` if explicitly switched off.
    pub anonymous: Option<Option<MapName>>,
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

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<PolicyRecords, StoreError>;
    fn epoch(&self) -> Result<u64, StoreError>;

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
