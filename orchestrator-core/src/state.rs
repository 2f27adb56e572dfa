//! The call state machine: a pure function from (call, event) to the next call.
//!
//! ```text
//! PENDING ──Claim──▶ IN_PROGRESS ──Complete──▶ COMPLETED
//!  │ │ ▲                 │ ├──────Fail──────▶ FAILED
//!  │ │ └──Retry/Capacity─┘ ├─(Accept: records the provider id)
//!  │ │                     └─(Cancel: marks it; it ends CANCELED unless COMPLETED)
//!  │ └──Expire──▶ EXPIRED
//!  └────Cancel──▶ CANCELED
//! ```
//! Every store applies changes through [`transition`] (the memory store) or an
//! equivalent conditional statement (PostgreSQL), and the conformance suite
//! checks that both agree.

use chrono::{DateTime, Utc};

use crate::call::{Call, CallPatch, CallStatus};

/// The `lastError` of a call canceled without a reason.
pub const DEFAULT_CANCEL_REASON: &str = "canceled";

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
        /// When the answer came.
        at: DateTime<Utc>,
        /// Do not re-dial before this instant (`Retry-After`).
        retry_at: DateTime<Utc>,
    },
    /// A retryable failure with attempts left: `IN_PROGRESS → PENDING` with back-off.
    Retry {
        /// Why the attempt failed.
        error: String,
        /// When it failed.
        at: DateTime<Utc>,
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
    /// The client changed the payload or the schedule; only while `PENDING`.
    /// The rules between fields are checked by the caller
    /// ([`crate::validate::validate_schedule`]).
    Update(CallPatch),
    /// Not dialled by its `expiresAt`: `PENDING → EXPIRED`.
    Expire {
        /// When it expired.
        at: DateTime<Utc>,
    },
    /// A client canceled the call. `PENDING → CANCELED` at once; an
    /// `IN_PROGRESS` call is marked and stays in progress until its attempt
    /// is settled, which then ends it `CANCELED` unless it `Complete`s.
    Cancel {
        /// When it was asked.
        at: DateTime<Utc>,
        /// Becomes `lastError` ([`DEFAULT_CANCEL_REASON`] when the client gave none).
        reason: String,
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
            CallEvent::Update(_) => "update",
            CallEvent::Expire { .. } => "expire",
            CallEvent::Cancel { .. } => "cancel",
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
/// A call with a cancel request (`cancelRequestedAt`) ends `CANCELED`
/// however its attempt ends, unless the provider reports it completed: it is
/// never re-dialled. A second cancel request keeps the first one's time and
/// reason.
///
/// # Errors
/// [`TransitionError`] when the event does not apply to the call's status; in
/// particular every event on a terminal call.
pub fn transition(call: &Call, event: CallEvent) -> Result<Call, TransitionError> {
    use CallStatus::{Canceled, Completed, Expired, Failed, InProgress, Pending};
    let illegal = TransitionError {
        from: call.status,
        event: event.name(),
    };
    let mut next = call.clone();
    let cancel_requested = call.cancel_requested_at.is_some();
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
        (InProgress, CallEvent::Capacity { at, .. }) if cancel_requested => {
            // The dial never started: nothing to hang up, nothing to count.
            next.attempts = next.attempts.saturating_sub(1);
            next.provider_call_id = None;
            end_canceled(&mut next, at);
        }
        (InProgress, CallEvent::Retry { at, .. } | CallEvent::Fail { at, .. })
            if cancel_requested =>
        {
            end_canceled(&mut next, at);
        }
        (InProgress, CallEvent::Capacity { retry_at, .. }) => {
            next.status = Pending;
            next.attempts = next.attempts.saturating_sub(1);
            next.next_attempt_at = Some(retry_at);
            next.lease_expires_at = None;
            next.provider_call_id = None;
        }
        (
            InProgress,
            CallEvent::Retry {
                error, retry_at, ..
            },
        ) => {
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
        (Pending, CallEvent::Update(patch)) => {
            next = patch.apply_to(call);
        }
        (Pending, CallEvent::Expire { at }) => {
            next.status = Expired;
            next.ended_at = Some(at);
            next.next_attempt_at = None;
        }
        (Pending, CallEvent::Cancel { at, reason }) => {
            next.status = Canceled;
            next.last_error = Some(reason);
            next.ended_at = Some(at);
            next.next_attempt_at = None;
        }
        (InProgress, CallEvent::Cancel { at, reason }) => {
            if !cancel_requested {
                next.cancel_requested_at = Some(at);
                next.cancel_reason = Some(reason);
            }
        }
        (Pending | InProgress | Completed | Failed | Expired | Canceled, _) => return Err(illegal),
    }
    Ok(next)
}

/// Ends a live call whose cancel was requested: `CANCELED`, with the
/// request's reason as `lastError`.
fn end_canceled(call: &mut Call, at: DateTime<Utc>) {
    call.status = CallStatus::Canceled;
    call.last_error = Some(
        call.cancel_reason
            .clone()
            .unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_owned()),
    );
    call.ended_at = Some(at);
    call.lease_expires_at = None;
    call.next_attempt_at = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallPatch;
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
            CallEvent::Capacity {
                at: t(5),
                retry_at: t(5),
            },
            CallEvent::Retry {
                error: "provider 503".into(),
                at: t(5),
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
            CallEvent::Update(CallPatch::default()),
            CallEvent::Cancel {
                at: t(5),
                reason: DEFAULT_CANCEL_REASON.into(),
            },
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
        let call = transition(
            &call,
            CallEvent::Capacity {
                at: t(2),
                retry_at: t(3),
            },
        )
        .unwrap();
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
                at: t(2),
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
                CallEvent::Claim { .. }
                    | CallEvent::Update(_)
                    | CallEvent::Expire { .. }
                    | CallEvent::Cancel { .. }
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
                CallEvent::Claim { .. } | CallEvent::Update(_) | CallEvent::Expire { .. }
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
                "claim", "accept", "capacity", "retry", "complete", "fail", "update", "cancel",
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

    #[test]
    fn cancel_ends_a_pending_call_at_once() {
        let call = transition(
            &pending(),
            CallEvent::Cancel {
                at: t(2),
                reason: "do not call".into(),
            },
        )
        .unwrap();
        assert_eq!(call.status, CallStatus::Canceled);
        assert_eq!(call.last_error.as_deref(), Some("do not call"));
        assert_eq!(call.ended_at, Some(t(2)));
        assert!(call.status.is_terminal());
    }

    fn cancel_requested() -> Call {
        let call = transition(&pending(), claim(1)).unwrap();
        let call = transition(
            &call,
            CallEvent::Cancel {
                at: t(2),
                reason: "withdrawn".into(),
            },
        )
        .unwrap();
        assert_eq!(call.status, CallStatus::InProgress);
        assert_eq!(call.cancel_requested_at, Some(t(2)));
        // A second request keeps the first.
        let again = transition(
            &call,
            CallEvent::Cancel {
                at: t(3),
                reason: "other".into(),
            },
        )
        .unwrap();
        assert_eq!(again, call);
        call
    }

    #[test]
    fn a_canceled_live_call_ends_canceled_unless_completed() {
        let call = cancel_requested();
        let completed = transition(
            &call,
            CallEvent::Complete {
                at: t(9),
                duration_sec: Some(4),
            },
        )
        .unwrap();
        assert_eq!(completed.status, CallStatus::Completed);
        let endings = [
            CallEvent::Fail {
                error: "BUSY".into(),
                at: t(9),
                duration_sec: None,
            },
            CallEvent::Retry {
                error: "webhook timeout".into(),
                at: t(9),
                retry_at: t(30),
            },
            CallEvent::Capacity {
                at: t(9),
                retry_at: t(30),
            },
        ];
        for event in endings {
            let ended = transition(&call, event).unwrap();
            assert_eq!(ended.status, CallStatus::Canceled);
            assert_eq!(ended.last_error.as_deref(), Some("withdrawn"));
            assert_eq!(ended.ended_at, Some(t(9)));
            assert_eq!(ended.lease_expires_at, None);
            assert_eq!(ended.next_attempt_at, None);
        }
    }

    #[test]
    fn update_replaces_the_payload_and_the_schedule() {
        let patch = CallPatch {
            script_id: Some(ScriptId::parse("other").unwrap()),
            not_before: Some(Some(t(60))),
            expires_at: Some(None),
            ..CallPatch::default()
        };
        let mut call = pending();
        call.expires_at = Some(t(100));
        let next = transition(&call, CallEvent::Update(patch)).unwrap();
        assert_eq!(next.payload.script_id, "other");
        assert_eq!(next.not_before, Some(t(60)));
        assert_eq!(next.expires_at, None);
        assert_eq!(next.due_at(), t(60));
    }
}
