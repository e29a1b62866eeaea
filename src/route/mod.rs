//! Route classification: the only parser of request targets on the public listener: the
//! registry API under `/v2` and scopegate's own repository API under `/scopegate/v1`. `classify` turns method,
//! path, query and content type into a typed [`Route`] (which endpoint, which repository,
//! which reference) or a rejection that says what was wrong. The path forwarded upstream is
//! rebuilt from the parsed parts ([`Route::upstream_target`]), never copied from the client.
//!
//! Rules (DESIGN §2, reference/protocol.md §5.3): distribution's route patterns with a
//! greedy, anchored name, tried in distribution's order; the OCI name grammar; no `%`, no
//! dot or empty segments, no trailing-slash variants, case-sensitive literals; a manifest
//! reference holding `:` must be a valid digest; strict queries; no form bodies; a method
//! allowlist per endpoint. Reject, never repair. This module decides nothing about who
//! may do what; it only says what a request would do.

mod query;
#[cfg(test)]
mod tests;

use http::{HeaderValue, Method};

use crate::access::{Action, Requirement};
use crate::oci::{Digest, GrammarError, Reference, RepoName, Tag, UploadId};
use crate::reject::{Code, Rejection};

pub use query::encode as encode_query;

/// Largest `n` any paging request may ask of the upstream (CVE-2023-2253 amplification).
#[derive(Clone, Copy, Debug)]
pub struct PageLimits {
    pub catalog_max_n: u32,
    pub tags_max_n: u32,
}

/// A classified `/v2` request.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    pub endpoint: Endpoint,
}

/// `n` and `last` of a paged listing, `n` already clamped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page<L> {
    pub n: Option<u32>,
    pub last: Option<L>,
}

/// A cross-repository mount request (`?mount=<digest>&from=<repo>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub digest: Digest,
    pub from: RepoName,
}

#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `GET/HEAD /v2/`
    Base,
    /// `GET /v2/_catalog`
    Catalog { page: Page<RepoName> },
    /// `GET /v2/<name>/tags/list`
    Tags { repo: RepoName, page: Page<Tag> },
    /// `GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference>`; `tags` are PUT's `?tag=` values.
    Manifest { repo: RepoName, reference: Reference, tags: Vec<Tag> },
    /// `GET/HEAD/DELETE /v2/<name>/blobs/<digest>`
    Blob { repo: RepoName, digest: Digest },
    /// `POST /v2/<name>/blobs/uploads/`
    StartUpload { repo: RepoName, mount: Option<Mount>, digest: Option<Digest> },
    /// `GET/HEAD/PATCH/PUT/DELETE /v2/<name>/blobs/uploads/<id>`
    Upload { repo: RepoName, id: UploadId, state: Option<String>, digest: Option<Digest> },
    /// `GET /v2/<name>/referrers/<digest>` (OCI 1.1)
    Referrers { repo: RepoName, digest: Digest, artifact_type: Option<String> },
    /// scopegate's repository API, `/scopegate/v1/<name>[/...]` (served by the gateway).
    Repository { repo: RepoName, op: RepoOp },
}

/// Operations of the repository API (what `az acr repository` does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoOp {
    /// `GET /scopegate/v1/<name>`: attributes and counts.
    Show,
    /// `PATCH /scopegate/v1/<name>`: change attributes (locks).
    Update,
    /// `DELETE /scopegate/v1/<name>`: delete every tagged manifest.
    Delete,
    /// `GET /scopegate/v1/<name>/_tags`
    Tags,
    /// `GET /scopegate/v1/<name>/_tags/<tag>`
    ShowTag(Tag),
    /// `DELETE /scopegate/v1/<name>/_tags/<tag>`: remove the tag, keep the manifest.
    Untag(Tag),
    /// `GET /scopegate/v1/<name>/_manifests`
    Manifests,
    /// `GET /scopegate/v1/<name>/_manifests/<reference>`
    ShowManifest(Reference),
    /// `DELETE /scopegate/v1/<name>/_manifests/<reference>`: delete the manifest (and its tags).
    DeleteManifest(Reference),
}

