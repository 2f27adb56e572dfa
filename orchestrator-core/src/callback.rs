//! Client callbacks: the terminal event of a call that carries a
//! `callbackUrl` is delivered there through a durable outbox.
//!
//! The store writes a [`Delivery`] in the same atomic step as the terminal
//! change (so no terminal event is without its delivery, and none is
//! delivered for a change that did not happen). The engine's delivery
//! worker claims due deliveries as calls are claimed (one holder at a time,
//! under a lease), sends each through a [`CallbackSender`], and records the
//! answer: delivered, retried with exponential back-off and jitter, or
//! failed after the last try. A crash between the send and the record
//! leaves the lease to run out; the delivery is then sent again with the
//! same event id (at least once).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventId};
use crate::input::CallbackUrl;

/// The `lastError` of a delivery failed because its last allowed try lost
/// its lease without an answer recorded (see
/// [`Store::claim_deliveries`](crate::Store::claim_deliveries)).
pub const NO_ANSWER_RECORDED: &str = "no answer recorded";

/// Where a delivery stands. Serialised in SCREAMING_SNAKE_CASE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallbackState {
    /// Not delivered yet: the call is not terminal, or tries remain.
    #[default]
    Pending,
    /// A try was answered 2xx.
    Delivered,
    /// Every try failed.
    Failed,
}

impl CallbackState {
    /// Every state.
    pub const ALL: [CallbackState; 3] = [
        CallbackState::Pending,
        CallbackState::Delivered,
        CallbackState::Failed,
    ];

    /// The wire name, e.g. `"DELIVERED"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackState::Pending => "PENDING",
            CallbackState::Delivered => "DELIVERED",
            CallbackState::Failed => "FAILED",
        }
    }
}

impl std::str::FromStr for CallbackState {
    type Err = String;
    /// The state named `s` (its wire name); the error repeats `s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("delivery state {s:?}"))
    }
}

/// The delivery of a call's terminal event, as the call's JSON shows it:
/// `{state, attempts, lastError?}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CallbackStatus {
    /// Where the delivery stands.
    pub state: CallbackState,
    /// Tries started so far.
    pub attempts: u32,
    /// Why the last try failed, e.g. `"receiver 500"`, `"timed out"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One try of one delivery: the event and the try number (from 1). Only
/// the holder of the current try may record its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryRef {
    /// The event being delivered (also its `webhook-id`).
    pub event_id: EventId,
    /// The try, from 1.
    pub attempt: u32,
}

/// A delivery claimed for one try.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The terminal event to send.
    pub event: Event,
    /// Where to send it.
    pub url: CallbackUrl,
    /// This try's number, from 1.
    pub attempt: u32,
}

impl Delivery {
    /// Which try this is.
    #[must_use]
    pub fn reference(&self) -> DeliveryRef {
        DeliveryRef {
            event_id: self.event.id,
            attempt: self.attempt,
        }
    }
}

/// The limits of one [`Store::claim_deliveries`](crate::Store::claim_deliveries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryClaim {
    /// The current time: deliveries due at or before it are eligible.
    pub now: DateTime<Utc>,
    /// Claim at most this many.
    pub limit: u32,
    /// How long a try may take before another worker may take it over.
    pub lease: Duration,
    /// Tries allowed in all; a delivery whose last allowed try's lease ran
    /// out without an answer is failed, not claimed.
    pub max_attempts: u32,
}

/// What a try came to, for [`Store::record_delivery`](crate::Store::record_delivery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered {
        /// When.
        at: DateTime<Utc>,
    },
    /// The try failed and another is due at `retry_at`.
    Retry {
        /// Why, e.g. `"receiver 503"`.
        error: String,
        /// Not before this instant.
        retry_at: DateTime<Utc>,
    },
    /// The try failed and it was the last.
    Failed {
        /// Why.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a try was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct CallbackError {
    /// Short and stable, e.g. `"receiver 500"`, `"timed out"`, `"connection refused"`.
    pub reason: String,
}

impl CallbackError {
    /// An error with this reason.
    #[must_use]
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Sends one try of a delivery to the call's callback URL.
///
/// The HTTP crate's sender POSTs `{"type", "timestamp", "data": Call}` signed
/// by the Standard Webhooks scheme with `webhook-id` = the event id.
/// Implementations bound each try by their own timeout.
#[async_trait]
pub trait CallbackSender: Send + Sync + 'static {
    /// Sends `delivery`; `Ok` only when the receiver acknowledged it (2xx).
    ///
    /// # Errors
    /// [`CallbackError`] for anything else: another status, a timeout, a
    /// network error. The engine retries it with back-off.
    async fn send(&self, delivery: &Delivery) -> Result<(), CallbackError>;
}
