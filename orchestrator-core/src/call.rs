//! The `Call` record and the types that name, create and change one.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::callback::CallbackStatus;
use crate::input::{CallbackUrl, IdempotencyKey, Metadata, ScriptId};
use crate::phone::PhoneNumber;

/// A call's identifier: a UUID, version 7 (time-ordered) when we mint it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct CallId(pub Uuid);

impl CallId {
    /// A fresh UUIDv7 whose time part is `at` (milliseconds), so ids sort by
    /// creation; the random part comes from the operating system.
    #[must_use]
    pub fn new_v7(at: DateTime<Utc>) -> Self {
        Self::v7_from_parts(at, rand::random())
    }

    /// A UUIDv7 (RFC 9562 section 5.7) from a time and 10 random bytes, for
    /// engines that draw randomness from a seed so runs replay exactly.
    #[must_use]
    pub fn v7_from_parts(at: DateTime<Utc>, random: [u8; 10]) -> Self {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CallId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where a call is in its life. Serialised in SCREAMING_SNAKE_CASE (`"IN_PROGRESS"`).
///
/// `COMPLETED`, `FAILED`, `EXPIRED` and `CANCELED` are terminal: nothing
/// changes a terminal call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallStatus {
    /// Waiting to be dialled (new, or re-enqueued with back-off).
    Pending,
    /// Claimed and dialled; holds a concurrency slot until settled.
    InProgress,
    /// The provider reported the call completed.
    Completed,
    /// Failed for good: a permanent error, a final outcome, or retries exhausted.
    Failed,
    /// Not dialled before its `expiresAt`.
    Expired,
    /// Canceled by a client: never dialled (again).
    Canceled,
}

impl CallStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [CallStatus; 6] = [
        CallStatus::Pending,
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::Expired,
        CallStatus::Canceled,
    ];

    /// The wire name, e.g. `"IN_PROGRESS"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "PENDING",
            CallStatus::InProgress => "IN_PROGRESS",
            CallStatus::Completed => "COMPLETED",
            CallStatus::Failed => "FAILED",
            CallStatus::Expired => "EXPIRED",
            CallStatus::Canceled => "CANCELED",
        }
    }

    /// The status's position in [`CallStatus::ALL`], for tables indexed by status.
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            CallStatus::Pending => 0,
            CallStatus::InProgress => 1,
            CallStatus::Completed => 2,
            CallStatus::Failed => 3,
            CallStatus::Expired => 4,
            CallStatus::Canceled => 5,
        }
    }

    /// Whether nothing may change a call in this status any more.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CallStatus::Completed | CallStatus::Failed | CallStatus::Expired | CallStatus::Canceled
        )
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire name was not one of the six statuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown call status {0:?}; expected one of PENDING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELED"
)]
pub struct UnknownStatus(pub String);

impl FromStr for CallStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What to dial: the number, the script, and free-form metadata passed through to the provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CallPayload {
    /// The callee, canonical E.164.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "+966501234567"))]
    pub to: PhoneNumber,
    /// Identifier of the call script / flow at the provider.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "welcomeFlow"))]
    pub script_id: ScriptId,
    /// A JSON object passed through to the provider untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Metadata>,
}

/// One call, as stored and as the API shows it (camelCase, RFC 3339 UTC timestamps).
///
/// Timestamps have microsecond precision (what PostgreSQL keeps), so every store
/// returns the same values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Call {
    /// Primary key.
    pub id: CallId,
    /// What to dial.
    pub payload: CallPayload,
    /// Where the call is in its life.
    pub status: CallStatus,
    /// Dials started so far: 0 at creation, 1 after the first dial. A re-dial
    /// after the provider answered 429, or waiting for a slot, counts nothing.
    pub attempts: u32,
    /// The last failure, e.g. `"provider 503"`, `"BUSY"`, `"webhook timeout"`.
    pub last_error: Option<String>,
    /// When the call was created.
    pub created_at: DateTime<Utc>,
    /// When the current or last attempt was dialled.
    pub started_at: Option<DateTime<Utc>>,
    /// When the call reached a terminal state.
    pub ended_at: Option<DateTime<Utc>>,
    /// Do not dial before this instant.
    pub not_before: Option<DateTime<Utc>>,
    /// Not dialled by this instant → `EXPIRED`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Back-off: do not re-dial before this instant.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// While `IN_PROGRESS`: when the attempt's lease runs out and, without a
    /// webhook, it counts as failed ("webhook timeout").
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The provider's id for the current or last attempt (any string).
    pub provider_call_id: Option<String>,
    /// Call duration reported by the provider's webhook, in seconds.
    pub duration_sec: Option<u32>,
    /// The call this one retries (`POST /calls/{id}/retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<CallId>,
    /// When a client asked to cancel the call while it was `IN_PROGRESS`:
    /// it is never dialled again, and ends `CANCELED` unless the provider
    /// reports it `COMPLETED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The reason given with the cancel request; becomes `lastError` when
    /// the call ends `CANCELED` (default `"canceled"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// Where the call's terminal event is POSTed, when anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub callback_url: Option<CallbackUrl>,
    /// The delivery of the terminal event to `callbackUrl`; present exactly
    /// when `callbackUrl` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackStatus>,
}

