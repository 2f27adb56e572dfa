//! Call control: cancel (asking the provider to hang up a live call) and
//! retry (a new call from a finished one).

use tracing::{info, warn};

use super::{Engine, EngineError, Inner};
use crate::call::{Call, CallStatus, NewCall};
use crate::input::IdempotencyKey;
use crate::provider::HangUpError;
use crate::state::{TransitionError, DEFAULT_CANCEL_REASON};
use crate::store::{Canceled, Created};
use crate::validate::{check_text, Invalid};

/// Longest cancel reason, in characters.
pub const MAX_CANCEL_REASON_CHARS: usize = 500;

impl Engine {
    /// Cancels a call. A `PENDING` call ends `CANCELED` at once
    /// ([`Canceled::Canceled`]). An `IN_PROGRESS` call is never re-dialled
    /// and the provider is asked to hang up where it can
    /// ([`Canceled::Requested`]); its webhook or lease then ends it
    /// `COMPLETED` if the provider reports it completed, else `CANCELED`. A
    /// `CANCELED` call is left as it is ([`Canceled::AlreadyCanceled`]).
    /// `reason` (default `"canceled"`) becomes `lastError`.
    ///
    /// # Errors
    /// [`EngineError::Invalid`] naming `reason` (blank, over
    /// [`MAX_CANCEL_REASON_CHARS`] characters, control characters);
    /// [`EngineError::NotFound`]; [`EngineError::Conflict`] when the call is
    /// `COMPLETED`, `FAILED` or `EXPIRED`; [`EngineError::Store`].
    pub async fn cancel_call(
        &self,
        id: crate::CallId,
        reason: Option<&str>,
    ) -> Result<Canceled, EngineError> {
        let reason = match reason {
            Some(reason) => check_reason(reason)?,
            None => DEFAULT_CANCEL_REASON,
        };
        let inner = &self.inner;
        let canceled = inner.store.cancel(id, reason, inner.clock.now()).await?;
        match &canceled {
            Canceled::Canceled(_) => {
                metrics::counter!("orchestrator_cancels_total", "outcome" => "canceled")
                    .increment(1);
                info!(call_id = %id, reason, "call canceled");
            }
            Canceled::Requested(call) => {
                metrics::counter!("orchestrator_cancels_total", "outcome" => "requested")
                    .increment(1);
                info!(call_id = %id, reason, "cancel requested for a live call");
                inner.hang_up(call).await;
            }
            Canceled::AlreadyCanceled(_) => {}
        }
        Ok(canceled)
    }

    /// A new `PENDING` call with the payload and callback URL of a call that
    /// ended `FAILED`, `EXPIRED` or `CANCELED`, and `retryOf` = its id. The
    /// original stays as it is. `idempotency_key` works as on
    /// [`create_call`](Self::create_call): a repeat returns the first retry.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Conflict`] when the call is
    /// `PENDING`, `IN_PROGRESS` or `COMPLETED`; [`EngineError::Store`].
    pub async fn retry_call(
        &self,
        id: crate::CallId,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Created, EngineError> {
        let original = self.inner.store.get(id).await?;
        if !matches!(
            original.status,
            CallStatus::Failed | CallStatus::Expired | CallStatus::Canceled
        ) {
            return Err(EngineError::Conflict {
                id,
                source: TransitionError {
                    from: original.status,
                    event: "retry",
                },
            });
        }
        let mut new = NewCall::new(original.payload.to, original.payload.script_id);
        new.payload.metadata = original.payload.metadata;
        new.callback_url = original.callback_url;
        new.retry_of = Some(id);
        new.idempotency_key = idempotency_key;
        self.create_call(new).await
    }
}

/// The reason as given, if valid.
fn check_reason(reason: &str) -> Result<&str, Invalid> {
    check_text("reason", reason, MAX_CANCEL_REASON_CHARS)?;
    Ok(reason)
}

impl Inner {
    /// Asks the provider to end `call`'s live attempt, once its provider id
    /// is known (the dial task asks again when it records the id). Failures
    /// are logged: the call ends through its webhook or lease regardless,
    /// and is never re-dialled.
    pub(super) async fn hang_up(&self, call: &Call) {
        let Some(provider_call_id) = call.provider_call_id.as_deref() else {
            return;
        };
        let outcome = match self
            .provider
            .hang_up(provider_call_id, call.current_attempt())
            .await
        {
            Ok(()) => "hung_up",
            Err(HangUpError::Unsupported) => {
                info!(call_id = %call.id, "the provider cannot hang up; the call ends when the provider reports it");
                "unsupported"
            }
            Err(error) => {
                warn!(call_id = %call.id, error = &error as &dyn std::error::Error, "hang-up failed; the call ends when the provider reports it or its lease runs out");
                "failed"
            }
        };
        metrics::counter!("orchestrator_hang_ups_total", "outcome" => outcome).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reasons_are_checked_and_kept_as_given() {
        assert_eq!(check_reason(" do not call "), Ok(" do not call "));
        for bad in ["", "  ", "a\nb"] {
            assert_eq!(check_reason(bad).unwrap_err().field, "reason");
        }
        let longest = "é".repeat(MAX_CANCEL_REASON_CHARS);
        assert!(check_reason(&longest).is_ok());
        assert!(check_reason(&format!("{longest}x")).is_err());
    }
}
