//! The delivery worker: sends terminal events to the calls' callback URLs.
//!
//! It runs beside the dispatcher, never inside it, so a receiver that hangs
//! or fails delays no dial. It claims due deliveries from the store's
//! outbox (at most `callback_concurrency` in flight), sends each through
//! the [`CallbackSender`], and records the answer; a failed try is retried
//! with exponential back-off and jitter until the tries run out. Claims are
//! leased, so engines sharing a store never send one delivery at once, and
//! a try whose engine died is taken over once its lease runs out (sent
//! again with the same event id: at least once).

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use super::persist::transient;
use super::Inner;
use crate::callback::{CallbackSender, Delivery, DeliveryClaim, DeliveryOutcome};
use crate::clock;
use crate::retry::RetryDecision;

impl Inner {
    /// The worker loop: claim what is due and free to send, then wait for a
    /// new event, a finished send, the next due delivery or the stop signal.
    /// On stop, waits up to the shutdown grace for the sends in flight.
    pub(super) async fn deliver(
        self: Arc<Self>,
        sender: Arc<dyn CallbackSender>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut signal = self.store.subscribe_events();
        let mut sends = JoinSet::new();
        let concurrency = self.config.callback_concurrency;
        loop {
            signal.mark_unchanged();
            let now = self.clock.now();
            let free = concurrency.saturating_sub(sends.len());
            if free > 0 {
                let claim = DeliveryClaim {
                    now,
                    limit: u32::try_from(free).unwrap_or(u32::MAX),
                    lease: self.config.callback_lease,
                    max_attempts: self.config.callback_retry.max_attempts(),
                };
                match self.store.claim_deliveries(&claim).await {
                    Ok(claimed) => {
                        for delivery in claimed {
                            let span = info_span!("callback", call_id = %delivery.event.call.id, event_id = %delivery.event.id, attempt = delivery.attempt);
                            sends.spawn(
                                Arc::clone(&self)
                                    .send(Arc::clone(&sender), delivery)
                                    .instrument(span),
                            );
                        }
                    }
                    Err(error) => {
                        warn!(
                            error = &error as &dyn std::error::Error,
                            "could not claim callback deliveries; trying again later"
                        );
                    }
                }
            }
            let next = self.store.next_delivery_at(now).await.ok().flatten();
            let wait = next
                .map_or(self.config.fallback_poll, |at| clock::until(now, at))
                .min(self.config.fallback_poll);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(_) = sends.join_next(), if !sends.is_empty() => {}
                _ = signal.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let drain = async { while sends.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, drain)
            .await
            .is_err()
        {
            warn!(
                in_flight = sends.len(),
                "shutdown grace ran out; callback sends in flight are abandoned and re-sent once their lease runs out"
            );
        }
    }

    /// One try: send, decide, record (retrying the record through a store
    /// outage until the try's lease runs out).
    async fn send(self: Arc<Self>, sender: Arc<dyn CallbackSender>, delivery: Delivery) {
        let started = self.clock.now();
        let lease_end = clock::add(started, self.config.callback_lease);
        let result = sender.send(&delivery).await;
        let now = self.clock.now();
        let (label, outcome) = match result {
            Ok(()) => {
                let latency = clock::until(delivery.event.occurred_at, now);
                metrics::histogram!("orchestrator_callback_delivery_seconds")
                    .record(latency.as_secs_f64());
                ("delivered", DeliveryOutcome::Delivered { at: now })
            }
            Err(error) => {
                let decision =
                    self.with_rng(|rng| self.config.callback_retry.decide(delivery.attempt, rng));
                match decision {
                    RetryDecision::RetryAfter(delay) => (
                        "retry",
                        DeliveryOutcome::Retry {
                            error: error.reason,
                            retry_at: clock::add(now, delay),
                        },
                    ),
                    RetryDecision::GiveUp => {
                        warn!(error = %error, "callback delivery failed on its last try");
                        (
                            "failed",
                            DeliveryOutcome::Failed {
                                error: error.reason,
                                at: now,
                            },
                        )
                    }
                }
            }
        };
        metrics::counter!("orchestrator_callbacks_total", "outcome" => label).increment(1);
        debug!(outcome = label, "callback try finished");
        let reference = delivery.reference();
        let record = || self.store.record_delivery(reference, outcome.clone());
        self.retry_write("record a callback try", lease_end, transient, record)
            .await;
    }
}
