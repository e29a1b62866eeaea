//! Decision tests: holdings, session intersection, the 401/403 split and mounts.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::*;
use crate::access::Action::*;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn policy(status: Status) -> Arc<Policy> {
    let mut m = ScopeMap::new(MapName::parse("hello-map").unwrap(), String::new(), OffsetDateTime::UNIX_EPOCH, BTreeMap::new());
    m.add(RepoPattern::parse("samples/hello-world").unwrap(), ActionSet::of(&[ContentRead, ContentWrite]));
    m.add(RepoPattern::parse("pub/*").unwrap(), ActionSet::of(&[ContentRead, MetadataRead]));
    let t = Token::new(TokenName::parse("ci").unwrap(), m.name.clone(), status, OffsetDateTime::UNIX_EPOCH);
    Arc::new(Policy::new(1, vec![m], vec![t], None))
}

fn basic() -> Principal {
    Principal { subject: Subject::Token(TokenName::parse("ci").unwrap()), credential: CredentialKind::Basic, session: None }
}

fn session(access: Access) -> Principal {
    Principal { credential: CredentialKind::Session, session: Some(std::sync::Arc::new(access)), ..basic() }
}

fn repo_need(repo: &RepoName, action: Action) -> Requirement<'_> {
    Requirement::Repository { repo, action, mount_from: None, locks: true }
}

#[test]
fn scope_map_grants_exactly_its_actions() {
    let p = policy(Status::Enabled);
    let hello = n("samples/hello-world");
    assert!(p.decide(&basic(), repo_need(&hello, ContentWrite)).is_ok());
    assert!(matches!(p.decide(&basic(), repo_need(&hello, ContentDelete)), Err(Denial::Denied { .. })));
    assert!(matches!(p.decide(&basic(), repo_need(&n("samples/nginx"), ContentRead)), Err(Denial::Denied { .. })));
    assert!(p.decide(&basic(), repo_need(&n("pub/base/x"), MetadataRead)).is_ok());
}

#[test]
fn disabled_token_holds_nothing() {
    let p = policy(Status::Disabled);
    assert!(p.decide(&basic(), repo_need(&n("samples/hello-world"), ContentRead)).is_err());
}

#[test]
fn session_access_is_intersected_with_the_policy_now() {
    let p = policy(Status::Enabled);
    let hello = n("samples/hello-world");
    let nginx = n("samples/nginx");
    let mut a = Access::default();
    a.add(hello.clone(), ActionSet::of(&[ContentRead]));
    a.add(nginx.clone(), ActionSet::ALL);
    let s = session(a);
    assert!(p.decide(&s, repo_need(&hello, ContentRead)).is_ok());
    // held by the map but not carried by the session: a new token helps
    assert!(matches!(p.decide(&s, repo_need(&hello, ContentWrite)), Err(Denial::InsufficientScope { .. })));
    // carried by the session but not held by the map (any more): refused all the same
    match p.decide(&s, repo_need(&nginx, ContentRead)) {
        Err(Denial::InsufficientScope { reason, .. }) => assert!(reason.contains("has no pattern granting"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_credential_is_asked_to_log_in() {
    let p = policy(Status::Enabled);
    let hello = n("samples/hello-world");
    let anon = Principal::anonymous();
    assert!(matches!(p.decide(&anon, Requirement::Authenticated), Err(Denial::Unauthenticated { .. })));
    match p.decide(&anon, repo_need(&hello, ContentRead)) {
        Err(Denial::Unauthenticated { hints }) => assert_eq!(hints, vec![ScopeHint::Repository(hello, ContentRead)]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mount_from_an_unreadable_repository_is_not_allowed() {
    let p = policy(Status::Enabled);
    let hello = n("samples/hello-world");
    let public = n("pub/base");
    let secret = n("victim/secret");
    let g = p.decide(&basic(), Requirement::Repository { repo: &hello, action: ContentWrite, mount_from: Some(&public), locks: true }).unwrap();
    assert!(g.mount_allowed());
    let g = p.decide(&basic(), Requirement::Repository { repo: &hello, action: ContentWrite, mount_from: Some(&secret), locks: true }).unwrap();
    assert!(!g.mount_allowed());
}

#[test]
fn catalog_view_lists_only_metadata_readable_repositories() {
    let p = policy(Status::Enabled);
    let g = p.decide(&basic(), Requirement::Catalog).unwrap();
    let view = g.catalog().unwrap();
    assert!(view.may_list(&n("pub/x")));
    assert!(!view.may_list(&n("samples/hello-world")));
    // a session needs registry:catalog:* to list at all
    assert!(matches!(p.decide(&session(Access::default()), Requirement::Catalog), Err(Denial::InsufficientScope { .. })));
    let a = Access { catalog: true, ..Access::default() };
    assert!(p.decide(&session(a), Requirement::Catalog).is_ok());
}
