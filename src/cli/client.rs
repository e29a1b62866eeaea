//! The CLI's client for the admin API: one JSON request, one JSON answer, over the
//! admin listener, authenticated with `SCOPEGATE_ADMIN_TOKEN`. Failures become [`CliError`]
//! with the server's own message and an exit code a script can rely on.
//!
//! It knows routes and JSON; it never interprets policy.

use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::CliError;
use crate::auth::secret::Secret;
use crate::body::{full, Body};

pub struct AdminClient {
    base: String,
    token: Secret,
    http: Client<HttpConnector, Body>,
}

impl AdminClient {
    pub fn new(server: &str, token: Secret) -> Result<AdminClient, CliError> {
        let base = server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(CliError::usage(format!("--server must be an http:// URL of the admin listener, got {server:?}")));
        }
        Ok(AdminClient { base, token, http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()) })
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token.expose()));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                full(v.to_string())
            }
            None => crate::body::empty(),
        };
        let req = req.body(body).map_err(|e| CliError::usage(format!("invalid request: {e}")))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| CliError::unreachable(format!("cannot reach the admin API at {}: {e}", self.base)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::unreachable(format!("admin API answer broke off: {e}")))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let message = v.pointer("/errors/0/message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| format!("admin API answered {status}"));
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::auth(message),
            StatusCode::NOT_FOUND => CliError::not_found(message),
            s if s.is_server_error() => CliError::unreachable(message),
            _ => CliError::refused(message),
        })
    }
}
