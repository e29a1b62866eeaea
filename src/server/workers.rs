//! The public listener's worker threads: each runs its own single-threaded event loop, and
//! an accepted connection lives on one of them, round robin, for its whole life. A request
//! then runs start to end on one thread: its client socket, its upstream connection (each
//! worker keeps its own pool, see [`current`]) and the bytes it copies stay on one core,
//! with no hand-off between threads and no work-stealing bookkeeping.
//!
//! Two properties of tokio's event loop matter here, and this module takes care of both:
//! - A socket reports readiness to the loop it was registered with. An accepted socket is
//!   registered with the accepting loop, so it travels to its worker bare ([`Handoff`]) and
//!   registers there; otherwise every read and write readiness would be relayed from the
//!   accepting thread to the worker (an extra thread wake-up per event).
//! - Arming a timer while none is pending wakes the loop once (tokio recomputes when to
//!   wake). Every request arms two (hyper's header read timeout, the upstream response
//!   timeout), so each worker keeps one short timer pending at all times ([`KEEP_ARMED`]):
//!   the request timers then always lie beyond it and arm without a wake-up.
//!
//! This module only owns the threads and the hand-off; what runs on them is the server's.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The period of the timer each worker keeps pending; no longer than any request timeout
/// (the shortest a configuration allows is 1 s), so a request's timer never lies before it.
const KEEP_ARMED: Duration = Duration::from_secs(1);

thread_local! {
    /// 1 + the index of the worker this thread is; 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Which pool a caller on this thread uses: 0 off the workers, `1 + i` on worker `i`.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The running worker threads. Dropping this stops them: whatever still runs on them is
/// dropped (the server has drained or given up on its connections by then).
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("threads", &self.handles.len()).finish()
    }
}

impl Workers {
    /// Starts `n` (at least 1) worker threads and waits until each can take work.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("scopegate-worker-{i}")).spawn(move || {
                WORKER.with(|w| w.set(i + 1));
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                // runs the connections handed to it until told to stop (or the sender is gone)
                rt.block_on(async move {
                    tokio::pin!(stop_rx);
                    let mut armed = tokio::time::interval(KEEP_ARMED);
                    armed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            _ = armed.tick() => {}
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(200));
            })?;
            let handle = ready_rx.recv().map_err(|_| std::io::Error::other("a worker thread ended before it started"))??;
            handles.push(handle);
            stops.push(stop_tx);
        }
        Ok(Workers { handles, next: AtomicUsize::new(0), _stop: stops })
    }

    /// The worker the next connection goes to (always one: `start` makes at least one).
    pub fn next(&self) -> Option<&Handle> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len().max(1);
        self.handles.get(i)
    }
}

/// An accepted connection on its way to the thread that serves it.
#[derive(Debug)]
pub enum Handoff {
    /// Stays on the accepting loop.
    Registered(TcpStream),
    /// Goes to a worker, unregistered.
    Bare(std::net::TcpStream),
}

impl Handoff {
    /// Prepares `stream` to be served on a worker (`to_worker`) or where it was accepted.
    pub fn new(stream: TcpStream, to_worker: bool) -> std::io::Result<Handoff> {
        Ok(if to_worker { Handoff::Bare(stream.into_std()?) } else { Handoff::Registered(stream) })
    }

    /// The stream, registered with the event loop of the calling thread; call it from the
    /// task that serves the connection.
    pub fn register(self) -> std::io::Result<TcpStream> {
        match self {
            Handoff::Registered(s) => Ok(s),
            Handoff::Bare(s) => TcpStream::from_std(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_robin_to_threads_that_know_their_index() {
        let w = Workers::start(2).unwrap();
        assert_eq!(current(), 0, "a thread that is no worker uses pool 0");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = std::sync::mpsc::channel();
            w.next().unwrap().spawn(async move { tx.send(current()).unwrap() });
            seen.push(rx.recv().unwrap());
        }
        assert_eq!(seen, [1, 2, 1, 2]);
    }

    #[test]
    fn a_handed_off_connection_is_served_by_its_worker_without_the_accepting_loop() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let w = Workers::start(1).unwrap();
        // accept on a loop of its own, hand the socket off, then end that loop: a socket
        // still registered with it could no longer be served
        let accepting = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (handoff, mut client) = accepting.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            (Handoff::new(stream, true).unwrap(), client)
        });
        drop(accepting);
        let (tx, rx) = std::sync::mpsc::channel();
        w.next().unwrap().spawn(async move {
            let served = async {
                let mut s = handoff.register()?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).await?;
                s.write_all(&buf).await?;
                std::io::Result::Ok(())
            };
            tx.send(served.await.map_err(|e| e.to_string())).unwrap();
        });
        std::io::Write::write_all(&mut client, b"ping").unwrap();
        let mut echoed = [0u8; 4];
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Read::read_exact(&mut client, &mut echoed).unwrap();
        assert_eq!(&echoed, b"ping");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
    }

    #[test]
    fn dropping_the_workers_stops_their_threads_and_what_runs_on_them() {
        let w = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // a task that never ends holds the sender; it must be dropped with the worker
        w.next().unwrap().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(w);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
    }
}