/// The closed set of endpoint kinds, for metrics labels and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    StartUpload,
    Upload,
    Referrers,
    RepositoryApi,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Base => "base",
            EndpointKind::Catalog => "catalog",
            EndpointKind::Tags => "tags",
            EndpointKind::Manifest => "manifest",
            EndpointKind::Blob => "blob",
            EndpointKind::StartUpload => "upload_start",
            EndpointKind::Upload => "upload",
            EndpointKind::Referrers => "referrers",
            EndpointKind::RepositoryApi => "repository_api",
        }
    }
}

impl Route {
    pub fn kind(&self) -> EndpointKind {
        match self.endpoint {
            Endpoint::Base => EndpointKind::Base,
            Endpoint::Catalog { .. } => EndpointKind::Catalog,
            Endpoint::Tags { .. } => EndpointKind::Tags,
            Endpoint::Manifest { .. } => EndpointKind::Manifest,
            Endpoint::Blob { .. } => EndpointKind::Blob,
            Endpoint::StartUpload { .. } => EndpointKind::StartUpload,
            Endpoint::Upload { .. } => EndpointKind::Upload,
            Endpoint::Referrers { .. } => EndpointKind::Referrers,
            Endpoint::Repository { .. } => EndpointKind::RepositoryApi,
        }
    }

    /// The repository the request acts on, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        match &self.endpoint {
            Endpoint::Base | Endpoint::Catalog { .. } => None,
            Endpoint::Tags { repo, .. }
            | Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::StartUpload { repo, .. }
            | Endpoint::Upload { repo, .. }
            | Endpoint::Referrers { repo, .. }
            | Endpoint::Repository { repo, .. } => Some(repo),
        }
    }

    /// What the request needs (DESIGN §2). The method was checked by `classify`, so every
    /// arm here is a route the table names; there is no fallback arm.
    pub fn requirement(&self) -> Requirement<'_> {
        let m = &self.method;
        let (repo, action, mount_from) = match &self.endpoint {
            Endpoint::Base => return Requirement::Authenticated,
            Endpoint::Catalog { .. } => return Requirement::Catalog,
            Endpoint::Tags { repo, .. } => (repo, Action::MetadataRead, None),
            Endpoint::Manifest { repo, reference, .. } => {
                let action = if *m == Method::PUT {
                    Action::ContentWrite
                } else if *m == Method::DELETE {
                    match reference {
                        Reference::Digest(_) => Action::ContentDelete,
                        Reference::Tag(_) => Action::MetadataWrite,
                    }
                } else {
                    Action::ContentRead
                };
                (repo, action, None)
            }
            Endpoint::Blob { repo, .. } => {
                (repo, if *m == Method::DELETE { Action::ContentDelete } else { Action::ContentRead }, None)
            }
            Endpoint::StartUpload { repo, mount, .. } => (repo, Action::ContentWrite, mount.as_ref().map(|x| &x.from)),
            Endpoint::Upload { repo, .. } => (repo, Action::ContentWrite, None),
            Endpoint::Referrers { repo, .. } => (repo, Action::ContentRead, None),
            Endpoint::Repository { repo, op } => {
                let (action, locks) = match op {
                    // the attributes themselves must stay readable and changeable when locked
                    RepoOp::Show => (Action::MetadataRead, false),
                    RepoOp::Update => (Action::MetadataWrite, false),
                    RepoOp::Tags | RepoOp::ShowTag(_) | RepoOp::Manifests | RepoOp::ShowManifest(_) => (Action::MetadataRead, true),
                    RepoOp::Untag(_) => (Action::MetadataWrite, true),
                    RepoOp::Delete | RepoOp::DeleteManifest(_) => (Action::ContentDelete, true),
                };
                return Requirement::Repository { repo, action, mount_from: None, locks };
            }
        };
        Requirement::Repository { repo, action, mount_from, locks: true }
    }

    /// Path and query to send upstream, rebuilt from the parsed parts. `mount_allowed` says
    /// whether the policy let `mount`/`from` through; when it did not, they are left out and
    /// the request becomes a plain upload start. `None` for what the gateway answers itself
    /// (the base route, the catalog, the repository API).
    pub fn upstream_target(&self, mount_allowed: bool) -> Option<String> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let n_text;
        let path = match &self.endpoint {
            Endpoint::Base | Endpoint::Catalog { .. } | Endpoint::Repository { .. } => return None,
            Endpoint::Tags { repo, page } => {
                n_text = page.n.map(|n| n.to_string());
                if let Some(n) = &n_text {
                    pairs.push(("n", n));
                }
                if let Some(l) = &page.last {
                    pairs.push(("last", l.as_str()));
                }
                format!("/v2/{repo}/tags/list")
            }
            Endpoint::Manifest { repo, reference, tags } => {
                pairs.extend(tags.iter().map(|t| ("tag", t.as_str())));
                format!("/v2/{repo}/manifests/{}", reference.as_str())
            }
            Endpoint::Blob { repo, digest } => format!("/v2/{repo}/blobs/{digest}"),
            Endpoint::StartUpload { repo, mount, digest } => {
                if let (Some(m), true) = (mount, mount_allowed) {
                    pairs.push(("mount", m.digest.as_str()));
                    pairs.push(("from", m.from.as_str()));
                }
                if let Some(d) = digest {
                    pairs.push(("digest", d.as_str()));
                }
                format!("/v2/{repo}/blobs/uploads/")
            }
            Endpoint::Upload { repo, id, state, digest } => {
                if let Some(s) = state {
                    pairs.push(("_state", s));
                }
                if let Some(d) = digest {
                    pairs.push(("digest", d.as_str()));
                }
                format!("/v2/{repo}/blobs/uploads/{}", id.as_str())
            }
            Endpoint::Referrers { repo, digest, artifact_type } => {
                if let Some(t) = artifact_type {
                    pairs.push(("artifactType", t));
                }
                format!("/v2/{repo}/referrers/{digest}")
            }
        };
        if pairs.is_empty() {
            Some(path)
        } else {
            Some(format!("{path}?{}", query::encode(pairs)))
        }
    }
}

