//! Fuzzes route classification (`route::classify`), the only parser of request targets on
//! the public listener. Input: `<METHOD> <request-target>[\n<Content-Type>]`. The target is
//! parsed into a URI the way the HTTP server does, and its path and query are classified.
//!
//! Invariants checked for every accepted request:
//! - the requirement names the route's repository (and a mount source only on a mount);
//! - a page size never exceeds its limit;
//! - the forwarded target exists exactly for the proxied endpoints, is a valid URI under
//!   `/v2/`, classifies again to the same endpoint (the mount dropped when not allowed),
//!   and rebuilds to itself;
//! - a repository-API request, rebuilt from its parsed parts, classifies to the same
//!   endpoint.

#![no_main]

use http::{HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use scopegate::access::Requirement;
use scopegate::route::{classify, Endpoint, PageLimits, RepoOp, Route, REPOSITORY_API};
use scopegate_fuzz::split_at_byte;

const LIMITS: PageLimits = PageLimits { catalog_max_n: 100, tags_max_n: 50 };

fuzz_target!(|data: &[u8]| {
    let (method, Some(rest)) = split_at_byte(data, b' ') else { return };
    let Ok(method) = Method::from_bytes(method) else { return };
    let (target, content_type) = split_at_byte(rest, b'\n');
    let Ok(uri) = Uri::try_from(target) else { return };
    let content_type = match content_type.map(HeaderValue::from_bytes) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return,
    };
    let Ok(route) = classify(&method, uri.path(), uri.query(), content_type.as_ref(), LIMITS) else { return };
    assert_eq!(route.method, method);
    check_requirement(&route);
    check_pages(&route);
    for mount_allowed in [true, false] {
        check_forwarded(&route, mount_allowed);
    }
    check_repository_api(&route);
});

fn check_requirement(route: &Route) {
    match (route.requirement(), &route.endpoint) {
        (Requirement::Authenticated, Endpoint::Base) | (Requirement::Catalog, Endpoint::Catalog { .. }) => {}
        (Requirement::Repository { repo, mount_from, .. }, e) => {
            assert_eq!(Some(repo), route.repo(), "requirement and route name different repositories");
            let mount = match e {
                Endpoint::StartUpload { mount, .. } => mount.as_ref().map(|m| &m.from),
                _ => None,
            };
            assert_eq!(mount_from, mount, "mount source differs between requirement and route");
        }
        (need, e) => panic!("requirement {need:?} for endpoint {e:?}"),
    }
}

fn check_pages(route: &Route) {
    match &route.endpoint {
        Endpoint::Catalog { page } => assert!(page.n.is_none_or(|n| n <= LIMITS.catalog_max_n)),
        Endpoint::Tags { page, .. } => assert!(page.n.is_none_or(|n| n <= LIMITS.tags_max_n)),
        _ => {}
    }
}

/// The endpoint the forwarded target must classify to.
fn expected_after_forwarding(route: &Route, mount_allowed: bool) -> Endpoint {
    match &route.endpoint {
        Endpoint::StartUpload { repo, digest, .. } if !mount_allowed => {
            Endpoint::StartUpload { repo: repo.clone(), mount: None, digest: digest.clone() }
        }
        e => e.clone(),
    }
}

fn check_forwarded(route: &Route, mount_allowed: bool) {
    let proxied = !matches!(route.endpoint, Endpoint::Base | Endpoint::Catalog { .. } | Endpoint::Repository { .. });
    let Some(target) = route.upstream_target(mount_allowed) else {
        assert!(!proxied, "no forwarded target for {:?}", route.endpoint);
        return;
    };
    assert!(proxied, "forwarded target {target:?} for {:?}", route.endpoint);
    assert!(target.starts_with("/v2/"), "forwarded target {target:?} leaves /v2/");
    let uri = Uri::try_from(target.as_str()).unwrap_or_else(|e| panic!("forwarded target {target:?} is not a URI: {e}"));
    let again = classify(&route.method, uri.path(), uri.query(), None, LIMITS)
        .unwrap_or_else(|r| panic!("forwarded target {target:?} is rejected: {}", r.message));
    let want = expected_after_forwarding(route, mount_allowed);
    assert_eq!(format!("{:?}", again.endpoint), format!("{want:?}"), "forwarded target {target:?} classifies differently");
    assert_eq!(again.upstream_target(mount_allowed).as_deref(), Some(target.as_str()), "forwarded target does not rebuild to itself");
}

fn check_repository_api(route: &Route) {
    let Endpoint::Repository { repo, op } = &route.endpoint else { return };
    let tail = match op {
        RepoOp::Show | RepoOp::Update | RepoOp::Delete => String::new(),
        RepoOp::Tags => "/_tags".into(),
        RepoOp::ShowTag(t) | RepoOp::Untag(t) => format!("/_tags/{t}"),
        RepoOp::Manifests => "/_manifests".into(),
        RepoOp::ShowManifest(r) | RepoOp::DeleteManifest(r) => format!("/_manifests/{r}"),
    };
    let path = format!("{REPOSITORY_API}{repo}{tail}");
    let again = classify(&route.method, &path, None, None, LIMITS)
        .unwrap_or_else(|r| panic!("rebuilt repository API path {path:?} is rejected: {}", r.message));
    assert_eq!(format!("{:?}", again.endpoint), format!("{:?}", route.endpoint), "rebuilt path {path:?} classifies differently");
}
