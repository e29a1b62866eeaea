//! Configuration: one YAML file (unknown keys rejected) read into [`RawConfig`], overridden
//! by command-line flags and `SCOPEGATE_*` variables ([`Overrides`]), then validated once
//! into [`Config`], whose fields are typed (addresses, URLs, durations, names). Nothing
//! after startup reads a raw string. Every default is written here, so a missing file
//! means "run on the embedded defaults".
//!
//! This module reads files and the values it is given; it never opens sockets or stores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use serde::Deserialize;

use crate::policy::MapName;
use crate::route::PageLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// The file as written, with defaults for what it leaves out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub listen: String,
    pub public_url: Option<String>,
    pub upstream: String,
    pub data_dir: PathBuf,
    pub admin: RawAdmin,
    pub token: RawToken,
    pub limits: RawLimits,
    pub log: RawLog,
    pub audit: RawAudit,
    /// TLS on the public listener (plain HTTP without it, e.g. behind an ingress).
    pub tls: Option<RawTls>,
    /// Trust for an https:// upstream.
    pub upstream_tls: Option<RawUpstreamTls>,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Threads serving the public listener, each with its own event loop and its own
    /// connections to the registry; 0 means one per CPU core.
    pub workers: usize,
    /// PostgreSQL for several replicas (`postgres://…`); the embedded SQLite store without it.
    /// Prefer `SCOPEGATE_DATABASE_URL` or `--database-url` when it holds a password.
    pub database_url: Option<String>,
    /// While the store cannot be read, requests are decided from the last loaded policy for
    /// at most this long; after it, they are refused (503) until the store answers again.
    pub max_staleness_secs: u64,
    pub anonymous: RawAnonymous,
    /// External identity providers whose JWTs are accepted (`bearer:<jwt>`, `Bearer <jwt>`).
    pub issuers: Vec<RawIssuer>,
}

/// One external issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// A short name for logs and session tokens.
    pub name: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// The `aud` the JWT must carry.
    pub audience: String,
    /// HTTPS URL of the JWKS (http:// only for loopback); or `jwks_file`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM bundle to verify the JWKS server (default: the Mozilla roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accepted algorithms; each key is pinned to one of them.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Least time between two fetches caused by an unknown `kid`.
    #[serde(default = "default_refetch")]
    pub refetch_interval_secs: u64,
    /// Fetched keys are refreshed after this long.
    #[serde(default = "default_cache")]
    pub cache_secs: u64,
    /// Leeway on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Claims that must be present besides `iss`, `aud` and `exp`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The value of `{context}` in rules.
    #[serde(default)]
    pub context: Option<String>,
    /// Claim rules granting scope maps; several add up, none matched grants nothing.
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// `claim` (a dotted path) holds `value` (a string, or an array containing it) ⇒ `scope_map`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub claim: String,
    pub value: String,
    pub scope_map: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_refetch() -> u64 {
    60
}
fn default_cache() -> u64 {
    3600
}
fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    /// File holding the admin token; else `SCOPEGATE_ADMIN_TOKEN`; else generated once.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawToken {
    pub service: String,
    pub issuer: String,
    pub lifetime_secs: u64,
    pub refresh_lifetime_secs: u64,
    /// PKCS#8 PEM of an EC P-256 key to sign with (else one is generated and stored).
    pub signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub catalog_max_n: u32,
    pub tags_max_n: u32,
    pub manifest_max_bytes: u64,
    pub upstream_connect_timeout_secs: u64,
    /// Time the registry has to answer a request without a body (to its response headers).
    pub upstream_response_timeout_secs: u64,
    /// Largest request head (request line and headers) on the public listener.
    pub max_header_bytes: usize,
    /// Most headers one request may carry.
    pub max_headers: usize,
    /// Time a client has to send a request head, once it starts one.
    pub header_read_timeout_secs: u64,
    /// Connections the public listener serves at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    pub failed_logins: RawFailedLogins,
}

/// Failed logins (Basic credentials, at `/token` or on `/v2`) slow down and then lock out
/// the token name and the client address they came with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFailedLogins {
    pub enabled: bool,
    /// Failures within the window before each further one costs a growing wait.
    pub delay_after: u32,
    /// Failures within the window that lock the name or address out.
    pub lockout_after: u32,
    pub window_secs: u64,
    pub lockout_secs: u64,
    /// The longest wait before the lockout.
    pub max_delay_secs: u64,
}

