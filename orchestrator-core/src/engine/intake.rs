//! Webhook intake: finding the attempt a provider's report is about and
//! settling it, for webhooks from HTTP ([`Engine::handle_webhook`]) and
//! from an in-process provider (the intake task) alike.
//!
//! [`Engine::handle_webhook`]: super::Engine::handle_webhook

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{decide, EngineError, Inner, WebhookOutcome};
use crate::provider::WebhookDelivery;
use crate::store::{Settled, Settlement};
use crate::validate::validate_provider_call_id;

impl Inner {
    /// Settles every webhook an in-process provider delivers, until every
    /// sink is dropped or the task is aborted.
    pub(super) async fn intake(self: Arc<Self>, mut webhooks: mpsc::Receiver<WebhookDelivery>) {
        while let Some(delivery) = webhooks.recv().await {
            if let Err(error) = self.handle_webhook(delivery).await {
                warn!(%error, "in-process webhook not settled");
            }
        }
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
        let attempt = match self.store.find_attempt(&report.provider_call_id).await? {
            Some(attempt) => attempt,
            None => {
                let Some(hint) = delivery.attempt else {
                    return Err(EngineError::NotFound(format!(
                        "no call with provider call id {:?}",
                        report.provider_call_id
                    )));
                };
                let call = self.store.get(hint.call_id).await?;
                if hint.attempt > call.attempts {
                    return Ok(WebhookOutcome::Ignored(call));
                }
                // The webhook beat the dial's answer: record the provider id
                // now, so a repeat without the query is recognised too.
                self.store
                    .record_dial(hint, &report.provider_call_id)
                    .await?;
                hint
            }
        };
        let now = self.clock.now();
        let settlement = self.with_rng(|rng| {
            decide::report_settlement(
                &report,
                self.config.redial,
                &self.config.retry,
                attempt.attempt,
                now,
                rng,
            )
        });
        let span = info_span!("webhook", call_id = %attempt.call_id, attempt = attempt.attempt);
        let retry = matches!(settlement, Settlement::Retry { .. });
        let settled = self
            .store
            .settle(attempt, settlement)
            .instrument(span.clone())
            .await?;
        let _entered = span.enter();
        Ok(match settled {
            Settled::Applied(call) => {
                if retry {
                    metrics::counter!("orchestrator_retries_total").increment(1);
                }
                info!(status = %call.status, "attempt settled by webhook");
                WebhookOutcome::Applied(call)
            }
            Settled::Stale(call) => {
                debug!("webhook for a settled or older attempt; nothing changed");
                WebhookOutcome::Unchanged(call)
            }
        })
    }
}
