//! Webhook intake: finding the attempt a provider's report is about and
//! settling it, for webhooks from HTTP ([`Engine::handle_webhook`]) and
//! from an in-process provider (the intake task) alike.
//!
//! A webhook over HTTP that the store cannot take fails, and the provider
//! delivers it again (webhook senders retry). An in-process webhook has no
//! sender to retry it, so the intake retries it itself (see `persist`).
//!
//! [`Engine::handle_webhook`]: super::Engine::handle_webhook

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use super::persist::transient_engine;
use super::{decide, EngineError, Inner, WebhookOutcome};
use crate::clock;
use crate::provider::WebhookDelivery;
use crate::store::{Settled, Settlement};
use crate::validate::validate_provider_call_id;

/// In-process webhooks being settled at once.
const MAX_IN_PROCESS_WEBHOOKS: usize = 256;

impl Inner {
    /// Settles every webhook an in-process provider delivers, up to
    /// [`MAX_IN_PROCESS_WEBHOOKS`] at once (as an HTTP server takes
    /// concurrent webhooks, so the store can write them together), until
    /// every sink is dropped (then finishes those in hand and the retries)
    /// or the task is aborted (which drops them).
    pub(super) async fn intake(self: Arc<Self>, mut webhooks: mpsc::Receiver<WebhookDelivery>) {
        let mut settling = JoinSet::new();
        let mut retries = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                Some(_) = retries.join_next(), if !retries.is_empty() => {}
                Some(joined) = settling.join_next(), if !settling.is_empty() => {
                    if let Ok(Some(delivery)) = joined {
                        retries.spawn(Arc::clone(&self).retry_webhook(delivery));
                    }
                }
                delivery = webhooks.recv(), if settling.len() < MAX_IN_PROCESS_WEBHOOKS => {
                    let Some(delivery) = delivery else { break };
                    let inner = Arc::clone(&self);
                    // Answers the delivery when it is to be retried.
                    settling.spawn(async move {
                        match inner.handle_webhook(delivery.clone()).await {
                            Ok(_) => None,
                            Err(error) if transient_engine(&error) => Some(delivery),
                            Err(error) => {
                                warn!(error = &error as &dyn std::error::Error, "in-process webhook not settled");
                                None
                            }
                        }
                    });
                }
            }
        }
        while let Some(joined) = settling.join_next().await {
            if let Ok(Some(delivery)) = joined {
                retries.spawn(Arc::clone(&self).retry_webhook(delivery));
            }
        }
        while retries.join_next().await.is_some() {}
    }

    /// Retries an in-process webhook the store could not take, for at most
    /// one lease: the attempt it reports on was claimed before it arrived,
    /// so by then its lease has run out and the stale-lease path owns it.
    async fn retry_webhook(self: Arc<Self>, delivery: WebhookDelivery) {
        let deadline = clock::add(self.clock.now(), self.config.lease);
        let span =
            info_span!("webhook retry", provider_call_id = %delivery.report.provider_call_id);
        let handle = || self.handle_webhook(delivery.clone());
        self.retry_write(
            "settle an in-process webhook",
            deadline,
            transient_engine,
            handle,
        )
        .instrument(span)
        .await;
    }

    /// Settles `attempt` as `report` says (a webhook's, or a status lookup's
    /// answer), counts a retry, and pauses dialling when an applied report
    /// is an account error. With `record`, the report's provider id is
    /// recorded for the attempt first, in the same store write
    /// ([`Store::settle_reported`](crate::Store::settle_reported)).
    pub(super) async fn settle_report(
        &self,
        attempt: crate::call::AttemptRef,
        report: &crate::provider::StatusReport,
        record: bool,
    ) -> Result<Settled, crate::store::StoreError> {
        let now = self.clock.now();
        let settlement = self.with_rng(|rng| {
            decide::report_settlement(
                report,
                self.config.redial,
                &self.config.retry,
                self.config.capacity_retry_after,
                attempt.attempt,
                now,
                rng,
            )
        });
        let retry = matches!(settlement, Settlement::Retry { .. });
        let settled = if record {
            self.store
                .settle_reported(attempt, &report.provider_call_id, settlement)
                .await?
        } else {
            self.store.settle(attempt, settlement).await?
        };
        if matches!(settled, Settled::Applied(_)) {
            if retry {
                metrics::counter!("orchestrator_retries_total").increment(1);
            }
            if report.status == crate::provider::ReportedStatus::AccountError {
                let reason = report.reason.as_deref().unwrap_or(report.status.as_str());
                self.pause_dialling(reason);
            }
        }
        Ok(settled)
    }

    /// Settles one webhook and counts its outcome.
    pub(super) async fn handle_webhook(
        &self,
        delivery: WebhookDelivery,
    ) -> Result<WebhookOutcome, EngineError> {
        let outcome = self.settle_webhook(delivery).await;
        let label = match &outcome {
            Ok(outcome) => outcome.label(),
            Err(EngineError::NotFound(_)) => "unknown",
            Err(_) => "error",
        };
        metrics::counter!("orchestrator_webhooks_total", "outcome" => label).increment(1);
        outcome
    }

    async fn settle_webhook(
        &self,
        delivery: WebhookDelivery,
    ) -> Result<WebhookOutcome, EngineError> {
        let report = delivery.report;
        validate_provider_call_id(&report.provider_call_id)?;
        // The attempt the webhook names (its URL's query, or the metadata a
        // platform echoes back; authenticated with the webhook) needs no
        // lookup, and its provider id is recorded in the settlement's own
        // write: the webhook may have beaten the dial's answer.
        let (attempt, record) = match delivery.attempt {
            Some(hint) => (hint, true),
            None => match self.store.find_attempt(&report.provider_call_id).await? {
                Some(attempt) => (attempt, false),
                None => {
                    return Err(EngineError::NotFound(format!(
                        "no call with provider call id {:?}",
                        report.provider_call_id
                    )))
                }
            },
        };
        let span = info_span!("webhook", call_id = %attempt.call_id, attempt = attempt.attempt);
        let settled = self
            .settle_report(attempt, &report, record)
            .instrument(span.clone())
            .await?;
        let _entered = span.enter();
        Ok(match settled {
            Settled::Applied(call) => {
                info!(status = %call.status, "attempt settled by webhook");
                WebhookOutcome::Applied(call)
            }
            Settled::Stale(call) if attempt.attempt > call.attempts => {
                debug!("webhook for an attempt never dialled; nothing changed");
                WebhookOutcome::Ignored(call)
            }
            Settled::Stale(call) => {
                debug!("webhook for a settled or older attempt; nothing changed");
                WebhookOutcome::Unchanged(call)
            }
        })
    }
}
