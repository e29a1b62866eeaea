//! API keys: a named credential bound to one scope map, with a status and an optional
//! expiry, presented as `apikey:<key>`. Only the key's SHA-256 digest is stored; the
//! snapshot indexes keys by that digest, so looking one up costs one hash probe whether
//! there are ten keys or a hundred thousand. Each key has a random id that sessions are
//! bound to, so a deleted key's sessions never come back with a new key of the same name.
//!
//! Data and its rules only; generating and hashing secrets is `auth`'s job.

use std::fmt;

use time::OffsetDateTime;

use crate::policy::scope_map::{check_object_name, MapName};
use crate::policy::token::Status;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(std::sync::Arc<str>);

impl KeyName {
    pub fn parse(s: &str) -> Result<KeyName, String> {
        check_object_name("API key", s)?;
        Ok(KeyName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: KeyName,
    /// Random id sessions are bound to.
    pub id: String,
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    pub scope_map: MapName,
    pub status: Status,
    pub created: OffsetDateTime,
    pub expiry: Option<OffsetDateTime>,
    /// The stored revision this copy was read at (see `ScopeMap::revision`).
    pub revision: u64,
}

impl ApiKey {
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("digest", &"<redacted>")
            .field("scope_map", &self.scope_map)
            .field("status", &self.status)
            .field("expiry", &self.expiry)
            .finish()
    }
}
