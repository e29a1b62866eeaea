//! scopegate's repository API (`/scopegate/v1/<name>…`), what `az acr repository` does with
//! a token's own credentials: show a repository (attributes and counts), list its tags and
//! manifests, delete it or one manifest, remove one tag, and change its attributes (the
//! locks every caller is subject to). Requests arrive authorized (a [`Grant`]); the
//! operations run against the registry's own API.
//!
//! Untagging: distribution 3 removes a tag with `DELETE /v2/<name>/manifests/<tag>`;
//! distribution 2.8 cannot remove a single tag. There the untag deletes the manifest and
//! puts it back, with its other tags, from a journal written to the store first, so a stop
//! half-way is finished at the next start and nothing is lost.
//!
//! This module decides nothing: the route said what is needed, the policy granted it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::body::{empty, full, Body, BoxError};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::policy::{Attributes, Grant};
use crate::reject::{Code, Rejection};
use crate::route::RepoOp;
use crate::state::{Runtime, State};
use crate::store::UntagJournal;

/// Every manifest type a registry may hold, for `Accept`.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws";
const MAX_JSON: usize = 4 * 1024 * 1024;

/// Serves one repository API request.
pub async fn handle<B>(state: &Arc<State>, rt: &Runtime, req: Request<B>, repo: &RepoName, op: &RepoOp, grant: &Grant) -> Result<Response<Body>, Rejection>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let ops = Ops { state, rt, grant, repo };
    let v = match op {
        RepoOp::Show => ops.show().await?,
        RepoOp::Update => ops.update(read_json(req).await?).await?,
        RepoOp::Delete => ops.delete_repository().await?,
        RepoOp::Tags => ops.tags().await?,
        RepoOp::ShowTag(t) => ops.show_tag(t).await?,
        RepoOp::Untag(t) => ops.untag(t).await?,
        RepoOp::Manifests => ops.manifests().await?,
        RepoOp::ShowManifest(r) => ops.show_manifest(r).await?,
        RepoOp::DeleteManifest(r) => ops.delete_manifest(r).await?,
    };
    let mut resp = Response::new(full(format!("{v:#}\n")));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The attribute changes a PATCH may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AttributeUpdate {
    read_enabled: Option<bool>,
    write_enabled: Option<bool>,
    delete_enabled: Option<bool>,
    list_enabled: Option<bool>,
}

async fn read_json<B>(req: Request<B>) -> Result<AttributeUpdate, Rejection>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| Rejection::bad_request(Code::InvalidRequest, format!("cannot read the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Rejection::bad_request(Code::InvalidRequest, format!("invalid attributes: {e}")))
}

/// A tag and what it points at.
struct Resolved {
    digest: Digest,
    media_type: String,
    size: u64,
}

struct Ops<'a> {
    state: &'a Arc<State>,
    rt: &'a Runtime,
    grant: &'a Grant,
    repo: &'a RepoName,
}

