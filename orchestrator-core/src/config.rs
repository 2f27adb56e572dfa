//! The engine's configuration: the dispatch rules (cap, back-off, lease, TTL)
//! as numbers.
//!
//! Both structs are `#[non_exhaustive]`, so fields can be added without
//! breaking embedders: start from `Default` and change what you need with the
//! `with_*` methods. Fields stay public for reading. Values are checked when
//! the engine is built ([`EngineConfig::validate`]), not when set.

use std::time::Duration;

use crate::input::CallbackUrl;
use crate::provider::ReportedStatus;
use crate::retry::RetryPolicy;

/// Which no-contact outcomes are re-dialled with back-off instead of failing
/// the call at once. By default none is: `BUSY`, `NO_ANSWER` and `VOICEMAIL`
/// fail the call.
///
/// ```
/// use orchestrator_core::{RedialPolicy, ReportedStatus};
///
/// let policy = RedialPolicy::default().with_busy(true);
/// assert!(policy.redials(ReportedStatus::Busy));
/// assert!(!policy.redials(ReportedStatus::NoAnswer));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedialPolicy {
    /// Re-dial when the provider reports `BUSY`.
    pub busy: bool,
    /// Re-dial when the provider reports `NO_ANSWER`.
    pub no_answer: bool,
    /// Re-dial when the provider reports `VOICEMAIL` (an answering machine).
    pub voicemail: bool,
}

impl RedialPolicy {
    /// This policy, re-dialling `BUSY` or not.
    #[must_use]
    pub fn with_busy(mut self, redial: bool) -> Self {
        self.busy = redial;
        self
    }

    /// This policy, re-dialling `NO_ANSWER` or not.
    #[must_use]
    pub fn with_no_answer(mut self, redial: bool) -> Self {
        self.no_answer = redial;
        self
    }

    /// This policy, re-dialling `VOICEMAIL` or not.
    #[must_use]
    pub fn with_voicemail(mut self, redial: bool) -> Self {
        self.voicemail = redial;
        self
    }

    /// Whether `status` (a no-contact outcome) is re-dialled.
    #[must_use]
    pub fn redials(&self, status: ReportedStatus) -> bool {
        match status {
            ReportedStatus::Busy => self.busy,
            ReportedStatus::NoAnswer => self.no_answer,
            ReportedStatus::Voicemail => self.voicemail,
            ReportedStatus::Completed
            | ReportedStatus::Failed
            | ReportedStatus::Transient
            | ReportedStatus::BadNumber
            | ReportedStatus::AccountError
            | ReportedStatus::Capacity => false,
        }
    }
}

