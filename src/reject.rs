//! The one place that turns a refusal or a failure into an HTTP response. Every error knows
//! whose fault it is (the client's, the upstream's, or ours), its status and its Docker error
//! code; this module renders the Docker JSON body `{"errors":[{code,message,detail}]}` and,
//! for 401s, the single Bearer challenge line.
//!
//! It decides nothing: callers say what went wrong, this module only says it in the
//! protocol's words. It never echoes a secret (messages are built by the callers from
//! parsed values, never from credentials).

use std::borrow::Cow;

use http::{header, HeaderValue, Response, StatusCode};

use crate::access::ScopeHint;
use crate::body::{full, Body};

/// Whose fault a failure is; metrics and logs use it, statuses follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong, unauthenticated or not permitted.
    Client,
    /// The registry behind us failed or is unreachable.
    Upstream,
    /// Our own bug or resource failure.
    Internal,
}

/// Docker / OCI error codes (plus the few the admin API and token server need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unauthorized,
    Denied,
    Unsupported,
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    PaginationNumberInvalid,
    ManifestInvalid,
    SizeInvalid,
    NotFound,
    Conflict,
    InvalidRequest,
    Unavailable,
    TooManyRequests,
    Unknown,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::NameInvalid => "NAME_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::NotFound => "NOT_FOUND",
            Code::Conflict => "CONFLICT",
            Code::InvalidRequest => "INVALID_REQUEST",
            Code::Unavailable => "UNAVAILABLE",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unknown => "UNKNOWN",
        }
    }
}

/// The RFC 6750 `error` parameter of a challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeError {
    InvalidToken,
    InsufficientScope,
}

/// A Bearer challenge to attach to a 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scopes: Vec<ScopeHint>,
    pub error: Option<ChallengeError>,
}

/// A refusal or failure on its way to becoming a response.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: Code,
    pub message: Cow<'static, str>,
    pub fault: Fault,
    pub challenge: Option<Challenge>,
    /// `Allow` for a 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` (seconds) for a 429.
    pub retry_after: Option<u64>,
    /// A login whose secret matched nothing (what the failed-login throttle counts).
    pub wrong_secret: bool,
}

impl Rejection {
    fn new(status: StatusCode, code: Code, fault: Fault, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection { status, code, message: message.into(), fault, challenge: None, allow: None, retry_after: None, wrong_secret: false }
    }

