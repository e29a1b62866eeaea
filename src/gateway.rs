//! The public listener's request handler: the pipeline of DESIGN §1, in order, once.
//!
//! ```text
//! /token ─► token::handle
//! /v2…   ─► route::classify ─► Credential::extract ─► Authenticator::authenticate
//!           ─► Policy::decide ─► Upstream::forward          (any step fails ─► reject)
//! ```
//! Each step hands the next a typed value (`Route`, `Principal`, `Grant`); nothing later
//! re-reads the URI or the `Authorization` header. Every `/v2` response carries
//! `Docker-Distribution-API-Version`. This module holds no policy of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use tracing::{debug, info};

use crate::auth::Credential;
use crate::body::{Body, BoxError};
use crate::proxy;
use crate::reject::{Code, Rejection};
use crate::route::{self, Endpoint};
use crate::state::State;

/// Serves one request on the public listener.
pub async fn handle<B>(state: Arc<State>, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    if path == "/token" {
        let policy = state.policy();
        return match crate::token::handle(req, &policy, &state.auth, &state.config.token, state.clock.now()).await {
            Ok((resp, issued)) => {
                info!(target: "scopegate::token", client = %peer, subject = ?issued.subject, credential = issued.credential.as_str(), repositories = issued.repositories, "token issued");
                resp
            }
            Err(r) => {
                info!(target: "scopegate::token", client = %peer, status = r.status.as_u16(), reason = %r.message, "token refused");
                r.to_response(&state.realm, &state.config.token.service)
            }
        };
    }
    if path == "/v2" || path.starts_with("/v2/") || path.starts_with(route::REPOSITORY_API) {
        let method = req.method().clone();
        let mut resp = match v2(&state, req, peer).await {
            Ok(r) => r,
            Err(r) => {
                debug!(client = %peer, %method, status = r.status.as_u16(), code = r.code.as_str(), reason = %r.message, "request refused");
                r.to_response(&state.realm, &state.config.token.service)
            }
        };
        let (k, v) = proxy::api_version_header();
        resp.headers_mut().insert(k, v);
        return resp;
    }
    Rejection::not_found(Code::NotFound, "not found (registry API is under /v2/, tokens at /token)")
        .to_response(&state.realm, &state.config.token.service)
}

async fn v2<B>(state: &Arc<State>, req: Request<B>, peer: SocketAddr) -> Result<Response<Body>, Rejection>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let route = route::classify(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers().get(header::CONTENT_TYPE),
        state.config.limits.page,
    )?;
    let need = route.requirement();
    let credential = Credential::extract(req.headers()).map_err(|f| Rejection::auth_failed(f, need.hints()))?;
    let policy = state.policy();
    let principal = state.auth.authenticate(&credential, &policy, state.clock.now()).await.map_err(|f| {
        info!(target: "scopegate::audit", client = %peer, endpoint = route.kind().as_str(), method = %route.method,
              repository = route.repo().map(|r| r.as_str()).unwrap_or(""), credential = credential.kind().as_str(),
              outcome = "unauthenticated", reason = %f.reason, "decision");
        Rejection::auth_failed(f, need.hints())
    })?;
    let grant = policy.decide(&principal, need).map_err(|d| {
        info!(target: "scopegate::audit", client = %peer, endpoint = route.kind().as_str(), method = %route.method,
              repository = route.repo().map(|r| r.as_str()).unwrap_or(""), credential = principal.credential.as_str(),
              subject = ?principal.subject, outcome = "denied", reason = %d.reason(), "decision");
        Rejection::from(d)
    })?;
    debug!(target: "scopegate::audit", client = %peer, endpoint = route.kind().as_str(), method = %route.method,
           repository = route.repo().map(|r| r.as_str()).unwrap_or(""), credential = principal.credential.as_str(),
           subject = ?principal.subject, outcome = "allowed", "decision");
    match &route.endpoint {
        Endpoint::Base => Ok(proxy::base_ok()),
        Endpoint::Repository { repo, op } => crate::repository::handle(state, req, repo, op, &grant).await,
        _ => state.upstream.forward(req, &route, &grant).await,
    }
}
