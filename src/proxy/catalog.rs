//! The filtered catalog. The registry's catalog lists every repository and its `Link`
//! cursor is the last name of its page, which may be one the caller must not see. So the
//! gateway pages the registry itself, keeps only names the grant's view allows, and writes
//! its own `Link` whose cursor is the last *visible* name it returned (valid because `last`
//! is exclusive and the order lexical). Hidden names never appear, not even as a cursor.
//!
//! Reads only; what is visible is the policy's answer (`CatalogView`).

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use super::Upstream;
use crate::body::{empty, full, Body};
use crate::oci::RepoName;
use crate::policy::CatalogView;
use crate::reject::Rejection;
use crate::route::{encode_query, Page};

/// The registry's default page size, used when the client gives no `n`.
const DEFAULT_N: u32 = 100;
/// Largest upstream catalog page body read (1000 names of ≤ 255 bytes, with room).
const MAX_PAGE_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

pub async fn list(up: &Upstream, view: &CatalogView, page: &Page<RepoName>) -> Result<Response<Body>, Rejection> {
    let want = page.n.unwrap_or(DEFAULT_N.min(up.limits.page.catalog_max_n)) as usize;
    let mut visible: Vec<RepoName> = Vec::new();
    let mut cursor = page.last.as_ref().map(|l| l.as_str().to_owned());
    // one more than asked, to know whether a next page exists
    while want > 0 && visible.len() <= want {
        let n = up.limits.page.catalog_max_n.to_string();
        let mut pairs = vec![("n", n.as_str())];
        if let Some(c) = &cursor {
            pairs.push(("last", c.as_str()));
        }
        let (names, more) = fetch_page(up, &format!("/v2/_catalog?{}", encode_query(pairs))).await?;
        if let Some(last) = names.last() {
            cursor = Some(last.clone());
        }
        visible.extend(names.iter().filter_map(|n| RepoName::parse(n).ok()).filter(|n| view.may_list(n)));
        if !more || names.is_empty() {
            break;
        }
    }
    let has_next = visible.len() > want;
    visible.truncate(want);
    let body = serde_json::json!({"repositories": visible.iter().map(RepoName::as_str).collect::<Vec<_>>()});
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let (true, Some(last)) = (has_next, visible.last()) {
        let n = want.to_string();
        let link = format!("</v2/_catalog?{}>; rel=\"next\"", encode_query([("last", last.as_str()), ("n", n.as_str())]));
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// One upstream page: its names and whether the registry says more follow.
async fn fetch_page(up: &Upstream, target: &str) -> Result<(Vec<String>, bool), Rejection> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{}{target}", up.origin))
        .header(header::ACCEPT, "application/json")
        .body(empty())
        .map_err(|e| Rejection::internal(e.to_string()))?;
    let resp = up.send(req, "catalog").await?;
    if resp.status() != StatusCode::OK {
        return Err(Rejection::bad_gateway(format!("registry answered the catalog with {}", resp.status())));
    }
    let more = resp.headers().contains_key(header::LINK);
    let bytes = Limited::new(resp.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| Rejection::bad_gateway(format!("cannot read the registry's catalog: {e}")))?
        .to_bytes();
    let page: CatalogPage = serde_json::from_slice(&bytes).map_err(|e| Rejection::bad_gateway(format!("registry sent an invalid catalog: {e}")))?;
    Ok((page.repositories.unwrap_or_default(), more))
}
