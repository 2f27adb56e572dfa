//! The `Provider` trait: starting one attempt of a call at the external AI-call provider.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::call::{AttemptRef, Call, CallId};
use crate::phone::PhoneNumber;

/// One attempt to dial, as sent to the provider.
#[derive(Clone, Debug, PartialEq)]
pub struct DialRequest {
    /// Which call and which attempt; also the idempotency key.
    pub attempt: AttemptRef,
    /// The callee.
    pub to: PhoneNumber,
    /// The provider's script / flow.
    pub script_id: String,
    /// Passed through untouched.
    pub metadata: Option<serde_json::Value>,
}

impl DialRequest {
    /// The request for `call`'s current attempt.
    #[must_use]
    pub fn for_call(call: &Call) -> Self {
        Self {
            attempt: call.current_attempt(),
            to: call.payload.to.clone(),
            script_id: call.payload.script_id.as_str().to_owned(),
            metadata: call
                .payload
                .metadata
                .as_ref()
                .map(|metadata| metadata.as_value().clone()),
        }
    }

    /// The provider idempotency key, `"{callId}:{attempt}"`: the same when this
    /// very attempt is re-sent, so the provider never starts it twice.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        self.attempt.to_string()
    }
}

/// The provider accepted the dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialled {
    /// The provider's id for this call (any string).
    pub provider_call_id: String,
}

/// Why a dial did not start, classified by the provider's answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Network error, timeout or 5xx: the attempt counts and may be retried.
    #[error("{reason}")]
    Retryable {
        /// E.g. `"provider 503"`, `"provider timeout"`.
        reason: String,
    },
    /// 429: the provider is at capacity. The attempt does not count; re-dial
    /// after `retry_after` (the `Retry-After` header), or the engine's default.
    #[error("provider at capacity")]
    AtCapacity {
        /// How long to wait, when the provider said.
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: the call fails at once.
    #[error("{reason}")]
    Permanent {
        /// E.g. `"provider 422: invalid number"`.
        reason: String,
    },
    /// The provider refused because of our account or configuration (no
    /// credits, a frozen subscription, an unknown assistant): the call
    /// fails at once, and the engine pauses dialling for a while and says
    /// so loudly, rather than burning through the queue.
    #[error("{reason}")]
    Account {
        /// The provider's own reason, e.g. `"call.start.error-subscription-insufficient-credits"`.
        reason: String,
    },
}

/// How a provider's call ended, by disposition: what the engine does next.
///
/// The generic webhook contract carries the first four
/// ([`ReportedStatus::GENERIC`]); platform adapters map their own outcome
/// vocabularies (Vapi's `endedReason`, Retell's `disconnection_reason`)
/// onto all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReportedStatus {
    /// The call took place: `COMPLETED`.
    Completed,
    /// The call failed at the provider: `FAILED`, no retry.
    Failed,
    /// The callee's line was busy: no contact, re-dialled as the
    /// [`RedialPolicy`](crate::RedialPolicy) says.
    Busy,
    /// Nobody answered: no contact, as the re-dial policy says.
    NoAnswer,
    /// An answering machine took the call: no contact, as the re-dial policy says.
    Voicemail,
    /// A fault of the platform or its carrier: retried with back-off (the
    /// attempt counts).
    Transient,
    /// The number cannot be called (invalid, unreachable, refused by the
    /// carrier): `FAILED`, no retry.
    BadNumber,
    /// Our account or configuration at the platform is at fault: `FAILED`,
    /// no retry, and dialling pauses.
    AccountError,
    /// The platform had no free slot and never started the call: re-dialled
    /// later without consuming an attempt.
    Capacity,
}

impl ReportedStatus {
    /// The statuses of the generic webhook contract.
    pub const GENERIC: [ReportedStatus; 4] = [
        ReportedStatus::Completed,
        ReportedStatus::Failed,
        ReportedStatus::Busy,
        ReportedStatus::NoAnswer,
    ];

