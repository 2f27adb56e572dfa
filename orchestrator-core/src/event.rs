//! The event log: one [`Event`] per change of a call's status, written by
//! the store in the same atomic step as the change.
//!
//! Event ids increase in the order the changes committed, so a reader that
//! resumes after the last id it saw misses nothing and sees each call's
//! events in the order they happened.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::call::{Call, CallId, CallStatus};

/// An event's position in the log: 1 for the first event, increasing in
/// commit order. `EventId(0)` is "before the first event".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct EventId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// What happened to the call. Serialised by its wire name, e.g. `"call.completed"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    /// Stored `PENDING`.
    #[serde(rename = "call.created")]
    Created,
    /// Claimed and dialled: `→ IN_PROGRESS`.
    #[serde(rename = "call.dialled")]
    Dialled,
    /// Back to `PENDING` after a failed attempt or a provider at capacity.
    #[serde(rename = "call.retry_scheduled")]
    RetryScheduled,
    /// `→ COMPLETED`.
    #[serde(rename = "call.completed")]
    Completed,
    /// `→ FAILED`.
    #[serde(rename = "call.failed")]
    Failed,
    /// `→ EXPIRED`.
    #[serde(rename = "call.expired")]
    Expired,
    /// `→ CANCELED`.
    #[serde(rename = "call.canceled")]
    Canceled,
}

impl EventType {
    /// Every type, in life-cycle order.
    pub const ALL: [EventType; 7] = [
        EventType::Created,
        EventType::Dialled,
        EventType::RetryScheduled,
        EventType::Completed,
        EventType::Failed,
        EventType::Expired,
        EventType::Canceled,
    ];

    /// The wire name, e.g. `"call.retry_scheduled"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "call.created",
            EventType::Dialled => "call.dialled",
            EventType::RetryScheduled => "call.retry_scheduled",
            EventType::Completed => "call.completed",
            EventType::Failed => "call.failed",
            EventType::Expired => "call.expired",
            EventType::Canceled => "call.canceled",
        }
    }

    /// The event a change of status is: `from` is `None` for a call just
    /// created. `None` when the status did not change (an update of a
    /// `PENDING` call, a provider id recorded, a cancel request on a live
    /// call): no event is written for those.
    #[must_use]
    pub fn of_change(from: Option<CallStatus>, to: CallStatus) -> Option<Self> {
        if from == Some(to) {
            return None;
        }
        Some(match (from, to) {
            (None, _) => EventType::Created,
            (Some(_), CallStatus::Pending) => EventType::RetryScheduled,
            (Some(_), CallStatus::InProgress) => EventType::Dialled,
            (Some(_), CallStatus::Completed) => EventType::Completed,
            (Some(_), CallStatus::Failed) => EventType::Failed,
            (Some(_), CallStatus::Expired) => EventType::Expired,
            (Some(_), CallStatus::Canceled) => EventType::Canceled,
        })
    }

    /// Whether the event ends the call (its status is terminal).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::Completed | EventType::Failed | EventType::Expired | EventType::Canceled
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire name was not one of the event types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}; expected one of call.created, call.dialled, call.retry_scheduled, call.completed, call.failed, call.expired, call.canceled")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// One change of a call's status: `{id, type, occurredAt, call}`, where
/// `call` is the call just after the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Position in the log.
    pub id: EventId,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the change happened (the engine's clock).
    pub occurred_at: DateTime<Utc>,
    /// The call just after the change.
    pub call: Call,
}

impl Event {
    /// The event for `call`'s change from `from` (`None`: just created) to
    /// its current status, at `at`, with id 0 (the store assigns ids). `None`
    /// when the status did not change.
    #[must_use]
    pub fn of_change(from: Option<CallStatus>, call: &Call, at: DateTime<Utc>) -> Option<Self> {
        EventType::of_change(from, call.status).map(|kind| Self {
            id: EventId(0),
            kind,
            occurred_at: at,
            call: call.clone(),
        })
    }
}

/// Which events a reader wants: every event when both are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these types; every type when empty.
    pub types: BTreeSet<EventType>,
    /// Only this call's events.
    pub call_id: Option<CallId>,
}

impl EventFilter {
    /// Whether `event` passes the filter.
    #[must_use]
    pub fn matches(&self, event: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&event.kind))
            && self.call_id.is_none_or(|id| id == event.call.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_change_is_one_event_type() {
        use CallStatus::{Canceled, Completed, Expired, Failed, InProgress, Pending};
        let of = EventType::of_change;
        assert_eq!(of(None, Pending), Some(EventType::Created));
        assert_eq!(of(Some(Pending), InProgress), Some(EventType::Dialled));
        assert_eq!(
            of(Some(InProgress), Pending),
            Some(EventType::RetryScheduled)
        );
        assert_eq!(of(Some(InProgress), Completed), Some(EventType::Completed));
        assert_eq!(of(Some(InProgress), Failed), Some(EventType::Failed));
        assert_eq!(of(Some(Pending), Expired), Some(EventType::Expired));
        assert_eq!(of(Some(Pending), Canceled), Some(EventType::Canceled));
        assert_eq!(of(Some(InProgress), Canceled), Some(EventType::Canceled));
        for status in CallStatus::ALL {
            assert_eq!(of(Some(status), status), None);
        }
    }

    #[test]
    fn event_types_round_trip_their_wire_names() {
        for kind in EventType::ALL {
            assert_eq!(kind.as_str().parse::<EventType>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().to_owned())
            );
            assert_eq!(
                kind.is_terminal(),
                !matches!(
                    kind,
                    EventType::Created | EventType::Dialled | EventType::RetryScheduled
                )
            );
        }
        assert!("call.exploded".parse::<EventType>().is_err());
    }
}