impl Ops<'_> {
    async fn call(&self, method: Method, target: &str, headers: &[(HeaderName, &str)], body: Body) -> Result<Response<Incoming>, Rejection> {
        self.rt.upstream.call(self.grant, method, target, headers, body).await
    }

    fn attributes_view(&self, a: &Attributes) -> Value {
        json!({
            "deleteEnabled": a.delete_enabled,
            "listEnabled": a.list_enabled,
            "readEnabled": a.read_enabled,
            "writeEnabled": a.write_enabled,
        })
    }

    fn registry(&self) -> String {
        let o = &self.rt.public_origin;
        o.split_once("://").map(|(_, h)| h.to_owned()).unwrap_or_else(|| o.clone())
    }

    /// The repository's tags, sorted; `None` if the registry does not know the repository.
    async fn tag_names(&self) -> Result<Option<Vec<Tag>>, Rejection> {
        let resp = self.call(Method::GET, &format!("/v2/{}/tags/list", self.repo), &[], empty()).await?;
        match resp.status() {
            StatusCode::OK => {
                #[derive(Deserialize)]
                struct TagList {
                    tags: Option<Vec<String>>,
                }
                let list: TagList = read_body(resp).await.and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| Rejection::bad_gateway(format!("registry sent an invalid tag list: {e}")))
                })?;
                let mut tags: Vec<Tag> = list.tags.unwrap_or_default().iter().filter_map(|t| Tag::parse(t).ok()).collect();
                tags.sort();
                Ok(Some(tags))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(upstream_status("listing tags", s)),
        }
    }

    async fn require_tags(&self) -> Result<Vec<Tag>, Rejection> {
        self.tag_names().await?.ok_or_else(|| Rejection::not_found(Code::NotFound, format!("repository {} not found", self.repo)))
    }

    async fn resolve(&self, reference: &str) -> Result<Option<Resolved>, Rejection> {
        let accept = [(header::ACCEPT, MANIFEST_TYPES)];
        let resp = self.call(Method::HEAD, &format!("/v2/{}/manifests/{reference}", self.repo), &accept, empty()).await?;
        match resp.status() {
            StatusCode::OK => {
                let h = resp.headers();
                let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let digest = Digest::parse(&text("docker-content-digest"))
                    .map_err(|_| Rejection::bad_gateway("registry sent a manifest without a valid Docker-Content-Digest"))?;
                Ok(Some(Resolved { digest, media_type: text("content-type"), size: text("content-length").parse().unwrap_or(0) }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(upstream_status("reading a manifest", s)),
        }
    }

    async fn require(&self, reference: &str) -> Result<Resolved, Rejection> {
        self.resolve(reference)
            .await?
            .ok_or_else(|| Rejection::not_found(Code::NotFound, format!("manifest {}:{reference} not found", self.repo)))
    }

    /// Every tag with the digest it points at.
    async fn tag_digests(&self, tags: &[Tag]) -> Result<Vec<(Tag, Resolved)>, Rejection> {
        let mut out = Vec::with_capacity(tags.len());
        for t in tags {
            // a tag removed between the listing and now is simply gone
            if let Some(r) = self.resolve(t.as_str()).await? {
                out.push((t.clone(), r));
            }
        }
        Ok(out)
    }

    async fn show(&self) -> Result<Value, Rejection> {
        let attributes = self.state.policy().attributes(self.repo);
        let tags = self.tag_names().await?;
        if tags.is_none() && attributes.is_default() {
            return Err(Rejection::not_found(Code::NotFound, format!("repository {} not found", self.repo)));
        }
        let tags = tags.unwrap_or_default();
        let resolved = self.tag_digests(&tags).await?;
        let manifests: std::collections::BTreeSet<&Digest> = resolved.iter().map(|(_, r)| &r.digest).collect();
        Ok(json!({
            "registry": self.registry(),
            "imageName": self.repo.as_str(),
            "changeableAttributes": self.attributes_view(&attributes),
            "tagCount": tags.len(),
            "manifestCount": manifests.len(),
        }))
    }

    async fn update(&self, u: AttributeUpdate) -> Result<Value, Rejection> {
        if u.read_enabled.is_none() && u.write_enabled.is_none() && u.delete_enabled.is_none() && u.list_enabled.is_none() {
            return Err(Rejection::bad_request(Code::InvalidRequest, "nothing to update: give readEnabled, writeEnabled, deleteEnabled or listEnabled"));
        }
        let repo = self.repo.clone();
        let attributes = self
            .state
            .write(move |store, policy| {
                let mut a = policy.attributes(&repo);
                a.read_enabled = u.read_enabled.unwrap_or(a.read_enabled);
                a.write_enabled = u.write_enabled.unwrap_or(a.write_enabled);
                a.delete_enabled = u.delete_enabled.unwrap_or(a.delete_enabled);
                a.list_enabled = u.list_enabled.unwrap_or(a.list_enabled);
                store.set_attributes(&repo, &a)?;
                Ok(a)
            })
            .await
            .map_err(|e| Rejection::internal(e.to_string()))?;
        info!(target: "scopegate::audit", repository = %self.repo, ?attributes, "repository attributes changed");
        Ok(json!({
            "registry": self.registry(),
            "imageName": self.repo.as_str(),
            "changeableAttributes": self.attributes_view(&attributes),
        }))
    }

    async fn tags(&self) -> Result<Value, Rejection> {
        let tags = self.require_tags().await?;
        let resolved = self.tag_digests(&tags).await?;
        let list: Vec<Value> = resolved.iter().map(|(t, r)| json!({"name": t.as_str(), "digest": r.digest.as_str()})).collect();
        Ok(json!({"registry": self.registry(), "imageName": self.repo.as_str(), "tags": list}))
    }

    async fn show_tag(&self, tag: &Tag) -> Result<Value, Rejection> {
        let r = self.require(tag.as_str()).await?;
        Ok(json!({
            "registry": self.registry(),
            "imageName": self.repo.as_str(),
            "tag": {"name": tag.as_str(), "digest": r.digest.as_str(), "mediaType": r.media_type, "size": r.size},
        }))
    }

    /// Tagged manifests, with their tags (untagged manifests are not listable through the
    /// registry API).
    async fn by_digest(&self) -> Result<BTreeMap<Digest, (Resolved, Vec<Tag>)>, Rejection> {
        let tags = self.require_tags().await?;
        let mut out: BTreeMap<Digest, (Resolved, Vec<Tag>)> = BTreeMap::new();
        for (t, r) in self.tag_digests(&tags).await? {
            match out.get_mut(&r.digest) {
                Some((_, ts)) => ts.push(t),
                None => {
                    out.insert(r.digest.clone(), (r, vec![t]));
                }
            }
        }
        Ok(out)
    }

    async fn manifests(&self) -> Result<Value, Rejection> {
        let list: Vec<Value> = self
            .by_digest()
            .await?
            .iter()
            .map(|(d, (r, tags))| json!({"digest": d.as_str(), "mediaType": r.media_type, "size": r.size, "tags": tags.iter().map(Tag::as_str).collect::<Vec<_>>()}))
            .collect();
        Ok(json!({"registry": self.registry(), "imageName": self.repo.as_str(), "manifests": list}))
    }

    async fn show_manifest(&self, reference: &Reference) -> Result<Value, Rejection> {
        let r = self.require(reference.as_str()).await?;
        let tags = self.tag_names().await?.unwrap_or_default();
        let same: Vec<String> =
            self.tag_digests(&tags).await?.into_iter().filter(|(_, x)| x.digest == r.digest).map(|(t, _)| t.to_string()).collect();
        Ok(json!({
            "registry": self.registry(),
            "imageName": self.repo.as_str(),
            "manifest": {"digest": r.digest.as_str(), "mediaType": r.media_type, "size": r.size, "tags": same},
        }))
    }

    async fn delete_digest(&self, digest: &Digest) -> Result<(), Rejection> {
        let resp = self.call(Method::DELETE, &format!("/v2/{}/manifests/{digest}", self.repo), &[], empty()).await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(Rejection::not_found(Code::NotFound, format!("manifest {}@{digest} not found", self.repo))),
            StatusCode::METHOD_NOT_ALLOWED => Err(Rejection::conflict("the registry does not allow deletes (enable storage.delete.enabled in its configuration)")),
            s => Err(upstream_status("deleting a manifest", s)),
        }
    }

    async fn delete_manifest(&self, reference: &Reference) -> Result<Value, Rejection> {
        let r = self.require(reference.as_str()).await?;
        self.delete_digest(&r.digest).await?;
        info!(target: "scopegate::audit", repository = %self.repo, digest = %r.digest, "manifest deleted");
        Ok(json!({"deleted": {"manifests": [r.digest.as_str()]}}))
    }

    async fn delete_repository(&self) -> Result<Value, Rejection> {
        let all = self.by_digest().await?;
        let mut tags: Vec<String> = Vec::new();
        for (d, (_, ts)) in &all {
            self.delete_digest(d).await?;
            tags.extend(ts.iter().map(ToString::to_string));
        }
        info!(target: "scopegate::audit", repository = %self.repo, manifests = all.len(), "repository deleted");
        Ok(json!({"deleted": {"manifests": all.keys().map(Digest::as_str).collect::<Vec<_>>(), "tags": tags}}))
    }

    async fn untag(&self, tag: &Tag) -> Result<Value, Rejection> {
        let _one_at_a_time = self.state.untag_lock.lock().await;
        replay_journal(self.state, self.rt, self.grant).await;
        let target = self.require(tag.as_str()).await?;
        // distribution 3: a native untag
        let resp = self.call(Method::DELETE, &format!("/v2/{}/manifests/{tag}", self.repo), &[], empty()).await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK => {
                info!(target: "scopegate::audit", repository = %self.repo, %tag, "tag removed");
                return Ok(json!({"untagged": tag.as_str(), "digest": target.digest.as_str()}));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                return Err(Rejection::conflict("the registry does not allow deletes (enable storage.delete.enabled in its configuration)"))
            }
            // distribution 2.8 takes the tag for a digest and refuses
            StatusCode::BAD_REQUEST => {}
            s => return Err(upstream_status("removing a tag", s)),
        }
        let manifest = self.manifest_bytes(&target.digest).await?;
        let tags = self.tag_names().await?.unwrap_or_default();
        let others: Vec<Tag> = tags.into_iter().filter(|t| t != tag).collect();
        let keep_tags: Vec<Tag> =
            self.tag_digests(&others).await?.into_iter().filter(|(_, r)| r.digest == target.digest).map(|(t, _)| t).collect();
        let mut journal = UntagJournal {
            id: 0,
            repo: self.repo.clone(),
            digest: target.digest.clone(),
            media_type: target.media_type.clone(),
            manifest: manifest.to_vec(),
            keep_tags,
        };
        let store = Arc::clone(&self.state.store);
        let j = journal.clone();
        journal.id = tokio::task::spawn_blocking(move || store.begin_untag(&j))
            .await
            .map_err(|e| Rejection::internal(e.to_string()))?
            .map_err(|e| Rejection::internal(e.to_string()))?;
        self.delete_digest(&target.digest).await?;
        restore(self.state, self.rt, self.grant, &journal).await?;
        info!(target: "scopegate::audit", repository = %self.repo, %tag, digest = %target.digest, "tag removed (manifest deleted and restored without it)");
        Ok(json!({"untagged": tag.as_str(), "digest": target.digest.as_str()}))
    }

    async fn manifest_bytes(&self, digest: &Digest) -> Result<Bytes, Rejection> {
        let accept = [(header::ACCEPT, MANIFEST_TYPES)];
        let resp = self.call(Method::GET, &format!("/v2/{}/manifests/{digest}", self.repo), &accept, empty()).await?;
        if resp.status() != StatusCode::OK {
            return Err(upstream_status("reading a manifest", resp.status()));
        }
        read_body(resp).await
    }
}

