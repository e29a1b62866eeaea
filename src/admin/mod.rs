//! The admin API, on its own listener: scope maps and tokens, as `az acr scope-map` and
//! `az acr token` manage them. Every route under `/api/v1` needs `Authorization: Bearer
//! <admin token>`; bodies are JSON with unknown fields refused; every refusal says why and
//! changes nothing. Password values are generated here and returned once; only digests
//! are stored.
//!
//! Routes:
//! ```text
//! GET    /api/v1/scope-maps            POST /api/v1/scope-maps
//! GET    /api/v1/scope-maps/{name}     PATCH, DELETE /api/v1/scope-maps/{name}
//! GET    /api/v1/tokens                POST /api/v1/tokens
//! GET    /api/v1/tokens/{name}         PATCH, DELETE /api/v1/tokens/{name}
//! POST   /api/v1/tokens/{name}/credentials           (generate password1 and/or password2)
//! DELETE /api/v1/tokens/{name}/credentials/{slot}
//! GET    /api/v1/apikeys               POST /api/v1/apikeys
//! GET    /api/v1/apikeys/{name}        PATCH, DELETE /api/v1/apikeys/{name}
//! GET    /api/v1/anonymous             PUT /api/v1/anonymous      (the anonymous scope map)
//! GET    /api/v1/check?token=N|apikey=N|anonymous=true&repository=R&action=A   (explain a decision)
//! GET    /healthz   alive                          (these three need no token: the admin
//! GET    /readyz    store, keys and registry ready  listener is the private one)
//! GET    /metrics   Prometheus text format
//! ```
//! The admin API changes records; it never decides a registry request.

pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::access::{Action, ActionSet};
use crate::auth::secret::{self, Secret};
use crate::body::{full, Body, BoxError};
use crate::policy::{ApiKey, KeyName, MapName, Password, RepoPattern, ScopeMap, Slot, Status, Subject, Token, TokenName};
use crate::reject::{Code, Rejection};
use crate::state::State;
use crate::store::StoreError;
use views::*;

const MAX_BODY: usize = 1024 * 1024;

/// Serves one request on the admin listener.
pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(full(state.metrics.render()));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            return r;
        }
        "/readyz" => {
            let (status, v) = ready(&state).await;
            return json_response(status, &v);
        }
        _ => {}
    }
    match route(&state, req).await {
        Ok((status, v)) => json_response(status, &v),
        // the admin API never challenges: there is no realm to point at
        Err(r) => {
            // a write that failed in the store is the operator's business, not only the caller's
            if r.fault != crate::reject::Fault::Client {
                tracing::warn!(status = r.status.as_u16(), error = %r.message, "admin request failed");
            }
            r.to_response("", "")
        }
    }
}

