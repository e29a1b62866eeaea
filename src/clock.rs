//! The gateway's clock: system time plus an offset that is always zero in a running
//! gateway. Tests move the offset to reach an expiry without sleeping. Every "now" that
//! decides something (password expiry, token lifetimes, creation times) comes from here.
//!
//! Nothing here schedules or waits.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_secs: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
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
}
