//! The policy: an immutable snapshot of scope maps and tokens, and the one function that
//! decides whether a principal may do what a request needs. `decide` is the only maker of
//! [`Grant`], and forwarding demands a `Grant`, so nothing reaches the upstream without a
//! decision. Decisions read the snapshot as it is now: a session token's access is
//! intersected with what its principal holds at the time of the request.
//!
//! The policy never touches credentials, the network or the store: `auth` says who is
//! calling, `route` says what is needed, the store supplies the records.

pub mod apikey;
pub mod attributes;
pub mod pattern;
pub mod scope_map;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::access::{Access, Action, ActionSet, Requirement, ScopeHint};
use crate::oci::RepoName;
use crate::store::PolicyChanges;
pub use apikey::{ApiKey, KeyName};
pub use attributes::{Attributes, Lock};
pub use pattern::RepoPattern;
pub use scope_map::{MapKind, MapName, ScopeMap};
pub use token::{Password, Slot, Status, Token, TokenName};

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Token(TokenName),
    ApiKey(KeyName),
    /// Someone an external issuer vouched for; `maps` are what its rules granted at login.
    External { issuer: Arc<str>, subject: Arc<str>, maps: Arc<[MapName]> },
    Anonymous,
}

/// How the caller proved who it is (closed set, for metrics and audit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// No `Authorization` header.
    None,
    /// `Basic <token>:<password>`.
    Basic,
    /// A session token issued by our token server.
    Session,
    /// `Basic apikey:<key>`.
    ApiKey,
    /// An external issuer's JWT, as `Basic bearer:<jwt>` or `Bearer <jwt>`.
    External,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::None => "none",
            CredentialKind::Basic => "basic",
            CredentialKind::Session => "session",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::External => "external_jwt",
        }
    }
}

/// An authenticated caller: who, how, and (for session tokens) the access the token carries.
#[derive(Clone, Debug)]
pub struct Principal {
    pub subject: Subject,
    pub credential: CredentialKind,
    pub session: Option<Arc<Access>>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal { subject: Subject::Anonymous, credential: CredentialKind::None, session: None }
    }
}

/// Proof that the policy allowed a request. Only [`Policy::decide`] makes one.
#[derive(Debug)]
pub struct Grant {
    mount_allowed: bool,
    catalog: Option<CatalogView>,
}

impl Grant {
    /// Whether a mount's source may be read (otherwise `mount`/`from` are stripped).
    pub fn mount_allowed(&self) -> bool {
        self.mount_allowed
    }

    /// For catalog requests: which repositories the caller may see.
    pub fn catalog(&self) -> Option<&CatalogView> {
        self.catalog.as_ref()
    }
}

/// The catalog filter of a grant: a repository is listed iff the caller holds metadata/read.
#[derive(Debug)]
pub struct CatalogView {
    policy: Arc<Policy>,
    subject: Subject,
}

impl CatalogView {
    /// Listed iff the caller holds metadata/read and the repository is not list-locked.
    pub fn may_list(&self, repo: &RepoName) -> bool {
        self.policy.subject_holds(&self.subject, repo).contains(Action::MetadataRead) && self.policy.attributes(repo).list_enabled
    }
}

/// Why a request was refused; `reject` turns it into 401 or 403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No credential was sent; a login could help (401, plain challenge).
    Unauthenticated { hints: Vec<ScopeHint> },
    /// A session token lacks the access (401 insufficient_scope: the token protocol's answer,
    /// on which clients request a new token and report "denied" if that does not help).
    /// `reason` says whether the caller holds the access at all (for the audit log).
    InsufficientScope { hints: Vec<ScopeHint>, reason: String },
    /// The caller does not hold the action; no new token can help (403 DENIED).
    Denied { reason: String },
    /// The repository is locked against the action, for every caller (403 DENIED).
    Locked { repo: RepoName, lock: Lock },
}

impl Denial {
    /// Why, in words, for the audit log.
    pub fn reason(&self) -> String {
        match self {
            Denial::Unauthenticated { .. } => "no credential".to_owned(),
            Denial::InsufficientScope { reason, .. } | Denial::Denied { reason } => reason.clone(),
            Denial::Locked { repo, lock } => format!("repository {repo} is {lock}"),
        }
    }
}

/// The answer of [`Policy::explain`]: allowed or not, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    pub reason: String,
    /// The scope map consulted, if one was.
    pub scope_map: Option<MapName>,
    /// The pattern that granted the action, if one did.
    pub pattern: Option<RepoPattern>,
}