/// Ready when the store answers, the signing keys are loaded and the registry answers.
async fn ready(state: &Arc<State>) -> (StatusCode, Value) {
    let store = Arc::clone(&state.store);
    let store_ok = matches!(tokio::task::spawn_blocking(move || store.epoch()).await, Ok(Ok(_)));
    let keys_ok = !state.keys.current().kid.is_empty();
    let upstream = state.runtime().upstream.probe().await;
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    let all = store_ok && keys_ok && upstream.is_ok() && !draining;
    let status = if all { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        json!({
            "ready": all,
            "draining": draining,
            "store": store_ok,
            "keys": keys_ok,
            "upstream": upstream.as_ref().map(|_| "reachable".to_owned()).unwrap_or_else(|e| e.clone()),
        }),
    )
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(format!("{v:#}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

type Answer = Result<(StatusCode, Value), Rejection>;

async fn route<B>(state: &Arc<State>, req: Request<B>) -> Answer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return Ok((StatusCode::OK, json!({"status": "ok"})));
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Err(Rejection::not_found(Code::NotFound, format!("no admin route {path}")));
    };
    authorize(state, &req)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["scope-maps"]) => list_maps(state),
        (Method::POST, ["scope-maps"]) => create_map(state, body(req).await?).await,
        (Method::GET, ["scope-maps", name]) => show_map(state, name),
        (Method::PATCH, ["scope-maps", name]) => update_map(state, name, body(req).await?).await,
        (Method::DELETE, ["scope-maps", name]) => delete_map(state, name).await,
        (Method::GET, ["tokens"]) => list_tokens(state),
        (Method::POST, ["tokens"]) => create_token(state, body(req).await?).await,
        (Method::GET, ["tokens", name]) => show_token(state, name),
        (Method::PATCH, ["tokens", name]) => update_token(state, name, body(req).await?).await,
        (Method::DELETE, ["tokens", name]) => delete_token(state, name).await,
        (Method::POST, ["tokens", name, "credentials"]) => generate(state, name, body(req).await?).await,
        (Method::DELETE, ["tokens", name, "credentials", slot]) => delete_credential(state, name, slot).await,
        (Method::GET, ["apikeys"]) => list_keys(state),
        (Method::POST, ["apikeys"]) => create_key(state, body(req).await?).await,
        (Method::GET, ["apikeys", name]) => show_key(state, name),
        (Method::PATCH, ["apikeys", name]) => update_key(state, name, body(req).await?).await,
        (Method::DELETE, ["apikeys", name]) => delete_key(state, name).await,
        (Method::GET, ["anonymous"]) => show_anonymous(state),
        (Method::PUT, ["anonymous"]) => set_anonymous(state, body(req).await?).await,
        (Method::GET, ["check"]) => check(state, req.uri().query().unwrap_or_default()),
        (m, _) => Err(Rejection::not_found(Code::NotFound, format!("no admin route {m} {path}"))),
    }
}

fn authorize<B>(state: &State, req: &Request<B>) -> Result<(), Rejection> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Rejection::unauthenticated("the admin API needs Authorization: Bearer <admin token>"))?;
    if state.is_admin_token(presented) {
        Ok(())
    } else {
        Err(Rejection::unauthenticated("invalid admin token"))
    }
}

async fn body<T: DeserializeOwned, B>(req: Request<B>) -> Result<T, Rejection>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if !ct.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json") {
        return Err(Rejection::unsupported_media_type("the admin API takes application/json bodies"));
    }
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Rejection::bad_request(Code::InvalidRequest, format!("cannot read the request body: {e}")))?
        .to_bytes();
    let bytes = if bytes.is_empty() { Bytes::from_static(b"{}") } else { bytes };
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid request body: {e}")))
}

fn bad(msg: impl Into<std::borrow::Cow<'static, str>>) -> Rejection {
    Rejection::bad_request(Code::InvalidRequest, msg)
}

fn store_error(e: StoreError) -> Rejection {
    match e {
        StoreError::NotFound(what) => Rejection::not_found(Code::NotFound, format!("{what} not found")),
        StoreError::Conflict(what) => Rejection::conflict(format!("{what} already exists")),
        StoreError::InUse(msg) => Rejection::conflict(msg),
        StoreError::Invalid(msg) => bad(msg),
        e @ StoreError::Stale(_) => Rejection::conflict(e.to_string()),
        e @ StoreError::Unavailable(_) => Rejection::upstream_unavailable(e.to_string()),
        StoreError::Backend(msg) => Rejection::internal(format!("store failure: {msg}")),
    }
}

fn map_name(s: &str) -> Result<MapName, Rejection> {
    MapName::parse(s).map_err(bad)
}

fn token_name(s: &str) -> Result<TokenName, Rejection> {
    TokenName::parse(s).map_err(bad)
}

/// Parses `{repository, actions}` lists into rules.
fn rules(list: &[RepoActions]) -> Result<BTreeMap<RepoPattern, ActionSet>, Rejection> {
    let mut out: BTreeMap<RepoPattern, ActionSet> = BTreeMap::new();
    for ra in list {
        let p = RepoPattern::parse(&ra.repository)
            .map_err(|_| bad(format!("invalid repository pattern {:?}: use a repository name, <prefix>/* or *", ra.repository)))?;
        if ra.actions.is_empty() {
            return Err(bad(format!("no actions given for repository {:?}", ra.repository)));
        }
        let mut set = ActionSet::EMPTY;
        for a in &ra.actions {
            let action = Action::parse(a).ok_or_else(|| {
                bad(format!("invalid action {a:?}: expected content/read, content/write, content/delete, metadata/read or metadata/write"))
            })?;
            set = set.union(ActionSet::of(&[action]));
        }
        let e = out.entry(p).or_default();
        *e = e.union(set);
    }
    Ok(out)
}

