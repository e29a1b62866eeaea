//! The CLI's HTTP clients. [`AdminClient`] calls the admin API with the admin token;
//! [`RegistryClient`] calls the public endpoint as a registry client would: it reads the
//! `/v2/` challenge, fetches a token for exactly the scope a command needs with the token's
//! own credentials, and uses it on the repository API. Failures become [`CliError`] with the
//! server's own message and an exit code a script can rely on.
//!
//! They know routes and JSON; they never interpret policy.

use base64::Engine;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::CliError;
use crate::auth::secret::Secret;
use crate::body::{full, Body};

struct Http(Client<HttpConnector, Body>);

impl Http {
    fn new() -> Http {
        Http(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }

    /// One request; the answer's status, headers and JSON body (`Null` if none).
    async fn send(&self, method: Method, url: &str, auth: Option<&str>, body: Option<Value>) -> Result<(StatusCode, HeaderMap, Value), CliError> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                full(v.to_string())
            }
            None => crate::body::empty(),
        };
        let req = req.body(body).map_err(|e| CliError::usage(format!("invalid request to {url}: {e}")))?;
        let resp = self.0.request(req).await.map_err(|e| CliError::unreachable(format!("cannot reach {url}: {e}")))?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| CliError::unreachable(format!("answer from {url} broke off: {e}")))?.to_bytes();
        Ok((parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// Turns an error answer into a `CliError` carrying the server's message.
fn failure(status: StatusCode, v: &Value, what: &str) -> CliError {
    let message = v
        .pointer("/errors/0/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{what} answered {status}"));
    match status {
        StatusCode::UNAUTHORIZED => CliError::auth(message),
        StatusCode::FORBIDDEN => CliError::refused(message),
        StatusCode::NOT_FOUND => CliError::not_found(message),
        s if s.is_server_error() => CliError::unreachable(message),
        _ => CliError::refused(message),
    }
}

fn check_http_url(flag: &str, url: &str) -> Result<String, CliError> {
    let base = url.trim_end_matches('/').to_owned();
    if !base.starts_with("http://") {
        return Err(CliError::usage(format!("{flag} must be an http:// URL, got {url:?}")));
    }
    Ok(base)
}

pub struct AdminClient {
    base: String,
    token: Secret,
    http: Http,
}

impl AdminClient {
    pub fn new(server: &str, token: Secret) -> Result<AdminClient, CliError> {
        Ok(AdminClient { base: check_http_url("--server", server)?, token, http: Http::new() })
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let auth = format!("Bearer {}", self.token.expose());
        let (status, _, v) = self.http.send(method, &format!("{}{path}", self.base), Some(&auth), body).await?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(failure(status, &v, "the admin API"))
        }
    }
}

/// A registry client holding a session token for one scope.
pub struct RegistryClient {
    base: String,
    bearer: String,
    http: Http,
}

impl RegistryClient {
    /// Logs in as a registry client: challenge, then a token for `scope` with Basic
    /// credentials. The realm must be on the registry's own origin (a password is never
    /// sent anywhere else).
    pub async fn login(registry: &str, scope: &str, username: &str, password: &Secret) -> Result<RegistryClient, CliError> {
        let base = check_http_url("--registry", registry)?;
        let http = Http::new();
        let (status, headers, _) = http.send(Method::GET, &format!("{base}/v2/"), None, None).await?;
        if status != StatusCode::UNAUTHORIZED {
            return Err(CliError::refused(format!("{base} did not ask for credentials (GET /v2/ answered {status}); is it a scopegate endpoint?")));
        }
        let challenge = headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let params = bearer_params(challenge).ok_or_else(|| CliError::refused(format!("{base} sent no Bearer challenge")))?;
        let realm = param(&params, "realm").ok_or_else(|| CliError::refused("the challenge names no realm"))?;
        let same_origin = realm.strip_prefix(&base).is_some_and(|rest| rest.starts_with('/'));
        if !same_origin {
            return Err(CliError::refused(format!("the token realm {realm} is not on {base}; not sending credentials there")));
        }
        let service = param(&params, "service").unwrap_or_default();
        let query = crate::route::encode_query([("service", service.as_str()), ("scope", scope)]);
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose())));
        let (status, _, v) = http.send(Method::GET, &format!("{realm}?{query}"), Some(&basic), None).await?;
        if !status.is_success() {
            return Err(failure(status, &v, "the token server"));
        }
        let token = v.get("token").and_then(Value::as_str).ok_or_else(|| CliError::unreachable("the token server answered without a token"))?;
        Ok(RegistryClient { base, bearer: format!("Bearer {token}"), http })
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let (status, headers, v) = self.http.send(method, &format!("{}{path}", self.base), Some(&self.bearer), body).await?;
        if status.is_success() {
            return Ok(v);
        }
        // a valid token without the access: denied, not a failed login
        let challenge = headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let insufficient = bearer_params(challenge).is_some_and(|p| param(&p, "error").as_deref() == Some("insufficient_scope"));
        if status == StatusCode::UNAUTHORIZED && insufficient {
            return Err(CliError::refused(v.pointer("/errors/0/message").and_then(Value::as_str).unwrap_or("denied").to_owned()));
        }
        Err(failure(status, &v, "the registry"))
    }
}

/// The parameters of a `Bearer` challenge: `key="quoted value"` or `key=token`, comma-separated.
fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = challenge.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = rest.trim().chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_owned();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            // skip to the next comma
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_owned();
        }
        out.push((key.to_ascii_lowercase(), value));
    }
    Some(out)
}

fn param(params: &[(String, String)], key: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters_are_read() {
        let p = bearer_params(r#"Bearer realm="http://a:1/token",service="scope\"gate",scope="repository:x:pull push",error=invalid_token"#).unwrap();
        assert_eq!(param(&p, "realm").unwrap(), "http://a:1/token");
        assert_eq!(param(&p, "service").unwrap(), "scope\"gate");
        assert_eq!(param(&p, "scope").unwrap(), "repository:x:pull push");
        assert_eq!(param(&p, "error").unwrap(), "invalid_token");
        assert!(bearer_params("Basic realm=\"x\"").is_none());
    }
}