impl Default for RawFailedLogins {
    fn default() -> Self {
        RawFailedLogins { enabled: true, delay_after: 5, lockout_after: 20, window_secs: 900, lockout_secs: 900, max_delay_secs: 60 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: String,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    /// stdout, stderr, off, or a file path (appended).
    pub output: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit { output: "stdout".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain; re-read when it changes on disk.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM bundle of the CAs that sign the upstream's certificate.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnonymous {
    /// Scope map the anonymous caller is bound to; none by default.
    pub scope_map: Option<String>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:5000".into(),
            public_url: None,
            upstream: "http://127.0.0.1:5001".into(),
            data_dir: PathBuf::from("scopegate-data"),
            admin: RawAdmin::default(),
            token: RawToken::default(),
            limits: RawLimits::default(),
            log: RawLog::default(),
            audit: RawAudit::default(),
            tls: None,
            upstream_tls: None,
            shutdown_grace_secs: 30,
            workers: 0,
            database_url: None,
            max_staleness_secs: 300,
            anonymous: RawAnonymous::default(),
            issuers: Vec::new(),
        }
    }
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: "127.0.0.1:5002".into(), token_file: None }
    }
}

impl Default for RawToken {
    fn default() -> Self {
        RawToken {
            service: "scopegate".into(),
            issuer: "scopegate".into(),
            lifetime_secs: 300,
            refresh_lifetime_secs: 90 * 24 * 3600,
            signing_key_file: None,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            catalog_max_n: 1000,
            tags_max_n: 1000,
            manifest_max_bytes: 4 * 1024 * 1024,
            upstream_connect_timeout_secs: 5,
            upstream_response_timeout_secs: 60,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout_secs: 15,
            max_connections: 4096,
            failed_logins: RawFailedLogins::default(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: "text".into(), level: "info".into() }
    }
}

/// Values from flags or `SCOPEGATE_*` variables; each beats the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
}

/// An origin (`scheme://host[:port]`) with no path, query or credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Origin {
    fn parse(field: &'static str, s: &str) -> Result<Origin, ConfigError> {
        let uri: Uri = s.parse().map_err(|e| invalid(field, format!("{s:?} is not a URL: {e}")))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| invalid(field, format!("{s:?} needs a scheme (http:// or https://)")))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid(field, format!("{s:?}: only http and https are supported")));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid(field, format!("{s:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(invalid(field, format!("{s:?} must not hold credentials")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid(field, format!("{s:?} must be an origin without a path or query")));
        }
        Ok(Origin { scheme, authority })
    }

    /// `scheme://authority`, no trailing slash.
    pub fn as_string(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub service: String,
    pub issuer: String,
    pub lifetime: Duration,
    pub refresh_lifetime: Duration,
    pub signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub page: PageLimits,
    pub manifest_max_bytes: u64,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// `None`: failed logins are not throttled.
    pub failed_logins: Option<FailedLogins>,
}

/// See [`RawFailedLogins`]; validated (`delay_after < lockout_after`, times at least 1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedLogins {
    pub delay_after: u32,
    pub lockout_after: u32,
    pub window_secs: i64,
    pub lockout_secs: i64,
    pub max_delay_secs: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

/// A claim rule, with `{context}` already filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    /// Path into the claims (`realm_access.roles` is two levels).
    pub claim: Vec<String>,
    pub value: String,
    pub scope_map: MapName,
}

/// A validated external issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub ca_file: Option<PathBuf>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub refetch_interval: Duration,
    pub cache_for: Duration,
    pub leeway_secs: i64,
    pub required_claims: Vec<String>,
    pub rules: Vec<ClaimRule>,
}