fn expiry(now: OffsetDateTime, days: Option<u32>, at: Option<&str>) -> Result<Option<OffsetDateTime>, Rejection> {
    match (days, at) {
        (Some(_), Some(_)) => Err(bad("give either an expiration in days or an expiration time, not both")),
        (Some(0), None) => Err(bad("expiration in days must be at least 1")),
        (Some(d), None) => Ok(Some(now + Duration::days(i64::from(d)))),
        (None, Some(t)) => {
            let t = OffsetDateTime::parse(t, &Rfc3339).map_err(|_| bad(format!("invalid expiration {t:?}: expected RFC 3339, e.g. 2027-01-31T00:00:00Z")))?;
            if t <= now {
                return Err(bad("expiration must be in the future"));
            }
            Ok(Some(t))
        }
        (None, None) => Ok(None),
    }
}

fn new_password(now: OffsetDateTime, exp: Option<OffsetDateTime>) -> Result<(Password, Secret), Rejection> {
    let value = secret::generate(secret::PASSWORD_PREFIX).map_err(|e| Rejection::internal(e.to_string()))?;
    let id = secret::random_id().map_err(|e| Rejection::internal(e.to_string()))?;
    Ok((Password { id, digest: value.digest(), created: now, expiry: exp }, value))
}

// === scope maps ===

fn list_maps(state: &State) -> Answer {
    let policy = state.policy();
    let mut maps: Vec<&ScopeMap> = policy.maps().collect();
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((StatusCode::OK, Value::Array(maps.into_iter().map(scope_map_view).collect())))
}

fn show_map(state: &State, name: &str) -> Answer {
    let name = map_name(name)?;
    let policy = state.policy();
    let m = policy.map(&name).ok_or_else(|| Rejection::not_found(Code::NotFound, format!("scope map {name} not found")))?;
    Ok((StatusCode::OK, scope_map_view(m)))
}

async fn create_map(state: &Arc<State>, req: CreateScopeMap) -> Answer {
    let name = map_name(&req.name)?;
    if name.is_system() {
        return Err(bad(format!("{name} is a system scope map name; system maps cannot be created")));
    }
    if req.repositories.is_empty() {
        return Err(bad("a scope map needs at least one repository with actions"));
    }
    let map = ScopeMap::new(name, req.description.unwrap_or_default(), state.clock.now_secs(), rules(&req.repositories)?);
    let view = scope_map_view(&map);
    state.write(move |store, _| store.create_scope_map(&map)).await.map_err(store_error)?;
    Ok((StatusCode::CREATED, view))
}

async fn update_map(state: &Arc<State>, name: &str, req: UpdateScopeMap) -> Answer {
    let name = map_name(name)?;
    if name.is_system() {
        return Err(Rejection::conflict(format!("{name} is a system scope map and cannot be changed")));
    }
    let add = rules(&req.add_repositories)?;
    let remove = rules(&req.remove_repositories)?;
    if add.is_empty() && remove.is_empty() && req.description.is_none() {
        return Err(bad("nothing to update: give repositories to add or remove, or a description"));
    }
    let view = state
        .write(move |store, policy| {
            let mut m = policy.map(&name).cloned().ok_or_else(|| StoreError::NotFound(format!("scope map {name}")))?;
            for (p, a) in add {
                m.add(p, a);
            }
            for (p, a) in &remove {
                if !m.rules().contains_key(p) {
                    return Err(StoreError::Invalid(format!("scope map {name} has no rule for repository {p}; nothing to remove")));
                }
                m.remove(p, *a);
            }
            if let Some(d) = req.description {
                m.description = d;
            }
            store.update_scope_map(&m)?;
            Ok(scope_map_view(&m))
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, view))
}

