//! The dispatcher: the loop that runs rounds when the store signals a change
//! or a timer is due, the round itself (expire, reclaim, claim), one task per
//! dial, and the drain of dials in flight and store writes being retried at
//! shutdown.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use super::decide::{self, DialVerdict};
use super::persist::transient;
use super::Inner;
use crate::call::{AttemptRef, Call};
use crate::clock;
use crate::provider::{CallLookup, DialRequest, LookupError};
use crate::store::{ClaimRequest, Settled, Settlement, StoreError};

/// Stale leases settled per round; more are picked up by the next round.
const STALE_BATCH: u32 = 100;

/// How long after a timer pass (expiring calls, finding lapsed leases,
/// reading when the next timer is due) a round woken by a change only
/// claims. Under load, rounds follow each other by milliseconds, and
/// nothing a change brings needs its timers sooner: a claim never takes an
/// expired call, a new lease ends a whole lease from now, and a call made
/// due later by a change waits at most this long past its time.
const TIMER_PASS_EVERY: Duration = Duration::from_millis(50);

/// What the last timer pass found.
#[derive(Debug, Default)]
struct Timers {
    /// When it ran; `None` before the first.
    last_pass: Option<DateTime<Utc>>,
    /// The next timer it found due.
    next: Option<DateTime<Utc>>,
    /// Whether a round skipped the pass since: a change since may have
    /// brought an earlier timer.
    skipped: bool,
}

impl Timers {
    /// Whether a round at `now` runs the timer pass.
    fn due(&self, now: DateTime<Utc>) -> bool {
        self.last_pass.is_none_or(|last| {
            now >= clock::add(last, TIMER_PASS_EVERY) || self.next.is_some_and(|next| next <= now)
        })
    }

    /// When the dispatcher next needs a round for its timers.
    fn wake_at(&self) -> Option<DateTime<Utc>> {
        let refresh = self
            .last_pass
            .filter(|_| self.skipped)
            .map(|last| clock::add(last, TIMER_PASS_EVERY));
        match (self.next, refresh) {
            (Some(next), Some(refresh)) => Some(next.min(refresh)),
            (next, refresh) => next.or(refresh),
        }
    }
}