/// Classifies a request to the `/v2` tree. `path` must start with `/v2`.
pub fn classify(
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
    content_type: Option<&HeaderValue>,
    limits: PageLimits,
) -> Result<Route, Rejection> {
    check_path_bytes(path)?;
    check_body_type(content_type)?;
    let q = query::Query::parse(raw_query)?;
    let endpoint = if let Some(rest) = path.strip_prefix(REPOSITORY_API) {
        match_repository_api(method, rest)?
    } else if let Some(rest) = path.strip_prefix("/v2/") {
        match_endpoint(rest, &q, limits)?
    } else {
        return Err(Rejection::not_found(Code::Unsupported, "no registry endpoint at this path (the API root is /v2/)"));
    };
    let allowed = allowed_methods(&endpoint);
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        let msg = if matches!(endpoint, Endpoint::Upload { .. }) && *method == Method::POST {
            "POST is not allowed on an upload session; start a new upload at /v2/<name>/blobs/uploads/".to_owned()
        } else {
            format!("method {method} is not allowed here (allowed: {allowed})")
        };
        return Err(Rejection::method_not_allowed(allowed, msg));
    }
    if *method != Method::PUT {
        if let Endpoint::Manifest { tags, .. } = &endpoint {
            if !tags.is_empty() {
                return Err(bad(Code::InvalidRequest, "the tag parameter is only meaningful on a manifest PUT"));
            }
        }
    }
    Ok(Route { method: method.clone(), endpoint })
}

fn allowed_methods(e: &Endpoint) -> &'static str {
    match e {
        Endpoint::Base => "GET, HEAD",
        Endpoint::Catalog { .. } | Endpoint::Tags { .. } | Endpoint::Referrers { .. } => "GET",
        Endpoint::Manifest { .. } => "GET, HEAD, PUT, DELETE",
        Endpoint::Blob { .. } => "GET, HEAD, DELETE",
        Endpoint::StartUpload { .. } => "POST",
        Endpoint::Upload { .. } => "GET, HEAD, PATCH, PUT, DELETE",
        Endpoint::Repository { op, .. } => match op {
            RepoOp::Show | RepoOp::Update | RepoOp::Delete => "GET, PATCH, DELETE",
            RepoOp::Tags | RepoOp::Manifests => "GET",
            RepoOp::ShowTag(_) | RepoOp::Untag(_) | RepoOp::ShowManifest(_) | RepoOp::DeleteManifest(_) => "GET, DELETE",
        },
    }
}

/// Prefix of scopegate's repository API.
pub const REPOSITORY_API: &str = "/scopegate/v1/";

