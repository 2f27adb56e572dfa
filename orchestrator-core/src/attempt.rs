//! The history of a call's dials: one [`Attempt`] per claim, in dial order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Settlement;

/// How one dial ended. Serialised in SCREAMING_SNAKE_CASE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttemptOutcome {
    /// Still live: no webhook, answer or lease end has settled it yet.
    InProgress,
    /// The provider reported the call completed.
    Completed,
    /// The call failed for good with this dial.
    Failed,
    /// The dial failed and the call was re-enqueued with back-off.
    Retry,
    /// The provider was at capacity (429): the dial never started and its
    /// attempt number was given back.
    Capacity,
    /// The call was canceled while this dial was live.
    Canceled,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::InProgress,
        AttemptOutcome::Completed,
        AttemptOutcome::Failed,
        AttemptOutcome::Retry,
        AttemptOutcome::Capacity,
        AttemptOutcome::Canceled,
    ];

    /// The wire name, e.g. `"IN_PROGRESS"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::InProgress => "IN_PROGRESS",
            AttemptOutcome::Completed => "COMPLETED",
            AttemptOutcome::Failed => "FAILED",
            AttemptOutcome::Retry => "RETRY",
            AttemptOutcome::Capacity => "CAPACITY",
            AttemptOutcome::Canceled => "CANCELED",
        }
    }
}

impl std::str::FromStr for AttemptOutcome {
    type Err = String;
    /// The outcome named `s` (its wire name); the error repeats `s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == s)
            .ok_or_else(|| format!("attempt outcome {s:?}"))
    }
}

/// One dial of a call: `{attempt, dialledAt, providerCallId?, outcome,
/// error?, endedAt?, retryAt?}`.
///
/// A 429 gives the attempt number back, so one number can appear on
/// several dials; all but the last of them end in `CAPACITY`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// The attempt number, from 1.
    pub attempt: u32,
    /// When it was claimed and dialled.
    pub dialled_at: DateTime<Utc>,
    /// The provider's id for this dial, once recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_call_id: Option<String>,
    /// How it ended, or `IN_PROGRESS`.
    pub outcome: AttemptOutcome,
    /// Why it failed, e.g. `"provider 503"`, `"BUSY"`, `"webhook timeout"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `COMPLETED`, `FAILED`, `CANCELED`: when the call ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `RETRY`, `CAPACITY`: not re-dialled before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
}

impl Attempt {
    /// A live dial of `attempt` claimed at `dialled_at`.
    #[must_use]
    pub fn started(attempt: u32, dialled_at: DateTime<Utc>) -> Self {
        Self {
            attempt,
            dialled_at,
            provider_call_id: None,
            outcome: AttemptOutcome::InProgress,
            error: None,
            ended_at: None,
            retry_at: None,
        }
    }

    /// This dial once `settlement` applied, given that the call had a
    /// cancel request when it did (then every outcome but `COMPLETED` is
    /// `CANCELED`, as [`crate::state::transition`] decides for the call).
    #[must_use]
    pub fn settled(&self, settlement: &Settlement, cancel_requested: bool) -> Self {
        let mut next = self.clone();
        match settlement {
            Settlement::Completed { at, .. } => {
                next.outcome = AttemptOutcome::Completed;
                next.ended_at = Some(*at);
            }
            Settlement::Failed { error, at, .. } | Settlement::Retry { error, at, .. }
                if cancel_requested =>
            {
                next.outcome = AttemptOutcome::Canceled;
                next.error = Some(error.clone());
                next.ended_at = Some(*at);
            }
            Settlement::Capacity { at, .. } if cancel_requested => {
                next.outcome = AttemptOutcome::Canceled;
                next.ended_at = Some(*at);
            }
            Settlement::Failed { error, at, .. } => {
                next.outcome = AttemptOutcome::Failed;
                next.error = Some(error.clone());
                next.ended_at = Some(*at);
            }
            Settlement::Retry {
                error, retry_at, ..
            } => {
                next.outcome = AttemptOutcome::Retry;
                next.error = Some(error.clone());
                next.retry_at = Some(*retry_at);
            }
            Settlement::Capacity { retry_at, .. } => {
                next.outcome = AttemptOutcome::Capacity;
                next.retry_at = Some(*retry_at);
            }
        }
        next
    }
}
