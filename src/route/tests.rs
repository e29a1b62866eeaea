//! Table tests for route classification: every endpoint of DESIGN §2 and the hostile paths
//! of reference/protocol.md §5 (dot segments, `%2F`, `//`, trailing slashes, upper case,
//! names holding route words, bad digests, POST on an upload id, unknown methods).

use super::*;
use crate::reject::Code;
use http::StatusCode;

const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const LIMITS: PageLimits = PageLimits { catalog_max_n: 1000, tags_max_n: 1000 };

fn classify_str(method: &str, target: &str) -> Result<Route, Rejection> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    classify(&Method::from_bytes(method.as_bytes()).unwrap(), path, query, None, LIMITS)
}

/// (method, target, kind, repository, required action or "" for none, upstream target)
#[test]
fn every_endpoint_classifies_and_rebuilds() {
    let d = D;
    let cases: Vec<(&str, String, EndpointKind, &str, &str, String)> = vec![
        ("GET", "/v2/".into(), EndpointKind::Base, "", "", "/v2/".into()),
        ("HEAD", "/v2/".into(), EndpointKind::Base, "", "", "/v2/".into()),
        ("GET", "/v2/_catalog?n=10&last=a/b".into(), EndpointKind::Catalog, "", "", "/v2/_catalog".into()),
        ("GET", "/v2/samples/hello-world/tags/list".into(), EndpointKind::Tags, "samples/hello-world", "metadata/read", "/v2/samples/hello-world/tags/list".into()),
        ("GET", "/v2/a/tags/list?n=5000&last=v1".into(), EndpointKind::Tags, "a", "metadata/read", "/v2/a/tags/list?n=1000&last=v1".into()),
        ("GET", "/v2/a/manifests/latest".into(), EndpointKind::Manifest, "a", "content/read", "/v2/a/manifests/latest".into()),
        ("HEAD", format!("/v2/a/manifests/{d}"), EndpointKind::Manifest, "a", "content/read", format!("/v2/a/manifests/{d}")),
        ("PUT", "/v2/a/manifests/v1".into(), EndpointKind::Manifest, "a", "content/write", "/v2/a/manifests/v1".into()),
        ("PUT", format!("/v2/a/manifests/{d}?tag=x&tag=y"), EndpointKind::Manifest, "a", "content/write", format!("/v2/a/manifests/{d}?tag=x&tag=y")),
        ("DELETE", format!("/v2/a/manifests/{d}"), EndpointKind::Manifest, "a", "content/delete", format!("/v2/a/manifests/{d}")),
        ("DELETE", "/v2/a/manifests/v1".into(), EndpointKind::Manifest, "a", "metadata/write", "/v2/a/manifests/v1".into()),
        ("GET", format!("/v2/a/blobs/{d}"), EndpointKind::Blob, "a", "content/read", format!("/v2/a/blobs/{d}")),
        ("HEAD", format!("/v2/a/blobs/{d}"), EndpointKind::Blob, "a", "content/read", format!("/v2/a/blobs/{d}")),
        ("DELETE", format!("/v2/a/blobs/{d}"), EndpointKind::Blob, "a", "content/delete", format!("/v2/a/blobs/{d}")),
        ("POST", "/v2/a/blobs/uploads/".into(), EndpointKind::StartUpload, "a", "content/write", "/v2/a/blobs/uploads/".into()),
        ("POST", format!("/v2/a/blobs/uploads/?digest={d}"), EndpointKind::StartUpload, "a", "content/write", format!("/v2/a/blobs/uploads/?digest=sha256%3A{}", &d[7..])),
        ("GET", "/v2/a/blobs/uploads/0f3e-11".into(), EndpointKind::Upload, "a", "content/write", "/v2/a/blobs/uploads/0f3e-11".into()),
        ("HEAD", "/v2/a/blobs/uploads/0f3e-11".into(), EndpointKind::Upload, "a", "content/write", "/v2/a/blobs/uploads/0f3e-11".into()),
        ("PATCH", "/v2/a/blobs/uploads/u?_state=abc%3D%3D".into(), EndpointKind::Upload, "a", "content/write", "/v2/a/blobs/uploads/u?_state=abc%3D%3D".into()),
        ("PUT", format!("/v2/a/blobs/uploads/u?_state=s&digest={d}"), EndpointKind::Upload, "a", "content/write", format!("/v2/a/blobs/uploads/u?_state=s&digest=sha256%3A{}", &d[7..])),
        ("DELETE", "/v2/a/blobs/uploads/u".into(), EndpointKind::Upload, "a", "content/write", "/v2/a/blobs/uploads/u".into()),
        ("GET", format!("/v2/a/referrers/{d}?artifactType=application/x"), EndpointKind::Referrers, "a", "content/read", format!("/v2/a/referrers/{d}?artifactType=application%2Fx")),
        // names may hold route words; the name is greedy, as in distribution
        ("GET", "/v2/foo/bar/manifests/tags/list".into(), EndpointKind::Tags, "foo/bar/manifests", "metadata/read", "/v2/foo/bar/manifests/tags/list".into()),
        ("GET", format!("/v2/a/blobs/uploads/blobs/{d}"), EndpointKind::Blob, "a/blobs/uploads", "content/read", format!("/v2/a/blobs/uploads/blobs/{d}")),
        ("GET", "/v2/a/manifests/b/manifests/c".into(), EndpointKind::Manifest, "a/manifests/b", "content/read", "/v2/a/manifests/b/manifests/c".into()),
        ("PATCH", "/v2/tags/blobs/uploads/blobs/uploads/u".into(), EndpointKind::Upload, "tags/blobs/uploads", "content/write", "/v2/tags/blobs/uploads/blobs/uploads/u".into()),
        ("GET", "/v2/a/tags/manifests/list".into(), EndpointKind::Manifest, "a/tags", "content/read", "/v2/a/tags/manifests/list".into()),
        // unknown query keys are dropped, never forwarded
        ("GET", "/v2/a/manifests/v1?ns=docker.io&x=1".into(), EndpointKind::Manifest, "a", "content/read", "/v2/a/manifests/v1".into()),
    ];
    for (m, target, kind, repo, action, upstream) in cases {
        let r = classify_str(m, &target).unwrap_or_else(|e| panic!("{m} {target}: {e:?}"));
        assert_eq!(r.kind(), kind, "{m} {target}");
        assert_eq!(r.repo().map(RepoName::as_str).unwrap_or(""), repo, "{m} {target}");
        let got_action = match r.requirement() {
            Requirement::Repository { action, .. } => action.as_str(),
            Requirement::Authenticated | Requirement::Catalog => "",
        };
        assert_eq!(got_action, action, "{m} {target}");
        let want = if matches!(kind, EndpointKind::Base | EndpointKind::Catalog) { None } else { Some(upstream) };
        assert_eq!(r.upstream_target(true), want, "{m} {target}");
    }
}

