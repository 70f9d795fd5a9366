//! The only place that reads the wall clock. Everything else takes `now` as a
//! parameter, so expiry, business hours and key rotation are tested without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the Unix epoch, as the domain modules use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(Duration::ZERO);

    pub fn from_unix_secs(secs: i64) -> Self {
        Timestamp(Duration::from_secs(secs.max(0).unsigned_abs()))
    }

    pub fn from_unix_millis(ms: u64) -> Self {
        Timestamp(Duration::from_millis(ms))
    }

    pub fn unix_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn from_unix_duration(d: Duration) -> Self {
        Timestamp(d)
    }

    pub fn unix_secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }

    pub fn since_epoch(self) -> Duration {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d))
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 in UTC with second precision, as audit records and Cedar's `datetime` take it.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp(self.unix_secs(), 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
    }
}

/// Stored as Unix milliseconds (sessions and ceremony records travel through stores).
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.unix_millis())
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Timestamp::from_unix_millis)
    }
}

/// A source of the current time. The gateway uses [`SystemClock`]; tests use a fixed or
/// stepping clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one sanctioned read of the wall clock.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// A clock that tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn at(secs: u64) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(secs))
    }
    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(d.as_secs(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(Duration::from_secs(
            self.0.load(std::sync::atomic::Ordering::SeqCst),
        ))
    }
}
