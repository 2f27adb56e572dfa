//! Retry with exponential back-off and jitter.
//!
//! Attempt `n` (from 1) that fails is retried after
//! `min(base · 2^(n-1), max)`, shortened by up to `jitter` of itself
//! ("subtractive" jitter, so the cap is never exceeded), until `max_attempts`
//! dials have been made.

use std::time::Duration;

use rand::Rng;

/// A retry policy that is valid by construction.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    base: Duration,
    max_delay: Duration,
    max_attempts: u32,
    jitter: f64,
}

/// Why a [`RetryPolicy`] could not be built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryPolicyError {
    /// The base delay must be positive.
    #[error("base retry delay must be greater than zero")]
    ZeroBase,
    /// The cap must be at least the base delay.
    #[error("max retry delay ({max:?}) must be at least the base delay ({base:?})")]
    MaxBelowBase {
        /// The base delay.
        base: Duration,
        /// The cap.
        max: Duration,
    },
    /// At least one dial is needed.
    #[error("max attempts must be at least 1")]
    ZeroAttempts,
    /// Jitter is a fraction of the delay.
    #[error("jitter must be a fraction between 0 and 1, got {0}")]
    JitterOutOfRange(f64),
}

/// What to do after an attempt failed with a retryable error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Re-enqueue after this delay.
    RetryAfter(Duration),
    /// No attempts left: the call fails.
    GiveUp,
}

impl RetryPolicy {
    /// Defaults: base 30 s, cap 600 s, 3 attempts, 20 % jitter.
    pub const DEFAULT_BASE: Duration = Duration::from_secs(30);
    /// Default cap on one back-off delay.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(600);
    /// Default number of dials before a call fails (`MAX_ATTEMPTS`).
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    /// Default jitter fraction.
    pub const DEFAULT_JITTER: f64 = 0.2;

    /// Builds a policy.
    ///
    /// # Errors
    /// A [`RetryPolicyError`] when `base` is zero, `max_delay < base`,
    /// `max_attempts` is zero or `jitter` is outside `0.0..=1.0`.
    pub fn new(
        base: Duration,
        max_delay: Duration,
        max_attempts: u32,
        jitter: f64,
    ) -> Result<Self, RetryPolicyError> {
        if base.is_zero() {
            return Err(RetryPolicyError::ZeroBase);
        }
        if max_delay < base {
            return Err(RetryPolicyError::MaxBelowBase {
                base,
                max: max_delay,
            });
        }
        if max_attempts == 0 {
            return Err(RetryPolicyError::ZeroAttempts);
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(RetryPolicyError::JitterOutOfRange(jitter));
        }
        Ok(Self {
            base,
            max_delay,
            max_attempts,
            jitter,
        })
    }

