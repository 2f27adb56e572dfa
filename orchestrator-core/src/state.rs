//! The call state machine: a pure function from (call, event) to the next call.
//!
//! ```text
//! PENDING ──Claim──▶ IN_PROGRESS ──Complete──▶ COMPLETED
//!    │  ▲                 │ ├──────Fail──────▶ FAILED
//!    │  └──Retry/Capacity─┘ └─(Accept: records the provider id)
//!    └──Expire──▶ EXPIRED
//! ```
//! Every store applies changes through [`transition`] (the memory store) or an
//! equivalent conditional statement (PostgreSQL), and the conformance suite
//! checks that both agree.

use chrono::{DateTime, Utc};

use crate::call::{Call, CallPayload, CallStatus};

/// Something that happens to a call.
#[derive(Clone, Debug, PartialEq)]
pub enum CallEvent {
    /// A worker claimed the call to dial it: `PENDING → IN_PROGRESS`, one more attempt.
    Claim {
        /// When it was claimed; becomes `startedAt`.
        at: DateTime<Utc>,
        /// When the attempt's lease runs out without a webhook.
        lease_until: DateTime<Utc>,
    },
    /// The provider accepted the dial and named its call id (`IN_PROGRESS` stays).
    Accept {
        /// The provider's id for this attempt.
        provider_call_id: String,
    },
    /// The provider was at capacity (HTTP 429): the dial never started, so the
    /// attempt is given back. `IN_PROGRESS → PENDING`.
    Capacity {
        /// Do not re-dial before this instant (`Retry-After`).
        retry_at: DateTime<Utc>,
    },
    /// A retryable failure with attempts left: `IN_PROGRESS → PENDING` with back-off.
    Retry {
        /// Why the attempt failed.
        error: String,
        /// Back-off: do not re-dial before this instant.
        retry_at: DateTime<Utc>,
    },
    /// The provider reported the call completed: `IN_PROGRESS → COMPLETED`.
    Complete {
        /// When the call ended.
        at: DateTime<Utc>,
        /// Call duration in seconds, when reported.
        duration_sec: Option<u32>,
    },
    /// A permanent failure, a final outcome or retries exhausted: `IN_PROGRESS → FAILED`.
    Fail {
        /// Why.
        error: String,
        /// When the call ended.
        at: DateTime<Utc>,
        /// Call duration in seconds, when reported.
        duration_sec: Option<u32>,
    },
    /// The client replaced the payload; only while `PENDING`.
    UpdatePayload(CallPayload),
    /// Not dialled by its `expiresAt`: `PENDING → EXPIRED`.
    Expire {
        /// When it expired.
        at: DateTime<Utc>,
    },
}

impl CallEvent {
    /// A short name for messages, e.g. `"claim"`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            CallEvent::Claim { .. } => "claim",
            CallEvent::Accept { .. } => "accept",
            CallEvent::Capacity { .. } => "capacity",
            CallEvent::Retry { .. } => "retry",
            CallEvent::Complete { .. } => "complete",
            CallEvent::Fail { .. } => "fail",
            CallEvent::UpdatePayload(_) => "update payload",
            CallEvent::Expire { .. } => "expire",
        }
    }
}

/// The event is not allowed in the call's current status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed on a call that is {from}")]
pub struct TransitionError {
    /// The call's status.
    pub from: CallStatus,
    /// The event's name ([`CallEvent::name`]).
    pub event: &'static str,
}

