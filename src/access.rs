//! The authorization vocabulary: the five actions, sets of them, the resources they apply
//! to, and `Access` (what a session token carries). This is the only module that knows the
//! action strings (`content/read`, …) and the Docker action words (`pull`, `push`, …).
//!
//! It holds no policy and makes no decision; `policy` decides, `route` says what a request
//! needs, `token` mints and reads `Access`.

use std::collections::BTreeMap;
use std::fmt;

use crate::oci::RepoName;

/// One of the five repository actions (the ACR model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    ContentRead,
    ContentWrite,
    ContentDelete,
    MetadataRead,
    MetadataWrite,
}

impl Action {
    pub const ALL: [Action; 5] =
        [Action::ContentRead, Action::ContentWrite, Action::ContentDelete, Action::MetadataRead, Action::MetadataWrite];

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ContentRead => "content/read",
            Action::ContentWrite => "content/write",
            Action::ContentDelete => "content/delete",
            Action::MetadataRead => "metadata/read",
            Action::MetadataWrite => "metadata/write",
        }
    }

    /// The Docker word that stands for exactly this action in a token's `access` claim and
    /// in a challenge's `scope` (a bijection; request words are looser, see
    /// [`ActionSet::from_request_words`]).
    pub fn claim_word(self) -> &'static str {
        match self {
            Action::ContentRead => "pull",
            Action::ContentWrite => "push",
            Action::ContentDelete => "delete",
            Action::MetadataRead => "metadata_read",
            Action::MetadataWrite => "metadata_write",
        }
    }

    fn from_claim_word(w: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.claim_word() == w)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    pub const EMPTY: ActionSet = ActionSet(0);
    pub const ALL: ActionSet = ActionSet(0b1_1111);

    pub const fn of(actions: &[Action]) -> ActionSet {
        let mut bits = 0;
        let mut rest = actions;
        while let [first, tail @ ..] = rest {
            bits |= first.bit();
            rest = tail;
        }
        ActionSet(bits)
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, o: ActionSet) -> ActionSet {
        ActionSet(self.0 | o.0)
    }

    pub fn intersect(self, o: ActionSet) -> ActionSet {
        ActionSet(self.0 & o.0)
    }

    pub fn without(self, o: ActionSet) -> ActionSet {
        ActionSet(self.0 & !o.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// What a token request's Docker words ask for, given what the caller holds:
    /// `pull` ⇒ content/read (+ metadata/read when held, so tag listing works),
    /// `push` ⇒ content/write, `delete` ⇒ content/delete + metadata/write,
    /// `metadata_read`, `metadata_write`, and `*` ⇒ everything held.
    /// Unknown words ask for nothing. The result is already intersected with `held`.
    pub fn from_request_words<'a>(words: impl IntoIterator<Item = &'a str>, held: ActionSet) -> ActionSet {
        use Action::*;
        let mut want = ActionSet::EMPTY;
        for w in words {
            want = want.union(match w {
                "pull" => ActionSet::of(&[ContentRead, MetadataRead]),
                "push" => ActionSet::of(&[ContentWrite]),
                "delete" => ActionSet::of(&[ContentDelete, MetadataWrite]),
                "metadata_read" => ActionSet::of(&[MetadataRead]),
                "metadata_write" => ActionSet::of(&[MetadataWrite]),
                "*" => ActionSet::ALL,
                _ => ActionSet::EMPTY,
            });
        }
        want.intersect(held)
    }

    /// The claim words of this set, in a fixed order.
    pub fn claim_words(self) -> impl Iterator<Item = &'static str> {
        self.iter().map(Action::claim_word)
    }

    /// Reads claim words back; an unknown word fails the whole set (a token we did not mint).
    pub fn from_claim_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Option<ActionSet> {
        let mut set = ActionSet::EMPTY;
        for w in words {
            set = set.union(ActionSet::of(&[Action::from_claim_word(w)?]));
        }
        Some(set)
    }
}

impl fmt::Debug for ActionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Action::as_str)).finish()
    }
}

impl FromIterator<Action> for ActionSet {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        iter.into_iter().fold(ActionSet::EMPTY, |s, a| s.union(ActionSet::of(&[a])))
    }
}

/// The access a session token carries: actions per repository, and whether it may list
/// the catalog (`registry:catalog:*`). Live authorization intersects this with the policy
/// as it is at the time of the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub repositories: BTreeMap<RepoName, ActionSet>,
    pub catalog: bool,
}

impl Access {
    pub fn on(&self, repo: &RepoName) -> ActionSet {
        self.repositories.get(repo).copied().unwrap_or_default()
    }

    /// Adds actions on a repository (union with what is there); empty sets are not kept.
    pub fn add(&mut self, repo: RepoName, actions: ActionSet) {
        if !actions.is_empty() {
            let e = self.repositories.entry(repo).or_default();
            *e = e.union(actions);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.repositories.is_empty() && !self.catalog
    }
}

/// What a request needs before it may be forwarded. `route` produces it, `policy` decides it.
#[derive(Clone, Copy, Debug)]
pub enum Requirement<'a> {
    /// `/v2/`: any valid credential.
    Authenticated,
    /// `/v2/_catalog`: any valid credential (and, for a session token, `registry:catalog:*`);
    /// the listing is filtered to repositories the caller holds metadata/read on.
    Catalog,
    /// One action on one repository; a mount also asks for content/read on its source.
    /// `locks` is false only for reading and changing the repository's own attributes,
    /// which must work on a locked repository (or it could never be unlocked).
    Repository { repo: &'a RepoName, action: Action, mount_from: Option<&'a RepoName>, locks: bool },
}

/// A resource and action as a challenge names it (`scope="repository:x:pull"`), telling the
/// client what token to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeHint {
    Repository(RepoName, Action),
    Catalog,
}

impl fmt::Display for ScopeHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeHint::Repository(r, a) => write!(f, "repository:{r}:{}", a.claim_word()),
            ScopeHint::Catalog => f.write_str("registry:catalog:*"),
        }
    }
}

impl Requirement<'_> {
    /// The scopes a challenge for this requirement names.
    pub fn hints(&self) -> Vec<ScopeHint> {
        match self {
            Requirement::Authenticated => vec![],
            Requirement::Catalog => vec![ScopeHint::Catalog],
            Requirement::Repository { repo, action, .. } => vec![ScopeHint::Repository((*repo).clone(), *action)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn request_words_map_as_the_design_says() {
        let all = ActionSet::ALL;
        assert_eq!(ActionSet::from_request_words(["pull"], all), ActionSet::of(&[ContentRead, MetadataRead]));
        assert_eq!(ActionSet::from_request_words(["pull"], ActionSet::of(&[ContentRead])), ActionSet::of(&[ContentRead]));
        assert_eq!(ActionSet::from_request_words(["push", "pull"], ActionSet::of(&[ContentWrite])), ActionSet::of(&[ContentWrite]));
        assert_eq!(ActionSet::from_request_words(["delete"], all), ActionSet::of(&[ContentDelete, MetadataWrite]));
        assert_eq!(ActionSet::from_request_words(["*"], ActionSet::of(&[ContentRead])), ActionSet::of(&[ContentRead]));
        assert_eq!(ActionSet::from_request_words(["search", "Pull", ""], all), ActionSet::EMPTY);
    }

    #[test]
    fn claim_words_round_trip_and_reject_strangers() {
        for bits in 0..32u8 {
            let set = ActionSet(bits);
            assert_eq!(ActionSet::from_claim_words(set.claim_words()), Some(set));
        }
        assert_eq!(ActionSet::from_claim_words(["pull", "*"]), None);
    }
}
