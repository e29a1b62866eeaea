//! Repository attributes: four switches (`readEnabled`, `writeEnabled`, `deleteEnabled`,
//! `listEnabled`, as in ACR's changeable attributes) that lock a repository for *every*
//! caller, admin tokens included. A repository without stored attributes has all four on.
//!
//! Which lock stops which action is written once, here.

use std::fmt;

use crate::access::Action;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub read_enabled: bool,
    pub write_enabled: bool,
    pub delete_enabled: bool,
    pub list_enabled: bool,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes { read_enabled: true, write_enabled: true, delete_enabled: true, list_enabled: true }
    }
}

/// One of the four switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Read,
    Write,
    Delete,
    List,
}

impl Lock {
    pub fn attribute(self) -> &'static str {
        match self {
            Lock::Read => "readEnabled",
            Lock::Write => "writeEnabled",
            Lock::Delete => "deleteEnabled",
            Lock::List => "listEnabled",
        }
    }
}

impl fmt::Display for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Lock::Read => "read-locked",
            Lock::Write => "write-locked",
            Lock::Delete => "delete-locked",
            Lock::List => "list-locked",
        };
        write!(f, "{what} ({}: false)", self.attribute())
    }
}

impl Attributes {
    /// The lock that refuses `action`, if it is engaged. Pulls need reads, pushes and tag
    /// changes need writes, deletes need deletes, tag listings need listing.
    pub fn lock_for(&self, action: Action) -> Option<Lock> {
        let (lock, enabled) = match action {
            Action::ContentRead => (Lock::Read, self.read_enabled),
            Action::ContentWrite | Action::MetadataWrite => (Lock::Write, self.write_enabled),
            Action::ContentDelete => (Lock::Delete, self.delete_enabled),
            Action::MetadataRead => (Lock::List, self.list_enabled),
        };
        (!enabled).then_some(lock)
    }

    pub fn is_default(&self) -> bool {
        *self == Attributes::default()
    }
}
