//! Forwarding: sends an authorized request to the registry over a pooled keep-alive
//! connection and streams the answer back. Bodies stream in both directions without
//! buffering (a manifest PUT is only capped at the configured size); the path and query
//! are rebuilt from the parsed route; redirects are passed to the client, never followed.
//! Upstream failures become 502 (bad answer or broken stream), 503 (unreachable) or 504
//! (timed out), in the Docker error shape. The registry is reached over HTTP, or HTTPS
//! (rustls) trusting a configured CA bundle. Latency, status classes and bytes each way are
//! counted here.
//!
//! `forward` demands a [`Grant`]: only the policy makes one, so nothing reaches the
//! registry without a decision. This module knows nothing about credentials.

mod catalog;
pub mod headers;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{stream, Body, BoxError};
use crate::config::{Config, Limits};
use crate::metrics::{status_class, Metrics};
use crate::policy::Grant;
use crate::reject::{Code, Rejection};
use crate::route::{Endpoint, Route};

/// The registry behind the gateway.
pub struct Upstream {
    /// The pool of keep-alive connections of requests made off the worker threads.
    main: Client<HttpsConnector<HttpConnector>, Body>,
    /// One pool per worker thread ([`crate::server::workers::current`] `- 1`). A
    /// connection's driving task lives on the thread that opened it, so a worker only
    /// ever uses connections on its own event loop.
    per_worker: Vec<Client<HttpsConnector<HttpConnector>, Body>>,
    metrics: Arc<Metrics>,
    /// The registry's origin: every request's URI is built on it ([`Upstream::uri`]).
    upstream: crate::config::Origin,
    /// The same as text, which the registry writes into absolute `Location`s.
    origin: String,
    /// `scheme://host[:port]` clients use.
    public_origin: String,
    limits: Limits,
    /// `scopegate_bytes_total` by direction, resolved once.
    bytes_up: prometheus::IntCounter,
    bytes_down: prometheus::IntCounter,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(config: &Config, public_origin: String, metrics: Arc<Metrics>) -> Result<Upstream, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.limits.upstream_connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.enforce_http(false);
        let tls = crate::tls::client_config(config.upstream_ca_file.as_deref()).map_err(|e| format!("upstream_tls: {e}"))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let pool = || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(connector.clone())
        };
        let (main, per_worker) = (pool(), (0..config.workers).map(|_| pool()).collect());
        let bytes_up = metrics.bytes.with_label_values(&["to_upstream"]);
        let bytes_down = metrics.bytes.with_label_values(&["to_client"]);
        Ok(Upstream { main, per_worker, metrics, origin: config.upstream.as_string(), upstream: config.upstream.clone(), public_origin, limits: config.limits, bytes_up, bytes_down })
    }

    /// This thread's pool.
    fn client(&self) -> &Client<HttpsConnector<HttpConnector>, Body> {
        match crate::server::workers::current() {
            0 => &self.main,
            i => self.per_worker.get(i - 1).unwrap_or(&self.main),
        }
    }

    /// Sends a request to the registry, timing it and mapping transport failures.
    async fn send(&self, req: Request<Body>, endpoint: &'static str) -> Result<Response<hyper::body::Incoming>, Rejection> {
        let started = Instant::now();
        let m = &self.metrics;
        // a request without a body must be answered within the response timeout; one with
        // a body (an upload) takes as long as the client takes to send it
        let answer = if http_body::Body::is_end_stream(req.body()) {
            match tokio::time::timeout(self.limits.upstream_response_timeout, self.client().request(req)).await {
                Ok(a) => a,
                Err(_) => {
                    m.upstream_responses.with_label_values(&["timeout"]).inc();
                    let secs = self.limits.upstream_response_timeout.as_secs();
                    return Err(Rejection::gateway_timeout(format!("the registry did not answer within {secs} s (limits.upstream_response_timeout_secs)")));
                }
            }
        } else {
            self.client().request(req).await
        };
        match answer {
            Ok(resp) => {
                m.upstream_seconds.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
                m.upstream_responses.with_label_values(&[status_class(resp.status().as_u16())]).inc();
                Ok(resp)
            }
            Err(e) if caused_by_client_body(&e) => Err(client_body_failure(&e)),
            Err(e) => {
                let r = transport_failure(&e);
                let kind = match r.status {
                    StatusCode::SERVICE_UNAVAILABLE => "connect",
                    StatusCode::GATEWAY_TIMEOUT => "timeout",
                    _ => "broken",
                };
                m.upstream_responses.with_label_values(&[kind]).inc();
                Err(r)
            }
        }
    }

    /// Whether the registry answers at all (`GET /v2/`, any status), for readiness. Nothing
    /// of a client's is sent.
    pub async fn probe(&self) -> Result<(), String> {
        let uri = self.uri("/v2/".to_owned()).map_err(|r| r.message.to_string())?;
        let req = Request::builder().uri(uri).body(crate::body::empty()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), self.client().request(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("unreachable: {}", transport_failure(&e).message)),
            Err(_) => Err("did not answer within 2 s".into()),
        }
    }

    /// A request of the gateway's own to the registry, made for an authorized caller (the
    /// repository API); it too demands a [`Grant`].
    pub(crate) async fn call(
        &self,
        _grant: &Grant,
        method: http::Method,
        target: &str,
        headers: &[(header::HeaderName, &str)],
        body: Body,
    ) -> Result<Response<hyper::body::Incoming>, Rejection> {
        let mut req = Request::builder().method(method).uri(self.uri(target.to_owned())?);
        for (k, v) in headers {
            req = req.header(k, *v);
        }
        self.send(req.body(body).map_err(|e| Rejection::internal(format!("cannot build an upstream request: {e}")))?, "repository_api").await
    }

    /// Forwards an authorized request and returns the registry's answer, streaming.
    pub async fn forward<B>(&self, req: Request<B>, route: &Route, grant: &Grant) -> Result<Response<Body>, Rejection>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let (Endpoint::Catalog { page }, Some(view)) = (&route.endpoint, grant.catalog()) {
            return catalog::list(self, view, page).await;
        }
        let (mut parts, body) = req.into_parts();
        let is_manifest_put = matches!(route.endpoint, Endpoint::Manifest { .. }) && parts.method == http::Method::PUT;
        let body = if is_manifest_put {
            // a manifest is small: read it whole, so one over the limit (declared or not,
            // chunked or not) is refused before the registry sees any of it
            let max = self.limits.manifest_max_bytes;
            let too_large = || Rejection::too_large(Code::ManifestInvalid, format!("manifest exceeds the {max}-byte limit"));
            let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                crate::body::discard(body);
                return Err(too_large());
            }
            let mut body = Box::pin(body);
            let bytes = match Limited::new(body.as_mut(), usize::try_from(max).unwrap_or(usize::MAX)).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    crate::body::discard(body);
                    return Err(too_large());
                }
                Err(e) => return Err(client_body_failure(&*e)),
            };
            stream(counted(http_body_util::Full::new(bytes), &self.bytes_up))
        } else if http_body::Body::is_end_stream(&body) {
            crate::body::empty()
        } else {
            // errors of the client's body are marked, so they are told apart from the registry's
            stream(counted(body.map_err(|e| BoxError::from(ClientBodyError(e.into()))), &self.bytes_up))
        };
        headers::to_upstream(&mut parts.headers);
        let target = route.upstream_target(grant.mount_allowed()).ok_or_else(|| Rejection::internal("this endpoint is not forwarded"))?;
        parts.uri = self.uri(target)?;
        parts.version = http::Version::HTTP_11;
        let resp = self.send(Request::from_parts(parts, body), route.kind().as_str()).await?;
        let (mut parts, body) = resp.into_parts();
        headers::to_client(&mut parts.headers, &self.origin, &self.public_origin);
        if http_body::Body::is_end_stream(&body) {
            // a HEAD's answer, or an empty one
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }
        Ok(Response::from_parts(parts, stream(FlushFirst::new(counted(body, &self.bytes_down)))))
    }

    /// The registry's URI for a path and query.
    fn uri(&self, target: String) -> Result<http::Uri, Rejection> {
        let cannot = |e: &dyn std::fmt::Display| Rejection::internal(format!("cannot build the upstream URI: {e}"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.upstream.scheme.clone());
        uri.authority = Some(self.upstream.authority.clone());
        uri.path_and_query = Some(http::uri::PathAndQuery::try_from(target).map_err(|e| cannot(&e))?);
        http::Uri::from_parts(uri).map_err(|e| cannot(&e))
    }
}

