//! The gateway's clock: system time plus an offset that is always zero in a running
//! gateway. Tests move the offset to reach an expiry without sleeping, and freeze the
//! clock where an answer depends on the exact second (a throttle's `Retry-After`), so a
//! slow machine crossing a second boundary cannot change it. Every "now" that decides
//! something (password expiry, token lifetimes, creation times, login throttling) comes
//! from here.
//!
//! Nothing here schedules or waits.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_secs: Arc<AtomicI64>,
    /// Unix seconds the clock stands still at; 0 while it follows system time.
    frozen_at: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> OffsetDateTime {
        let now = match self.frozen_at.load(Ordering::Relaxed) {
            0 => OffsetDateTime::now_utc(),
            at => OffsetDateTime::from_unix_timestamp(at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        };
        match self.offset_secs.load(Ordering::Relaxed) {
            0 => now,
            s => now + time::Duration::seconds(s),
        }
    }

    /// Now, in whole seconds (what the store keeps).
    pub fn now_secs(&self) -> OffsetDateTime {
        let t = self.now();
        t.replace_nanosecond(0).unwrap_or(t)
    }

    /// Moves this clock (and every clone of it) forward. For tests.
    pub fn advance(&self, by: std::time::Duration) {
        let s = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.offset_secs.fetch_add(s, Ordering::Relaxed);
    }

    /// Stops this clock (and every clone of it) at the current whole second; from then on
    /// only [`Clock::advance`] moves it. For tests whose answers name exact seconds.
    pub fn freeze(&self) {
        let at = OffsetDateTime::now_utc().unix_timestamp().max(1);
        self.frozen_at.store(at, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let c = Clock::system();
        c.freeze();
        let t = c.now();
        assert_eq!(t.nanosecond(), 0, "frozen at a whole second");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(c.clone().now(), t, "real time passing does not move it");
        c.advance(std::time::Duration::from_secs(5));
        assert_eq!(c.now(), t + time::Duration::seconds(5));
    }
}
