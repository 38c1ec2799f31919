//! Time as the vault sees it: microseconds since the Unix epoch, from an injectable clock
//! so retention and expiry can be tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Whole seconds and the remaining nanoseconds, as protobuf's `Timestamp` wants them.
    pub fn seconds_nanos(self) -> (i64, i32) {
        let secs = i64::try_from(self.0 / 1_000_000).unwrap_or(i64::MAX);
        // The remainder is below 1_000_000, so the product fits in an i32.
        let nanos = i32::try_from((self.0 % 1_000_000) * 1_000).unwrap_or(0);
        (secs, nanos)
    }
}

/// Where the vault gets the current time from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Timestamp(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

/// A clock that tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicU64::new(start.0))
    }

    pub fn advance_micros(&self, micros: u64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
