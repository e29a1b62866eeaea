//! The state every request shares: the validated config, the current policy snapshot
//! (swapped atomically; readers never wait), the authenticator, the upstream client and
//! the store. Admin writes go through [`State::write`], which runs them one at a time on
//! the blocking pool and then reloads the snapshot, so a change bites on the next request.
//!
//! No request-path code here: no parsing, no decisions.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::secret::digests_equal;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::policy::Policy;
use crate::proxy::Upstream;
use crate::store::{Store, StoreError};

pub struct State {
    pub config: Config,
    /// `scheme://host[:port]` clients use.
    pub public_origin: String,
    /// `<public_origin>/token`.
    pub realm: String,
    pub auth: Authenticator,
    pub upstream: Upstream,
    pub store: Arc<dyn Store>,
    /// System time in production; tests move it forward.
    pub clock: crate::clock::Clock,
    /// Untags run one at a time (they may delete and restore a manifest).
    pub untag_lock: tokio::sync::Mutex<()>,
    policy: ArcSwap<Policy>,
    admin_digest: [u8; 32],
    write_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("public_origin", &self.public_origin).field("epoch", &self.policy.load().epoch).finish_non_exhaustive()
    }
}

impl State {
    pub fn new(
        config: Config,
        public_origin: String,
        auth: Authenticator,
        upstream: Upstream,
        store: Arc<dyn Store>,
        policy: Policy,
        admin_digest: [u8; 32],
    ) -> State {
        let realm = format!("{public_origin}/token");
        State {
            config,
            public_origin,
            realm,
            auth,
            upstream,
            store,
            clock: crate::clock::Clock::system(),
            untag_lock: tokio::sync::Mutex::new(()),
            policy: ArcSwap::from_pointee(policy),
            admin_digest,
            write_lock: tokio::sync::Mutex::new(()),
        }
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

    /// Re-reads the store and swaps the snapshot.
    pub async fn reload(self: &Arc<Self>) -> Result<(), StoreError> {
        let me = Arc::clone(self);
        let policy = tokio::task::spawn_blocking(move || Self::load_policy(me.store.as_ref(), &me.config))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        self.policy.store(Arc::new(policy));
        Ok(())
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
        self.reload().await?;
        out
    }

    /// Is this the admin token?
    pub fn is_admin_token(&self, presented: &str) -> bool {
        digests_equal(&crate::auth::secret::digest_of(presented.as_bytes()), &self.admin_digest)
    }
}
