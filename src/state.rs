//! The state every request shares. What lives as long as the process (the store, the
//! policy snapshot, the clock, the signing keys, the metrics) sits in [`State`]; what is
//! built from the configuration (upstream client, authenticator, token settings, audit
//! writer) sits in a [`Runtime`] that a reload replaces as a whole, atomically: requests
//! in flight keep the runtime they started with, new ones get the new one.
//!
//! Admin writes go through [`State::write`], which runs them one at a time on the blocking
//! pool and then refreshes the snapshot, so a change bites on the next request. A refresh
//! re-reads only the records the store's change log names since the snapshot's epoch.
//! No request-path code here: no parsing, no decisions.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::Auditor;
use crate::auth::external::ExternalIssuers;
use crate::auth::secret::digests_equal;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::Upstream;
use crate::store::{Store, StoreError};
use crate::token::jwt::Issuer;
use crate::token::keys::KeySet;

/// Everything built from one configuration.
pub struct Runtime {
    pub config: Config,
    /// `scheme://host[:port]` clients use.
    pub public_origin: String,
    /// `<public_origin>/token`.
    pub realm: String,
    pub auth: Authenticator,
    pub upstream: Upstream,
    pub audit: Auditor,
}

impl Runtime {
    /// Builds a runtime; fails (changing nothing) if a file it needs is missing or bad.
    pub async fn build(config: Config, public_addr: SocketAddr, keys: Arc<KeySet>, metrics: &Arc<Metrics>) -> Result<Runtime, String> {
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let public_origin = config.public_url.as_ref().map(|o| o.as_string()).unwrap_or_else(|| format!("{scheme}://{public_addr}"));
        let issuer = Arc::new(Issuer::new(config.token.issuer.clone(), config.token.service.clone(), keys));
        let external = Arc::new(ExternalIssuers::new(&config.issuers).map_err(|e| e.to_string())?);
        external.prefetch().await;
        let cache = (metrics.credential_cache.with_label_values(&["hit"]), metrics.credential_cache.with_label_values(&["miss"]));
        let auth = Authenticator::new(issuer, external, cache).map_err(|e| e.to_string())?;
        let upstream = Upstream::new(&config, public_origin.clone(), Arc::clone(metrics))?;
        let audit = Auditor::new(&config.audit, metrics.audit_dropped.clone()).map_err(|e| format!("audit output: {e}"))?;
        Ok(Runtime { realm: format!("{public_origin}/token"), public_origin, auth, upstream, audit, config })
    }
}

pub struct State {
    runtime: ArcSwap<Runtime>,
    pub store: Arc<dyn Store>,
    /// System time in production; tests move it forward.
    pub clock: crate::clock::Clock,
    pub metrics: Arc<Metrics>,
    /// The signing keys (from the store, or the configured key file).
    pub keys: Arc<KeySet>,
    /// Untags run one at a time (they may delete and restore a manifest).
    pub untag_lock: tokio::sync::Mutex<()>,
    /// Failed-login counters (they outlive configuration reloads).
    pub login_throttle: crate::auth::throttle::LoginThrottle,
    /// Set when shutdown begins: `/readyz` then says no, so traffic moves elsewhere.
    pub draining: std::sync::atomic::AtomicBool,
    /// Unix time (gateway clock) the store started failing, 0 while it answers; decisions
    /// stop once it has failed for longer than `max_staleness`.
    failing_since: std::sync::atomic::AtomicI64,
    policy: Arc<ArcSwap<Policy>>,
    admin_digest: [u8; 32],
    write_lock: tokio::sync::Mutex<()>,
    /// Snapshot rebuilds run one at a time, so a slower one never replaces a newer snapshot.
    refresh_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("public_origin", &self.runtime().public_origin).field("epoch", &self.policy.load().epoch).finish_non_exhaustive()
    }
}

