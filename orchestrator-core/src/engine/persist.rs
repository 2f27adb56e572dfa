//! Recording what the provider answered, through store outages.
//!
//! A dial's answer and an in-process webhook exist only in this process
//! until the store has them. When the write fails because the store cannot
//! be reached, giving up would lose the answer and leave the call holding
//! its slot until its lease runs out. These writes are idempotent per
//! attempt (a settlement applies to the current attempt only, once; a
//! provider id is recorded for one attempt), so they are retried with
//! jittered exponential back-off until they apply, turn out stale, or the
//! attempt's lease runs out: from then on the stale-lease path owns the
//! attempt, and a late write could only lose to it harmlessly.
//!
//! Delays and jitter come from the engine's clock and random generator, so a
//! seeded run under tokio's paused clock replays exactly. The writes being
//! retried are counted, and at most
//! [`max_pending_store_retries`](crate::EngineConfig::max_pending_store_retries)
//! wait at once.

use std::future::Future;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::{EngineError, Inner};
use crate::clock;
use crate::retry::RetryDecision;
use crate::store::StoreError;

/// Whether a failed write may succeed if tried again: the store could not
/// be reached or failed for a reason of its own. Not found and conflicts
/// are answers, not failures.
pub(super) fn transient(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(_) | StoreError::Backend(_))
}

/// [`transient`] for an engine operation's error.
pub(super) fn transient_engine(error: &EngineError) -> bool {
    matches!(error, EngineError::Store(error) if transient(error))
}

/// One place among the writes being retried; frees it when dropped, also
/// when the task holding it is aborted.
struct Pending<'a>(&'a Inner);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending_retries.send_modify(|pending| *pending -= 1);
        metrics::gauge!("orchestrator_store_retries_pending").decrement(1.0);
    }
}

impl Inner {
    /// Takes a place among the writes being retried, unless all are taken.
    fn reserve_retry(&self) -> Option<Pending<'_>> {
        let max = self.config.max_pending_store_retries;
        let reserved = self.pending_retries.send_if_modified(|pending| {
            let free = *pending < max;
            if free {
                *pending += 1;
            }
            free
        });
        reserved.then(|| {
            metrics::gauge!("orchestrator_store_retries_pending").increment(1.0);
            Pending(self)
        })
    }

    /// Runs `write` until it succeeds, fails for good (`transient` says
    /// which failures may pass), or `deadline` (the engine clock's time at
    /// which the attempt's lease runs out) has passed; between tries, sleeps
    /// the store-retry back-off, never past `deadline`. `what` names the
    /// write in logs. Returns the write's value, or `None` when it was given
    /// up (logged and counted here).
    pub(super) async fn retry_write<T, E, F, Fut>(
        &self,
        what: &'static str,
        deadline: DateTime<Utc>,
        transient: impl Fn(&E) -> bool,
        mut write: F,
    ) -> Option<T>
    where
        E: std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut pending = None;
        let mut failures: u32 = 0;
        let first_failure = self.clock.now();
        loop {
            let error = match write().await {
                Ok(value) => {
                    if failures > 0 {
                        let waited = clock::until(first_failure, self.clock.now());
                        info!(
                            what,
                            tries = failures + 1,
                            ?waited,
                            "store write applied after retries"
                        );
                    }
                    return Some(value);
                }
                Err(error) => error,
            };
            if !transient(&error) {
                warn!(
                    what,
                    error = &error as &dyn std::error::Error,
                    "store write refused; not retried"
                );
                return None;
            }
            failures += 1;
            let now = self.clock.now();
            if now >= deadline {
                metrics::counter!("orchestrator_store_retries_abandoned_total", "reason" => "lease")
                    .increment(1);
                warn!(what, error = &error as &dyn std::error::Error, tries = failures, "store write still failing when the attempt's lease ran out; the stale-lease path settles the attempt");
                return None;
            }
            if pending.is_none() {
                pending = self.reserve_retry();
                if pending.is_none() {
                    metrics::counter!("orchestrator_store_retries_abandoned_total", "reason" => "bound")
                        .increment(1);
                    warn!(what, error = &error as &dyn std::error::Error, max = self.config.max_pending_store_retries, "store write failed and too many are being retried; its attempt is left to its lease");
                    return None;
                }
                warn!(what, error = &error as &dyn std::error::Error, "store write failed; retrying with back-off until it applies or the attempt's lease runs out");
            } else {
                debug!(
                    what,
                    error = &error as &dyn std::error::Error,
                    tries = failures,
                    "store write failed again"
                );
            }
            metrics::counter!("orchestrator_store_retries_total").increment(1);
            let delay = match self.with_rng(|rng| self.store_retry.decide(failures, rng)) {
                RetryDecision::RetryAfter(delay) => delay,
                // The policy allows `u32::MAX` tries; the lease ends them first.
                RetryDecision::GiveUp => self.config.store_retry_max,
            };
            tokio::time::sleep(delay.min(clock::until(now, deadline))).await;
        }
    }
}
