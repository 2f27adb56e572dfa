//! The engine's configuration: the dispatch rules of SPEC section 5 as numbers.

use std::time::Duration;

use crate::provider::ReportedStatus;
use crate::retry::RetryPolicy;

/// Which webhook outcomes are re-dialled with back-off instead of failing the
/// call at once. By default neither is (SPEC section 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedialPolicy {
    /// Re-dial when the provider reports `BUSY`.
    pub busy: bool,
    /// Re-dial when the provider reports `NO_ANSWER`.
    pub no_answer: bool,
}

impl RedialPolicy {
    /// Whether `status` is re-dialled.
    #[must_use]
    pub fn redials(&self, status: ReportedStatus) -> bool {
        match status {
            ReportedStatus::Busy => self.busy,
            ReportedStatus::NoAnswer => self.no_answer,
            ReportedStatus::Completed | ReportedStatus::Failed => false,
        }
    }
}

/// Everything the engine needs to know; see [`EngineConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// The global cap on `IN_PROGRESS` calls across every engine sharing the
    /// store (`MAX_CONCURRENT_CALLS`, default 30).
    pub max_concurrent_calls: u32,
    /// Back-off and the attempt limit.
    pub retry: RetryPolicy,
    /// An attempt's lease: `IN_PROGRESS` this long without a webhook is a
    /// failed attempt, "webhook timeout" (`STALE_INPROG_SECONDS`, default 900 s).
    pub lease: Duration,
    /// Calls created without `expiresAt` expire this long after creation
    /// (`PENDING_TTL_SECONDS`); `None` keeps them until dialled.
    pub pending_ttl: Option<Duration>,
    /// How long to wait after a 429 that carried no `Retry-After` (default 5 s).
    pub capacity_retry_after: Duration,
    /// Which webhook outcomes are re-dialled.
    pub redial: RedialPolicy,
    /// Longest sleep between two dispatch rounds when nothing signals: a
    /// safety net for lost wake-ups, not the dispatch mechanism (default 2 s).
    pub fallback_poll: Duration,
    /// Most calls claimed by one store round trip (default 30).
    pub claim_batch: u32,
    /// Capacity of the queue of in-process webhooks (default 1024).
    pub webhook_queue: usize,
    /// How long a graceful shutdown waits for dial requests in flight (default 10 s).
    pub shutdown_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 30,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(900),
            pending_ttl: None,
            capacity_retry_after: Duration::from_secs(5),
            redial: RedialPolicy::default(),
            fallback_poll: Duration::from_secs(2),
            claim_batch: 30,
            webhook_queue: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A configuration value out of range; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine configuration: {field} {problem}")]
pub struct ConfigError {
    /// The field at fault, e.g. `"max_concurrent_calls"`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl EngineConfig {
    /// Checks every bound.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(bool, &'static str, &'static str); 6] = [
            (
                self.max_concurrent_calls > 0,
                "max_concurrent_calls",
                "must be at least 1",
            ),
            (self.lease > Duration::ZERO, "lease", "must be positive"),
            (
                self.pending_ttl.is_none_or(|ttl| ttl > Duration::ZERO),
                "pending_ttl",
                "must be positive",
            ),
            (
                self.fallback_poll > Duration::ZERO,
                "fallback_poll",
                "must be positive",
            ),
            (self.claim_batch > 0, "claim_batch", "must be at least 1"),
            (
                self.webhook_queue > 0,
                "webhook_queue",
                "must be at least 1",
            ),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, field, problem)) => Err(ConfigError { field, problem }),
            None => Ok(()),
        }
    }
}
