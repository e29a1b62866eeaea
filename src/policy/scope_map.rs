//! Scope maps: named sets of (repository pattern, actions) whose permissions add up, the
//! five read-only system maps, and the index that answers "what does this map hold on
//! repository R" in time independent of the map's size (one hash lookup per name depth).
//!
//! Edits (`add`, `remove`) are pure functions on a map; persisting them is the store's job.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use time::OffsetDateTime;

use crate::access::{Action, ActionSet};
use crate::oci::RepoName;
use crate::policy::pattern::RepoPattern;

/// The name of a scope map or a token: 1–64 characters `[A-Za-z0-9-]`, starting with a
/// letter or digit. Names starting with `_` are the system maps'.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapName(std::sync::Arc<str>);

pub const MAX_OBJECT_NAME: usize = 64;

/// Checks the shared grammar of token and scope-map names, returning why not.
pub fn check_object_name(kind: &str, s: &str) -> Result<(), String> {
    let first_ok = s.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > MAX_OBJECT_NAME || !first_ok || !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
        return Err(format!(
            "invalid {kind} name {s:?}: use 1-{MAX_OBJECT_NAME} letters, digits and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

impl MapName {
    /// A user-defined map name.
    pub fn parse(s: &str) -> Result<MapName, String> {
        if SYSTEM_MAPS.iter().any(|(n, _, _)| *n == s) {
            return Ok(MapName(s.into()));
        }
        check_object_name("scope map", s)?;
        Ok(MapName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_system(&self) -> bool {
        self.0.starts_with('_')
    }
}

impl fmt::Display for MapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for MapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

use Action::*;
/// The system scope maps: name, description, actions on every repository.
pub const SYSTEM_MAPS: [(&str, &str, ActionSet); 5] = [
    ("_repositories_pull", "Can pull any repository of the registry", ActionSet::of(&[ContentRead])),
    (
        "_repositories_pull_metadata_read",
        "Can perform all read operations on any repository",
        ActionSet::of(&[ContentRead, MetadataRead]),
    ),
    ("_repositories_push", "Can push to any repository of the registry", ActionSet::of(&[ContentRead, ContentWrite])),
    (
        "_repositories_push_metadata_write",
        "Can perform all read and write operations on any repository",
        ActionSet::of(&[ContentRead, ContentWrite, MetadataRead, MetadataWrite]),
    ),
    ("_repositories_admin", "Can perform all read, write and delete operations on the registry", ActionSet::ALL),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    SystemDefined,
    UserDefined,
}

/// A scope map and its lookup index.
#[derive(Clone, Debug)]
pub struct ScopeMap {
    pub name: MapName,
    pub description: String,
    pub kind: MapKind,
    pub created: OffsetDateTime,
    /// The stored revision this copy was read at (0 before it is first stored); a write
    /// succeeds only if the stored record is still at this revision.
    pub revision: u64,
    /// Actions per pattern; the source of truth, kept sorted for stable output.
    rules: BTreeMap<RepoPattern, ActionSet>,
    index: Index,
}

/// Equal when the records are; the index is derived from the rules.
impl PartialEq for ScopeMap {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.description, self.kind, self.created, self.revision, &self.rules)
            == (&other.name, &other.description, other.kind, other.created, other.revision, &other.rules)
    }
}

#[derive(Clone, Debug, Default)]
struct Index {
    any: ActionSet,
    exact: HashMap<RepoName, ActionSet>,
    prefix: HashMap<Box<str>, ActionSet>,
}

impl ScopeMap {
    pub fn new(name: MapName, description: String, created: OffsetDateTime, rules: BTreeMap<RepoPattern, ActionSet>) -> Self {
        let kind = if name.is_system() { MapKind::SystemDefined } else { MapKind::UserDefined };
        let mut m = ScopeMap { name, description, kind, created, revision: 0, rules, index: Index::default() };
        m.reindex();
        m
    }

    pub fn system_maps() -> impl Iterator<Item = ScopeMap> {
        SYSTEM_MAPS.iter().map(|(n, d, a)| {
            ScopeMap::new(MapName((*n).into()), (*d).to_owned(), OffsetDateTime::UNIX_EPOCH, BTreeMap::from([(RepoPattern::Any, *a)]))
        })
    }

    pub fn rules(&self) -> &BTreeMap<RepoPattern, ActionSet> {
        &self.rules
    }

    /// What this map holds on `repo`: the union of every matching rule.
    pub fn holds(&self, repo: &RepoName) -> ActionSet {
        let ix = &self.index;
        let mut held = ix.any.union(ix.exact.get(repo).copied().unwrap_or_default());
        if !ix.prefix.is_empty() {
            for a in repo.ancestors() {
                held = held.union(ix.prefix.get(a).copied().unwrap_or_default());
            }
        }
        held
    }

    /// The pattern that grants `action` on `repo`: the exact name first, then the deepest
    /// prefix, then `*`.
    pub fn granting_pattern(&self, repo: &RepoName, action: Action) -> Option<RepoPattern> {
        let ix = &self.index;
        if ix.exact.get(repo).is_some_and(|a| a.contains(action)) {
            return Some(RepoPattern::Exact(repo.clone()));
        }
        for anc in repo.ancestors() {
            if ix.prefix.get(anc).is_some_and(|a| a.contains(action)) {
                return RepoName::parse(anc).ok().map(RepoPattern::Prefix);
            }
        }
        ix.any.contains(action).then_some(RepoPattern::Any)
    }

    /// Adds actions on a pattern (union with what is there).
    pub fn add(&mut self, pattern: RepoPattern, actions: ActionSet) {
        let e = self.rules.entry(pattern).or_default();
        *e = e.union(actions);
        self.reindex();
    }

    /// Removes actions from a pattern; a pattern left with no action disappears.
    pub fn remove(&mut self, pattern: &RepoPattern, actions: ActionSet) {
        if let Some(e) = self.rules.get_mut(pattern) {
            *e = e.without(actions);
            if e.is_empty() {
                self.rules.remove(pattern);
            }
        }
        self.reindex();
    }

    fn reindex(&mut self) {
        let mut ix = Index::default();
        for (p, a) in &self.rules {
            match p {
                RepoPattern::Any => ix.any = ix.any.union(*a),
                RepoPattern::Exact(n) => {
                    ix.exact.insert(n.clone(), *a);
                }
                RepoPattern::Prefix(n) => {
                    ix.prefix.insert(n.as_str().into(), *a);
                }
            }
        }
        self.index = ix;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn permissions_add_up_across_patterns() {
        let mut m = ScopeMap::new(MapName::parse("m").unwrap(), String::new(), OffsetDateTime::UNIX_EPOCH, BTreeMap::new());
        m.add(RepoPattern::parse("samples/*").unwrap(), ActionSet::of(&[ContentRead]));
        m.add(RepoPattern::parse("samples/hello").unwrap(), ActionSet::of(&[ContentWrite]));
        m.add(RepoPattern::parse("samples/a/*").unwrap(), ActionSet::of(&[MetadataRead]));
        assert_eq!(m.holds(&n("samples/hello")), ActionSet::of(&[ContentRead, ContentWrite]));
        assert_eq!(m.holds(&n("samples/a/b")), ActionSet::of(&[ContentRead, MetadataRead]));
        assert_eq!(m.holds(&n("samples")), ActionSet::EMPTY);
        assert_eq!(m.holds(&n("other")), ActionSet::EMPTY);
        m.remove(&RepoPattern::parse("samples/hello").unwrap(), ActionSet::of(&[ContentWrite]));
        assert_eq!(m.holds(&n("samples/hello")), ActionSet::of(&[ContentRead]));
        assert!(!m.rules().contains_key(&RepoPattern::parse("samples/hello").unwrap()));
    }

    #[test]
    fn system_maps_hold_what_their_names_say() {
        let maps: Vec<ScopeMap> = ScopeMap::system_maps().collect();
        assert_eq!(maps.len(), 5);
        let any = n("any/repo");
        assert_eq!(maps[0].holds(&any), ActionSet::of(&[ContentRead]));
        assert_eq!(maps[4].holds(&any), ActionSet::ALL);
        assert!(maps.iter().all(|m| m.kind == MapKind::SystemDefined));
    }

    #[test]
    fn names_are_validated() {
        assert!(MapName::parse("MyScopeMap").is_ok());
        assert!(MapName::parse("_repositories_pull").is_ok());
        for bad in ["", "_mine", "-a", "a b", "a/b", &"x".repeat(65)] {
            assert!(MapName::parse(bad).is_err(), "{bad}");
        }
    }
}