async fn delete_map(state: &Arc<State>, name: &str) -> Answer {
    let name = map_name(name)?;
    if name.is_system() {
        return Err(Rejection::conflict(format!("{name} is a system scope map and cannot be deleted")));
    }
    state
        .write(move |store, policy| {
            if policy.anonymous_map() == Some(&name) {
                return Err(StoreError::InUse(format!("scope map {name} is the anonymous scope map; run `scopegate anonymous --none` or pick another map first")));
            }
            store.delete_scope_map(&name)
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, json!({"deleted": true})))
}

// === tokens ===

fn list_tokens(state: &State) -> Answer {
    let policy = state.policy();
    let mut tokens: Vec<&Token> = policy.tokens().collect();
    tokens.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((StatusCode::OK, Value::Array(tokens.into_iter().map(|t| token_view(t, &[])).collect())))
}

fn show_token(state: &State, name: &str) -> Answer {
    let name = token_name(name)?;
    let policy = state.policy();
    let t = policy.token(&name).ok_or_else(|| Rejection::not_found(Code::NotFound, format!("token {name} not found")))?;
    Ok((StatusCode::OK, token_view(t, &[])))
}

async fn create_token(state: &Arc<State>, req: CreateToken) -> Answer {
    let now = state.clock.now_secs();
    let name = token_name(&req.name)?;
    let status = req.status.as_deref().map(Status::parse).transpose().map_err(bad)?.unwrap_or(Status::Enabled);
    let exp = expiry(now, req.expiration_in_days, req.expiration.as_deref())?;
    let own_map = match (&req.scope_map, req.repositories.is_empty()) {
        (Some(_), false) => return Err(bad("give either a scope map or repositories, not both")),
        (None, true) => return Err(bad("a token needs a scope map or repositories with actions")),
        (Some(_), true) => None,
        (None, false) => {
            let map_name = map_name(&format!("{name}-scope-map"))?;
            Some(ScopeMap::new(map_name, format!("Scope map of token {name}"), now, rules(&req.repositories)?))
        }
    };
    let scope_map = match (&req.scope_map, &own_map) {
        (Some(m), _) => map_name(m)?,
        (None, Some(m)) => m.name.clone(),
        (None, None) => return Err(bad("a token needs a scope map")),
    };
    let mut token = Token::new(name, scope_map, status, now);
    let mut fresh = Vec::new();
    for slot in Slot::BOTH {
        let (p, value) = new_password(now, exp)?;
        token.set_password(slot, Some(p));
        fresh.push((slot, value));
    }
    let view = token_view(&token, &fresh);
    state
        .write(move |store, policy| {
            if own_map.is_none() && policy.map(&token.scope_map).is_none() {
                return Err(StoreError::NotFound(format!("scope map {}", token.scope_map)));
            }
            store.create_token(&token, own_map.as_ref())
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, view))
}

/// The new scope map and/or status an update asks for (at least one).
fn reassignment(req: &UpdateToken) -> Result<(Option<MapName>, Option<Status>), Rejection> {
    let new_map = req.scope_map.as_deref().map(map_name).transpose()?;
    let new_status = req.status.as_deref().map(Status::parse).transpose().map_err(bad)?;
    if new_map.is_none() && new_status.is_none() {
        return Err(bad("nothing to update: give a scope map or a status"));
    }
    Ok((new_map, new_status))
}

/// Gives a token or an API key another scope map (which must exist) and/or status.
fn reassign(
    policy: &crate::policy::Policy,
    new_map: Option<MapName>,
    new_status: Option<Status>,
    map: &mut MapName,
    status: &mut Status,
) -> Result<(), StoreError> {
    if let Some(m) = new_map {
        if policy.map(&m).is_none() {
            return Err(StoreError::NotFound(format!("scope map {m}")));
        }
        *map = m;
    }
    if let Some(s) = new_status {
        *status = s;
    }
    Ok(())
}