impl Call {
    /// A new `PENDING` call with no attempts.
    #[must_use]
    pub fn new(id: CallId, new: &NewCall, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            payload: new.payload.clone(),
            status: CallStatus::Pending,
            attempts: 0,
            last_error: None,
            created_at,
            started_at: None,
            ended_at: None,
            not_before: new.not_before.map(crate::clock::truncate_to_micros),
            expires_at: new.expires_at.map(crate::clock::truncate_to_micros),
            next_attempt_at: None,
            lease_expires_at: None,
            provider_call_id: None,
            duration_sec: None,
            retry_of: new.retry_of,
            cancel_requested_at: None,
            cancel_reason: None,
            callback_url: new.callback_url.clone(),
            callback: new.callback_url.as_ref().map(|_| CallbackStatus::default()),
        }
    }

    /// The current attempt (meaningful while `IN_PROGRESS` or after a dial).
    #[must_use]
    pub fn current_attempt(&self) -> AttemptRef {
        AttemptRef {
            call_id: self.id,
            attempt: self.attempts,
        }
    }

    /// The earliest instant a `PENDING` call may be dialled: the latest of its
    /// creation, `notBefore` and back-off.
    #[must_use]
    pub fn due_at(&self) -> DateTime<Utc> {
        [self.not_before, self.next_attempt_at]
            .into_iter()
            .flatten()
            .fold(self.created_at, DateTime::max)
    }
}

/// A request to create a call.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCall {
    /// What to dial.
    pub payload: CallPayload,
    /// Do not dial before this instant.
    pub not_before: Option<DateTime<Utc>>,
    /// Not dialled by this instant → `EXPIRED`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Client-chosen key; creating again with the same key returns the first call.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Where to POST the call's terminal event.
    pub callback_url: Option<CallbackUrl>,
    /// The call this one retries; set by [`Engine::retry_call`](crate::Engine::retry_call).
    pub retry_of: Option<CallId>,
}

impl NewCall {
    /// A call to `to` running `script_id`, with no metadata, schedule or key.
    #[must_use]
    pub fn new(to: PhoneNumber, script_id: ScriptId) -> Self {
        Self {
            payload: CallPayload {
                to,
                script_id,
                metadata: None,
            },
            not_before: None,
            expires_at: None,
            idempotency_key: None,
            callback_url: None,
            retry_of: None,
        }
    }
}

/// A partial update of a `PENDING` call: its payload and its schedule.
/// `None` leaves a field as it is; for `notBefore` and `expiresAt`,
/// `Some(None)` clears the field (the JSON `null`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallPatch {
    /// New callee.
    pub to: Option<PhoneNumber>,
    /// New script.
    pub script_id: Option<ScriptId>,
    /// New metadata (replaces the old value whole).
    pub metadata: Option<Metadata>,
    /// New `notBefore`, or `Some(None)` to dial as soon as possible.
    #[allow(clippy::option_option)] // absent, null and a value are three requests
    pub not_before: Option<Option<DateTime<Utc>>>,
    /// New `expiresAt`, or `Some(None)` for no deadline.
    #[allow(clippy::option_option)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

impl CallPatch {
    /// Whether the patch changes `notBefore` or `expiresAt`.
    #[must_use]
    pub fn reschedules(&self) -> bool {
        self.not_before.is_some() || self.expires_at.is_some()
    }

    /// `call` with this patch applied (status and every other field as
    /// they are). Timestamps are truncated to microseconds, as at creation.
    #[must_use]
    pub fn apply_to(&self, call: &Call) -> Call {
        let mut next = call.clone();
        if let Some(to) = &self.to {
            next.payload.to = to.clone();
        }
        if let Some(script_id) = &self.script_id {
            next.payload.script_id = script_id.clone();
        }
        if let Some(metadata) = &self.metadata {
            next.payload.metadata = Some(metadata.clone());
        }
        if let Some(not_before) = self.not_before {
            next.not_before = not_before.map(crate::clock::truncate_to_micros);
        }
        if let Some(expires_at) = self.expires_at {
            next.expires_at = expires_at.map(crate::clock::truncate_to_micros);
        }
        next
    }
}

/// One dial of one call: `(call id, attempt number)`, attempt counted from 1.
///
/// Also the provider's idempotency key, written `"{callId}:{attempt}"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRef {
    /// The call.
    pub call_id: CallId,
    /// The attempt number, from 1.
    pub attempt: u32,
}

impl fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.call_id, self.attempt)
    }
}
