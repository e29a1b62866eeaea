//! Tokens: a name (the username), one scope map, a status, and up to two passwords, each
//! stored only as a digest with its creation time and optional expiry. Every password has
//! a random id; sessions and refresh tokens are bound to it, so regenerating or deleting
//! the password kills everything derived from it.
//!
//! This module holds data and its rules; hashing and verifying secrets is `auth`'s job.

use std::fmt;

use time::OffsetDateTime;

use crate::policy::scope_map::{check_object_name, MapName};

/// Usernames with a meaning of their own at login; no token may take them.
pub const RESERVED_USERNAMES: [&str; 3] = ["apikey", "bearer", "anonymous"];

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenName(std::sync::Arc<str>);

impl TokenName {
    pub fn parse(s: &str) -> Result<TokenName, String> {
        check_object_name("token", s)?;
        if RESERVED_USERNAMES.iter().any(|r| r.eq_ignore_ascii_case(s)) {
            return Err(format!("token name {s:?} is reserved (it has a meaning of its own at login)"));
        }
        Ok(TokenName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Enabled,
    Disabled,
}

impl Status {
    pub fn parse(s: &str) -> Result<Status, String> {
        match s {
            "enabled" => Ok(Status::Enabled),
            "disabled" => Ok(Status::Disabled),
            _ => Err(format!("invalid status {s:?}: expected enabled or disabled")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
        }
    }
}

/// Which of the two passwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Password1,
    Password2,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::Password1, Slot::Password2];

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "password1" => Some(Slot::Password1),
            "password2" => Some(Slot::Password2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Password1 => "password1",
            Slot::Password2 => "password2",
        }
    }

    fn index(self) -> usize {
        match self {
            Slot::Password1 => 0,
            Slot::Password2 => 1,
        }
    }
}

/// A stored password: never the value, only its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    /// Random id binding sessions and refresh tokens to this very password.
    pub id: String,
    /// SHA-256 of the password value.
    pub digest: [u8; 32],
    pub created: OffsetDateTime,
    pub expiry: Option<OffsetDateTime>,
}

impl Password {
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Password")
            .field("id", &self.id)
            .field("digest", &"<redacted>")
            .field("created", &self.created)
            .field("expiry", &self.expiry)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub name: TokenName,
    pub scope_map: MapName,
    pub status: Status,
    pub created: OffsetDateTime,
    /// The stored revision this copy was read at (see `ScopeMap::revision`).
    pub revision: u64,
    passwords: [Option<Password>; 2],
}

impl Token {
    pub fn new(name: TokenName, scope_map: MapName, status: Status, created: OffsetDateTime) -> Token {
        Token { name, scope_map, status, created, revision: 0, passwords: [None, None] }
    }

    pub fn password(&self, slot: Slot) -> Option<&Password> {
        self.passwords.get(slot.index()).and_then(Option::as_ref)
    }

    pub fn set_password(&mut self, slot: Slot, p: Option<Password>) {
        if let Some(s) = self.passwords.get_mut(slot.index()) {
            *s = p;
        }
    }

    pub fn passwords(&self) -> impl Iterator<Item = (Slot, &Password)> {
        Slot::BOTH.into_iter().filter_map(|s| self.password(s).map(|p| (s, p)))
    }

    /// The earliest expiry among the token's passwords, if any has one.
    pub fn earliest_expiry(&self) -> Option<OffsetDateTime> {
        self.passwords().filter_map(|(_, p)| p.expiry).min()
    }
}