async fn update_token(state: &Arc<State>, name: &str, req: UpdateToken) -> Answer {
    let name = token_name(name)?;
    let (new_map, new_status) = reassignment(&req)?;
    let view = state
        .write(move |store, policy| {
            let mut t = policy.token(&name).cloned().ok_or_else(|| StoreError::NotFound(format!("token {name}")))?;
            reassign(policy, new_map, new_status, &mut t.scope_map, &mut t.status)?;
            store.update_token(&t)?;
            Ok(token_view(&t, &[]))
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, view))
}

async fn delete_token(state: &Arc<State>, name: &str) -> Answer {
    let name = token_name(name)?;
    state.write(move |store, _| store.delete_token(&name)).await.map_err(store_error)?;
    Ok((StatusCode::OK, json!({"deleted": true})))
}

async fn generate(state: &Arc<State>, name: &str, req: GenerateCredentials) -> Answer {
    let now = state.clock.now_secs();
    let name = token_name(name)?;
    let exp = expiry(now, req.expiration_in_days, req.expiration.as_deref())?;
    let slots: Vec<Slot> = match (req.password1, req.password2) {
        (false, false) | (true, true) => Slot::BOTH.to_vec(),
        (true, false) => vec![Slot::Password1],
        (false, true) => vec![Slot::Password2],
    };
    let mut fresh = Vec::new();
    let mut new = Vec::new();
    for slot in slots {
        let (p, value) = new_password(now, exp)?;
        new.push((slot, p));
        fresh.push((slot, value));
    }
    let token = state
        .write(move |store, policy| {
            let mut t = policy.token(&name).cloned().ok_or_else(|| StoreError::NotFound(format!("token {name}")))?;
            for (slot, p) in new {
                t.set_password(slot, Some(p));
            }
            store.update_token(&t)?;
            Ok(t)
        })
        .await
        .map_err(store_error)?;
    let view = token_view(&token, &fresh);
    Ok((StatusCode::OK, json!({"username": token.name.as_str(), "passwords": view.pointer("/credentials/passwords").cloned().unwrap_or_default()})))
}

async fn delete_credential(state: &Arc<State>, name: &str, slot: &str) -> Answer {
    let name = token_name(name)?;
    let slot = Slot::parse(slot).ok_or_else(|| bad(format!("invalid password name {slot:?}: expected password1 or password2")))?;
    let view = state
        .write(move |store, policy| {
            let mut t = policy.token(&name).cloned().ok_or_else(|| StoreError::NotFound(format!("token {name}")))?;
            if t.password(slot).is_none() {
                return Err(StoreError::NotFound(format!("{} of token {name}", slot.as_str())));
            }
            t.set_password(slot, None);
            store.update_token(&t)?;
            Ok(token_view(&t, &[]))
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, view))
}

// === anonymous access and explain ===

fn anonymous_view(state: &State) -> Value {
    let policy = state.policy();
    json!({"scopeMap": policy.anonymous_map().map(MapName::as_str)})
}

fn show_anonymous(state: &State) -> Answer {
    Ok((StatusCode::OK, anonymous_view(state)))
}

async fn set_anonymous(state: &Arc<State>, req: SetAnonymous) -> Answer {
    let map = req.scope_map.ok_or_else(|| bad("scopeMap is required (null switches anonymous access off)"))?;
    let map = map.as_deref().map(map_name).transpose()?;
    state
        .write(move |store, policy| {
            if let Some(m) = &map {
                if policy.map(m).is_none() {
                    return Err(StoreError::NotFound(format!("scope map {m}")));
                }
            }
            store.set_anonymous(map.as_ref())
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, anonymous_view(state)))
}