    /// The wire name, e.g. `"NO_ANSWER"`; also the `lastError` of a call it
    /// fails when the report carries no reason of its own.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedStatus::Completed => "COMPLETED",
            ReportedStatus::Failed => "FAILED",
            ReportedStatus::Busy => "BUSY",
            ReportedStatus::NoAnswer => "NO_ANSWER",
            ReportedStatus::Voicemail => "VOICEMAIL",
            ReportedStatus::Transient => "TRANSIENT",
            ReportedStatus::BadNumber => "BAD_NUMBER",
            ReportedStatus::AccountError => "ACCOUNT_ERROR",
            ReportedStatus::Capacity => "CAPACITY",
        }
    }
}

/// A provider's status report for one of its calls: the webhook body
/// `{"callId", "status", "durationSec"?, "completedAt"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The provider's call id.
    #[serde(rename = "callId")]
    pub provider_call_id: String,
    /// The outcome.
    pub status: ReportedStatus,
    /// Call duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_sec: Option<u32>,
    /// When the call ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The platform's own reason, e.g. Vapi's `endedReason`
    /// `"customer-busy"`; becomes `lastError` when the call does not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a provider knows of one of its calls ([`Provider::call_status`]).
#[derive(Clone, Debug, PartialEq)]
pub enum CallLookup {
    /// The call has ended; the report settles its attempt as a webhook would.
    Ended(StatusReport),
    /// The call is still live (queued, ringing, in progress).
    Live,
    /// The provider does not know the call.
    Unknown,
}

/// Why a status lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// This provider cannot look calls up.
    #[error("the provider cannot look calls up")]
    Unsupported,
    /// The lookup failed (network error, timeout, an error status).
    #[error("{reason}")]
    Failed {
        /// E.g. `"provider 503"`.
        reason: String,
    },
}

/// A webhook delivered in-process: the report and the `callId`/`attempt`
/// we put in the webhook URL, when known.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookDelivery {
    /// The report.
    pub report: StatusReport,
    /// Our call id and attempt, from the webhook URL's query.
    pub attempt: Option<AttemptRef>,
}

/// Where an in-process provider delivers its webhooks: a bounded channel into
/// the engine, which settles them exactly as it settles HTTP webhooks.
#[derive(Clone, Debug)]
pub struct WebhookSink(pub(crate) mpsc::Sender<WebhookDelivery>);

impl WebhookSink {
    /// Delivers one webhook, waiting while the engine's queue is full.
    ///
    /// # Errors
    /// Gives the delivery back when the engine has stopped.
    pub async fn deliver(&self, delivery: WebhookDelivery) -> Result<(), WebhookDelivery> {
        self.0.send(delivery).await.map_err(|error| error.0)
    }
}

/// Why a hang-up did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HangUpError {
    /// This provider cannot end a call it started.
    #[error("the provider cannot hang up calls")]
    Unsupported,
    /// The provider was asked and did not end the call (network error,
    /// timeout, an error status).
    #[error("{reason}")]
    Failed {
        /// E.g. `"provider 503"`.
        reason: String,
    },
}