impl RawIssuer {
    fn validate(&self, own_issuer: &str) -> Result<IssuerSettings, ConfigError> {
        let field = "issuers";
        let who = &self.name;
        if self.name.is_empty() || !self.name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
            return Err(invalid(field, format!("issuer name {who:?} must be letters, digits, '-' or '_'")));
        }
        if self.issuer.is_empty() || self.issuer == own_issuer {
            return Err(invalid(field, format!("{who}: issuer must be set and differ from token.issuer ({own_issuer:?})")));
        }
        if self.audience.is_empty() {
            return Err(invalid(field, format!("{who}: audience must be set")));
        }
        let jwks = match (&self.jwks_url, &self.jwks_file) {
            (Some(u), None) => {
                let uri: Uri = u.parse().map_err(|e| invalid(field, format!("{who}: jwks_url {u:?}: {e}")))?;
                let host = uri.host().unwrap_or_default();
                let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1");
                match uri.scheme_str() {
                    Some("https") => {}
                    Some("http") if loopback => {}
                    _ => return Err(invalid(field, format!("{who}: jwks_url must be https:// (http:// only on loopback)"))),
                }
                JwksSource::Url(u.clone())
            }
            (None, Some(f)) => JwksSource::File(f.clone()),
            _ => return Err(invalid(field, format!("{who}: give exactly one of jwks_url and jwks_file"))),
        };
        let mut algorithms = Vec::new();
        for a in &self.algorithms {
            let alg: jsonwebtoken::Algorithm = a.parse().map_err(|_| invalid(field, format!("{who}: unknown algorithm {a:?}")))?;
            if matches!(alg, jsonwebtoken::Algorithm::HS256 | jsonwebtoken::Algorithm::HS384 | jsonwebtoken::Algorithm::HS512) {
                return Err(invalid(field, format!("{who}: {a} is a shared-secret algorithm; only public-key algorithms are accepted")));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(invalid(field, format!("{who}: algorithms must not be empty")));
        }
        let mut rules = Vec::new();
        for r in &self.rules {
            let mut value = r.value.clone();
            if value.contains("{context}") {
                let ctx = self.context.as_deref().ok_or_else(|| invalid(field, format!("{who}: a rule uses {{context}} but no context is set")))?;
                value = value.replace("{context}", ctx);
            }
            if value.contains('{') || value.contains('}') {
                return Err(invalid(field, format!("{who}: rule value {:?}: {{context}} is the only placeholder", r.value)));
            }
            let claim: Vec<String> = r.claim.split('.').map(str::to_owned).collect();
            if claim.iter().any(String::is_empty) {
                return Err(invalid(field, format!("{who}: invalid claim path {:?}", r.claim)));
            }
            let scope_map = MapName::parse(&r.scope_map).map_err(|e| invalid(field, format!("{who}: {e}")))?;
            rules.push(ClaimRule { claim, value, scope_map });
        }
        let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok(IssuerSettings {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            jwks,
            ca_file: self.ca_file.clone(),
            algorithms,
            refetch_interval: Duration::from_secs(self.refetch_interval_secs),
            cache_for: Duration::from_secs(self.cache_secs.max(1)),
            leeway_secs: secs(self.leeway_secs.min(300)),
            required_claims: self.required_claims.clone(),
            rules,
        })
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The public origin clients use; `None` means "the address we end up listening on".
    pub public_url: Option<Origin>,
    pub upstream: Origin,
    pub admin_listen: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub token: TokenSettings,
    pub limits: Limits,
    pub log_format: LogFormat,
    pub log_level: String,
    pub anonymous_scope_map: Option<MapName>,
    pub issuers: Vec<IssuerSettings>,
    pub audit: crate::audit::AuditOutput,
    /// Certificate and key of the public listener.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CA bundle for an https:// upstream (the Mozilla roots without it).
    pub upstream_ca_file: Option<PathBuf>,
    pub shutdown_grace: Duration,
    /// Threads serving the public listener (at least 1).
    pub workers: usize,
    pub database_url: Option<String>,
    pub max_staleness: Duration,
}

impl RawConfig {
    /// Reads a YAML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
    }