/// `/scopegate/v1/<name>[/_tags[/<tag>]|/_manifests[/<reference>]]`. Name components never
/// start with `_`, so the first `_` segment ends the name. The method picks the operation.
fn match_repository_api(method: &Method, rest: &str) -> Result<Endpoint, Rejection> {
    let segs: Vec<&str> = rest.split('/').collect();
    let cut = segs.iter().position(|s| s.starts_with('_')).unwrap_or(segs.len());
    let name_len: usize = segs.iter().take(cut).map(|s| s.len() + 1).sum();
    let repo = repo(rest.get(..name_len.saturating_sub(1)).unwrap_or_default())?;
    let tail: Vec<&str> = segs.iter().skip(cut).copied().collect();
    let m = |get: RepoOp, other: Option<RepoOp>| if *method == Method::GET { get } else { other.unwrap_or(get) };
    let op = match tail.as_slice() {
        [] => match *method {
            Method::PATCH => RepoOp::Update,
            Method::DELETE => RepoOp::Delete,
            _ => RepoOp::Show,
        },
        ["_tags"] => RepoOp::Tags,
        ["_tags", tag] => {
            let t = Tag::parse(tag).map_err(grammar)?;
            m(RepoOp::ShowTag(t.clone()), (*method == Method::DELETE).then_some(RepoOp::Untag(t)))
        }
        ["_manifests"] => RepoOp::Manifests,
        ["_manifests", reference] => {
            let r = Reference::parse(reference).map_err(grammar)?;
            m(RepoOp::ShowManifest(r.clone()), (*method == Method::DELETE).then_some(RepoOp::DeleteManifest(r)))
        }
        _ => return Err(no_route("no repository API endpoint at this path")),
    };
    Ok(Endpoint::Repository { repo, op })
}

/// Only the bytes registry routes are made of; this also refuses every `%`, `\`, space,
/// control and non-ASCII byte. Then: no empty or dot segments, except the one trailing
/// slash the base and upload-start routes end with.
fn check_path_bytes(path: &str) -> Result<(), Rejection> {
    if let Some(c) = path.bytes().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'/' | b'.' | b'_' | b'-' | b':' | b'='))) {
        let what = if c == b'%' { "percent-encoding".to_owned() } else { format!("the byte {:?}", char::from(c)) };
        return Err(bad(Code::InvalidRequest, format!("request path contains {what}, which no registry route uses")));
    }
    let segments = path.split('/').skip(1);
    let n = path.split('/').count().saturating_sub(1);
    for (i, seg) in segments.enumerate() {
        if seg == "." || seg == ".." {
            return Err(bad(Code::InvalidRequest, "request path contains a dot segment"));
        }
        if seg.is_empty() && i + 1 != n {
            return Err(bad(Code::InvalidRequest, "request path contains an empty segment (//)"));
        }
    }
    Ok(())
}

/// Form and multipart bodies are refused: distribution reads `from`/`mount`/`digest` from
/// them with precedence over the query, so a gateway that reads only the query would be
/// fooled (reference/protocol.md §5.2).
/// The request's one `Content-Type`. Two or more are refused: the gateway and the registry
/// could read different ones (a form type hidden behind an innocent first line).
pub fn single_content_type(headers: &http::HeaderMap) -> Result<Option<&HeaderValue>, Rejection> {
    let mut all = headers.get_all(http::header::CONTENT_TYPE).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(bad(Code::InvalidRequest, "more than one Content-Type header"));
    }
    Ok(first)
}

fn check_body_type(content_type: Option<&HeaderValue>) -> Result<(), Rejection> {
    let Some(v) = content_type else { return Ok(()) };
    let t = v.to_str().map_err(|_| bad(Code::InvalidRequest, "Content-Type is not ASCII"))?;
    let media = t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if media == "application/x-www-form-urlencoded" || media.starts_with("multipart/") {
        return Err(Rejection::unsupported_media_type(format!("{media} bodies are not accepted on /v2 routes")));
    }
    Ok(())
}

