//! The Docker token server at `<public-url>/token` (the challenge's realm): `GET` with Basic
//! credentials or none, and the OAuth2 `POST` form with `grant_type=password` or
//! `refresh_token`. It authenticates, parses every requested scope (repeated and/or
//! space-separated; repeated resources unioned), grants the intersection of what is asked
//! and what the caller holds now (an empty grant is a valid login token), and answers with
//! `token` = `access_token`, integer `expires_in` and RFC 3339 `issued_at`; with
//! `offline_token=true` / `access_type=offline` also a reusable refresh token bound to the
//! password that earned it. Wrong credentials get 401, never an anonymous token.
//!
//! This module mints; it does not authorize `/v2` requests (the gateway does, live).

pub mod jwt;
pub mod keys;
pub mod scope;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::access::{Access, ActionSet};
use crate::auth::secret::Secret;
use crate::auth::{subject_of, AuthFailure, Authenticator, Credential, Login};
use crate::body::{full, Body};
use crate::config::TokenSettings;
use crate::policy::{CredentialKind, Policy, Principal, Subject};
use crate::reject::{Code, Rejection};
use jwt::{Holder, Mint, Use};
use scope::Scope;

/// Largest form body accepted on `POST /token`.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// What a token request asked for, from either form.
#[derive(Default)]
struct TokenRequest {
    service: Option<String>,
    scopes: Vec<Scope>,
    offline: bool,
    grant: Grant,
}

#[derive(Default)]
enum Grant {
    /// GET: whatever the Authorization header says.
    #[default]
    Header,
    Password { username: String, password: Secret },
    Refresh(String),
}

/// The outcome of a token request, for logs and metrics.
#[derive(Debug)]
pub struct Issued {
    pub subject: Subject,
    pub credential: CredentialKind,
    pub repositories: usize,
}

/// Serves one request to the token endpoint; `credential` is its `Authorization` header,
/// already read by the caller (or the reason it could not be read).
pub async fn handle<B>(
    req: Request<B>,
    credential: Result<Credential, AuthFailure>,
    policy: &Policy,
    auth: &Authenticator,
    settings: &TokenSettings,
    now: OffsetDateTime,
) -> Result<(Response<Body>, Issued), Rejection>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let is_post = match *req.method() {
        Method::GET => false,
        Method::POST => true,
        _ => return Err(Rejection::method_not_allowed("GET, POST", "the token endpoint answers GET and POST")),
    };
    let credential = credential.map_err(login_failure)?;
    let tr = if is_post {
        parse_form(req).await?
    } else {
        parse_pairs(form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()), false)?
    };
    if let Some(s) = &tr.service {
        if s != &settings.service {
            return Err(Rejection::bad_request(Code::InvalidRequest, format!("unknown service {s:?} (this token server serves {:?})", settings.service)));
        }
    }

    // who is asking, and what the tokens will be bound to
    let (login, reuse_refresh) = match (&tr.grant, &credential) {
        (Grant::Refresh(t), _) => {
            let holder = auth.verify_refresh(t, policy, now).map_err(login_failure)?;
            (Login { holder, not_after: None }, Some(t.clone()))
        }
        (Grant::Password { username, password }, _) | (Grant::Header, Credential::Basic { username, password }) => {
            (auth.login(username, password, policy, now).await.map_err(login_failure)?, None)
        }
        (Grant::Header, Credential::None) => (Login { holder: Holder::Anonymous, not_after: None }, None),
        (Grant::Header, Credential::Bearer(_)) => {
            return Err(Rejection::unauthenticated("the token endpoint takes Basic credentials or a refresh token, not a Bearer token"))
        }
    };
    let principal = Principal {
        subject: subject_of(&login.holder),
        credential: if reuse_refresh.is_some() { CredentialKind::Session } else { credential.kind() },
        session: None,
    };

    let access = grant(policy, &principal, &tr.scopes);
    let issued_at = now.unix_timestamp();
    let lifetime = i64::try_from(settings.lifetime.as_secs()).unwrap_or(300);
    // a token never outlives the external JWT that earned it
    let expires_at = login.not_after.map_or(issued_at + lifetime, |n| n.min(issued_at + lifetime));
    let holder = &login.holder;
    let token = auth
        .issuer()
        .mint(&Mint { token_use: Use::Access, holder, access: &access, issued_at, expires_at })
        .map_err(|e| Rejection::internal(e.to_string()))?;

    let refresh = match (tr.offline, reuse_refresh, holder) {
        (true, Some(same), _) => Some(same),
        (false, _, _) | (true, None, Holder::Anonymous) => None,
        (true, None, _) => Some(mint_refresh(auth, policy, &login, settings, issued_at)?),
    };

    let mut body = serde_json::Map::new();
    body.insert("token".into(), token.clone().into());
    body.insert("access_token".into(), token.into());
    body.insert("expires_in".into(), (expires_at - issued_at).max(0).into());
    body.insert("issued_at".into(), now.format(&Rfc3339).unwrap_or_default().into());
    if let Some(r) = refresh {
        body.insert("refresh_token".into(), r.into());
    }
    if is_post {
        body.insert("scope".into(), scope::format_access(&access).into());
    }
    let mut resp = Response::new(full(serde_json::Value::Object(body).to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *resp.status_mut() = StatusCode::OK;
    let issued = Issued { subject: principal.subject, credential: principal.credential, repositories: access.repositories.len() };
    Ok((resp, issued))
}

/// Requested ∩ held, per resource; repeated resources add up.
fn grant(policy: &Policy, p: &Principal, scopes: &[Scope]) -> Access {
    let mut access = Access::default();
    for s in scopes {
        match s {
            Scope::Repository { name, actions } => {
                let held = policy.holdings(p, name);
                access.add(name.clone(), ActionSet::from_request_words(actions.iter().map(String::as_str), held));
            }
            Scope::Catalog { actions } => {
                if actions.iter().any(|a| a == "*") && policy.may_request_catalog(p) {
                    access.catalog = true;
                }
            }
            Scope::Other => {}
        }
    }
    access
}

/// A refresh token lives for the configured time, but never past the expiry of the
/// password, key or external JWT that earned it.
fn mint_refresh(auth: &Authenticator, policy: &Policy, login: &Login, settings: &TokenSettings, issued_at: i64) -> Result<String, Rejection> {
    let mut expires_at = issued_at + i64::try_from(settings.refresh_lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let credential_expiry = match &login.holder {
        Holder::Token { name, binding } => policy.token(name).and_then(|t| t.password(binding.slot)).and_then(|p| p.expiry),
        Holder::ApiKey { name, .. } => policy.api_key(name).and_then(|k| k.expiry),
        Holder::External { .. } | Holder::Anonymous => None,
    };
    for cap in credential_expiry.map(|e| e.unix_timestamp()).into_iter().chain(login.not_after) {
        expires_at = expires_at.min(cap);
    }
    auth.issuer()
        .mint(&Mint { token_use: Use::Refresh, holder: &login.holder, access: &Access::default(), issued_at, expires_at })
        .map_err(|e| Rejection::internal(e.to_string()))
}

fn login_failure(f: AuthFailure) -> Rejection {
    let mut r = Rejection::unauthenticated(f.reason);
    r.wrong_secret = f.wrong_secret;
    r
}

async fn parse_form<B>(req: Request<B>) -> Result<TokenRequest, Rejection>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media = ct.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Rejection::unsupported_media_type("POST /token takes an application/x-www-form-urlencoded body"));
    }
    let bytes = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|e| Rejection::bad_request(Code::InvalidRequest, format!("cannot read the form body: {e}")))?
        .to_bytes();
    parse_pairs(form_urlencoded::parse(&bytes), true)
}

