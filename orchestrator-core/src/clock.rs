//! Where the engine's time comes from.
//!
//! The engine never reads the wall clock directly: it asks a [`Clock`], so a
//! simulation can run on tokio's paused clock ([`TokioClock`]) and replay exactly.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// A source of the current time. Implementations return microsecond precision,
/// which is what PostgreSQL stores.
pub trait Clock: Send + Sync + 'static {
    /// The current instant, truncated to microseconds.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        truncate_to_micros(Utc::now())
    }
}

/// A clock that follows tokio's clock from a fixed wall-clock origin. Under
/// `tokio::time::pause` it is virtual and deterministic, and the engine's
/// timers (tokio sleeps) agree with it.
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: DateTime<Utc>,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `origin` now and advances with tokio's clock.
    #[must_use]
    pub fn starting_at(origin: DateTime<Utc>) -> Self {
        Self {
            origin: truncate_to_micros(origin),
            started: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = TimeDelta::from_std(self.started.elapsed()).unwrap_or(TimeDelta::MAX);
        truncate_to_micros(self.origin + elapsed)
    }
}

/// `at` without its sub-microsecond part.
#[must_use]
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(at)
}

/// `at + duration`, saturating at the end of representable time.
#[must_use]
pub fn add(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_add_signed(delta))
        .map_or(DateTime::<Utc>::MAX_UTC, truncate_to_micros)
}

/// `at - duration`, saturating at the start of representable time.
#[must_use]
pub fn sub(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_sub_signed(delta))
        .map_or(DateTime::<Utc>::MIN_UTC, truncate_to_micros)
}

/// How long from `now` until `at` (zero if `at` has passed).
#[must_use]
pub fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}
