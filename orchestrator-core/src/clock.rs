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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    #[test]
    fn until_is_the_time_left_or_zero_once_passed() {
        assert_eq!(until(at(0), at(5)), Duration::from_secs(5));
        assert_eq!(until(at(5), at(5)), Duration::ZERO);
        assert_eq!(until(at(6), at(5)), Duration::ZERO);
    }

    #[test]
    fn add_saturates_and_truncates_to_microseconds() {
        assert_eq!(
            add(at(0), Duration::from_nanos(1_500)),
            at(0) + TimeDelta::microseconds(1)
        );
        assert_eq!(add(at(0), Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_tokio_time_from_its_origin() {
        let clock = TokioClock::starting_at(at(0) + TimeDelta::nanoseconds(700));
        assert_eq!(clock.now(), at(0));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), at(0) + TimeDelta::milliseconds(1_500));
    }
}