impl Inner {
    /// The dispatch loop: a round, then a wait for a store change, the next
    /// timer (at most the fallback poll) or the stop signal.
    /// On stop, claims nothing more and waits up to the shutdown grace for the
    /// dials in flight and the store writes being retried, so the provider's
    /// answers are recorded. Runs retention alongside, when configured, and
    /// stops it on return (or when aborted).
    pub(super) async fn dispatch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        let mut paused = self.paused_until.subscribe();
        let mut dials = JoinSet::new();
        let mut housekeeping = JoinSet::new();
        let mut timers = Timers::default();
        if let Some(retention) = self.config.retention {
            housekeeping.spawn(Arc::clone(&self).retain(retention));
        }
        'rounds: loop {
            changes.mark_unchanged();
            paused.mark_unchanged();
            let now = self.clock.now();
            let next = match self.round(&mut dials, &mut timers).await {
                Ok(next) => next,
                Err(error) => {
                    warn!(
                        error = &error as &dyn std::error::Error,
                        "dispatch round failed; retrying after the fallback delay"
                    );
                    None
                }
            };
            let wait = next
                .map_or(self.config.fallback_poll, |at| clock::until(now, at))
                .min(self.config.fallback_poll);
            let deadline = tokio::time::Instant::now() + wait;
            // A finished dial is only reaped: whatever it changed that a
            // round must see (a settlement, a pause) signals on its own.
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break 'rounds,
                    Some(_) = dials.join_next(), if !dials.is_empty() => {}
                    _ = changes.changed() => break,
                    _ = paused.changed() => break,
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        housekeeping.abort_all();
        let grace = self.config.shutdown_grace;
        let mut retries = self.pending_retries.subscribe();
        let drain = async {
            while dials.join_next().await.is_some() {}
            // Writes the webhook intake is retrying; it keeps taking
            // in-process webhooks until the handle stops it after this.
            let _ = retries.wait_for(|pending| *pending == 0).await;
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                in_flight = dials.len(),
                retrying = *self.pending_retries.borrow(),
                "shutdown grace ran out; abandoning dial requests and store writes being retried"
            );
        }
    }

    /// One round whose dials are awaited before it returns (see
    /// [`Engine::tick`](super::Engine::tick)).
    pub(super) async fn tick(self: &Arc<Self>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut dials = JoinSet::new();
        self.round(&mut dials, &mut Timers::default()).await?;
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

    /// One round; spawns a dial task per claimed call into `dials`. Runs the
    /// timer pass (expiry, lapsed leases, the next timer) when `timers` says
    /// it is due. Returns when the next timed event is due.
    async fn round(
        self: &Arc<Self>,
        dials: &mut JoinSet<()>,
        timers: &mut Timers,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let pass = timers.due(now);
        if pass {
            self.expire_and_reclaim(now, dials).await?;
        }
        if let Some(until) = self.paused_at(now) {
            // Dialling is paused after an account error: claim nothing, and
            // look again when the pause ends.
            let next = self.store.next_timer(now).await?;
            return Ok(Some(next.map_or(until, |at| at.min(until))));
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
        if pass {
            *timers = Timers {
                last_pass: Some(now),
                next: self.store.next_timer(now).await?,
                skipped: false,
            };
        } else {
            timers.skipped = true;
        }
        Ok(timers.wake_at())
    }

    /// Expires the calls whose time ran out and starts settling the
    /// attempts whose lease lapsed.
    async fn expire_and_reclaim(
        self: &Arc<Self>,
        now: DateTime<Utc>,
        dials: &mut JoinSet<()>,
    ) -> Result<(), StoreError> {
        let expired = self.store.expire_due(now).await?;
        if !expired.is_empty() {
            metrics::counter!("orchestrator_calls_expired_total").increment(expired.len() as u64);
            info!(
                count = expired.len(),
                "calls expired before they could be dialled"
            );
        }
        for attempt in self.store.stale_attempts(now, STALE_BATCH).await? {
            // Each stale attempt is looked up at the provider in a task of
            // its own, so a slow provider never holds up the round; one
            // task per attempt at a time.
            let fresh = lock(&self.reconciling).insert(attempt);
            if fresh {
                metrics::counter!("orchestrator_stale_leases_total").increment(1);
                let span = info_span!("stale lease", call_id = %attempt.call_id, attempt = attempt.attempt);
                dials.spawn(Arc::clone(self).expire_lease(attempt).instrument(span));
            }
        }
        Ok(())
    }

    /// Dials `call`'s current attempt and records what the provider answered,
    /// retrying the store write through an outage until the attempt's lease
    /// runs out.
    async fn dial(self: Arc<Self>, call: Call) {
        let request = DialRequest::for_call(&call);
        let attempt = request.attempt;
        let lease_end = call
            .lease_expires_at
            .unwrap_or_else(|| clock::add(self.clock.now(), self.config.lease));
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
                // Until it is recorded, the webhook still finds the attempt
                // through the callId and attempt in its URL's query.
                let record = || self.store.record_dial(attempt, &provider_call_id);
                let recorded = self
                    .retry_write("record the provider call id", lease_end, transient, record)
                    .await
                    .flatten();
                // A cancel that came while the dial was in flight could not
                // hang up: the provider id was not known yet.
                if let Some(call) = recorded.filter(|call| call.cancel_requested_at.is_some()) {
                    self.hang_up(&call).await;
                }
            }
            DialVerdict::Settle { label, settlement } => {
                metrics::counter!("orchestrator_dials_total", "outcome" => label).increment(1);
                let reason = match &settlement {
                    Settlement::Failed { error, .. } if label == decide::ACCOUNT => {
                        Some(error.clone())
                    }
                    _ => None,
                };
                self.settle(attempt, settlement, Some(lease_end)).await;
                if let Some(reason) = reason {
                    self.pause_dialling(&reason);
                }
            }
        }
    }

    /// Settles an attempt whose lease ran out: from the provider's status
    /// when it can tell the call ended, else as a webhook timeout.
    async fn expire_lease(self: Arc<Self>, attempt: AttemptRef) {
        if !self.reconcile(attempt).await {
            let now = self.clock.now();
            let settlement = self.with_rng(|rng| {
                decide::after_failure(
                    &self.config.retry,
                    attempt.attempt,
                    decide::WEBHOOK_TIMEOUT.to_owned(),
                    now,
                    rng,
                )
            });
            self.settle(attempt, settlement, None).await;
        }
        lock(&self.reconciling).remove(&attempt);
    }

    /// Asks the provider how a stale attempt's call stands, before it counts
    /// as a webhook timeout: a call the provider reports ended is settled
    /// from its answer, as its lost webhook would have settled it. Returns
    /// whether that happened; a call that is unknown, still live, or cannot
    /// be looked up is left to the webhook-timeout path.
    async fn reconcile(&self, attempt: AttemptRef) -> bool {
        let Ok(call) = self.store.get(attempt.call_id).await else {
            return false;
        };
        let Some(provider_call_id) = call
            .provider_call_id
            .as_deref()
            .filter(|_| call.current_attempt() == attempt)
        else {
            return false;
        };
        let (label, report) = match self.provider.call_status(provider_call_id, attempt).await {
            Ok(CallLookup::Ended(report)) => ("ended", Some(report)),
            Ok(CallLookup::Live) => ("live", None),
            Ok(CallLookup::Unknown) => ("unknown", None),
            Err(LookupError::Unsupported) => return false,
            Err(error) => {
                warn!(call_id = %attempt.call_id, error = &error as &dyn std::error::Error, "could not look up a call whose lease ran out");
                ("failed", None)
            }
        };
        metrics::counter!("orchestrator_reconciliations_total", "outcome" => label).increment(1);
        let Some(report) = report else {
            return false;
        };
        match self.settle_report(attempt, &report, false).await {
            Ok(settled) => {
                info!(call_id = %attempt.call_id, attempt = attempt.attempt, status = ?report.status, applied = matches!(settled, Settled::Applied(_)), "attempt settled from the provider's status: its webhook never came");
                true
            }
            Err(error) => {
                warn!(call_id = %attempt.call_id, error = &error as &dyn std::error::Error, "could not settle a reconciled attempt; the next round tries again");
                true
            }
        }
    }

    /// Settles `attempt` and logs the outcome. With `retry_until` (the
    /// attempt's lease end), a write the store could not take is retried
    /// until then; without, it is left to the next round (stale leases are
    /// listed again until settled).
    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
        retry_until: Option<DateTime<Utc>>,
    ) {
        let retry = matches!(settlement, Settlement::Retry { .. });
        let write = || self.store.settle(attempt, settlement.clone());
        let settled = match retry_until {
            Some(deadline) => {
                self.retry_write("settle the attempt", deadline, transient, write)
                    .await
            }
            None => match write().await {
                Ok(settled) => Some(settled),
                Err(error) => {
                    warn!(call_id = %attempt.call_id, error = &error as &dyn std::error::Error, "could not settle the attempt; the next round tries again");
                    None
                }
            },
        };
        match settled {
            Some(Settled::Applied(call)) => {
                if retry {
                    metrics::counter!("orchestrator_retries_total").increment(1);
                }
                info!(call_id = %call.id, attempt = attempt.attempt, status = %call.status, last_error = ?call.last_error, "attempt settled");
            }
            Some(Settled::Stale(_)) => {
                debug!(call_id = %attempt.call_id, "attempt already settled elsewhere");
            }
            None => {}
        }
    }
}

/// The set of attempts being settled after their lease ran out; a panic
/// cannot leave it inconsistent, so a poisoned lock is still good.
fn lock(set: &Mutex<HashSet<AttemptRef>>) -> MutexGuard<'_, HashSet<AttemptRef>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}