impl State {
    pub fn new(
        runtime: Runtime,
        store: Arc<dyn Store>,
        clock: crate::clock::Clock,
        metrics: Arc<Metrics>,
        keys: Arc<KeySet>,
        policy: Arc<ArcSwap<Policy>>,
        admin_digest: [u8; 32],
    ) -> State {
        State {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            clock,
            metrics,
            keys,
            untag_lock: tokio::sync::Mutex::new(()),
            login_throttle: crate::auth::throttle::LoginThrottle::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            failing_since: std::sync::atomic::AtomicI64::new(0),
            policy,
            admin_digest,
            write_lock: tokio::sync::Mutex::new(()),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The runtime as it is now (hold it for the whole request).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Puts a new runtime in place, with the policy read anew for its configuration (the
    /// anonymous default may have changed). The policy is built first: if the store fails,
    /// nothing changes. The reload is counted as applied just before the swap, so whoever
    /// sees the new configuration also sees it counted. Requests in flight finish with the
    /// old runtime.
    pub async fn replace_runtime(self: &Arc<Self>, rt: Runtime) -> Result<(), StoreError> {
        let _guard = self.refresh_lock.lock().await;
        let rt = Arc::new(rt);
        let (me, next) = (Arc::clone(self), Arc::clone(&rt));
        let started = std::time::Instant::now();
        let policy = tokio::task::spawn_blocking(move || Self::load_policy(me.store.as_ref(), &next.config))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        self.metrics.config_reloads.with_label_values(&["applied"]).inc();
        self.runtime.store(rt);
        self.publish(policy, "full", started);
        Ok(())
    }

    /// The policy as it is now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Builds a snapshot from the store's records.
    pub fn load_policy(store: &dyn Store, config: &Config) -> Result<Policy, StoreError> {
        let r = store.load()?;
        // set at runtime (`scopegate anonymous`) beats the configuration
        let anonymous = r.anonymous.unwrap_or_else(|| config.anonymous_scope_map.clone());
        Ok(Policy::new(r.epoch, r.maps, r.tokens, anonymous).with_api_keys(r.api_keys).with_attributes(r.attributes))
    }

    /// Brings the snapshot up to the store's epoch: only the records changed since the
    /// snapshot's epoch are re-read, unless the change log no longer reaches back that far.
    pub async fn refresh(self: &Arc<Self>) -> Result<(), StoreError> {
        let _guard = self.refresh_lock.lock().await;
        let current = self.policy();
        self.rebuild(current).await
    }

    /// Builds the next snapshot, patching `from` when the change log allows.
    async fn rebuild(self: &Arc<Self>, from: Arc<Policy>) -> Result<(), StoreError> {
        let me = Arc::clone(self);
        let started = std::time::Instant::now();
        let next = tokio::task::spawn_blocking(move || -> Result<Option<(Policy, &'static str)>, StoreError> {
            let config = &me.runtime().config;
            match me.store.changes_since(from.epoch)? {
                Some(changes) if changes.epoch == from.epoch => Ok(None),
                Some(changes) => Ok(Some((from.patched(changes, config.anonymous_scope_map.as_ref()), "incremental"))),
                None => Ok(Some((Self::load_policy(me.store.as_ref(), config)?, "full"))),
            }
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        if let Some((policy, kind)) = next {
            self.publish(policy, kind, started);
        }
        Ok(())
    }

    /// Swaps in a new snapshot built `kind`-wise since `started`, and counts it.
    fn publish(&self, policy: Policy, kind: &'static str, started: std::time::Instant) {
        self.metrics.policy_reloads.with_label_values(&[kind]).inc();
        self.metrics.policy_reload_seconds.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        self.policy.store(Arc::new(policy));
    }

    /// Runs one admin write against the store (serialized with other writes), then reloads
    /// the snapshot. `f` sees the policy as it was just before the write.
    pub async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store, &Policy) -> Result<T, StoreError> + Send + 'static,
    {
        let _guard = self.write_lock.lock().await;
        let me = Arc::clone(self);
        let out = tokio::task::spawn_blocking(move || {
            let current = me.policy();
            f(me.store.as_ref(), &current)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        // a failed write changed nothing: say why it failed, not whether a reload works
        if matches!(out, Err(StoreError::Unavailable(_))) {
            self.store_failed();
        }
        let value = out?;
        self.refresh().await?;
        Ok(value)
    }

    /// Records that the store answered.
    pub fn store_answered(&self) {
        self.failing_since.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that the store could not be reached (the first failure of an outage counts).
    pub fn store_failed(&self) {
        let now = self.clock.now().unix_timestamp().max(1);
        let _ = self.failing_since.compare_exchange(0, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed);
    }

    /// For how long the store has been failing, once that is longer than `max_staleness`.
    pub fn too_stale(&self) -> Option<i64> {
        let since = self.failing_since.load(std::sync::atomic::Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let age = self.clock.now().unix_timestamp() - since;
        let bound = i64::try_from(self.runtime().config.max_staleness.as_secs()).unwrap_or(i64::MAX);
        (age > bound).then_some(age)
    }

    /// Is this the admin token?
    pub fn is_admin_token(&self, presented: &str) -> bool {
        digests_equal(&crate::auth::secret::digest_of(presented.as_bytes()), &self.admin_digest)
    }
}