    pub fn from_yaml(text: &str) -> Result<RawConfig, String> {
        // an empty file is the defaults
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(RawConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    pub fn apply(mut self, o: &Overrides) -> RawConfig {
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &o.public_url {
            self.public_url = Some(v.clone());
        }
        if let Some(v) = &o.upstream {
            self.upstream = v.clone();
        }
        if let Some(v) = &o.admin_listen {
            self.admin.listen = v.clone();
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &o.database_url {
            self.database_url = Some(v.clone());
        }
        self
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let addr = |field: &'static str, s: &str| -> Result<SocketAddr, ConfigError> {
            s.parse().map_err(|_| invalid(field, format!("{s:?} is not an address like 127.0.0.1:5000")))
        };
        let upstream = Origin::parse("upstream", &self.upstream)?;
        if self.upstream_tls.is_some() && upstream.scheme != Scheme::HTTPS {
            return Err(invalid("upstream_tls", "is set but the upstream is not https://"));
        }
        let t = &self.token;
        if t.lifetime_secs < 60 || t.lifetime_secs > 24 * 3600 {
            return Err(invalid("token.lifetime_secs", "must be between 60 and 86400 (clients refuse tokens shorter than 60 s)"));
        }
        if t.refresh_lifetime_secs < t.lifetime_secs {
            return Err(invalid("token.refresh_lifetime_secs", "must be at least token.lifetime_secs"));
        }
        let printable = |v: &str| !v.is_empty() && v.bytes().all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\');
        if !printable(&t.service) {
            return Err(invalid("token.service", "must be non-empty printable ASCII without quotes or backslashes"));
        }
        if !printable(&t.issuer) {
            return Err(invalid("token.issuer", "must be non-empty printable ASCII without quotes or backslashes"));
        }
        let l = &self.limits;
        if l.catalog_max_n == 0 || l.catalog_max_n > 1000 {
            return Err(invalid("limits.catalog_max_n", "must be between 1 and 1000 (the registry's own maximum)"));
        }
        if l.tags_max_n == 0 {
            return Err(invalid("limits.tags_max_n", "must be at least 1"));
        }
        if l.manifest_max_bytes == 0 {
            return Err(invalid("limits.manifest_max_bytes", "must be at least 1"));
        }
        // within the read buffer (about 400 KiB), and room for a client's usual headers
        if !(4096..=256 * 1024).contains(&l.max_header_bytes) {
            return Err(invalid("limits.max_header_bytes", "must be between 4096 and 262144"));
        }
        if l.max_headers == 0 || l.max_headers > 1000 {
            return Err(invalid("limits.max_headers", "must be between 1 and 1000"));
        }
        if l.upstream_response_timeout_secs == 0 {
            return Err(invalid("limits.upstream_response_timeout_secs", "must be at least 1"));
        }
        if l.header_read_timeout_secs == 0 {
            return Err(invalid("limits.header_read_timeout_secs", "must be at least 1"));
        }
        if l.max_connections == 0 || l.max_connections > 1_000_000 {
            return Err(invalid("limits.max_connections", "must be between 1 and 1000000"));
        }
        let failed_logins = match &l.failed_logins {
            f if !f.enabled => None,
            f => {
                if f.delay_after == 0 || f.delay_after >= f.lockout_after {
                    return Err(invalid("limits.failed_logins", "needs 1 <= delay_after < lockout_after"));
                }
                let secs = |field: &'static str, v: u64| match i64::try_from(v) {
                    Ok(v) if (1..=86_400 * 365).contains(&v) => Ok(v),
                    _ => Err(invalid(field, "must be between 1 second and a year")),
                };
                Some(FailedLogins {
                    delay_after: f.delay_after,
                    lockout_after: f.lockout_after,
                    window_secs: secs("limits.failed_logins.window_secs", f.window_secs)?,
                    lockout_secs: secs("limits.failed_logins.lockout_secs", f.lockout_secs)?,
                    max_delay_secs: secs("limits.failed_logins.max_delay_secs", f.max_delay_secs)?,
                })
            }
        };
        let log_format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log.format", format!("{other:?}: expected text or json"))),
        };
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| invalid("log.level", e.to_string()))?;
        let anonymous_scope_map =
            self.anonymous.scope_map.as_deref().map(MapName::parse).transpose().map_err(|e| invalid("anonymous.scope_map", e))?;
        if self.audit.output.is_empty() {
            return Err(invalid("audit.output", "give stdout, stderr, off or a file path"));
        }
        if let Some(u) = &self.database_url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                return Err(invalid("database_url", "must be a postgres:// URL"));
            }
        }
        if self.shutdown_grace_secs > 3600 {
            return Err(invalid("shutdown_grace_secs", "must be at most 3600"));
        }
        if self.workers > 256 {
            return Err(invalid("workers", "must be at most 256 (0 means one per CPU core)"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let mut issuers = Vec::new();
        for i in &self.issuers {
            let v = i.validate(&t.issuer)?;
            if issuers.iter().any(|o: &IssuerSettings| o.name == v.name || o.issuer == v.issuer) {
                return Err(invalid("issuers", format!("issuer {:?} appears twice", v.name)));
            }
            issuers.push(v);
        }
        Ok(Config {
            listen: addr("listen", &self.listen)?,
            public_url: self.public_url.as_deref().map(|s| Origin::parse("public_url", s)).transpose()?,
            upstream,
            admin_listen: addr("admin.listen", &self.admin.listen)?,
            admin_token_file: self.admin.token_file,
            data_dir: self.data_dir,
            token: TokenSettings {
                service: t.service.clone(),
                issuer: t.issuer.clone(),
                lifetime: Duration::from_secs(t.lifetime_secs),
                refresh_lifetime: Duration::from_secs(t.refresh_lifetime_secs),
                signing_key_file: t.signing_key_file.clone(),
            },
            limits: Limits {
                page: PageLimits { catalog_max_n: l.catalog_max_n, tags_max_n: l.tags_max_n },
                manifest_max_bytes: l.manifest_max_bytes,
                upstream_connect_timeout: Duration::from_secs(l.upstream_connect_timeout_secs.max(1)),
                upstream_response_timeout: Duration::from_secs(l.upstream_response_timeout_secs),
                max_header_bytes: l.max_header_bytes,
                max_headers: l.max_headers,
                header_read_timeout: Duration::from_secs(l.header_read_timeout_secs),
                max_connections: l.max_connections,
                failed_logins,
            },
            log_format,
            log_level: self.log.level,
            anonymous_scope_map,
            issuers,
            audit: crate::audit::AuditOutput::parse(&self.audit.output),
            tls: self.tls.map(|t| (t.cert_file, t.key_file)),
            upstream_ca_file: self.upstream_tls.map(|u| u.ca_file),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            workers: match self.workers {
                0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                n => n,
            },
            database_url: self.database_url,
            max_staleness: Duration::from_secs(self.max_staleness_secs.max(1)),
        })
    }
}

impl Config {
    /// Reads the file (if any), applies overrides, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match path {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        raw.apply(overrides).validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configs_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for f in ["scopegate.yaml", "minimal.yaml"] {
            let c = Config::load(Some(&dir.join(f)), &Overrides::default()).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(c.upstream.as_string(), "http://127.0.0.1:5001", "{f}");
        }
    }

    #[test]
    fn embedded_defaults_validate() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert!(c.public_url.is_none());
        assert_eq!(c.token.lifetime, Duration::from_secs(300));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(RawConfig::from_yaml("listen: 127.0.0.1:1\nlisten_typo: x\n").unwrap_err().contains("listen_typo"));
        assert!(RawConfig::from_yaml("token:\n  lifetime: 3\n").is_err());
        let bad = [
            "upstream: ftp://x\n",
            "upstream: http://u:p@x\n",
            "upstream: http://x/path\n",
            "public_url: registry.example.com\n",
            "listen: localhost\n",
            "token:\n  lifetime_secs: 10\n",
            "limits:\n  catalog_max_n: 5000\n",
            "log:\n  format: xml\n",
            "anonymous:\n  scope_map: 'bad name'\n",
            "workers: 257\n",
        ];
        for y in bad {
            let raw = RawConfig::from_yaml(y).unwrap();
            assert!(raw.validate().is_err(), "{y}");
        }
    }

    #[test]
    fn issuers_are_validated() {
        let base = "issuers:\n  - name: idp\n    issuer: https://id.example\n    audience: reg\n";
        let ok = format!("{base}    jwks_url: https://id.example/jwks\n    context: c1\n    rules:\n      - {{claim: roles, value: 'admin/{{context}}', scope_map: _repositories_admin}}\n");
        let c = RawConfig::from_yaml(&ok).unwrap().validate().unwrap();
        assert_eq!(c.issuers[0].rules[0].value, "admin/c1");
        let bad = [
            format!("{base}    jwks_url: http://id.example/jwks\n"),
            format!("{base}    jwks_url: https://id.example/jwks\n    jwks_file: /x\n"),
            format!("{base}\n"),
            format!("{base}    jwks_file: /x\n    algorithms: [HS256]\n"),
            format!("{base}    jwks_file: /x\n    algorithms: [XX999]\n"),
            format!("{base}    jwks_file: /x\n    rules:\n      - {{claim: roles, value: 'admin/{{context}}', scope_map: m}}\n"),
            format!("{base}    jwks_file: /x\n    context: c\n    rules:\n      - {{claim: roles, value: 'admin/{{other}}', scope_map: m}}\n"),
            "issuers:\n  - name: idp\n    issuer: scopegate\n    audience: reg\n    jwks_file: /x\n".to_owned(),
        ];
        for y in bad {
            assert!(RawConfig::from_yaml(&y).unwrap().validate().is_err(), "{y}");
        }
        assert!(RawConfig::from_yaml(&format!("{base}    jwks_file: /x\n    typo: 1\n")).is_err());
    }

    #[test]
    fn workers_default_to_one_per_core_and_can_be_set() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(Config::load(None, &Overrides::default()).unwrap().workers, cores);
        assert_eq!(RawConfig::from_yaml("workers: 0\n").unwrap().validate().unwrap().workers, cores);
        assert_eq!(RawConfig::from_yaml("workers: 3\n").unwrap().validate().unwrap().workers, 3);
    }

    #[test]
    fn overrides_beat_the_file() {
        let raw = RawConfig::from_yaml("listen: 127.0.0.1:7000\n").unwrap();
        let o = Overrides { listen: Some("127.0.0.1:7001".into()), ..Overrides::default() };
        assert_eq!(raw.apply(&o).validate().unwrap().listen.to_string(), "127.0.0.1:7001");
    }
}