/// `body`, counting its data bytes into `counter` as they pass (either direction).
fn counted<B>(body: B, counter: &prometheus::IntCounter) -> impl http_body::Body<Data = Bytes, Error = B::Error>
where
    B: http_body::Body<Data = Bytes>,
{
    let counter = counter.clone();
    body.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            counter.inc_by(d.len() as u64);
        }
        f
    })
}

/// A response body whose error is reported one poll late. hyper's server holds the head
/// and the first frames in its write buffer and keeps polling the body before it flushes;
/// an error reported in that same pass would close the connection with nothing sent, so a
/// client would see a bare disconnect instead of the registry's status and a body cut
/// short. Answering `Pending` once (and waking at once) lets hyper flush what it holds
/// first; the error follows on the next poll.
struct FlushFirst<B: http_body::Body> {
    inner: B,
    error: Option<B::Error>,
}

impl<B: http_body::Body> FlushFirst<B> {
    fn new(inner: B) -> Self {
        FlushFirst { inner, error: None }
    }
}

impl<B> http_body::Body for FlushFirst<B>
where
    B: http_body::Body + Unpin,
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.error = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.error.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An error reading the client's request body while it was being forwarded.
#[derive(Debug)]
struct ClientBodyError(BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

fn caused_by_client_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<ClientBodyError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The client's body could not be read (bad chunked framing, a connection cut short): the
/// client's fault, 400, naming the innermost cause.
fn client_body_failure(e: &(dyn std::error::Error + 'static)) -> Rejection {
    let mut root = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        root = c.to_string();
        cause = c.source();
    }
    Rejection::bad_request(Code::InvalidRequest, format!("the request body could not be read ({root})"))
}

/// Why the registry could not be used, as the client should hear it. The innermost cause
/// (refused, timed out, a certificate the CA bundle does not vouch for) is named, so an
/// operator can tell "wrong CA" from "registry down".
fn transport_failure(e: &hyper_util::client::legacy::Error) -> Rejection {
    let mut timed_out = false;
    let mut root = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(c) = cause {
        timed_out |= c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        root = c.to_string();
        cause = c.source();
    }
    let why = if root.is_empty() { String::new() } else { format!(" ({root})") };
    if e.is_connect() {
        return if timed_out {
            Rejection::gateway_timeout(format!("the registry did not accept a connection in time{why}"))
        } else {
            Rejection::upstream_unavailable(format!("the registry is unreachable{why}"))
        };
    }
    Rejection::bad_gateway(format!("the registry connection failed{why}"))
}

/// `Docker-Distribution-API-Version: registry/2.0`, on every `/v2` response.
pub fn api_version_header() -> (header::HeaderName, HeaderValue) {
    (header::HeaderName::from_static("docker-distribution-api-version"), HeaderValue::from_static("registry/2.0"))
}

/// A plain `200 {}` as the registry answers `/v2/`.
pub fn base_ok() -> Response<Body> {
    let mut r = Response::new(crate::body::full("{}"));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::Response;
    use http_body::Frame;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::FlushFirst;
    use crate::body::BoxError;

    /// A body whose frames are all ready at once: data, then an error (a registry's body
    /// cut short right after its first bytes arrived).
    struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front())
        }
    }

    fn cut_after_first_frame() -> Frames {
        Frames(VecDeque::from([Ok(Frame::data(Bytes::from_static(b"first bytes"))), Err(BoxError::from("connection reset by peer"))]))
    }

    /// Serves one request on an in-memory connection with `body` (1,000 bytes announced)
    /// and returns all the client received before the connection closed.
    async fn client_receives<B>(body: B) -> String
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
    {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let body = std::sync::Mutex::new(Some(body));
        let svc = hyper::service::service_fn(move |_req| {
            let b = body.lock().ok().and_then(|mut b| b.take());
            async move {
                let mut r = Response::new(crate::body::stream(b.ok_or("one request only")?));
                r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("1000"));
                Ok::<_, BoxError>(r)
            }
        });
        let server = tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc));
        client.write_all(b"GET /v2/a/blobs/x HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n").await.unwrap_or_default();
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        let _ = server.await;
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn a_registry_body_cut_right_after_its_first_bytes_still_gives_the_client_the_head_and_those_bytes() {
        // what hyper does on its own: the error, seen in the same pass as the first frame,
        // closes the connection before the buffered head is written
        let bare = client_receives(cut_after_first_frame()).await;
        assert_eq!(bare, "", "hyper now flushes before polling the body again; FlushFirst may be unnecessary");
        let got = client_receives(FlushFirst::new(cut_after_first_frame())).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "the head reaches the client: {got:?}");
        assert!(got.ends_with("\r\n\r\nfirst bytes"), "then the bytes that came before the cut, and nothing else: {got:?}");
    }

    #[tokio::test]
    async fn flush_first_passes_a_whole_body_unchanged() {
        let whole = Frames(VecDeque::from([Ok(Frame::data(Bytes::from(vec![b'x'; 1000])))]));
        let got = client_receives(FlushFirst::new(whole)).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with(&"x".repeat(1000)), "{got:?}");
    }
}