fn match_endpoint(rest: &str, q: &query::Query, limits: PageLimits) -> Result<Endpoint, Rejection> {
    if rest.is_empty() {
        return Ok(Endpoint::Base);
    }
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog { page: page(q, limits.catalog_max_n, RepoName::parse)? });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/") {
        let mount = match (q.one("mount")?, q.one("from")?) {
            (Some(d), Some(f)) => Some(Mount { digest: Digest::parse(d).map_err(grammar)?, from: RepoName::parse(f).map_err(grammar)? }),
            _ => None,
        };
        let digest = q.one("digest")?.map(Digest::parse).transpose().map_err(grammar)?;
        return Ok(Endpoint::StartUpload { repo: repo(name)?, mount, digest });
    }
    if rest.ends_with('/') {
        return Err(no_route("no registry route ends with '/' here (trailing-slash variants are not accepted)"));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    // `rest` holds no empty segment here, and a name needs at least one segment before the
    // two literal ones, so every route below needs n >= 3.
    if n < 3 {
        return Err(no_route("no registry endpoint at this path"));
    }
    let at = |i: usize| segs.get(i).copied().unwrap_or_default();
    let last = at(n - 1);
    let name_before = |k: usize| -> &str {
        // the name is `rest` up to the k-th segment from the end (greedy, like distribution)
        let cut: usize = segs.iter().take(n - k).map(|s| s.len() + 1).sum();
        rest.get(..cut.saturating_sub(1)).unwrap_or_default()
    };
    if at(n - 2) == "tags" && last == "list" {
        return Ok(Endpoint::Tags { repo: repo(name_before(2))?, page: page(q, limits.tags_max_n, Tag::parse)? });
    }
    if at(n - 2) == "manifests" {
        let reference = Reference::parse(last).map_err(grammar)?;
        let tags = q.all("tag").map(Tag::parse).collect::<Result<Vec<_>, _>>().map_err(grammar)?;
        return Ok(Endpoint::Manifest { repo: repo(name_before(2))?, reference, tags });
    }
    if at(n - 2) == "blobs" {
        if last == "uploads" {
            return Err(no_route("an upload starts at /v2/<name>/blobs/uploads/ (with the trailing slash)"));
        }
        return Ok(Endpoint::Blob { repo: repo(name_before(2))?, digest: Digest::parse(last).map_err(grammar)? });
    }
    if n >= 4 && at(n - 3) == "blobs" && at(n - 2) == "uploads" {
        let id = UploadId::parse(last).map_err(grammar)?;
        let state = q.one("_state")?.map(str::to_owned);
        let digest = q.one("digest")?.map(Digest::parse).transpose().map_err(grammar)?;
        return Ok(Endpoint::Upload { repo: repo(name_before(3))?, id, state, digest });
    }
    if at(n - 2) == "referrers" {
        let digest = Digest::parse(last).map_err(grammar)?;
        let artifact_type = q.one("artifactType")?.map(str::to_owned);
        return Ok(Endpoint::Referrers { repo: repo(name_before(2))?, digest, artifact_type });
    }
    Err(no_route("no registry endpoint at this path"))
}

fn repo(s: &str) -> Result<RepoName, Rejection> {
    RepoName::parse(s).map_err(grammar)
}

fn page<L>(q: &query::Query, max: u32, parse_last: fn(&str) -> Result<L, GrammarError>) -> Result<Page<L>, Rejection> {
    let n = match q.one("n")? {
        None => None,
        Some(t) => {
            let valid = !t.is_empty() && t.len() <= 10 && t.bytes().all(|c| c.is_ascii_digit());
            let v: u64 = if valid { t.parse().unwrap_or(u64::MAX) } else { u64::MAX };
            if !valid {
                return Err(bad(Code::PaginationNumberInvalid, format!("n must be a non-negative integer, got {t:?}")));
            }
            Some(u32::try_from(v.min(u64::from(max))).unwrap_or(max))
        }
    };
    let last = q.one("last")?.map(parse_last).transpose().map_err(grammar)?;
    Ok(Page { n, last })
}

fn grammar(e: GrammarError) -> Rejection {
    let code = match e {
        GrammarError::Name(_) => Code::NameInvalid,
        GrammarError::Tag(_) => Code::TagInvalid,
        GrammarError::Digest(_) => Code::DigestInvalid,
        GrammarError::UploadId(_) => Code::InvalidRequest,
    };
    bad(code, e.to_string())
}

fn bad(code: Code, msg: impl Into<std::borrow::Cow<'static, str>>) -> Rejection {
    Rejection::bad_request(code, msg)
}

fn no_route(msg: &'static str) -> Rejection {
    Rejection::not_found(Code::Unsupported, msg)
}