fn parse_pairs<'a>(pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>, post: bool) -> Result<TokenRequest, Rejection> {
    let mut tr = TokenRequest::default();
    let (mut grant_type, mut username, mut password, mut refresh) = (None, None, None, None);
    let once = |slot: &mut Option<String>, k: &str, v: &str| -> Result<(), Rejection> {
        if slot.replace(v.to_owned()).is_some() {
            return Err(Rejection::bad_request(Code::InvalidRequest, format!("parameter {k:?} given more than once")));
        }
        Ok(())
    };
    for (k, v) in pairs {
        match k.as_ref() {
            "scope" => tr.scopes.extend(scope::parse(&v).map_err(|e| Rejection::bad_request(Code::InvalidRequest, e.to_string()))?),
            "service" => once(&mut tr.service, &k, &v)?,
            "offline_token" if !post => tr.offline = v.eq_ignore_ascii_case("true"),
            "access_type" if post => tr.offline = v == "offline",
            "grant_type" if post => once(&mut grant_type, &k, &v)?,
            "username" if post => once(&mut username, &k, &v)?,
            "password" if post => once(&mut password, &k, &v)?,
            "refresh_token" if post => once(&mut refresh, &k, &v)?,
            // client_id, account and anything else: informational, never trusted
            _ => {}
        }
    }
    if post {
        tr.grant = match grant_type.as_deref() {
            Some("password") => match (username, password) {
                (Some(u), Some(p)) => Grant::Password { username: u, password: Secret::new(p) },
                _ => return Err(Rejection::bad_request(Code::InvalidRequest, "grant_type=password needs username and password")),
            },
            Some("refresh_token") => Grant::Refresh(
                refresh.ok_or_else(|| Rejection::bad_request(Code::InvalidRequest, "grant_type=refresh_token needs refresh_token"))?,
            ),
            Some(other) => return Err(Rejection::bad_request(Code::InvalidRequest, format!("unsupported grant_type {other:?}"))),
            None => return Err(Rejection::bad_request(Code::InvalidRequest, "grant_type is required")),
        };
    }
    Ok(tr)
}
