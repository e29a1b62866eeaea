//! Listeners and lifecycle. `start` opens the store, loads or creates the signing key and
//! the admin token digest, builds the shared state and serves the public (HTTP or rustls
//! TLS, its certificate re-read when the files change) and admin listeners it is *given*
//! (so tests bind port 0). On stop it stops accepting and lets open connections finish
//! within the configured grace period. `Running::reload` applies a new configuration
//! without dropping a connection, or refuses it and changes nothing.
//!
//! Connection handling is hyper's (HTTP/1.1 with keep-alive and a header read timeout);
//! this module parses nothing itself. The public listener's connections run on
//! [`workers`] threads, one event loop each; the admin listener and background tasks run
//! on the caller's runtime.

pub mod workers;

use workers::{Handoff, Workers};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::auth::secret::{self, Secret};
use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{Runtime, State};
use crate::tls::ReloadingCert;
use crate::store::sqlite::SqliteStore;
use crate::store::{KeyRecord, Store, StoreError};
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
    /// Stops accepting and waits for open connections to finish (within the grace period).
    pub async fn shutdown(self) {
        self.begin_shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops accepting new connections, drains the open ones, and turns `/readyz` off.
    pub fn begin_shutdown(&self) {
        self.state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop.send(true);
    }

    /// Waits until the servers end (after `stop`).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
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

/// The signing keys: the stored ones (one is generated on first start), plus the configured
/// key file, which then signs.
fn key_set(store: &dyn Store, key_file: Option<&std::path::Path>) -> Result<KeySet, StartError> {
    let mut records = store.signing_keys()?;
    if records.is_empty() {
        let k = SigningKey::generate(OffsetDateTime::now_utc())?;
        let rec = KeyRecord { pkcs8: k.pkcs8().to_vec(), created: k.created };
        store.add_signing_key(&rec)?;
        info!(kid = %k.kid, "generated a new ES256 signing key");
        records.push(rec);
    }
    let mut keys = records.iter().map(|r| SigningKey::from_pkcs8(&r.pkcs8, r.created)).collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = key_file {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| StartError::Other(format!("token.signing_key_file {}: expected a PKCS#8 PEM EC P-256 key: {e}", path.display())))?;
        // newer than every stored key, so it signs; the stored ones still verify
        let k = SigningKey::from_pkcs8(der.secret_pkcs8_der(), OffsetDateTime::now_utc())?;
        info!(kid = %k.kid, "signing with the configured key file");
        keys.push(k);
    }
    Ok(KeySet::new(keys)?)
}

/// Starts the gateway on the given listeners with the configured store: PostgreSQL when a
/// database URL is set, else the embedded SQLite file.
pub async fn start(config: Config, public: TcpListener, admin: TcpListener, admin_token: AdminToken) -> Result<Running, StartError> {
    let dir = config.data_dir.clone();
    let url = config.database_url.clone();
    let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || -> Result<Arc<dyn Store>, StoreError> {
        Ok(match url {
            Some(u) => Arc::new(crate::store::postgres::PostgresStore::open(&u)?),
            None => Arc::new(SqliteStore::open(&dir)?),
        })
    })
    .await
    .map_err(|e| StartError::Other(e.to_string()))??;
    start_with_store(config, public, admin, admin_token, store).await
}

/// How often the shared epoch is read: a change made through another replica is applied
/// here within this time.
const EPOCH_POLL: Duration = Duration::from_millis(250);

