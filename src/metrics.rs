//! Prometheus metrics, served at `/metrics` on the admin listener. Every label comes from a
//! closed set (endpoint kind, action, outcome, credential kind, status class, direction):
//! never a repository, user or token name, so names sent by an attacker cannot grow the
//! number of series. Credential-expiry gauges are computed at scrape time from the live
//! policy snapshot, so they move as time passes, not only when the policy changes.
//!
//! This module counts; it never decides and never sees a secret.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use time::OffsetDateTime;

use crate::policy::Policy;

/// How a `/v2` or repository-API request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authorized and answered (forwarded or served by the gateway).
    Allowed,
    /// Refused by the policy (401 insufficient scope, 403, locks).
    Denied,
    /// No or bad credentials (401).
    Unauthenticated,
    /// Malformed or unroutable request (4xx before any decision).
    Rejected,
    /// The upstream or the gateway failed (5xx).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// Status class of an upstream answer.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

pub struct Metrics {
    registry: Registry,
    /// `process_*` series, unprefixed as Prometheus conventions have them.
    process: Registry,
    /// endpoint, action, outcome, credential
    pub requests: IntCounterVec,
    pub in_flight: IntGauge,
    /// credential, outcome (issued | refused)
    pub token_requests: IntCounterVec,
    /// result (hit | miss)
    pub credential_cache: IntCounterVec,
    /// endpoint
    pub upstream_seconds: HistogramVec,
    /// class (2xx..5xx, or connect | timeout | broken)
    pub upstream_responses: IntCounterVec,
    /// direction (to_upstream | to_client)
    pub bytes: IntCounterVec,
    pub audit_dropped: IntCounter,
    pub config_reloads: IntCounterVec,
    /// kind (full | incremental)
    pub policy_reloads: IntCounterVec,
    /// by (token | address)
    pub logins_throttled: IntCounterVec,
    pub connections_open: IntGauge,
    /// kind (full | incremental)
    pub policy_reload_seconds: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    /// `policy` returns the live snapshot (read at scrape time for the expiry gauges).
    pub fn new(policy: impl Fn() -> Arc<Policy> + Send + Sync + 'static, now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("scopegate".into()), None)?;
        let m = Metrics {
            requests: counter("requests_total", "Registry and repository API requests by endpoint, action, outcome and credential kind.", &["endpoint", "action", "outcome", "credential"])?,
            in_flight: IntGauge::new("requests_in_flight", "Requests being served on the public listener.")?,
            token_requests: counter("token_requests_total", "Token server requests by credential kind and outcome.", &["credential", "outcome"])?,
            credential_cache: counter("credential_cache_total", "Credential verifications by cache result.", &["result"])?,
            upstream_seconds: HistogramVec::new(
                HistogramOpts::new("upstream_request_duration_seconds", "Time to the registry's response headers.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["endpoint"],
            )?,
            upstream_responses: counter("upstream_responses_total", "Registry answers by status class, or transport failure.", &["class"])?,
            bytes: counter("proxied_bytes_total", "Body bytes streamed through the gateway.", &["direction"])?,
            audit_dropped: IntCounter::new("audit_dropped_total", "Audit lines dropped because the audit writer fell behind.")?,
            config_reloads: counter("config_reloads_total", "Configuration reloads by result.", &["result"])?,
            policy_reloads: counter(
                "policy_reloads_total",
                "Policy snapshots rebuilt after a change: full (every record read) or incremental (only the changed records).",
                &["kind"],
            )?,
            logins_throttled: counter(
                "logins_throttled_total",
                "Login attempts answered 429 because of earlier failures, by the counter that stopped them.",
                &["by"],
            )?,
            connections_open: IntGauge::new("connections_open", "Connections open on the public listener.")?,
            policy_reload_seconds: HistogramVec::new(
                HistogramOpts::new("policy_reload_duration_seconds", "Time to read the store and build a new policy snapshot.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["kind"],
            )?,
            registry,
            process: Registry::new(),
        };
        for c in [&m.requests, &m.token_requests, &m.credential_cache, &m.upstream_responses, &m.bytes, &m.config_reloads, &m.policy_reloads, &m.logins_throttled] {
            m.registry.register(Box::new(c.clone()))?;
        }
        m.registry.register(Box::new(m.in_flight.clone()))?;
        m.registry.register(Box::new(m.connections_open.clone()))?;
        m.registry.register(Box::new(m.upstream_seconds.clone()))?;
        m.registry.register(Box::new(m.policy_reload_seconds.clone()))?;
        m.registry.register(Box::new(m.audit_dropped.clone()))?;
        m.registry.register(Box::new(PolicyCollector::new(Box::new(policy), Box::new(now))?))?;
        #[cfg(target_os = "linux")]
        m.process.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// Seven days, the warning window for expiring credentials.
const EXPIRY_WINDOW: time::Duration = time::Duration::days(7);

/// Gauges read from the live policy at scrape time.
struct PolicyCollector {
    policy: Box<dyn Fn() -> Arc<Policy> + Send + Sync>,
    now: Box<dyn Fn() -> OffsetDateTime + Send + Sync>,
    expiring: IntGaugeVec,
    earliest: prometheus::GaugeVec,
    objects: IntGaugeVec,
    epoch: IntGauge,
    descs: Vec<Desc>,
}

impl PolicyCollector {
    fn new(
        policy: Box<dyn Fn() -> Arc<Policy> + Send + Sync>,
        now: Box<dyn Fn() -> OffsetDateTime + Send + Sync>,
    ) -> Result<PolicyCollector, prometheus::Error> {
        let expiring = IntGaugeVec::new(
            Opts::new("credentials_expiring_soon", "Enabled credentials (token passwords, API keys) that expire within 7 days."),
            &["kind"],
        )?;
        let earliest = prometheus::GaugeVec::new(
            Opts::new("credentials_earliest_expiry_timestamp_seconds", "Unix time of the earliest future expiry among enabled credentials."),
            &["kind"],
        )?;
        let objects = IntGaugeVec::new(Opts::new("policy_objects", "Objects in the live policy."), &["kind"])?;
        let epoch = IntGauge::new("policy_epoch", "Version of the live policy snapshot.")?;
        let mut descs = Vec::new();
        for c in [&expiring as &dyn Collector, &earliest, &objects, &epoch] {
            descs.extend(c.desc().into_iter().cloned());
        }
        Ok(PolicyCollector { policy, now, expiring, earliest, objects, epoch, descs })
    }
}

impl Collector for PolicyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use crate::policy::Status;
        let p = (self.policy)();
        let now = (self.now)();
        let soon = now + EXPIRY_WINDOW;
        let stats = |kind: &str, expiries: Vec<OffsetDateTime>| {
            let future: Vec<OffsetDateTime> = expiries.into_iter().filter(|e| *e > now).collect();
            self.expiring.with_label_values(&[kind]).set(future.iter().filter(|e| **e <= soon).count() as i64);
            let g: Gauge = self.earliest.with_label_values(&[kind]);
            g.set(future.iter().min().map_or(0.0, |e| e.unix_timestamp() as f64));
        };
        stats(
            "token_password",
            p.tokens().filter(|t| t.status == Status::Enabled).flat_map(|t| t.passwords().filter_map(|(_, pw)| pw.expiry).collect::<Vec<_>>()).collect(),
        );
        stats("api_key", p.api_keys().filter(|k| k.status == Status::Enabled).filter_map(|k| k.expiry).collect());
        self.objects.with_label_values(&["token"]).set(p.tokens().count() as i64);
        self.objects.with_label_values(&["api_key"]).set(p.api_keys().count() as i64);
        self.objects.with_label_values(&["scope_map"]).set(p.maps().count() as i64);
        self.objects.with_label_values(&["locked_repository"]).set(p.locked_repositories().count() as i64);
        self.epoch.set(i64::try_from(p.epoch).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        for c in [&self.expiring as &dyn Collector, &self.earliest, &self.objects, &self.epoch] {
            out.extend(c.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MapName, Password, Slot, Status, Token, TokenName};

    #[test]
    fn expiry_gauges_follow_the_clock() {
        let now = OffsetDateTime::now_utc();
        let mut t = Token::new(TokenName::parse("ci").unwrap(), MapName::parse("_repositories_pull").unwrap(), Status::Enabled, now);
        let pw = |days: i64| Some(Password { id: "x".into(), digest: [0; 32], created: now, expiry: Some(now + time::Duration::days(days)) });
        t.set_password(Slot::Password1, pw(3));
        t.set_password(Slot::Password2, pw(30));
        let policy = Arc::new(Policy::new(7, vec![], vec![t], None));
        let m = Metrics::new(move || Arc::clone(&policy), move || now).unwrap();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("scopegate_credentials_expiring_soon{kind=\"token_password\"} 1"), "{text}");
        assert!(text.contains(&format!("scopegate_credentials_earliest_expiry_timestamp_seconds{{kind=\"token_password\"}} {}", (now + time::Duration::days(3)).unix_timestamp())));
        assert!(text.contains("scopegate_policy_epoch 7"));
        assert!(text.contains("scopegate_policy_objects{kind=\"scope_map\"} 5"));
    }
}
