//! Listeners and lifecycle. `start` opens the store, loads or creates the signing key and
//! the admin token digest, builds the shared state and serves the public and admin
//! listeners it is *given* (so tests bind port 0), until the shutdown future resolves;
//! then it stops accepting and lets open connections finish.
//!
//! Connection handling is hyper's (HTTP/1.1 with keep-alive and a header read timeout);
//! this module parses nothing itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::auth::secret::{self, Secret};
use crate::auth::external::ExternalIssuers;
use crate::auth::Authenticator;
use crate::body::Body;
use crate::config::Config;
use crate::proxy::Upstream;
use crate::state::State;
use crate::store::sqlite::SqliteStore;
use crate::store::{KeyRecord, Store, StoreError};
use crate::token::jwt::Issuer;
use crate::token::keys::{KeySet, SigningKey};

/// Where the admin token comes from.
#[derive(Debug, Clone)]
pub enum AdminToken {
    /// Given by the operator (file or `SCOPEGATE_ADMIN_TOKEN`).
    Given(Secret),
    /// Use the digest stored on an earlier start, or generate one now.
    StoredOrGenerate,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key: {0}")]
    Key(#[from] crate::token::keys::KeyError),
    #[error("{0}")]
    Other(String),
    #[error("cannot read listener address: {0}")]
    Io(#[from] std::io::Error),
}

/// A running gateway.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<State>,
    /// Set when an admin token was generated on this start: shown once, never stored.
    pub generated_admin_token: Option<Secret>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting and waits for open connections to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until the servers end (after `stop`).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// A handle that stops the servers when sent `true`.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

const ADMIN_DIGEST_KEY: &str = "admin_token_digest";

fn admin_digest(store: &dyn Store, source: AdminToken) -> Result<([u8; 32], Option<Secret>), StartError> {
    match source {
        AdminToken::Given(s) => Ok((s.digest(), None)),
        AdminToken::StoredOrGenerate => {
            if let Some(d) = store.setting(ADMIN_DIGEST_KEY)? {
                let d: [u8; 32] = d.try_into().map_err(|_| StartError::Other("stored admin token digest is corrupt".into()))?;
                return Ok((d, None));
            }
            let s = secret::generate(secret::ADMIN_TOKEN_PREFIX).map_err(|e| StartError::Other(e.to_string()))?;
            store.set_setting(ADMIN_DIGEST_KEY, &s.digest())?;
            Ok((s.digest(), Some(s)))
        }
    }
}

fn key_set(store: &dyn Store) -> Result<KeySet, StartError> {
    let mut records = store.signing_keys()?;
    if records.is_empty() {
        let k = SigningKey::generate(OffsetDateTime::now_utc())?;
        let rec = KeyRecord { pkcs8: k.pkcs8().to_vec(), created: k.created };
        store.add_signing_key(&rec)?;
        info!(kid = %k.kid, "generated a new ES256 signing key");
        records.push(rec);
    }
    let keys = records.iter().map(|r| SigningKey::from_pkcs8(&r.pkcs8, r.created)).collect::<Result<Vec<_>, _>>()?;
    Ok(KeySet::new(keys)?)
}

/// Starts the gateway on the given listeners with the embedded SQLite store.
pub async fn start(config: Config, public: TcpListener, admin: TcpListener, admin_token: AdminToken) -> Result<Running, StartError> {
    let dir = config.data_dir.clone();
    let store: Arc<dyn Store> = Arc::new(tokio::task::spawn_blocking(move || SqliteStore::open(&dir)).await.map_err(|e| StartError::Other(e.to_string()))??);
    start_with_store(config, public, admin, admin_token, store).await
}

/// Starts the gateway with a given store.
pub async fn start_with_store(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    admin_token: AdminToken,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let public_origin = config.public_url.as_ref().map(|o| o.as_string()).unwrap_or_else(|| format!("http://{public_addr}"));
    let (keys, (digest, generated), policy) = {
        let store = Arc::clone(&store);
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> Result<_, StartError> {
            Ok((key_set(store.as_ref())?, admin_digest(store.as_ref(), admin_token)?, State::load_policy(store.as_ref(), &config)?))
        })
        .await
        .map_err(|e| StartError::Other(e.to_string()))??
    };
    let issuer = Arc::new(Issuer::new(config.token.issuer.clone(), config.token.service.clone(), keys));
    let external = Arc::new(ExternalIssuers::new(&config.issuers).map_err(|e| StartError::Other(e.to_string()))?);
    external.prefetch().await;
    let auth = Authenticator::new(issuer, external).map_err(|e| StartError::Other(e.to_string()))?;
    let upstream = Upstream::new(&config, public_origin.clone());
    let state = Arc::new(State::new(config, public_origin, auth, upstream, store, policy, digest));

    let recovery = Arc::clone(&state);
    let recovery_task = tokio::spawn(async move {
        let _one_at_a_time = recovery.untag_lock.lock().await;
        let grant = recovery.policy().grant_untag_recovery();
        crate::repository::replay_journal(&recovery, &grant).await;
    });

    let (stop, stopped) = watch::channel(false);
    let s1 = Arc::clone(&state);
    let public_task = tokio::spawn(serve(public, stopped.clone(), move |req, peer| {
        let s = Arc::clone(&s1);
        async move { crate::gateway::handle(s, req, peer).await }
    }));
    let s2 = Arc::clone(&state);
    let admin_task = tokio::spawn(serve(admin, stopped, move |req, _peer| {
        let s = Arc::clone(&s2);
        async move { crate::admin::handle(s, req).await }
    }));
    info!(public = %public_addr, admin = %admin_addr, upstream = %state.config.upstream.as_string(), realm = %state.realm, "scopegate listening");
    Ok(Running { public_addr, admin_addr, state, generated_admin_token: generated, stop, tasks: vec![public_task, admin_task, recovery_task] })
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections until `stop` turns true, then drains open connections.
async fn serve<H, F>(listener: TcpListener, mut stop: watch::Receiver<bool>, handler: H)
where
    H: Fn(hyper::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // out of file descriptors and the like: back off briefly, keep serving
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req, peer).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(client = %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
