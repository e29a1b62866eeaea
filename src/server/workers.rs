//! The public listener's worker threads: each runs its own single-threaded event loop, and
//! an accepted connection lives on one of them, round robin, for its whole life. A request
//! then runs start to end on one thread: its client socket, its upstream connection (each
//! worker keeps its own pool, see [`current`]) and the bytes it copies stay on one core,
//! with no hand-off between threads and no work-stealing bookkeeping.
//!
//! This module only owns the threads; what runs on them is the server's.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

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
                let _ = rt.block_on(stop_rx);
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