/// An external AI-call provider.
///
/// # Contract
/// `start_call` starts the attempt at most once per idempotency key, and
/// classifies failures as [`DialError`] says. It must return in bounded time
/// (implementations carry their own timeout).
///
/// Implement it under `#[orchestrator_core::async_trait]` (re-exported, so no
/// dependency of your own is needed).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Starts one attempt of a call.
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError>;

    /// Asks the provider to end the live call it named `provider_call_id`
    /// (attempt `attempt`), for a canceled call. The call still ends through
    /// its webhook (or its lease). A call the provider has already ended is
    /// `Ok`. Optional: the default answers [`HangUpError::Unsupported`].
    ///
    /// # Errors
    /// [`HangUpError::Unsupported`]; [`HangUpError::Failed`].
    async fn hang_up(
        &self,
        _provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<(), HangUpError> {
        Err(HangUpError::Unsupported)
    }

    /// Asks the provider how its call `provider_call_id` (attempt `attempt`)
    /// stands, to reconcile an attempt whose lease ran out without a
    /// webhook (a platform that does not retry webhooks loses some). An
    /// [`CallLookup::Ended`] answer settles the attempt as its webhook
    /// would have; only a call that is unknown or still live counts as a
    /// webhook timeout. Optional: the default answers
    /// [`LookupError::Unsupported`].
    ///
    /// # Errors
    /// [`LookupError::Unsupported`]; [`LookupError::Failed`].
    async fn call_status(
        &self,
        _provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<CallLookup, LookupError> {
        Err(LookupError::Unsupported)
    }

    /// Called by the engine when it starts, for providers that report outcomes
    /// in-process (the simulated provider). HTTP providers report by webhook
    /// instead and ignore it.
    fn bind_webhooks(&self, _sink: WebhookSink) {}
}

/// Id of a call in a webhook URL's query: `?callId=...&attempt=...`.
#[must_use]
pub fn webhook_query(attempt: AttemptRef) -> String {
    format!("callId={}&attempt={}", attempt.call_id, attempt.attempt)
}

/// Parses the `callId` and `attempt` query values we put in a webhook URL.
#[must_use]
pub fn parse_webhook_query(call_id: &str, attempt: &str) -> Option<AttemptRef> {
    Some(AttemptRef {
        call_id: call_id.parse::<CallId>().ok()?,
        attempt: attempt.parse().ok().filter(|n| *n > 0)?,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn attempt(n: u32) -> AttemptRef {
        let at = Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap();
        AttemptRef {
            call_id: CallId::v7_from_parts(at, [7; 10]),
            attempt: n,
        }
    }

    #[test]
    fn the_webhook_query_names_the_call_and_attempt_and_parses_back() {
        let attempt = attempt(3);
        let query = webhook_query(attempt);
        assert_eq!(query, format!("callId={}&attempt=3", attempt.call_id));
        let call_id = attempt.call_id.to_string();
        assert_eq!(parse_webhook_query(&call_id, "3"), Some(attempt));
        assert_eq!(
            parse_webhook_query(&call_id, "1").map(|a| a.attempt),
            Some(1)
        );
    }

    #[test]
    fn a_webhook_query_without_a_call_id_and_a_dialled_attempt_is_refused() {
        let call_id = attempt(1).call_id.to_string();
        for (call_id, attempt) in [
            (call_id.as_str(), "0"),
            (call_id.as_str(), "-1"),
            (call_id.as_str(), "two"),
            (call_id.as_str(), ""),
            ("not-a-uuid", "1"),
        ] {
            assert_eq!(
                parse_webhook_query(call_id, attempt),
                None,
                "{call_id:?} {attempt:?}"
            );
        }
    }

    #[test]
    fn the_idempotency_key_is_call_id_colon_attempt() {
        let request = DialRequest {
            attempt: attempt(2),
            to: PhoneNumber::parse("+14155550100").unwrap(),
            script_id: "welcomeFlow".into(),
            metadata: None,
        };
        assert_eq!(
            request.idempotency_key(),
            format!("{}:2", attempt(2).call_id)
        );
    }

    #[test]
    fn reported_statuses_have_their_wire_names() {
        let names = [
            ReportedStatus::Completed,
            ReportedStatus::Failed,
            ReportedStatus::Busy,
            ReportedStatus::NoAnswer,
        ]
        .map(ReportedStatus::as_str);
        assert_eq!(names, ["COMPLETED", "FAILED", "BUSY", "NO_ANSWER"]);
        for name in names {
            let parsed: ReportedStatus = serde_json::from_value(name.into()).unwrap();
            assert_eq!(parsed.as_str(), name);
        }
    }

    #[tokio::test]
    async fn a_sink_gives_the_delivery_back_once_the_engine_has_stopped() {
        let (sender, mut receiver) = mpsc::channel(1);
        let sink = WebhookSink(sender);
        let delivery = WebhookDelivery {
            report: StatusReport {
                provider_call_id: "p-1".into(),
                status: ReportedStatus::Busy,
                duration_sec: None,
                completed_at: None,
                reason: None,
            },
            attempt: Some(attempt(1)),
        };
        assert_eq!(sink.deliver(delivery.clone()).await, Ok(()));
        assert_eq!(receiver.try_recv(), Ok(delivery.clone()));
        drop(receiver);
        assert_eq!(sink.deliver(delivery.clone()).await, Err(delivery));
    }
}