fn check(state: &State, query: &str) -> Answer {
    let mut token = None;
    let mut apikey = None;
    let mut anonymous = false;
    let mut repository = None;
    let mut action = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "token" => token = Some(v.into_owned()),
            "apikey" => apikey = Some(v.into_owned()),
            "anonymous" => anonymous = v == "true",
            "repository" => repository = Some(v.into_owned()),
            "action" => action = Some(v.into_owned()),
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    let subject = match (token, apikey, anonymous) {
        (Some(t), None, false) => Subject::Token(token_name(&t)?),
        (None, Some(k), false) => Subject::ApiKey(KeyName::parse(&k).map_err(bad)?),
        (None, None, true) => Subject::Anonymous,
        _ => return Err(bad("give exactly one of token=<name>, apikey=<name> or anonymous=true")),
    };
    let repo = repository.ok_or_else(|| bad("repository is required"))?;
    let repo = crate::oci::RepoName::parse(&repo).map_err(|e| bad(e.to_string()))?;
    let action = action.ok_or_else(|| bad("action is required"))?;
    let action = Action::parse(&action).ok_or_else(|| {
        bad(format!("invalid action {action:?}: expected content/read, content/write, content/delete, metadata/read or metadata/write"))
    })?;
    let e = state.policy().explain(&subject, &repo, action, Some(state.clock.now()));
    Ok((
        StatusCode::OK,
        json!({
            "allowed": e.allowed,
            "reason": e.reason,
            "scopeMap": e.scope_map.as_ref().map(MapName::as_str),
            "pattern": e.pattern.as_ref().map(ToString::to_string),
            "repository": repo.as_str(),
            "action": action.as_str(),
        }),
    ))
}

// === API keys ===

fn list_keys(state: &State) -> Answer {
    let policy = state.policy();
    let mut keys: Vec<&ApiKey> = policy.api_keys().collect();
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((StatusCode::OK, Value::Array(keys.into_iter().map(|k| api_key_view(k, None)).collect())))
}

fn key_name(s: &str) -> Result<KeyName, Rejection> {
    KeyName::parse(s).map_err(bad)
}

fn show_key(state: &State, name: &str) -> Answer {
    let name = key_name(name)?;
    let policy = state.policy();
    let k = policy.api_key(&name).ok_or_else(|| Rejection::not_found(Code::NotFound, format!("API key {name} not found")))?;
    Ok((StatusCode::OK, api_key_view(k, None)))
}

async fn create_key(state: &Arc<State>, req: CreateApiKey) -> Answer {
    let now = state.clock.now_secs();
    let name = key_name(&req.name)?;
    let scope_map = map_name(&req.scope_map)?;
    let status = req.status.as_deref().map(Status::parse).transpose().map_err(bad)?.unwrap_or(Status::Enabled);
    let expiry = expiry(now, req.expiration_in_days, req.expiration.as_deref())?;
    let value = secret::generate(secret::API_KEY_PREFIX).map_err(|e| Rejection::internal(e.to_string()))?;
    let id = secret::random_id().map_err(|e| Rejection::internal(e.to_string()))?;
    let key = ApiKey { name, id, digest: value.digest(), scope_map, status, created: now, expiry, revision: 0 };
    let view = api_key_view(&key, Some(&value));
    state
        .write(move |store, policy| {
            if policy.map(&key.scope_map).is_none() {
                return Err(StoreError::NotFound(format!("scope map {}", key.scope_map)));
            }
            store.create_api_key(&key)
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, view))
}

async fn update_key(state: &Arc<State>, name: &str, req: UpdateToken) -> Answer {
    let name = key_name(name)?;
    let (new_map, new_status) = reassignment(&req)?;
    let view = state
        .write(move |store, policy| {
            let mut k = policy.api_key(&name).cloned().ok_or_else(|| StoreError::NotFound(format!("API key {name}")))?;
            reassign(policy, new_map, new_status, &mut k.scope_map, &mut k.status)?;
            store.update_api_key(&k)?;
            Ok(api_key_view(&k, None))
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, view))
}

async fn delete_key(state: &Arc<State>, name: &str) -> Answer {
    let name = key_name(name)?;
    state.write(move |store, _| store.delete_api_key(&name)).await.map_err(store_error)?;
    Ok((StatusCode::OK, json!({"deleted": true})))
}