/// The whole policy at one moment. Records sit behind `Arc`s, so a snapshot patched with a
/// few changed records (see [`Policy::patched`]) shares every other record with the one
/// before it.
#[derive(Debug, Default, PartialEq)]
pub struct Policy {
    /// Increases with every change; caches compare it.
    pub epoch: u64,
    maps: HashMap<MapName, Arc<ScopeMap>>,
    tokens: HashMap<TokenName, Arc<Token>>,
    api_keys: HashMap<KeyName, Arc<ApiKey>>,
    /// API keys by the digest of their value.
    key_index: HashMap<[u8; 32], KeyName>,
    attributes: HashMap<RepoName, Attributes>,
    anonymous: Option<MapName>,
}

impl Policy {
    /// Builds a snapshot from user-defined maps and tokens; the system maps are added here.
    pub fn new(epoch: u64, user_maps: Vec<ScopeMap>, tokens: Vec<Token>, anonymous: Option<MapName>) -> Policy {
        let maps = ScopeMap::system_maps().chain(user_maps).map(|m| (m.name.clone(), Arc::new(m))).collect();
        let tokens = tokens.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect();
        Policy { epoch, maps, tokens, api_keys: HashMap::new(), key_index: HashMap::new(), attributes: HashMap::new(), anonymous }
    }

    /// Adds API keys to the snapshot.
    pub fn with_api_keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Policy {
        for k in keys {
            self.put_api_key(k.name.clone(), Some(k));
        }
        self
    }

    /// Replaces (or with `None` removes) an API key, keeping the digest index in step.
    fn put_api_key(&mut self, name: KeyName, key: Option<ApiKey>) {
        if let Some(old) = self.api_keys.remove(&name) {
            self.key_index.remove(&old.digest);
        }
        if let Some(k) = key {
            self.key_index.insert(k.digest, name.clone());
            self.api_keys.insert(name, Arc::new(k));
        }
    }

    /// This snapshot with changed records put in place: the next snapshot, built without
    /// re-reading the records that did not change. `config_anonymous` is the configured
    /// anonymous map, in force when the stored setting is unset.
    pub fn patched(&self, changes: PolicyChanges, config_anonymous: Option<&MapName>) -> Policy {
        let mut next = Policy {
            epoch: changes.epoch,
            maps: self.maps.clone(),
            tokens: self.tokens.clone(),
            api_keys: self.api_keys.clone(),
            key_index: self.key_index.clone(),
            attributes: self.attributes.clone(),
            anonymous: self.anonymous.clone(),
        };
        for (name, map) in changes.maps {
            match map {
                Some(m) => next.maps.insert(name, Arc::new(m)),
                None => next.maps.remove(&name),
            };
        }
        for (name, token) in changes.tokens {
            match token {
                Some(t) => next.tokens.insert(name, Arc::new(t)),
                None => next.tokens.remove(&name),
            };
        }
        for (name, key) in changes.api_keys {
            next.put_api_key(name, key);
        }
        for (repo, a) in changes.attributes {
            if a.is_default() {
                next.attributes.remove(&repo);
            } else {
                next.attributes.insert(repo, a);
            }
        }
        if let Some(stored) = changes.anonymous {
            next.anonymous = stored.unwrap_or_else(|| config_anonymous.cloned());
        }
        next
    }

    pub fn api_key(&self, name: &KeyName) -> Option<&ApiKey> {
        self.api_keys.get(name).map(|k| &**k)
    }

    /// The API key whose value has this digest.
    pub fn api_key_by_digest(&self, digest: &[u8; 32]) -> Option<&ApiKey> {
        self.key_index.get(digest).and_then(|n| self.api_key(n))
    }