#[test]
fn mount_needs_both_parameters_and_is_stripped_unless_allowed() {
    let t = format!("/v2/mine/blobs/uploads/?mount={D}&from=pub/base");
    let r = classify_str("POST", &t).unwrap();
    match r.requirement() {
        Requirement::Repository { mount_from: Some(f), .. } => assert_eq!(f.as_str(), "pub/base"),
        other => panic!("{other:?}"),
    }
    let with = r.upstream_target(true).unwrap();
    assert!(with.contains("mount=") && with.contains("from=pub%2Fbase"), "{with}");
    assert_eq!(r.upstream_target(false).unwrap(), "/v2/mine/blobs/uploads/");
    // `from` without `mount` (or the reverse) is not a mount and is never forwarded
    let r = classify_str("POST", "/v2/mine/blobs/uploads/?from=victim/secret").unwrap();
    assert!(matches!(r.requirement(), Requirement::Repository { mount_from: None, .. }));
    assert_eq!(r.upstream_target(true).unwrap(), "/v2/mine/blobs/uploads/");
}

/// (method, target, status, code)
#[test]
fn hostile_and_malformed_requests_are_rejected() {
    let d = D;
    let cases: Vec<(&str, String, StatusCode, Code)> = vec![
        ("GET", "/v2/team%2Fsecret/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/a/%2e%2e/b/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/foo/../bar/baz/tags/list".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/./a/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/a//b/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "//v2/a/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/a/tags/list/".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2/a/manifests/latest/".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("POST", "/v2/a/blobs/uploads".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/V2/a/manifests/latest".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2/a/Manifests/latest".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2/Foo/bar/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::NameInvalid),
        ("GET", "/v2/localhost:5000/a/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::NameInvalid),
        ("GET", format!("/v2/{}/manifests/latest", "a".repeat(256)), StatusCode::BAD_REQUEST, Code::NameInvalid),
        ("GET", "/v2/a\\b/manifests/latest".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/a/manifests/sha256:ZZ".into(), StatusCode::BAD_REQUEST, Code::DigestInvalid),
        ("DELETE", "/v2/x/manifests/sha256:ZZ".into(), StatusCode::BAD_REQUEST, Code::DigestInvalid),
        ("GET", "/v2/a/blobs/sha256:abc".into(), StatusCode::BAD_REQUEST, Code::DigestInvalid),
        ("GET", "/v2/a/blobs/latest".into(), StatusCode::BAD_REQUEST, Code::DigestInvalid),
        ("GET", "/v2/a/manifests/.hidden".into(), StatusCode::BAD_REQUEST, Code::TagInvalid),
        ("GET", format!("/v2/a/manifests/{}", "t".repeat(129)), StatusCode::BAD_REQUEST, Code::TagInvalid),
        ("GET", "/v2/a/blobs/uploads/a:b".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("POST", "/v2/a/blobs/uploads/0f3e-11?_state=x".into(), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("POST", "/v2/a/manifests/latest".into(), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("PUT", format!("/v2/a/blobs/{d}"), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("OPTIONS", "/v2/a/manifests/latest".into(), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("TRACE", "/v2/".into(), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("PROPFIND", "/v2/a/tags/list".into(), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("DELETE", "/v2/_catalog".into(), StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        ("GET", "/v2/a/_catalog".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2/tags/list".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2/a/unknown/x".into(), StatusCode::NOT_FOUND, Code::Unsupported),
        ("GET", "/v2/a/referrers/latest".into(), StatusCode::BAD_REQUEST, Code::DigestInvalid),
        // queries
        ("GET", "/v2/a/tags/list?n=-1".into(), StatusCode::BAD_REQUEST, Code::PaginationNumberInvalid),
        ("GET", "/v2/a/tags/list?n=ten".into(), StatusCode::BAD_REQUEST, Code::PaginationNumberInvalid),
        ("GET", "/v2/_catalog?n=1&n=2".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/_catalog?last=Bad".into(), StatusCode::BAD_REQUEST, Code::NameInvalid),
        ("POST", format!("/v2/mine/blobs/uploads/?mount={d}&from=pub/base&from=victim/secret"), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("POST", format!("/v2/mine/blobs/uploads/?mount={d}&from=Victim"), StatusCode::BAD_REQUEST, Code::NameInvalid),
        ("POST", "/v2/mine/blobs/uploads/?mount=sha256:x&from=a".into(), StatusCode::BAD_REQUEST, Code::DigestInvalid),
        ("POST", format!("/v2/mine/blobs/uploads/?mount={d};from=victim/secret"), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("PATCH", "/v2/a/blobs/uploads/u?_state=%zz".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("PATCH", "/v2/a/blobs/uploads/u?_state=%ff".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("PATCH", "/v2/a/blobs/uploads/u?_state=a&_state=b".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("GET", "/v2/a/manifests/v1?tag=x".into(), StatusCode::BAD_REQUEST, Code::InvalidRequest),
        ("PUT", "/v2/a/manifests/v1?tag=.bad".into(), StatusCode::BAD_REQUEST, Code::TagInvalid),
    ];
    for (m, target, status, code) in cases {
        match classify_str(m, &target) {
            Ok(r) => panic!("{m} {target} was accepted as {:?}", r.endpoint),
            Err(e) => {
                assert_eq!((e.status, e.code), (status, code), "{m} {target}: {}", e.message);
                assert!(!e.message.is_empty());
            }
        }
    }
}

#[test]
fn form_and_multipart_bodies_are_refused() {
    let t = "/v2/mine/blobs/uploads/";
    for ct in ["application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8", "multipart/form-data; boundary=x"] {
        let e = classify(&Method::POST, t, None, Some(&HeaderValue::from_static(ct)), LIMITS).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
    }
    let ok = HeaderValue::from_static("application/octet-stream");
    assert!(classify(&Method::POST, t, None, Some(&ok), LIMITS).is_ok());
}

#[test]
fn page_size_is_clamped() {
    let r = classify_str("GET", "/v2/_catalog?n=99999").unwrap();
    match r.endpoint {
        Endpoint::Catalog { page } => assert_eq!(page.n, Some(1000)),
        other => panic!("{other:?}"),
    }
    let r = classify_str("GET", "/v2/_catalog?n=0").unwrap();
    assert!(matches!(r.endpoint, Endpoint::Catalog { page: Page { n: Some(0), .. } }));
}

#[test]
fn repository_api_routes_classify_with_their_actions() {
    // (method, target, action, locks enforced)
    let cases = [
        ("GET", "/scopegate/v1/samples/hello-world", "metadata/read", false),
        ("PATCH", "/scopegate/v1/samples/hello-world", "metadata/write", false),
        ("DELETE", "/scopegate/v1/samples/hello-world", "content/delete", true),
        ("GET", "/scopegate/v1/samples/hello-world/_tags", "metadata/read", true),
        ("GET", "/scopegate/v1/samples/hello-world/_tags/v1", "metadata/read", true),
        ("DELETE", "/scopegate/v1/samples/hello-world/_tags/v1", "metadata/write", true),
        ("GET", "/scopegate/v1/samples/hello-world/_manifests", "metadata/read", true),
        ("DELETE", "/scopegate/v1/samples/hello-world/_manifests/v1", "content/delete", true),
        ("GET", "/scopegate/v1/a/tags/_tags", "metadata/read", true),
    ];
    for (m, target, action, enforce) in cases {
        let r = classify_str(m, target).unwrap_or_else(|e| panic!("{m} {target}: {e:?}"));
        match r.requirement() {
            Requirement::Repository { action: a, locks, .. } => assert_eq!((a.as_str(), locks), (action, enforce), "{m} {target}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.upstream_target(true), None, "never forwarded as is");
    }
    assert_eq!(classify_str("GET", "/scopegate/v1/a/tags/_tags").unwrap().repo().unwrap().as_str(), "a/tags");
    for (m, target, status) in [
        ("GET", "/scopegate/v1/", StatusCode::BAD_REQUEST),
        ("GET", "/scopegate/v1/_tags", StatusCode::BAD_REQUEST),
        ("GET", "/scopegate/v1/a/_other", StatusCode::NOT_FOUND),
        ("GET", "/scopegate/v1/a/_tags/v1/x", StatusCode::NOT_FOUND),
        ("POST", "/scopegate/v1/a", StatusCode::METHOD_NOT_ALLOWED),
        ("PATCH", "/scopegate/v1/a/_tags", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/scopegate/v1/a/_manifests/sha256:zz", StatusCode::BAD_REQUEST),
        ("GET", "/scopegate/v1/A/_tags", StatusCode::BAD_REQUEST),
        ("GET", "/scopegate/v1/a%2Fb/_tags", StatusCode::BAD_REQUEST),
    ] {
        let e = classify_str(m, target).unwrap_err();
        assert_eq!(e.status, status, "{m} {target}: {}", e.message);
    }
}