/// Everything the engine needs to know; see [`EngineConfig::validate`].
///
/// ```
/// use std::time::Duration;
/// use orchestrator_core::{EngineConfig, RedialPolicy};
///
/// let config = EngineConfig::default()
///     .with_max_concurrent_calls(10)
///     .with_lease(Duration::from_secs(300))
///     .with_redial(RedialPolicy::default().with_busy(true));
/// assert_eq!(config.max_concurrent_calls, 10);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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
    /// How long dialling pauses after the provider reports an account or
    /// configuration error (no credits, a frozen subscription), so the
    /// queue is not burnt through; default 5 minutes.
    /// [`Engine::resume_dialling`](crate::Engine::resume_dialling) ends it early.
    pub account_error_pause: Duration,
    /// Most calls claimed by one store transaction (default 100), so a
    /// large cap fills in a few claims; a claim locks about one and a half
    /// times as many candidate rows at most.
    pub claim_batch: u32,
    /// Capacity of the queue of in-process webhooks (default 1024).
    pub webhook_queue: usize,
    /// How long a graceful shutdown waits for dial requests in flight and
    /// for store writes being retried (default 10 s).
    pub shutdown_grace: Duration,
    /// The first delay before retrying a store write that failed (default
    /// 100 ms). The writes retried are those that record what the provider
    /// answered: a dial's settlement, an accepted dial's provider call id,
    /// an in-process webhook. Each is idempotent per attempt, so it is
    /// retried until it applies, turns out stale, or the attempt's lease
    /// runs out (then the stale-lease path settles the attempt).
    pub store_retry_base: Duration,
    /// The longest delay between two tries of a store write; delays double
    /// from [`store_retry_base`](Self::store_retry_base) up to it and are
    /// shortened by up to half at random (default 5 s).
    pub store_retry_max: Duration,
    /// Most store writes being retried at once (default 10,000). A write
    /// that fails while this many wait is not retried: it is logged and
    /// counted, and its attempt is left to its lease, as a webhook over
    /// HTTP is left to the provider's own retries.
    pub max_pending_store_retries: usize,
    /// Terminal calls whose `endedAt` is older than this are deleted from
    /// the store, in small batches, every few seconds (`RETENTION_SECONDS`);
    /// `None` (the default) keeps every call.
    pub retention: Option<Duration>,
    /// The `callbackUrl` of calls created without one (`CALLBACK_URL`);
    /// `None` (the default): only calls that name one get callbacks.
    pub default_callback_url: Option<CallbackUrl>,
    /// Back-off between tries of a callback delivery, and how many tries in
    /// all (`CALLBACK_MAX_ATTEMPTS`, default 10; delays from 5 s doubling up
    /// to 1 h, shortened by up to half at random).
    pub callback_retry: RetryPolicy,
    /// How long one try of a delivery may hold it before another worker may
    /// take it over (default 10 s: twice the HTTP sender's default timeout).
    /// Must be longer than the sender's timeout, so a live try is never sent
    /// twice at once; a try whose engine died is sent again once it ends.
    pub callback_lease: Duration,
    /// Most deliveries one engine sends at once (default 16).
    pub callback_concurrency: usize,
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
            account_error_pause: Duration::from_secs(300),
            claim_batch: 100,
            webhook_queue: 1024,
            shutdown_grace: Duration::from_secs(10),
            store_retry_base: Duration::from_millis(100),
            store_retry_max: Duration::from_secs(5),
            max_pending_store_retries: 10_000,
            retention: None,
            default_callback_url: None,
            callback_retry: RetryPolicy::new(
                Duration::from_secs(5),
                Duration::from_secs(3600),
                10,
                0.5,
            )
            .unwrap_or_default(),
            callback_lease: Duration::from_secs(10),
            callback_concurrency: 16,
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
    /// This configuration with the global cap on `IN_PROGRESS` calls (at least 1).
    #[must_use]
    pub fn with_max_concurrent_calls(mut self, cap: u32) -> Self {
        self.max_concurrent_calls = cap;
        self
    }

    /// This configuration with the back-off and attempt limit.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// This configuration with an attempt's lease (positive).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// This configuration with the default deadline of new calls (positive),
    /// or none.
    #[must_use]
    pub fn with_pending_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.pending_ttl = ttl;
        self
    }

    /// This configuration with the wait after a 429 that carried no `Retry-After`.
    #[must_use]
    pub fn with_capacity_retry_after(mut self, wait: Duration) -> Self {
        self.capacity_retry_after = wait;
        self
    }

    /// This configuration with the webhook outcomes to re-dial.
    #[must_use]
    pub fn with_redial(mut self, redial: RedialPolicy) -> Self {
        self.redial = redial;
        self
    }

    /// This configuration with the longest sleep between rounds (positive).
    #[must_use]
    pub fn with_fallback_poll(mut self, poll: Duration) -> Self {
        self.fallback_poll = poll;
        self
    }

    /// This configuration with the most calls claimed per round trip (at least 1).
    #[must_use]
    pub fn with_claim_batch(mut self, batch: u32) -> Self {
        self.claim_batch = batch;
        self
    }

    /// This configuration with the capacity of the in-process webhook queue (at least 1).
    #[must_use]
    pub fn with_webhook_queue(mut self, capacity: usize) -> Self {
        self.webhook_queue = capacity;
        self
    }

    /// This configuration with how long a graceful shutdown waits for dials in flight.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// This configuration with the first and the longest delay between tries
    /// of a store write that failed (`base` positive, `max` at least `base`).
    #[must_use]
    pub fn with_store_retry(mut self, base: Duration, max: Duration) -> Self {
        self.store_retry_base = base;
        self.store_retry_max = max;
        self
    }

    /// This configuration with the most store writes retried at once (0: a
    /// failed write is never retried).
    #[must_use]
    pub fn with_max_pending_store_retries(mut self, max: usize) -> Self {
        self.max_pending_store_retries = max;
        self
    }

    /// This configuration deleting terminal calls that ended longer than
    /// `retention` ago (positive), or keeping every call (`None`).
    #[must_use]
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// This configuration pausing dialling this long after an account error.
    #[must_use]
    pub fn with_account_error_pause(mut self, pause: Duration) -> Self {
        self.account_error_pause = pause;
        self
    }

    /// This configuration giving calls created without a `callbackUrl` this one.
    #[must_use]
    pub fn with_default_callback_url(mut self, url: Option<CallbackUrl>) -> Self {
        self.default_callback_url = url;
        self
    }

    /// This configuration with another back-off and number of tries for
    /// callback deliveries.
    #[must_use]
    pub fn with_callback_retry(mut self, retry: RetryPolicy) -> Self {
        self.callback_retry = retry;
        self
    }

    /// This configuration with another lease for one try of a delivery (positive).
    #[must_use]
    pub fn with_callback_lease(mut self, lease: Duration) -> Self {
        self.callback_lease = lease;
        self
    }

    /// This configuration sending at most `concurrency` deliveries at once (at least 1).
    #[must_use]
    pub fn with_callback_concurrency(mut self, concurrency: usize) -> Self {
        self.callback_concurrency = concurrency;
        self
    }

    /// Checks every bound.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(bool, &'static str, &'static str); 11] = [
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
            (
                self.store_retry_base > Duration::ZERO,
                "store_retry_base",
                "must be positive",
            ),
            (
                self.store_retry_max >= self.store_retry_base,
                "store_retry_max",
                "must be at least store_retry_base",
            ),
            (
                self.retention
                    .is_none_or(|retention| retention > Duration::ZERO),
                "retention",
                "must be positive",
            ),
            (
                self.callback_lease > Duration::ZERO,
                "callback_lease",
                "must be positive",
            ),
            (
                self.callback_concurrency > 0,
                "callback_concurrency",
                "must be at least 1",
            ),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, field, problem)) => Err(ConfigError { field, problem }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_REPORTED: [ReportedStatus; 4] = ReportedStatus::GENERIC;

    fn refused(config: &EngineConfig) -> &'static str {
        config.validate().expect_err("out of range").field
    }

    #[test]
    fn the_default_redial_policy_redials_nothing() {
        let policy = RedialPolicy::default();
        for status in ALL_REPORTED {
            assert!(!policy.redials(status), "{status:?}");
        }
    }

    #[test]
    fn a_redial_policy_redials_exactly_the_statuses_it_names() {
        let cases = [
            (
                RedialPolicy::default().with_busy(true),
                [false, false, true, false],
            ),
            (
                RedialPolicy::default().with_no_answer(true),
                [false, false, false, true],
            ),
            (
                RedialPolicy::default().with_busy(true).with_no_answer(true),
                [false, false, true, true],
            ),
            (
                RedialPolicy::default()
                    .with_busy(true)
                    .with_no_answer(true)
                    .with_busy(false)
                    .with_no_answer(false),
                [false; 4],
            ),
        ];
        for (policy, expected) in cases {
            let redialled = ALL_REPORTED.map(|status| policy.redials(status));
            assert_eq!(redialled, expected, "{policy:?}");
        }
    }

    #[test]
    fn defaults_are_the_documented_values_and_valid() {
        let config = EngineConfig::default();
        assert_eq!(config.max_concurrent_calls, 30);
        assert_eq!(config.retry, RetryPolicy::default());
        assert_eq!(config.lease, Duration::from_secs(900));
        assert_eq!(config.pending_ttl, None);
        assert_eq!(config.capacity_retry_after, Duration::from_secs(5));
        assert_eq!(config.redial, RedialPolicy::default());
        assert_eq!(config.fallback_poll, Duration::from_secs(2));
        assert_eq!(config.claim_batch, 100);
        assert_eq!(config.webhook_queue, 1024);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.store_retry_base, Duration::from_millis(100));
        assert_eq!(config.store_retry_max, Duration::from_secs(5));
        assert_eq!(config.max_pending_store_retries, 10_000);
        assert_eq!(config.retention, None);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn with_methods_set_their_field_and_only_it() {
        let retry = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(2), 5, 0.0)
            .expect("valid policy");
        let redial = RedialPolicy::default().with_busy(true);
        let config = EngineConfig::default()
            .with_max_concurrent_calls(7)
            .with_retry(retry.clone())
            .with_lease(Duration::from_secs(61))
            .with_pending_ttl(Some(Duration::from_secs(62)))
            .with_capacity_retry_after(Duration::from_secs(63))
            .with_redial(redial)
            .with_fallback_poll(Duration::from_secs(64))
            .with_claim_batch(8)
            .with_webhook_queue(9)
            .with_shutdown_grace(Duration::from_secs(65))
            .with_store_retry(Duration::from_millis(66), Duration::from_secs(67))
            .with_max_pending_store_retries(68)
            .with_retention(Some(Duration::from_secs(69)))
            .with_default_callback_url(Some(CallbackUrl::parse("https://example.com/cb").unwrap()))
            .with_callback_retry(retry.clone())
            .with_callback_lease(Duration::from_secs(70))
            .with_callback_concurrency(71);
        let expected = EngineConfig {
            max_concurrent_calls: 7,
            retry: retry.clone(),
            lease: Duration::from_secs(61),
            pending_ttl: Some(Duration::from_secs(62)),
            capacity_retry_after: Duration::from_secs(63),
            redial,
            fallback_poll: Duration::from_secs(64),
            account_error_pause: Duration::from_secs(300),
            claim_batch: 8,
            webhook_queue: 9,
            shutdown_grace: Duration::from_secs(65),
            store_retry_base: Duration::from_millis(66),
            store_retry_max: Duration::from_secs(67),
            max_pending_store_retries: 68,
            retention: Some(Duration::from_secs(69)),
            default_callback_url: Some(CallbackUrl::parse("https://example.com/cb").unwrap()),
            callback_retry: retry,
            callback_lease: Duration::from_secs(70),
            callback_concurrency: 71,
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn each_bound_is_checked_and_named() {
        let base = EngineConfig::default;
        let cases = [
            (base().with_max_concurrent_calls(0), "max_concurrent_calls"),
            (base().with_lease(Duration::ZERO), "lease"),
            (base().with_pending_ttl(Some(Duration::ZERO)), "pending_ttl"),
            (base().with_fallback_poll(Duration::ZERO), "fallback_poll"),
            (base().with_claim_batch(0), "claim_batch"),
            (base().with_webhook_queue(0), "webhook_queue"),
            (
                base().with_store_retry(Duration::ZERO, Duration::from_secs(1)),
                "store_retry_base",
            ),
            (
                base().with_store_retry(Duration::from_secs(2), Duration::from_secs(1)),
                "store_retry_max",
            ),
            (base().with_retention(Some(Duration::ZERO)), "retention"),
        ];
        for (config, field) in cases {
            assert_eq!(refused(&config), field);
        }
        let error = base().with_lease(Duration::ZERO).validate().unwrap_err();
        assert_eq!(
            error,
            ConfigError {
                field: "lease",
                problem: "must be positive"
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid engine configuration: lease must be positive"
        );
    }

    #[test]
    fn the_smallest_values_in_range_are_valid() {
        let tiny = Duration::from_nanos(1);
        let config = EngineConfig::default()
            .with_max_concurrent_calls(1)
            .with_lease(tiny)
            .with_pending_ttl(Some(tiny))
            .with_capacity_retry_after(Duration::ZERO)
            .with_fallback_poll(tiny)
            .with_claim_batch(1)
            .with_webhook_queue(1)
            .with_shutdown_grace(Duration::ZERO)
            .with_store_retry(tiny, tiny)
            .with_max_pending_store_retries(0)
            .with_retention(Some(tiny));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn the_first_field_out_of_range_is_named() {
        let config = EngineConfig::default()
            .with_webhook_queue(0)
            .with_max_concurrent_calls(0);
        assert_eq!(refused(&config), "max_concurrent_calls");
    }
}
