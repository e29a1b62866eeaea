//! The one HTTP body type that every response and every forwarded request uses: a boxed,
//! streaming body, so proxied blobs and our own small JSON answers share a type.
//!
//! Nothing here buffers a stream; `full` is only for bodies we build ourselves, and
//! `discard` keeps no byte it reads.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding bytes we produced.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Any streaming body, boxed.
pub fn stream<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// At most this much of a refused request's body is read and dropped.
const DISCARD_MAX_BYTES: usize = 16 * 1024 * 1024;
/// And for at most this long.
const DISCARD_MAX_TIME: Duration = Duration::from_secs(10);

/// Reads what is left of the body of a request the gateway has refused, and drops it, in
/// a task of its own, while the refusal goes out. A client usually writes its whole body
/// before it reads an answer; if the connection were closed with its body unread, the
/// kernel would reset it and the client would see a broken pipe instead of the 401 or
/// 413. hyper keeps reading the connection for as long as the body is held, so the
/// answer arrives and, if the body ends within bounds, the connection stays usable.
/// Past [`DISCARD_MAX_BYTES`] or [`DISCARD_MAX_TIME`] the body is dropped and hyper
/// closes the connection. Must be called from within the connection's runtime.
pub fn discard<B>(body: B)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut left = DISCARD_MAX_BYTES;
        let read = async {
            while let Some(Ok(frame)) = body.frame().await {
                left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len));
                if left == 0 {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_MAX_TIME, read).await;
    });
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http_body::Frame;
    use tokio::sync::oneshot;

    use super::*;

    /// Says when the body holding it is dropped.
    struct OnDrop(Option<oneshot::Sender<()>>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    /// An endless body of 1 MiB frames that counts what was read.
    struct Endless {
        read: Arc<AtomicUsize>,
        _on_drop: OnDrop,
    }

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.read.fetch_add(1 << 20, Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[0; 1 << 20])))))
        }
    }

    /// A body whose client never sends another byte.
    struct Stalled {
        _on_drop: OnDrop,
    }

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn discard_reads_a_refused_body_only_up_to_its_bound_then_drops_it() {
        let read = Arc::new(AtomicUsize::new(0));
        let (tx, dropped) = oneshot::channel();
        discard(Endless { read: read.clone(), _on_drop: OnDrop(Some(tx)) });
        dropped.await.unwrap();
        assert_eq!(read.load(Ordering::Relaxed), DISCARD_MAX_BYTES);
    }

    #[tokio::test(start_paused = true)]
    async fn discard_gives_up_on_a_body_that_never_ends_after_its_time_bound() {
        let (tx, dropped) = oneshot::channel();
        let start = tokio::time::Instant::now();
        discard(Stalled { _on_drop: OnDrop(Some(tx)) });
        dropped.await.unwrap();
        assert_eq!(start.elapsed(), DISCARD_MAX_TIME);
    }
}