    /// The base delay (after the first failed attempt, before jitter).
    #[must_use]
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap on one delay.
    #[must_use]
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Dials made before the call fails.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The jitter fraction in `0.0..=1.0`.
    #[must_use]
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The delay before jitter after attempt `attempt` (from 1) failed:
    /// `min(base · 2^(attempt-1), max)`.
    #[must_use]
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exponent)
            .map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }

    /// The shortest delay jitter can produce after `attempt` failed.
    #[must_use]
    pub fn min_delay(&self, attempt: u32) -> Duration {
        self.nominal_delay(attempt).mul_f64(1.0 - self.jitter)
    }

    /// What to do after attempt `attempt` (from 1) failed, drawing jitter from `rng`.
    pub fn decide(&self, attempt: u32, rng: &mut impl Rng) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let nominal = self.nominal_delay(attempt);
        let cut = if self.jitter > 0.0 {
            rng.random_range(0.0..self.jitter)
        } else {
            0.0
        };
        RetryDecision::RetryAfter(nominal.mul_f64(1.0 - cut))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Self::DEFAULT_BASE,
            max_delay: Self::DEFAULT_MAX_DELAY,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            jitter: Self::DEFAULT_JITTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert_eq!(
            RetryPolicy::new(Duration::ZERO, secs(1), 3, 0.0),
            Err(RetryPolicyError::ZeroBase)
        );
        assert!(matches!(
            RetryPolicy::new(secs(2), secs(1), 3, 0.0),
            Err(RetryPolicyError::MaxBelowBase { .. })
        ));
        assert_eq!(
            RetryPolicy::new(secs(1), secs(1), 0, 0.0),
            Err(RetryPolicyError::ZeroAttempts)
        );
        assert_eq!(
            RetryPolicy::new(secs(1), secs(1), 1, 1.5),
            Err(RetryPolicyError::JitterOutOfRange(1.5))
        );
    }

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new(secs(10), secs(60), 10, 0.0).unwrap();
        let delays: Vec<_> = (1..=5).map(|n| policy.nominal_delay(n)).collect();
        assert_eq!(delays, [secs(10), secs(20), secs(40), secs(60), secs(60)]);
        assert_eq!(policy.nominal_delay(u32::MAX), secs(60));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let policy = RetryPolicy::new(secs(1), secs(8), 3, 0.0).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            policy.decide(1, &mut rng),
            RetryDecision::RetryAfter(secs(1))
        );
        assert_eq!(
            policy.decide(2, &mut rng),
            RetryDecision::RetryAfter(secs(2))
        );
        assert_eq!(policy.decide(3, &mut rng), RetryDecision::GiveUp);
    }

    #[test]
    fn accessors_return_what_the_policy_was_built_with() {
        let policy = RetryPolicy::new(secs(3), secs(40), 4, 0.25).unwrap();
        assert_eq!(policy.base(), secs(3));
        assert_eq!(policy.max_delay(), secs(40));
        assert_eq!(policy.max_attempts(), 4);
        assert_eq!(policy.jitter(), 0.25);

        let default = RetryPolicy::default();
        assert_eq!(default.base(), RetryPolicy::DEFAULT_BASE);
        assert_eq!(default.max_delay(), RetryPolicy::DEFAULT_MAX_DELAY);
        assert_eq!(default.max_attempts(), RetryPolicy::DEFAULT_MAX_ATTEMPTS);
        assert_eq!(default.jitter(), RetryPolicy::DEFAULT_JITTER);
    }

    #[test]
    fn min_delay_is_the_nominal_delay_shortened_by_the_whole_jitter() {
        let policy = RetryPolicy::new(secs(10), secs(60), 5, 0.25).unwrap();
        assert_eq!(policy.min_delay(1), Duration::from_millis(7_500));
        assert_eq!(policy.min_delay(3), secs(30));
        assert_eq!(policy.min_delay(9), secs(45));
        let exact = RetryPolicy::new(secs(10), secs(60), 5, 0.0).unwrap();
        assert_eq!(exact.min_delay(2), secs(20));
    }

    #[test]
    fn jitter_shortens_each_delay_by_a_different_amount() {
        let policy = RetryPolicy::new(secs(10), secs(60), 5, 0.5).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..20)
            .map(|_| match policy.decide(1, &mut rng) {
                RetryDecision::RetryAfter(delay) => delay,
                RetryDecision::GiveUp => panic!("attempts are left"),
            })
            .collect();
        for delay in &delays {
            assert!(
                (secs(5)..secs(10)).contains(delay),
                "{delay:?} is not within [5 s, 10 s)"
            );
        }
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "{delays:?}");
    }

    #[test]
    fn without_jitter_the_delay_is_the_nominal_delay() {
        let policy = RetryPolicy::new(secs(10), secs(60), 5, 0.0).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for attempt in 1..5 {
            assert_eq!(
                policy.decide(attempt, &mut rng),
                RetryDecision::RetryAfter(policy.nominal_delay(attempt))
            );
        }
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_bounds(
            base_ms in 1u64..10_000, extra_ms in 0u64..100_000, attempts in 2u32..20,
            jitter in 0.0f64..=1.0, attempt in 1u32..19, seed: u64,
        ) {
            let policy = RetryPolicy::new(
                Duration::from_millis(base_ms),
                Duration::from_millis(base_ms + extra_ms),
                attempts,
                jitter,
            ).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            match policy.decide(attempt, &mut rng) {
                RetryDecision::RetryAfter(delay) => {
                    prop_assert!(attempt < attempts);
                    prop_assert!(delay <= policy.nominal_delay(attempt));
                    prop_assert!(delay <= policy.max_delay());
                    prop_assert!(delay >= policy.min_delay(attempt));
                }
                RetryDecision::GiveUp => prop_assert!(attempt >= attempts),
            }
        }
    }
}