    /// The client sent something malformed.
    pub fn bad_request(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, Fault::Client, message)
    }

    pub fn not_found(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, Fault::Client, message)
    }

    pub fn method_not_allowed(allow: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        let mut r = Self::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, Fault::Client, message);
        r.allow = Some(allow);
        r
    }

    pub fn unsupported_media_type(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::Unsupported, Fault::Client, message)
    }

    pub fn too_large(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, Fault::Client, message)
    }

    /// 401 with a Bearer challenge.
    pub fn unauthorized(challenge: Challenge, message: impl Into<Cow<'static, str>>) -> Self {
        let mut r = Self::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, Fault::Client, message);
        r.challenge = Some(challenge);
        r
    }

    /// 401 without a challenge (token server and admin API: the caller knows where it is).
    pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, Fault::Client, message)
    }

    /// 403: a new token cannot help.
    pub fn denied(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, Code::Denied, Fault::Client, message)
    }

    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, Code::Conflict, Fault::Client, message)
    }

    /// 429: the caller must wait `retry_after` seconds.
    pub fn too_many_requests(retry_after: u64, message: impl Into<Cow<'static, str>>) -> Self {
        let mut r = Self::new(StatusCode::TOO_MANY_REQUESTS, Code::TooManyRequests, Fault::Client, message);
        r.retry_after = Some(retry_after);
        r
    }

    /// The upstream answered badly or the connection broke (502).
    pub fn bad_gateway(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, Code::Unavailable, Fault::Upstream, message)
    }

    /// The upstream could not be reached (503).
    pub fn upstream_unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, Fault::Upstream, message)
    }

    /// The upstream did not answer in time (504).
    pub fn gateway_timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, Code::Unavailable, Fault::Upstream, message)
    }

    /// Our own failure (500); the message must not reveal internals beyond a summary.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Unknown, Fault::Internal, message)
    }

    /// Renders the response. `realm` and `service` fill the challenge, when there is one.
    pub fn to_response(&self, realm: &str, service: &str) -> Response<Body> {
        let body = serde_json::json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": self.challenge.as_ref().map(challenge_detail).unwrap_or_default(),
            }]
        });
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(ch) = &self.challenge {
            if let Ok(v) = HeaderValue::from_str(&challenge_header(ch, realm, service)) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

/// `Bearer realm="…",service="…"[,scope="…"][,error="…"]`, as distribution writes it.
pub fn challenge_header(ch: &Challenge, realm: &str, service: &str) -> String {
    let mut s = format!("Bearer realm={},service={}", quote(realm), quote(service));
    if !ch.scopes.is_empty() {
        let scope: Vec<String> = ch.scopes.iter().map(ToString::to_string).collect();
        s.push_str(&format!(",scope={}", quote(&scope.join(" "))));
    }
    match ch.error {
        Some(ChallengeError::InvalidToken) => s.push_str(",error=\"invalid_token\""),
        Some(ChallengeError::InsufficientScope) => s.push_str(",error=\"insufficient_scope\""),
        None => {}
    }
    s
}

/// RFC 7230 quoted-string; the values we quote are URLs, service names and scopes, but
/// escape `"` and `\` anyway.
fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Distribution's `detail` for an auth error: the access records that were required.
fn challenge_detail(ch: &Challenge) -> serde_json::Value {
    ch.scopes
        .iter()
        .map(|s| match s {
            ScopeHint::Repository(r, a) => serde_json::json!({
                "Type": "repository", "Class": "", "Name": r.as_str(), "Action": a.claim_word()
            }),
            ScopeHint::Catalog => serde_json::json!({"Type": "registry", "Class": "", "Name": "catalog", "Action": "*"}),
        })
        .collect()
}

impl From<crate::policy::Denial> for Rejection {
    fn from(d: crate::policy::Denial) -> Self {
        use crate::policy::Denial;
        match d {
            Denial::Unauthenticated { hints } => {
                Rejection::unauthorized(Challenge { scopes: hints, error: None }, "authentication required")
            }
            Denial::InsufficientScope { hints, reason } => Rejection::unauthorized(
                Challenge { scopes: hints, error: Some(ChallengeError::InsufficientScope) },
                format!("requested access to the resource is denied: {reason}"),
            ),
            Denial::Denied { reason } => Rejection::denied(format!("requested access to the resource is denied: {reason}")),
            Denial::Locked { repo, lock } => Rejection::denied(format!("repository {repo} is {lock}")),
        }
    }
}

impl Rejection {
    /// A credential that failed on a `/v2` request: 401 with a challenge for what the
    /// request needs (`error="invalid_token"` when a Bearer token was sent).
    pub fn auth_failed(f: crate::auth::AuthFailure, hints: Vec<ScopeHint>) -> Self {
        let error = f.bearer.then_some(ChallengeError::InvalidToken);
        let mut r = Rejection::unauthorized(Challenge { scopes: hints, error }, f.reason);
        r.wrong_secret = f.wrong_secret;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Action;
    use crate::oci::RepoName;

    #[test]
    fn challenge_line_has_scope_and_error() {
        let ch = Challenge {
            scopes: vec![ScopeHint::Repository(RepoName::parse("a/b").unwrap(), Action::ContentWrite), ScopeHint::Catalog],
            error: Some(ChallengeError::InsufficientScope),
        };
        assert_eq!(
            challenge_header(&ch, "https://r.example/token", "svc"),
            r#"Bearer realm="https://r.example/token",service="svc",scope="repository:a/b:push registry:catalog:*",error="insufficient_scope""#
        );
        let plain = Challenge { scopes: vec![], error: None };
        assert_eq!(challenge_header(&plain, "r", "s"), r#"Bearer realm="r",service="s""#);
    }

    #[test]
    fn a_rejection_renders_the_docker_error_shape() {
        let r = Rejection::denied("requested access to the resource is denied");
        let resp = r.to_response("r", "s");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