/// Reloads the policy when the store's epoch moves (a change made elsewhere). Failures keep
/// the last snapshot and are logged once per outage.
async fn watch_epoch(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(EPOCH_POLL) => {}
            () = stopped(&mut stop) => return,
        }
        let store = Arc::clone(&state.store);
        let epoch = match tokio::task::spawn_blocking(move || store.epoch()).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                state.store_failed();
                if !failing {
                    warn!(error = %e, "cannot read the policy store; deciding from the last loaded policy");
                }
                failing = true;
                continue;
            }
            Err(_) => continue,
        };
        state.store_answered();
        if failing {
            info!("the policy store answers again");
            failing = false;
        }
        if epoch != state.policy().epoch {
            if let Err(e) = state.refresh().await {
                warn!(error = %e, "cannot reload the policy; keeping the last loaded one");
            }
        }
    }
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
    let (keys, (digest, generated), policy) = {
        let store = Arc::clone(&store);
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> Result<_, StartError> {
            Ok((
                key_set(store.as_ref(), config.token.signing_key_file.as_deref())?,
                admin_digest(store.as_ref(), admin_token)?,
                State::load_policy(store.as_ref(), &config)?,
            ))
        })
        .await
        .map_err(|e| StartError::Other(e.to_string()))??
    };
    let keys = Arc::new(keys);
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let clock = crate::clock::Clock::system();
    let metrics = {
        let (p, c) = (Arc::clone(&policy), clock.clone());
        Arc::new(Metrics::new(move || p.load_full(), move || c.now()).map_err(|e| StartError::Other(e.to_string()))?)
    };
    let tls = match &config.tls {
        Some((cert, key)) => Some(Arc::new(ReloadingCert::load(cert, key).map_err(StartError::Other)?)),
        None => None,
    };
    let acceptor = match &tls {
        Some(cert) => Some(TlsAcceptor::from(Arc::new(crate::tls::server_config(Arc::clone(cert)).map_err(StartError::Other)?))),
        None => None,
    };
    let grace = config.shutdown_grace;
    let workers = Arc::new(Workers::start(config.workers).map_err(|e| StartError::Other(format!("cannot start the worker threads: {e}")))?);
    let runtime = Runtime::build(config, public_addr, Arc::clone(&keys), &metrics).await.map_err(StartError::Other)?;
    let state = Arc::new(State::new(runtime, store, clock, metrics, keys, policy, digest));

    let recovery = Arc::clone(&state);
    let recovery_task = tokio::spawn(async move {
        let _one_at_a_time = recovery.untag_lock.lock().await;
        let grant = recovery.policy().grant_untag_recovery();
        let rt = recovery.runtime();
        crate::repository::replay_journal(&recovery, &rt, &grant).await;
    });

    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![recovery_task, tokio::spawn(watch_epoch(Arc::clone(&state), stopped.clone()))];
    if let Some(cert) = &tls {
        tasks.push(tokio::spawn(watch_certificate(Arc::clone(cert), stopped.clone())));
    }
    let s1 = Arc::clone(&state);
    // the admin listener (and its /readyz answering "draining") stays up until the public
    // listener stops accepting
    let (public_closed, admin_stop) = watch::channel(false);
    let s0 = Arc::clone(&state);
    let public = Listening {
        listener: public,
        tls: acceptor,
        stop: stopped.clone(),
        grace,
        drain: Drain::WhenQuiet,
        closed: Some(public_closed),
        limits: move || ConnectionLimits::of(&s0.runtime().config.limits),
        open: Some(state.metrics.connections_open.clone()),
        workers: Some(workers),
    };
    tasks.push(tokio::spawn(serve(public, move |req, peer| {
        let s = Arc::clone(&s1);
        async move { crate::gateway::handle(s, req, peer).await }
    })));
    let s2 = Arc::clone(&state);
    drop(stopped);
    let admin = Listening {
        listener: admin,
        tls: None,
        stop: admin_stop,
        grace,
        drain: Drain::Immediately,
        closed: None,
        limits: || ConnectionLimits { max_connections: 256, max_header_bytes: 64 * 1024, max_headers: 100, header_read_timeout: Duration::from_secs(15) },
        open: None,
        workers: None,
    };
    tasks.push(tokio::spawn(serve(admin, move |req, _peer| {
        let s = Arc::clone(&s2);
        async move { crate::admin::handle(s, req).await }
    })));
    let rt = state.runtime();
    info!(public = %public_addr, admin = %admin_addr, upstream = %rt.config.upstream.as_string(), realm = %rt.realm, tls = tls.is_some(), "scopegate listening");
    Ok(Running { public_addr, admin_addr, state, generated_admin_token: generated, stop, tasks })
}

impl Running {
    /// Applies a new configuration: builds everything it needs first, and only then swaps
    /// it in. A failure changes nothing. Listener addresses, TLS files, the data directory
    /// and the number of workers need a restart; their changes are refused with a message
    /// saying so.
    pub async fn reload(&self, new: Config) -> Result<(), String> {
        let state = &self.state;
        let result = async {
            let old = &state.runtime().config;
            let fixed = [
                ("listen", old.listen.to_string(), new.listen.to_string()),
                ("admin.listen", old.admin_listen.to_string(), new.admin_listen.to_string()),
                ("data_dir", old.data_dir.display().to_string(), new.data_dir.display().to_string()),
                ("workers", old.workers.to_string(), new.workers.to_string()),
                ("tls", format!("{:?}", old.tls), format!("{:?}", new.tls)),
                ("token.signing_key_file", format!("{:?}", old.token.signing_key_file), format!("{:?}", new.token.signing_key_file)),
            ];
            if let Some((what, _, _)) = fixed.iter().find(|(_, a, b)| a != b) {
                return Err(format!("{what} cannot change while running; restart to apply it"));
            }
            let rt = Runtime::build(new, self.public_addr, Arc::clone(&state.keys), &state.metrics).await?;
            state.replace_runtime(rt).await.map_err(|e| e.to_string())
        }
        .await;
        // an applied reload is counted by `replace_runtime`, at the swap
        if result.is_err() {
            state.metrics.config_reloads.with_label_values(&["refused"]).inc();
        }
        result
    }
}