/// The call after `event`, or why `event` is illegal now. Pure: `call` is not changed.
///
/// # Errors
/// [`TransitionError`] when the event does not apply to the call's status; in
/// particular every event on a terminal call.
pub fn transition(call: &Call, event: CallEvent) -> Result<Call, TransitionError> {
    use CallStatus::{Completed, Expired, Failed, InProgress, Pending};
    let illegal = TransitionError {
        from: call.status,
        event: event.name(),
    };
    let mut next = call.clone();
    match (call.status, event) {
        (Pending, CallEvent::Claim { at, lease_until }) => {
            next.status = InProgress;
            next.attempts += 1;
            next.started_at = Some(at);
            next.lease_expires_at = Some(lease_until);
            next.next_attempt_at = None;
            next.provider_call_id = None;
        }
        (InProgress, CallEvent::Accept { provider_call_id }) => {
            next.provider_call_id = Some(provider_call_id);
        }
        (InProgress, CallEvent::Capacity { retry_at }) => {
            next.status = Pending;
            next.attempts = next.attempts.saturating_sub(1);
            next.next_attempt_at = Some(retry_at);
            next.lease_expires_at = None;
            next.provider_call_id = None;
        }
        (InProgress, CallEvent::Retry { error, retry_at }) => {
            next.status = Pending;
            next.last_error = Some(error);
            next.next_attempt_at = Some(retry_at);
            next.lease_expires_at = None;
        }
        (InProgress, CallEvent::Complete { at, duration_sec }) => {
            next.status = Completed;
            next.ended_at = Some(at);
            next.duration_sec = duration_sec;
            next.lease_expires_at = None;
        }
        (
            InProgress,
            CallEvent::Fail {
                error,
                at,
                duration_sec,
            },
        ) => {
            next.status = Failed;
            next.last_error = Some(error);
            next.ended_at = Some(at);
            next.duration_sec = duration_sec;
            next.lease_expires_at = None;
        }
        (Pending, CallEvent::UpdatePayload(payload)) => {
            next.payload = payload;
        }
        (Pending, CallEvent::Expire { at }) => {
            next.status = Expired;
            next.ended_at = Some(at);
            next.next_attempt_at = None;
        }
        (Pending | InProgress | Completed | Failed | Expired, _) => return Err(illegal),
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallId, NewCall};
    use crate::input::ScriptId;
    use crate::phone::PhoneNumber;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn pending() -> Call {
        let new = NewCall::new(
            PhoneNumber::parse("+14155550100").unwrap(),
            ScriptId::parse("welcome").unwrap(),
        );
        Call::new(CallId::new_v7(t(0)), &new, t(0))
    }

    fn claim(at: i64) -> CallEvent {
        CallEvent::Claim {
            at: t(at),
            lease_until: t(at + 900),
        }
    }

    fn every_event() -> Vec<CallEvent> {
        vec![
            claim(1),
            CallEvent::Accept {
                provider_call_id: "p".into(),
            },
            CallEvent::Capacity { retry_at: t(5) },
            CallEvent::Retry {
                error: "provider 503".into(),
                retry_at: t(5),
            },
            CallEvent::Complete {
                at: t(5),
                duration_sec: Some(3),
            },
            CallEvent::Fail {
                error: "BUSY".into(),
                at: t(5),
                duration_sec: None,
            },
            CallEvent::UpdatePayload(pending().payload),
            CallEvent::Expire { at: t(5) },
        ]
    }

    #[test]
    fn claim_starts_an_attempt_and_takes_a_lease() {
        let call = transition(&pending(), claim(1)).unwrap();
        assert_eq!(call.status, CallStatus::InProgress);
        assert_eq!(call.attempts, 1);
        assert_eq!(call.started_at, Some(t(1)));
        assert_eq!(call.lease_expires_at, Some(t(901)));
    }

    #[test]
    fn capacity_gives_the_attempt_back() {
        let call = transition(&pending(), claim(1)).unwrap();
        let call = transition(&call, CallEvent::Capacity { retry_at: t(3) }).unwrap();
        assert_eq!(call.status, CallStatus::Pending);
        assert_eq!(call.attempts, 0);
        assert_eq!(call.next_attempt_at, Some(t(3)));
    }

    #[test]
    fn retry_keeps_the_attempt_and_sets_back_off() {
        let call = transition(&pending(), claim(1)).unwrap();
        let call = transition(
            &call,
            CallEvent::Retry {
                error: "provider 503".into(),
                retry_at: t(31),
            },
        )
        .unwrap();
        assert_eq!(call.status, CallStatus::Pending);
        assert_eq!(call.attempts, 1);
        assert_eq!(call.last_error.as_deref(), Some("provider 503"));
        assert_eq!(call.due_at(), t(31));
    }

    #[test]
    fn terminal_calls_accept_no_event() {
        let in_progress = transition(&pending(), claim(1)).unwrap();
        let terminals = [
            transition(
                &in_progress,
                CallEvent::Complete {
                    at: t(2),
                    duration_sec: None,
                },
            )
            .unwrap(),
            transition(
                &in_progress,
                CallEvent::Fail {
                    error: "x".into(),
                    at: t(2),
                    duration_sec: None,
                },
            )
            .unwrap(),
            transition(&pending(), CallEvent::Expire { at: t(2) }).unwrap(),
        ];
        for call in terminals {
            for event in every_event() {
                let name = event.name();
                assert_eq!(
                    transition(&call, event),
                    Err(TransitionError {
                        from: call.status,
                        event: name
                    })
                );
            }
        }
    }

    /// Asserts `event` is allowed on `call` exactly when `allowed` says, and
    /// that a refusal names the call's status and the event.
    fn assert_allowed(call: &Call, event: CallEvent, allowed: bool) {
        let name = event.name();
        match transition(call, event) {
            Ok(_) => assert!(allowed, "{name} was allowed on a {} call", call.status),
            Err(refused) => {
                assert!(!allowed, "{name} was refused on a {} call", call.status);
                assert_eq!(
                    refused,
                    TransitionError {
                        from: call.status,
                        event: name
                    }
                );
            }
        }
    }

    #[test]
    fn pending_calls_only_claim_update_or_expire() {
        for event in every_event() {
            let allowed = matches!(
                event,
                CallEvent::Claim { .. } | CallEvent::UpdatePayload(_) | CallEvent::Expire { .. }
            );
            assert_allowed(&pending(), event, allowed);
        }
    }

    #[test]
    fn in_progress_calls_cannot_be_claimed_updated_or_expired() {
        let call = transition(&pending(), claim(1)).unwrap();
        for event in every_event() {
            let allowed = !matches!(
                event,
                CallEvent::Claim { .. } | CallEvent::UpdatePayload(_) | CallEvent::Expire { .. }
            );
            assert_allowed(&call, event, allowed);
        }
    }

    #[test]
    fn events_have_short_names_for_messages() {
        let names: Vec<&str> = every_event().iter().map(CallEvent::name).collect();
        assert_eq!(
            names,
            [
                "claim",
                "accept",
                "capacity",
                "retry",
                "complete",
                "fail",
                "update payload",
                "expire"
            ]
        );
        let refused = transition(&pending(), CallEvent::Expire { at: t(1) })
            .and_then(|call| transition(&call, claim(2)))
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "claim is not allowed on a call that is EXPIRED"
        );
    }
}
