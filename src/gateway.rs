//! The public listener's request handler: the pipeline of DESIGN §1, in order, once.
//!
//! ```text
//! /token          ─► token::handle
//! /v2…, /scopegate/v1/…
//!   ─► route::classify ─► Credential::extract ─► Authenticator::authenticate
//!   ─► Policy::decide ─► Upstream::forward | repository::handle     (any step fails ─► reject)
//! ```
//! Each step hands the next a typed value (`Route`, `Principal`, `Grant`); nothing later
//! re-reads the URI or the `Authorization` header. Every `/v2` response carries
//! `Docker-Distribution-API-Version`, every response an `X-Request-Id`. What happened is
//! recorded once, at the end: one metrics update and one audit line per request.
//! This module holds no policy of its own.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use time::format_description::well_known::Rfc3339;

use crate::access::Requirement;
use crate::audit::Event;
use crate::auth::Credential;
use crate::body::{Body, BoxError};
use crate::metrics::Outcome;
use crate::policy::{CredentialKind, Grant, Subject};
use crate::proxy;
use crate::reject::{Code, Fault, Rejection};
use crate::route::{self, Endpoint, Route};
use crate::state::{Runtime, State};

/// What the audit line and the metrics say about a request; filled in as it goes.
struct Trace {
    endpoint: &'static str,
    repository: Option<String>,
    action: Option<&'static str>,
    credential: CredentialKind,
    subject: Option<String>,
    outcome: Outcome,
    reason: Option<String>,
}

impl Trace {
    fn new(endpoint: &'static str) -> Trace {
        Trace { endpoint, repository: None, action: None, credential: CredentialKind::None, subject: None, outcome: Outcome::Rejected, reason: None }
    }
}

fn subject_name(s: &Subject) -> Option<String> {
    match s {
        Subject::Token(t) => Some(t.to_string()),
        Subject::ApiKey(k) => Some(format!("apikey/{k}")),
        Subject::External { issuer, subject, .. } => Some(format!("{issuer}/{subject}")),
        Subject::Anonymous => None,
    }
}