/// Re-reads the certificate files when they change.
async fn watch_certificate(cert: Arc<ReloadingCert>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stopped(&mut stop) => return,
        }
        match cert.reload_if_changed() {
            Ok(true) => info!("reloaded the TLS certificate"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "the new TLS certificate is not usable; still serving the previous one"),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long a connection may sit idle while the gateway drains before it is closed. A
/// client in the middle of a push sends its next request within this time.
const DRAIN_IDLE_CLOSE: Duration = Duration::from_secs(2);

/// How long the public listener must see no request before it stops accepting, once
/// draining. Clients such as skopeo and podman open a new connection for every request
/// (containers/image disables keep-alive), so a push in progress needs the listener open
/// until it is done; new work stops arriving because `/readyz` already says no.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// What one connection may cost: read per accepted connection, so a configuration
/// reload applies to the connections that follow it.
#[derive(Clone, Copy, Debug)]
struct ConnectionLimits {
    max_connections: usize,
    max_header_bytes: usize,
    max_headers: usize,
    header_read_timeout: Duration,
}

impl ConnectionLimits {
    fn of(l: &crate::config::Limits) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: l.max_connections,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            header_read_timeout: l.header_read_timeout,
        }
    }
}

/// One listener and how it is served.
struct Listening<L> {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    drain: Drain,
    /// Told when the listener stops accepting.
    closed: Option<watch::Sender<bool>>,
    limits: L,
    /// Counts open connections.
    open: Option<prometheus::IntGauge>,
    /// Where accepted connections run: these threads, or (without) the caller's runtime.
    workers: Option<Arc<Workers>>,
}

/// Whether a listener keeps accepting while draining.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Stop accepting at once (the admin listener).
    Immediately,
    /// Keep accepting until requests stop arriving (the public listener).
    WhenQuiet,
}

/// Requests in flight on one connection, and when it last finished one.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn now_ms(start: std::time::Instant) -> u64 {
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One request in flight, counted on its connection's and its listener's [`Activity`].
/// The count is given back on drop, so a request whose client hung up (hyper drops its
/// future) does not hold a drain open until the grace period ends.
struct InFlight {
    on: [Arc<Activity>; 2],
    epoch: std::time::Instant,
}