/// Puts a journaled manifest back with the tags it keeps, then closes the journal entry.
async fn restore(state: &Arc<State>, rt: &Runtime, grant: &Grant, j: &UntagJournal) -> Result<(), Rejection> {
    let ct = [(header::CONTENT_TYPE, j.media_type.as_str())];
    let refs = std::iter::once(j.digest.as_str()).chain(j.keep_tags.iter().map(Tag::as_str));
    for r in refs {
        let body = full(Bytes::from(j.manifest.clone()));
        let resp = rt.upstream.call(grant, Method::PUT, &format!("/v2/{}/manifests/{r}", j.repo), &ct, body).await?;
        if resp.status() != StatusCode::CREATED && resp.status() != StatusCode::OK {
            return Err(upstream_status("restoring a manifest", resp.status()));
        }
    }
    let store = Arc::clone(&state.store);
    let id = j.id;
    tokio::task::spawn_blocking(move || store.finish_untag(id))
        .await
        .map_err(|e| Rejection::internal(e.to_string()))?
        .map_err(|e| Rejection::internal(e.to_string()))
}

/// Finishes untags a previous run left half-done. Needs a grant like every upstream call;
/// the caller holds the untag lock.
pub async fn replay_journal(state: &Arc<State>, rt: &Runtime, grant: &Grant) {
    let store = Arc::clone(&state.store);
    let pending = match tokio::task::spawn_blocking(move || store.pending_untags()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return warn!(error = %e, "cannot read the untag journal"),
        Err(e) => return warn!(error = %e, "cannot read the untag journal"),
    };
    for j in pending {
        match restore(state, rt, grant, &j).await {
            Ok(()) => info!(repository = %j.repo, digest = %j.digest, "finished an interrupted untag"),
            Err(e) => warn!(repository = %j.repo, digest = %j.digest, error = %e.message, "cannot finish an interrupted untag yet"),
        }
    }
}

async fn read_body(resp: Response<Incoming>) -> Result<Bytes, Rejection> {
    Ok(Limited::new(resp.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| Rejection::bad_gateway(format!("cannot read the registry's answer: {e}")))?
        .to_bytes())
}

fn upstream_status(doing: &str, s: StatusCode) -> Rejection {
    Rejection::bad_gateway(format!("the registry answered {s} while {doing}"))
}