    pub fn api_keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.api_keys.values().map(|k| &**k)
    }

    /// Adds repository attributes (locks) to the snapshot.
    pub fn with_attributes(mut self, attributes: impl IntoIterator<Item = (RepoName, Attributes)>) -> Policy {
        self.attributes = attributes.into_iter().filter(|(_, a)| !a.is_default()).collect();
        self
    }

    /// A repository's attributes (all enabled unless stored otherwise).
    pub fn attributes(&self, repo: &RepoName) -> Attributes {
        self.attributes.get(repo).copied().unwrap_or_default()
    }

    /// Repositories with a lock engaged.
    pub fn locked_repositories(&self) -> impl Iterator<Item = (&RepoName, &Attributes)> {
        self.attributes.iter()
    }

    pub fn map(&self, name: &MapName) -> Option<&ScopeMap> {
        self.maps.get(name).map(|m| &**m)
    }

    pub fn maps(&self) -> impl Iterator<Item = &ScopeMap> {
        self.maps.values().map(|m| &**m)
    }

    pub fn token(&self, name: &TokenName) -> Option<&Token> {
        self.tokens.get(name).map(|t| &**t)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values().map(|t| &**t)
    }

    pub fn anonymous_map(&self) -> Option<&MapName> {
        self.anonymous.as_ref()
    }

    /// What the subject holds on `repo` now, before any session restriction. A disabled or
    /// vanished token, or a missing map, holds nothing.
    fn subject_holds(&self, subject: &Subject, repo: &RepoName) -> ActionSet {
        let holds = |m: &MapName| self.maps.get(m).map(|m| m.holds(repo)).unwrap_or_default();
        match subject {
            Subject::Token(name) => match self.tokens.get(name) {
                Some(t) if t.status == Status::Enabled => holds(&t.scope_map),
                Some(_) | None => ActionSet::EMPTY,
            },
            Subject::ApiKey(name) => match self.api_keys.get(name) {
                Some(k) if k.status == Status::Enabled => holds(&k.scope_map),
                Some(_) | None => ActionSet::EMPTY,
            },
            Subject::External { maps, .. } => maps.iter().fold(ActionSet::EMPTY, |a, m| a.union(holds(m))),
            Subject::Anonymous => self.anonymous.as_ref().map(holds).unwrap_or_default(),
        }
    }

    /// What the principal may do on `repo` now: its subject's holdings, intersected with
    /// the session's access when it came with a session token.
    pub fn holdings(&self, p: &Principal, repo: &RepoName) -> ActionSet {
        let held = self.subject_holds(&p.subject, repo);
        match &p.session {
            Some(access) => held.intersect(access.on(repo)),
            None => held,
        }
    }

    /// Whether the principal may be given `registry:catalog:*` (any authenticated subject;
    /// the listing itself is filtered).
    pub fn may_request_catalog(&self, p: &Principal) -> bool {
        !matches!(p.subject, Subject::Anonymous)
    }

    /// The decision. Fails closed: every arm names its case, and anything not granted is a
    /// `Denial`.
    pub fn decide(self: &Arc<Self>, p: &Principal, need: Requirement<'_>) -> Result<Grant, Denial> {
        let no_credential = p.credential == CredentialKind::None;
        match need {
            Requirement::Authenticated => {
                if no_credential {
                    Err(Denial::Unauthenticated { hints: vec![] })
                } else {
                    Ok(Grant { mount_allowed: false, catalog: None })
                }
            }
            Requirement::Catalog => {
                let allowed = match (&p.subject, &p.session) {
                    (Subject::Anonymous, _) => false,
                    (Subject::Token(_) | Subject::ApiKey(_) | Subject::External { .. }, Some(access)) => access.catalog,
                    (Subject::Token(_) | Subject::ApiKey(_) | Subject::External { .. }, None) => true,
                };
                if allowed {
                    let view = CatalogView { policy: Arc::clone(self), subject: p.subject.clone() };
                    return Ok(Grant { mount_allowed: false, catalog: Some(view) });
                }
                let hints = vec![ScopeHint::Catalog];
                match (no_credential, &p.subject) {
                    (true, _) => Err(Denial::Unauthenticated { hints }),
                    (false, Subject::Anonymous) => {
                        Err(Denial::InsufficientScope { hints, reason: "anonymous callers cannot list the catalog".into() })
                    }
                    (false, Subject::Token(_) | Subject::ApiKey(_) | Subject::External { .. }) => {
                        Err(Denial::InsufficientScope { hints, reason: "the session token does not carry registry:catalog:*".into() })
                    }
                }
            }
            Requirement::Repository { repo, action, mount_from, locks } => {
                if self.holdings(p, repo).contains(action) {
                    if let Some(lock) = locks.then(|| self.attributes(repo).lock_for(action)).flatten() {
                        return Err(Denial::Locked { repo: repo.clone(), lock });
                    }
                    let mount_allowed = mount_from.is_some_and(|f| {
                        self.holdings(p, f).contains(Action::ContentRead) && self.attributes(f).read_enabled
                    });
                    return Ok(Grant { mount_allowed, catalog: None });
                }
                let hints = vec![ScopeHint::Repository(repo.clone(), action)];
                let held = self.subject_holds(&p.subject, repo).contains(action);
                let reason = if held {
                    format!("the session token does not carry {action} on repository {repo}")
                } else {
                    // the slow path of a denial: say exactly why
                    self.explain(&p.subject, repo, action, None).reason
                };
                match p.credential {
                    CredentialKind::None => Err(Denial::Unauthenticated { hints }),
                    CredentialKind::Session => Err(Denial::InsufficientScope { hints, reason }),
                    // credentials that cannot be re-scoped: a new token cannot help
                    CredentialKind::Basic | CredentialKind::ApiKey | CredentialKind::External => Err(Denial::Denied { reason }),
                }
            }
        }
    }

    /// The one grant not tied to a request: finishing, at startup, an untag that an
    /// authorized caller began and a stop interrupted. It only restores what that untag
    /// removed (the journaled manifest and its other tags).
    pub(crate) fn grant_untag_recovery(&self) -> Grant {
        Grant { mount_allowed: false, catalog: None }
    }

    /// Why `subject` may or may not do `action` on `repo` now. With `now`, a token's
    /// passwords and an API key's expiry are checked too.
    pub fn explain(&self, subject: &Subject, repo: &RepoName, action: Action, now: Option<OffsetDateTime>) -> Explanation {
        let deny = |reason: String, scope_map: Option<MapName>| Explanation { allowed: false, reason, scope_map, pattern: None };
        let expired = |e: Option<OffsetDateTime>| now.is_some_and(|n| e.is_some_and(|e| e <= n));
        let (maps, who): (Vec<MapName>, String) = match subject {
            Subject::Token(name) => {
                let Some(t) = self.tokens.get(name) else { return deny(format!("token {name} does not exist"), None) };
                if t.status == Status::Disabled {
                    return deny(format!("token {name} is disabled"), Some(t.scope_map.clone()));
                }
                if now.is_some() && t.passwords().all(|(_, p)| expired(p.expiry)) {
                    let detail: Vec<String> = Slot::BOTH
                        .iter()
                        .map(|s| match t.password(*s) {
                            Some(p) => format!("{} expired at {}", s.as_str(), p.expiry.map(rfc3339).unwrap_or_default()),
                            None => format!("{} is not set", s.as_str()),
                        })
                        .collect();
                    return deny(format!("token {name} has no valid password ({})", detail.join(", ")), Some(t.scope_map.clone()));
                }
                (vec![t.scope_map.clone()], format!("token {name}"))
            }
            Subject::ApiKey(name) => {
                let Some(k) = self.api_keys.get(name) else { return deny(format!("API key {name} does not exist"), None) };
                if k.status == Status::Disabled {
                    return deny(format!("API key {name} is disabled"), Some(k.scope_map.clone()));
                }
                if expired(k.expiry) {
                    return deny(format!("API key {name} expired at {}", k.expiry.map(rfc3339).unwrap_or_default()), Some(k.scope_map.clone()));
                }
                (vec![k.scope_map.clone()], format!("API key {name}"))
            }
            Subject::External { issuer, subject, maps } => (maps.to_vec(), format!("{subject} of issuer {issuer}")),
            Subject::Anonymous => match &self.anonymous {
                Some(m) => (vec![m.clone()], "the anonymous caller".to_owned()),
                None => return deny("anonymous access is off (no anonymous scope map is set)".to_owned(), None),
            },
        };
        // the first map that grants the action decides; a lock beats any grant
        let mut last = None;
        for m in &maps {
            let e = self.explain_map(m, &who, repo, action);
            if e.pattern.is_some() {
                return e;
            }
            last = Some(e);
        }
        match (last, maps.len()) {
            (Some(e), 1) => e,
            (_, 0) => deny(format!("no rule of the issuer granted {who} a scope map"), None),
            _ => {
                let names: Vec<&str> = maps.iter().map(MapName::as_str).collect();
                deny(format!("no scope map of {who} ({}) grants {action} on repository {repo}", names.join(", ")), None)
            }
        }
    }

    /// One map's answer: does it grant the action, and is a lock in the way?
    fn explain_map(&self, map_name: &MapName, who: &str, repo: &RepoName, action: Action) -> Explanation {
        let deny = |reason: String| Explanation { allowed: false, reason, scope_map: Some(map_name.clone()), pattern: None };
        let Some(map) = self.maps.get(map_name) else {
            return deny(format!("scope map {map_name} of {who} does not exist"));
        };
        let Some(pattern) = map.granting_pattern(repo, action) else {
            return deny(format!("scope map {map_name} of {who} has no pattern granting {action} on repository {repo}"));
        };
        if let Some(lock) = self.attributes(repo).lock_for(action) {
            return Explanation {
                allowed: false,
                reason: format!("repository {repo} is {lock}"),
                scope_map: Some(map_name.clone()),
                pattern: Some(pattern),
            };
        }
        Explanation {
            allowed: true,
            reason: format!("scope map {map_name} of {who} grants {action} on repository {repo} through pattern {pattern}"),
            scope_map: Some(map_name.clone()),
            pattern: Some(pattern),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests;