impl InFlight {
    fn begin(on: [Arc<Activity>; 2], epoch: std::time::Instant) -> InFlight {
        use std::sync::atomic::Ordering;
        let now = Activity::now_ms(epoch);
        for x in &on {
            x.in_flight.fetch_add(1, Ordering::Relaxed);
            x.last_ms.store(now, Ordering::Relaxed);
        }
        InFlight { on, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let now = Activity::now_ms(self.epoch);
        for x in &self.on {
            x.last_ms.store(now, Ordering::Relaxed);
            x.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Accepts connections (TLS when an acceptor is given) until `stop` turns true. Then it
/// drains: with [`Drain::WhenQuiet`] it keeps accepting until no request has arrived for
/// [`DRAIN_QUIET`] and none is in flight (a push is a conversation of many requests, on as
/// many connections); then it stops accepting, closes each open connection once it has
/// been idle for a moment, and after `grace` closes whatever is still open.
async fn serve<L, H, F>(l: Listening<L>, handler: H)
where
    L: Fn() -> ConnectionLimits,
    H: Fn(hyper::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let Listening { listener, tls, mut stop, grace, drain, closed, limits, open, workers } = l;
    // a connection's task holds one of these while it runs; at the limit, accepting waits
    // (further clients queue in the kernel's backlog) until one ends
    let slots = Arc::new(tokio::sync::Semaphore::new(0));
    let mut granted = 0usize;
    let epoch = std::time::Instant::now();
    let mut deadline: Option<tokio::time::Instant> = None;
    // requests on this listener, across connections
    let all = Arc::new(Activity::default());
    let mut connections = tokio::task::JoinSet::new();
    let mut draining = false;
    loop {
        if draining {
            let quiet_ms = Activity::now_ms(epoch).saturating_sub(all.last_ms.load(Ordering::Relaxed));
            let quiet = all.in_flight.load(Ordering::Relaxed) == 0 && quiet_ms >= DRAIN_QUIET.as_millis() as u64;
            let late = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if drain == Drain::Immediately || quiet || late {
                break;
            }
        }
        let now_limits = limits();
        // grow the pool to the configured limit (shrinking waits for connections to end)
        if granted < now_limits.max_connections {
            slots.add_permits(now_limits.max_connections - granted);
            granted = now_limits.max_connections;
        } else if granted > now_limits.max_connections {
            let surplus = granted - now_limits.max_connections;
            granted -= slots.forget_permits(surplus);
        }
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => s.ok(),
            () = tokio::time::sleep(Duration::from_millis(100)), if draining => continue,
            () = stopped(&mut stop), if !draining => None,
        };
        let Some(slot) = slot else {
            if !draining && *stop.borrow() {
                draining = true;
                deadline = Some(tokio::time::Instant::now() + grace);
                all.last_ms.fetch_max(Activity::now_ms(epoch), Ordering::Relaxed);
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)), if draining => continue,
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
                while connections.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                let worker = workers.as_deref().and_then(Workers::next);
                let stream = match Handoff::new(stream, worker.is_some()) {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(client = %peer, error = %e, "could not hand the connection to a worker");
                        continue;
                    }
                };
                let activity = Arc::new(Activity::default());
                let (h, a, g) = (handler.clone(), Arc::clone(&activity), Arc::clone(&all));
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    // counted until the response is ready, or until hyper drops the request
                    // because its client went away
                    let counted = InFlight::begin([Arc::clone(&a), Arc::clone(&g)], epoch);
                    async move {
                        let resp = h(req, peer).await;
                        drop(counted);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let tls = tls.clone();
                let stop = stop.clone();
                let gauge = open.clone();
                let connection = async move {
                    let _slot = slot;
                    let _open = gauge.map(OpenConnection::new);
                    let stream = match stream.register() {
                        Ok(s) => s,
                        Err(e) => return debug!(client = %peer, error = %e, "could not register the connection"),
                    };
                    let mut builder = http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(now_limits.header_read_timeout)
                        .max_header_size(now_limits.max_header_bytes)
                        .max_headers(now_limits.max_headers)
                        .keep_alive(true);
                    let result = match tls {
                        None => drain_aware(builder.serve_connection(TokioIo::new(stream), svc), stop, &activity, epoch).await,
                        Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => drain_aware(builder.serve_connection(TokioIo::new(tls_stream), svc), stop, &activity, epoch).await,
                            Ok(Err(e)) => return debug!(client = %peer, error = %e, "TLS handshake failed"),
                            Err(_) => return debug!(client = %peer, "TLS handshake timed out"),
                        },
                    };
                    if let Err(e) = result {
                        debug!(client = %peer, error = %e, "connection ended with an error");
                    }
                };
                match worker {
                    Some(w) => connections.spawn_on(connection, w),
                    None => connections.spawn(connection),
                };
            }
            () = stopped(&mut stop), if !draining => {
                draining = true;
                deadline = Some(tokio::time::Instant::now() + grace);
                all.last_ms.fetch_max(Activity::now_ms(epoch), Ordering::Relaxed);
            }
        }
    }
    drop(listener);
    if let Some(c) = closed {
        let _ = c.send(true);
    }
    let open = connections.len();
    let listener_name = if drain == Drain::WhenQuiet { "public" } else { "admin" };
    if open > 0 {
        info!(listener = listener_name, open, grace_secs = grace.as_secs(), "stopped accepting; draining open connections");
    }
    let left = deadline.map_or(grace, |d| d.saturating_duration_since(tokio::time::Instant::now()));
    let drained = tokio::time::timeout(left, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(grace_secs = grace.as_secs(), still_open = connections.len(), "shutdown grace period over; closing the connections still open");
        connections.abort_all();
    }
}

/// Counts a connection in the open-connections gauge while it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(g: prometheus::IntGauge) -> Self {
        g.inc();
        OpenConnection(g)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves a connection; once the gateway drains, closes it (after the response in
/// progress) as soon as it has been idle for [`DRAIN_IDLE_CLOSE`].
async fn drain_aware<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    mut stop: watch::Receiver<bool>,
    activity: &Activity,
    epoch: std::time::Instant,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use std::sync::atomic::Ordering;
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = stopped(&mut stop) => {}
    }
    // draining: the connection stays open while it is used
    activity.last_ms.fetch_max(Activity::now_ms(epoch), Ordering::Relaxed);
    loop {
        let idle_ms = Activity::now_ms(epoch).saturating_sub(activity.last_ms.load(Ordering::Relaxed));
        if activity.in_flight.load(Ordering::Relaxed) == 0 && idle_ms >= DRAIN_IDLE_CLOSE.as_millis() as u64 {
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        tokio::select! {
            r = conn.as_mut() => return r,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
