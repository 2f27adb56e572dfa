//! The dispatcher: the loop that runs rounds when the store signals a change
//! or a timer is due, the round itself (expire, reclaim, claim), one task per
//! dial, and the drain of dials in flight at shutdown.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use super::decide::{self, DialVerdict};
use super::Inner;
use crate::call::{AttemptRef, Call};
use crate::clock;
use crate::provider::DialRequest;
use crate::store::{ClaimRequest, Settled, Settlement, StoreError};

/// Stale leases settled per round; more are picked up by the next round.
const STALE_BATCH: u32 = 100;

impl Inner {
    /// The dispatch loop: a round, then a wait for a store change, a finished
    /// dial, the next timer (at most the fallback poll) or the stop signal.
    /// On stop, claims nothing more and waits up to the shutdown grace for the
    /// dials in flight, so their answers are recorded.
    pub(super) async fn dispatch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        let mut dials = JoinSet::new();
        loop {
            changes.mark_unchanged();
            let now = self.clock.now();
            let next = match self.round(&mut dials).await {
                Ok(next) => next,
                Err(error) => {
                    warn!(%error, "dispatch round failed; retrying after the fallback delay");
                    None
                }
            };
            let wait = next
                .map_or(self.config.fallback_poll, |at| clock::until(now, at))
                .min(self.config.fallback_poll);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(_) = dials.join_next(), if !dials.is_empty() => {}
                _ = changes.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let grace = self.config.shutdown_grace;
        let drain = async { while dials.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                in_flight = dials.len(),
                "shutdown grace ran out; abandoning dial requests"
            );
        }
    }

    /// One round whose dials are awaited before it returns (see
    /// [`Engine::tick`](super::Engine::tick)).
    pub(super) async fn tick(self: &Arc<Self>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut dials = JoinSet::new();
        self.round(&mut dials).await?;
        while let Some(joined) = dials.join_next().await {
            if let Err(error) = joined {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        // The dials may have scheduled re-dials (429, back-off): ask again.
        self.store.next_timer(self.clock.now()).await
    }

    /// One round; spawns a dial task per claimed call into `dials`. Returns
    /// when the next timed event is due.
    async fn round(
        self: &Arc<Self>,
        dials: &mut JoinSet<()>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let expired = self.store.expire_due(now).await?;
        if !expired.is_empty() {
            metrics::counter!("orchestrator_calls_expired_total").increment(expired.len() as u64);
            info!(
                count = expired.len(),
                "calls expired before they could be dialled"
            );
        }
        for attempt in self.store.stale_attempts(now, STALE_BATCH).await? {
            metrics::counter!("orchestrator_stale_leases_total").increment(1);
            let settlement = self.with_rng(|rng| {
                decide::after_failure(
                    &self.config.retry,
                    attempt.attempt,
                    decide::WEBHOOK_TIMEOUT.to_owned(),
                    now,
                    rng,
                )
            });
            self.settle_logged(attempt, settlement).await;
        }
        let request = ClaimRequest {
            now,
            max_in_flight: self.config.max_concurrent_calls,
            limit: self.config.claim_batch,
            lease: self.config.lease,
        };
        loop {
            let claimed = self.store.claim(&request).await?;
            let full_batch = claimed.len() == request.limit as usize;
            for call in claimed {
                let latency = clock::until(call.due_at(), now);
                metrics::histogram!("orchestrator_dispatch_latency_seconds")
                    .record(latency.as_secs_f64());
                let span = info_span!("dial", call_id = %call.id, attempt = call.attempts);
                dials.spawn(Arc::clone(self).dial(call).instrument(span));
            }
            if !full_batch {
                break;
            }
        }
        self.store.next_timer(now).await
    }

    /// Dials `call`'s current attempt and records what the provider answered.
    async fn dial(self: Arc<Self>, call: Call) {
        let request = DialRequest::for_call(&call);
        let attempt = request.attempt;
        let answer = self.provider.start_call(&request).await;
        let now = self.clock.now();
        let verdict = self.with_rng(|rng| {
            decide::dial_verdict(
                answer,
                &self.config.retry,
                self.config.capacity_retry_after,
                attempt.attempt,
                now,
                rng,
            )
        });
        match verdict {
            DialVerdict::Record { provider_call_id } => {
                metrics::counter!("orchestrator_dials_total", "outcome" => "accepted").increment(1);
                debug!(%provider_call_id, "provider accepted the dial");
                if let Err(error) = self.store.record_dial(attempt, &provider_call_id).await {
                    warn!(%error, "could not record the provider call id; the webhook's query still names the attempt");
                }
            }
            DialVerdict::Settle { label, settlement } => {
                metrics::counter!("orchestrator_dials_total", "outcome" => label).increment(1);
                self.settle_logged(attempt, settlement).await;
            }
        }
    }

    /// Settles `attempt`, logging instead of failing: an attempt that cannot
    /// be settled now is reclaimed when its lease runs out.
    async fn settle_logged(&self, attempt: AttemptRef, settlement: Settlement) {
        let retry = matches!(settlement, Settlement::Retry { .. });
        match self.store.settle(attempt, settlement).await {
            Ok(Settled::Applied(call)) => {
                if retry {
                    metrics::counter!("orchestrator_retries_total").increment(1);
                }
                info!(call_id = %call.id, attempt = attempt.attempt, status = %call.status, last_error = ?call.last_error, "attempt settled");
            }
            Ok(Settled::Stale(_)) => {
                debug!(call_id = %attempt.call_id, "attempt already settled elsewhere");
            }
            Err(error) => {
                warn!(call_id = %attempt.call_id, %error, "could not settle the attempt; its lease will reclaim it");
            }
        }
    }
}
