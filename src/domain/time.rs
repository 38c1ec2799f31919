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

impl Timestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2025-03-01T12:00:00.000000Z`: the form
    /// exports and reports use, readable without knowing the vault's epoch.
    pub fn rfc3339(self) -> String {
        let secs = self.0 / 1_000_000;
        let micros = self.0 % 1_000_000;
        let (y, m, d) = civil_date(secs / 86_400);
        let rem = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01, counting in
/// 400-year cycles of 146,097 days that start on March 1st (so leap days end a year).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod rfc3339_tests {
    use super::Timestamp;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T23:59:59.5Z: a leap day of a century leap year.
        assert_eq!(
            Timestamp(951_868_799_500_000).rfc3339(),
            "2000-02-29T23:59:59.500000Z"
        );
        // 2024-12-31T12:34:56.000001Z
        assert_eq!(
            Timestamp(1_735_648_496_000_001).rfc3339(),
            "2024-12-31T12:34:56.000001Z"
        );
        // 2100-03-01: 2100 is not a leap year.
        assert_eq!(
            Timestamp(4_107_542_400_000_000).rfc3339(),
            "2100-03-01T00:00:00.000000Z"
        );
    }
}
