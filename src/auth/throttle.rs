//! Failed-login throttling. Every Basic login whose secret matched nothing (an unknown
//! user, a wrong password, an unknown API key) counts against the token name it named and
//! the client address it came from; a right secret refused for another reason (a disabled
//! token, an expired password) is no guess and does not count. Past `delay_after` failures within the window, each
//! further failure makes the caller wait (1 s, 2 s, 4 s … up to `max_delay_secs`) before
//! the next attempt is even looked at; at `lockout_after` the name or address is locked out
//! for `lockout_secs`. A waiting or locked-out caller gets 429 with `Retry-After` whether
//! or not its credentials are right, so the throttle is never an oracle, and unknown
//! names are counted exactly like real ones.
//!
//! Counters live in this process (each replica counts its own) in bounded caches, so
//! names sent by an attacker cannot grow memory without bound. Times are the gateway
//! clock's, so tests move them forward instead of sleeping. This module never sees a
//! secret and never decides access.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::FailedLogins;

/// Counted failures of one name or address.
#[derive(Debug, Default)]
struct Record {
    failures: u32,
    window_start: i64,
    blocked_until: i64,
}

impl Record {
    fn fail(&mut self, l: &FailedLogins, now: i64) {
        if now - self.window_start >= l.window_secs {
            self.failures = 0;
            self.window_start = now;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= l.lockout_after {
            self.blocked_until = now + l.lockout_secs;
        } else if self.failures >= l.delay_after {
            let doublings = (self.failures - l.delay_after).min(30);
            self.blocked_until = now + (1i64 << doublings).min(l.max_delay_secs);
        }
    }
}

/// What a throttled attempt is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until the next attempt is looked at.
    pub retry_after: u64,
    /// Which counter stopped it: `token` or `address`.
    pub by: &'static str,
    pub locked_out: bool,
}

/// The counters. Cheap to share; see the module text.
pub struct LoginThrottle {
    names: moka::sync::Cache<Box<str>, Arc<Mutex<Record>>>,
    addresses: moka::sync::Cache<IpAddr, Arc<Mutex<Record>>>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle").field("names", &self.names.entry_count()).field("addresses", &self.addresses.entry_count()).finish()
    }
}

/// Entries kept per kind; the least used go first when an attack sends more names.
const CAPACITY: u64 = 100_000;
/// An entry nobody touched for this long is dropped (longer than any configured window
/// or lockout is useful for).
const IDLE: Duration = Duration::from_secs(24 * 3600);

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            names: moka::sync::Cache::builder().max_capacity(CAPACITY).time_to_idle(IDLE).build(),
            addresses: moka::sync::Cache::builder().max_capacity(CAPACITY).time_to_idle(IDLE).build(),
        }
    }
}

impl LoginThrottle {
    /// May an attempt naming `name` (a token name; `None` for API keys and JWTs) from
    /// `address` be looked at now?
    pub fn check(&self, l: &FailedLogins, name: Option<&str>, address: IpAddr, now: i64) -> Result<(), Throttled> {
        let verdict = |r: &Arc<Mutex<Record>>, by| {
            let r = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (r.blocked_until > now).then(|| Throttled {
                retry_after: u64::try_from(r.blocked_until - now).unwrap_or(1),
                by,
                locked_out: r.failures >= l.lockout_after,
            })
        };
        let by_name = name.and_then(|n| self.names.get(n)).and_then(|r| verdict(&r, "token"));
        let by_address = self.addresses.get(&address).and_then(|r| verdict(&r, "address"));
        match (by_name, by_address) {
            (None, None) => Ok(()),
            (Some(t), None) | (None, Some(t)) => Err(t),
            (Some(a), Some(b)) => Err(if a.retry_after >= b.retry_after { a } else { b }),
        }
    }

    /// Counts a failed attempt.
    pub fn failed(&self, l: &FailedLogins, name: Option<&str>, address: IpAddr, now: i64) {
        if let Some(n) = name {
            let r = self.names.get_with(n.into(), Arc::default);
            r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).fail(l, now);
        }
        let r = self.addresses.get_with(address, Arc::default);
        r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).fail(l, now);
    }

    /// A successful login clears its name's count (not its address's: one valid
    /// credential must not buy an address more guesses at others).
    pub fn succeeded(&self, name: Option<&str>) {
        // a read first: the common case (no failures on record) writes nothing
        if let Some(n) = name.filter(|n| self.names.contains_key(*n)) {
            self.names.invalidate(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: FailedLogins = FailedLogins { delay_after: 3, lockout_after: 6, window_secs: 600, lockout_secs: 900, max_delay_secs: 4 };
    const ME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    #[test]
    fn failures_slow_down_then_lock_out_a_name_from_every_address() {
        let t = LoginThrottle::default();
        let mut now = 1000;
        for _ in 0..2 {
            t.failed(&L, Some("ci"), ME, now);
            assert_eq!(t.check(&L, Some("ci"), ME, now), Ok(()), "the first failures are free");
        }
        // the 3rd, 4th and 5th failures cost 1, 2 and 4 s; the wait is capped at max_delay
        for wait in [1, 2, 4] {
            t.failed(&L, Some("ci"), ME, now);
            let e = t.check(&L, Some("ci"), OTHER, now).unwrap_err();
            assert_eq!((e.retry_after, e.by, e.locked_out), (wait, "token", false));
            now += i64::try_from(wait).unwrap();
            assert_eq!(t.check(&L, Some("ci"), OTHER, now), Ok(()));
        }
        t.failed(&L, Some("ci"), ME, now);
        let e = t.check(&L, Some("ci"), OTHER, now).unwrap_err();
        assert_eq!((e.retry_after, e.locked_out), (900, true));
        assert!(t.check(&L, Some("ci"), OTHER, now + 899).is_err());
        assert_eq!(t.check(&L, Some("ci"), OTHER, now + 900), Ok(()));
        // other names are not affected from another address
        assert_eq!(t.check(&L, Some("other"), OTHER, now), Ok(()));
    }

    #[test]
    fn an_address_guessing_many_names_is_locked_out_for_every_name() {
        let t = LoginThrottle::default();
        for i in 0..6 {
            t.failed(&L, Some(&format!("name-{i}")), ME, 1000);
        }
        let e = t.check(&L, Some("never-tried"), ME, 1000).unwrap_err();
        assert_eq!((e.by, e.locked_out), ("address", true));
        // API keys carry no name: the address alone counts
        assert!(t.check(&L, None, ME, 1000).is_err());
        assert_eq!(t.check(&L, Some("never-tried"), OTHER, 1000), Ok(()));
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let t = LoginThrottle::default();
        for _ in 0..2 {
            t.failed(&L, Some("ci"), ME, 1000);
        }
        t.failed(&L, Some("ci"), ME, 1000 + 600);
        assert_eq!(t.check(&L, Some("ci"), ME, 1000 + 600), Ok(()), "the window restarted: one failure, no wait");
    }

    #[test]
    fn a_successful_login_clears_the_name_but_not_the_address() {
        let t = LoginThrottle::default();
        for _ in 0..2 {
            t.failed(&L, Some("ci"), ME, 1000);
        }
        t.succeeded(Some("ci"));
        t.failed(&L, Some("ci"), OTHER, 1000);
        assert_eq!(t.check(&L, Some("ci"), OTHER, 1000), Ok(()), "the name's count restarted");
        t.failed(&L, Some("x"), ME, 1000);
        assert!(t.check(&L, None, ME, 1000).is_err(), "the address kept its count: 3 failures");
    }
}