/// Request ids: a random per-process prefix and a counter, in hex, made as the
/// `X-Request-Id` value itself (the audit line reads it back).
fn request_id() -> HeaderValue {
    use std::io::Write as _;
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| crate::auth::secret::random_bytes::<4>().map(u32::from_be_bytes).unwrap_or(0));
    // 8 digits of prefix and up to 16 of counter
    let mut buf = [0u8; 24];
    let id = on_stack(&mut buf, |w| write!(w, "{prefix:08x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed)));
    HeaderValue::from_bytes(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Serves one request on the public listener.
pub async fn handle<B>(state: Arc<State>, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let rt = state.runtime();
    let id = request_id();
    let method = req.method().clone();
    let path = req.uri().path();
    state.metrics.in_flight.inc();
    let (mut resp, trace) = if path == "/token" {
        token(&state, &rt, req, peer.ip()).await
    } else if path == "/v2" || path.starts_with("/v2/") || path.starts_with(route::REPOSITORY_API) {
        let mut trace = Trace::new("unrouted");
        let mut resp = match registry(&state, &rt, req, peer.ip(), &mut trace).await {
            Ok(r) => r,
            Err(r) => {
                trace.outcome = match (trace.outcome, r.fault) {
                    (_, Fault::Upstream | Fault::Internal) => Outcome::Failed,
                    (o, Fault::Client) => o,
                };
                if trace.reason.is_none() {
                    trace.reason = Some(r.message.to_string());
                }
                r.to_response(&rt.realm, &rt.config.token.service)
            }
        };
        let (k, v) = proxy::api_version_header();
        resp.headers_mut().insert(k, v);
        (resp, trace)
    } else {
        let r = Rejection::not_found(Code::NotFound, "not found (registry API is under /v2/, tokens at /token)");
        let mut t = Trace::new("other");
        t.reason = Some(r.message.to_string());
        (r.to_response(&rt.realm, &rt.config.token.service), t)
    };
    state.metrics.in_flight.dec();
    record(&state, &rt, id.to_str().unwrap_or_default(), peer, &method, &trace, resp.status().as_u16());
    resp.headers_mut().insert(header::HeaderName::from_static("x-request-id"), id);
    resp
}

fn record(state: &State, rt: &Runtime, id: &str, peer: SocketAddr, method: &Method, t: &Trace, status: u16) {
    let outcome = if t.outcome == Outcome::Allowed && status >= 500 { Outcome::Failed } else { t.outcome };
    if t.endpoint == "token" {
        let o = if outcome == Outcome::Allowed { "issued" } else { "refused" };
        state.metrics.token_requests.with_label_values(&[t.credential.as_str(), o]).inc();
    } else {
        state.metrics.requests.with_label_values(&[t.endpoint, t.action.unwrap_or("none"), outcome.as_str(), t.credential.as_str()]).inc();
    }
    if !rt.audit.is_on() {
        return;
    }
    let mut time = [0u8; 64];
    rt.audit.record(&Event {
        time: rfc3339(state.clock.now(), &mut time),
        request_id: id,
        client: peer.ip(),
        endpoint: t.endpoint,
        method: method.as_str(),
        credential: t.credential.as_str(),
        subject: t.subject.as_deref(),
        repository: t.repository.as_deref(),
        action: t.action,
        outcome: outcome.as_str(),
        status,
        reason: t.reason.as_deref(),
    });
}

/// `t` in RFC 3339, written into `buf` (no allocation; a time that does not fit is empty).
fn rfc3339(t: time::OffsetDateTime, buf: &mut [u8; 64]) -> &str {
    std::str::from_utf8(on_stack(buf, |w| t.format_into(w, &Rfc3339).map(drop).map_err(std::io::Error::other))).unwrap_or_default()
}

/// What `write` puts into `buf`; empty when it fails or does not fit.
fn on_stack(buf: &mut [u8], write: impl FnOnce(&mut std::io::Cursor<&mut [u8]>) -> std::io::Result<()>) -> &[u8] {
    let mut w = std::io::Cursor::new(&mut buf[..]);
    let n = match write(&mut w) {
        Ok(()) => usize::try_from(w.position()).unwrap_or(0),
        Err(_) => 0,
    };
    buf.get(..n).unwrap_or_default()
}

/// Runs `attempt` under the failed-login throttle when `login` is a Basic login (see
/// `Credential::basic_login`); `failed` says whether its result is a failed login (a secret
/// that matched nothing; a disabled token with its right password is no guess, and must
/// work again at once when it is enabled). A caller who must wait is refused with 429
/// before the attempt is looked at.
async fn throttled<T>(
    state: &State,
    rt: &Runtime,
    login: Option<Option<&str>>,
    client: IpAddr,
    attempt: impl Future<Output = T>,
    failed: impl Fn(&T) -> bool,
) -> Result<T, Rejection> {
    let (Some(name), Some(limits)) = (login, rt.config.limits.failed_logins.as_ref()) else { return Ok(attempt.await) };
    let now = state.clock.now().unix_timestamp();
    if let Err(th) = state.login_throttle.check(limits, name, client, now) {
        state.metrics.logins_throttled.with_label_values(&[th.by]).inc();
        let what = match (th.by, name) {
            ("token", Some(n)) => format!("token {n}"),
            _ => format!("address {client}"),
        };
        let state_word = if th.locked_out { "locked out" } else { "slowed down" };
        return Err(Rejection::too_many_requests(
            th.retry_after,
            format!("too many failed logins: {what} is {state_word}; retry after {} s", th.retry_after),
        ));
    }
    let out = attempt.await;
    if failed(&out) {
        state.login_throttle.failed(limits, name, client, now);
    } else {
        state.login_throttle.succeeded(name);
    }
    Ok(out)
}

async fn token<B>(state: &State, rt: &Runtime, req: Request<B>, client: IpAddr) -> (Response<Body>, Trace)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut t = Trace::new("token");
    let credential = Credential::extract(req.headers());
    t.credential = credential.as_ref().map(Credential::kind).unwrap_or(CredentialKind::None);
    let login = credential.as_ref().ok().and_then(Credential::basic_login).map(|n| n.map(str::to_owned));
    let policy = state.policy();
    let attempt = crate::token::handle(req, credential, &policy, &rt.auth, &rt.config.token, state.clock.now());
    let login_failed = |r: &Result<_, Rejection>| r.as_ref().is_err_and(|e| e.wrong_secret);
    let result = match throttled(state, rt, login.as_ref().map(Option::as_deref), client, attempt, login_failed).await {
        Ok(r) => r,
        Err(r) => {
            t.outcome = Outcome::Denied;
            t.reason = Some(r.message.to_string());
            return (r.to_response(&rt.realm, &rt.config.token.service), t);
        }
    };
    match result {
        Ok((resp, issued)) => {
            t.outcome = Outcome::Allowed;
            t.credential = issued.credential;
            t.subject = subject_name(&issued.subject);
            t.reason = Some(format!("granted access to {} repositories", issued.repositories));
            (resp, t)
        }
        Err(r) => {
            t.outcome = if r.status == http::StatusCode::UNAUTHORIZED { Outcome::Unauthenticated } else { Outcome::Rejected };
            t.reason = Some(r.message.to_string());
            (r.to_response(&rt.realm, &rt.config.token.service), t)
        }
    }
}

async fn registry<B>(state: &Arc<State>, rt: &Runtime, req: Request<B>, client: IpAddr, t: &mut Trace) -> Result<Response<Body>, Rejection>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let (route, grant) = match decide(state, rt, &parts, client, t).await {
        Ok(decided) => decided,
        Err(r) => {
            // refused before its body was wanted: read the rest, so the client reads the refusal
            crate::body::discard(body);
            return Err(r);
        }
    };
    let req = Request::from_parts(parts, body);
    match &route.endpoint {
        Endpoint::Base => {
            crate::body::discard(req.into_body());
            Ok(proxy::base_ok())
        }
        Endpoint::Repository { repo, op } => crate::repository::handle(state, rt, req, repo, op, &grant).await,
        _ => rt.upstream.forward(req, &route, &grant).await,
    }
}

/// The `/v2` pipeline up to the decision; it reads the request's head, never its body.
async fn decide(state: &Arc<State>, rt: &Runtime, parts: &http::request::Parts, client: IpAddr, t: &mut Trace) -> Result<(Route, Grant), Rejection> {
    let route = route::classify(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        route::single_content_type(&parts.headers)?,
        rt.config.limits.page,
    )?;
    t.endpoint = route.kind().as_str();
    t.repository = route.repo().map(|r| r.to_string());
    let need = route.requirement();
    if let Requirement::Repository { action, .. } = need {
        t.action = Some(action.as_str());
    }
    if let Some(age) = state.too_stale() {
        t.outcome = Outcome::Failed;
        return Err(Rejection::upstream_unavailable(format!(
            "the policy store has been failing for {age} s (more than max_staleness_secs); refusing to decide on a policy this old"
        )));
    }
    t.outcome = Outcome::Unauthenticated;
    let credential = Credential::extract(&parts.headers).map_err(|f| Rejection::auth_failed(f, need.hints()))?;
    t.credential = credential.kind();
    let policy = state.policy();
    let attempt = rt.auth.authenticate(&credential, &policy, state.clock.now());
    let wrong_secret = |r: &Result<_, crate::auth::AuthFailure>| r.as_ref().is_err_and(|f| f.wrong_secret);
    let principal = throttled(state, rt, credential.basic_login(), client, attempt, wrong_secret)
        .await
        .inspect_err(|_| t.outcome = Outcome::Denied)?
        .map_err(|f| Rejection::auth_failed(f, need.hints()))?;
    t.credential = principal.credential;
    t.subject = subject_name(&principal.subject);
    let grant = policy.decide(&principal, need).map_err(|d| {
        t.outcome = if matches!(d, crate::policy::Denial::Unauthenticated { .. }) { Outcome::Unauthenticated } else { Outcome::Denied };
        t.reason = Some(d.reason());
        Rejection::from(d)
    })?;
    t.outcome = Outcome::Allowed;
    Ok((route, grant))
}
