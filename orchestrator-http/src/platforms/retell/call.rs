//! The part of Retell's call object we read, from a webhook or from
//! `GET /v2/get-call/{call_id}` (the webhook's `call` is "the same content
//! you would receive when you fetch the call details using the get-call
//! API", <https://docs.retellai.com/features/webhook>), and how it becomes
//! our [`StatusReport`].
//!
//! Fields (`RetellAI/retell-python-sdk:src/retell/types/phone_call_response.py`):
//! `call_id` (string), `call_status` (`registered | not_connected | ongoing
//! | ended | error`), `disconnection_reason` (see [`super::outcome`]),
//! `duration_ms` (integer, "available after call ends"), `end_timestamp`
//! (milliseconds since the epoch, "available after call ends") and
//! `metadata` ("an arbitrary object ... you can later get this field from
//! the call object": where we put our call id and attempt).

use chrono::{DateTime, Utc};
use orchestrator_core::provider::parse_webhook_query;
use orchestrator_core::validate::validate_provider_call_id;
use orchestrator_core::{AttemptRef, ReportedStatus, StatusReport};
use serde::Deserialize;
use serde_json::Value;

use super::outcome::disposition;
use crate::problem::FieldError;

/// The members of Retell's call object we use; the others (transcripts,
/// recordings, costs, ...) are skipped unread.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RetellCall {
    pub(crate) call_id: Option<String>,
    pub(crate) call_status: Option<String>,
    pub(crate) disconnection_reason: Option<String>,
    pub(crate) duration_ms: Option<u64>,
    pub(crate) end_timestamp: Option<i64>,
    pub(crate) metadata: Option<Value>,
}

/// The `metadata` member names under which we send our call id and attempt.
pub(crate) const METADATA_CALL_ID: &str = "callId";
/// See [`METADATA_CALL_ID`].
pub(crate) const METADATA_ATTEMPT: &str = "attempt";

/// Where a call stands at Retell, by `call_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `registered` or `ongoing`.
    Live,
    /// `ended`, `not_connected` or `error`.
    Ended,
}

impl RetellCall {
    /// The stage `call_status` names; `None` for an absent or unknown value.
    pub(crate) fn stage(&self) -> Option<Stage> {
        match self.call_status.as_deref()? {
            "registered" | "ongoing" => Some(Stage::Live),
            "ended" | "not_connected" | "error" => Some(Stage::Ended),
            _ => None,
        }
    }

    /// The report of an ended call. `prefix` names the object in field
    /// errors (`"call."` in a webhook).
    ///
    /// The disposition comes from `disconnection_reason`, which also
    /// becomes the report's reason (`lastError`); a call without one is
    /// `FAILED` with reason `"retell call_status <status>"`, for the same
    /// reasons as an unknown value (see [`super::outcome`]).
    pub(crate) fn report(&self, prefix: &str) -> Result<StatusReport, Vec<FieldError>> {
        let mut errors = Vec::new();
        let provider_call_id = match self.call_id.as_deref() {
            None => {
                errors.push(FieldError::new(format!("{prefix}call_id"), "is required"));
                None
            }
            Some(id) => match validate_provider_call_id(id) {
                Ok(()) => Some(id.to_owned()),
                Err(invalid) => {
                    errors.push(FieldError::new(format!("{prefix}call_id"), invalid.message));
                    None
                }
            },
        };
        let completed_at = match self.end_timestamp {
            None => None,
            Some(ms) => {
                let at = DateTime::<Utc>::from_timestamp_millis(ms);
                if at.is_none() {
                    errors.push(FieldError::new(
                        format!("{prefix}end_timestamp"),
                        "is not a time in milliseconds since the epoch",
                    ));
                }
                at
            }
        };
        let (status, reason) = match self.disconnection_reason.as_deref() {
            Some(reason) => (disposition(reason), reason.to_owned()),
            None => (
                ReportedStatus::Failed,
                format!(
                    "retell call_status {}",
                    self.call_status.as_deref().unwrap_or("unknown")
                ),
            ),
        };
        // Rounded to the nearest second; a call of more than 136 years is cut.
        let duration_sec = self
            .duration_ms
            .map(|ms| u32::try_from(ms.saturating_add(500) / 1000).unwrap_or(u32::MAX));
        match provider_call_id {
            Some(provider_call_id) if errors.is_empty() => Ok(StatusReport {
                provider_call_id,
                status,
                duration_sec,
                completed_at,
                reason: Some(reason),
            }),
            _ => Err(errors),
        }
    }

    /// Our call id and attempt, from the `metadata` we sent with the dial and
    /// Retell echoes back. `None` when the metadata does not carry them (a
    /// call placed by something else on the same Retell account); an error
    /// naming the member when it carries them with values we never write.
    pub(crate) fn attempt_hint(&self, prefix: &str) -> Result<Option<AttemptRef>, Vec<FieldError>> {
        let Some(Value::Object(metadata)) = &self.metadata else {
            return Ok(None);
        };
        let (call_id, attempt) = (
            metadata.get(METADATA_CALL_ID),
            metadata.get(METADATA_ATTEMPT),
        );
        if call_id.is_none() && attempt.is_none() {
            return Ok(None);
        }
        let call_id_text = call_id.and_then(Value::as_str);
        let attempt_number = attempt.and_then(Value::as_u64);
        let parsed = call_id_text
            .zip(attempt_number)
            .and_then(|(id, n)| parse_webhook_query(id, &n.to_string()));
        match parsed {
            Some(attempt) => Ok(Some(attempt)),
            None => {
                let mut errors = Vec::new();
                if call_id_text.is_none_or(|id| id.parse::<orchestrator_core::CallId>().is_err()) {
                    errors.push(FieldError::new(
                        format!("{prefix}metadata.{METADATA_CALL_ID}"),
                        "must be the call id (a UUID) we sent",
                    ));
                }
                if attempt_number.is_none_or(|n| n == 0 || n > u64::from(u32::MAX)) {
                    errors.push(FieldError::new(
                        format!("{prefix}metadata.{METADATA_ATTEMPT}"),
                        "must be the attempt number (at least 1) we sent",
                    ));
                }
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn call(value: Value) -> RetellCall {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_ended_call_reports_its_reason_duration_and_end() {
        let report = call(json!({
            "call_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "call_status": "ended",
            "disconnection_reason": "dial_busy",
            "duration_ms": 10_499,
            "end_timestamp": 1_703_302_428_855_i64,
            "transcript": "ignored",
        }))
        .report("call.")
        .unwrap();
        assert_eq!(
            report,
            StatusReport {
                provider_call_id: "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6".into(),
                status: ReportedStatus::Busy,
                duration_sec: Some(10),
                completed_at: Some(
                    Utc.timestamp_millis_opt(1_703_302_428_855)
                        .single()
                        .unwrap()
                ),
                reason: Some("dial_busy".into()),
            }
        );
    }

    #[test]
    fn a_call_without_a_reason_fails_naming_its_status() {
        let report = call(json!({"call_id": "c1", "call_status": "error"}))
            .report("")
            .unwrap();
        assert_eq!(report.status, ReportedStatus::Failed);
        assert_eq!(report.reason.as_deref(), Some("retell call_status error"));
    }

    #[test]
    fn a_report_needs_a_call_id_and_a_plausible_end() {
        let errors = call(json!({"end_timestamp": i64::MAX}))
            .report("call.")
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["call.call_id", "call.end_timestamp"]);
    }

    #[test]
    fn our_metadata_names_the_attempt() {
        let id = "0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d";
        let hint = call(json!({"metadata": {"callId": id, "attempt": 2}}))
            .attempt_hint("call.")
            .unwrap()
            .unwrap();
        assert_eq!((hint.call_id.to_string().as_str(), hint.attempt), (id, 2));
        // Someone else's metadata is no hint, and no error.
        for other in [
            json!({}),
            json!({"metadata": {"crm": 7}}),
            json!({"metadata": "x"}),
        ] {
            assert_eq!(call(other).attempt_hint("call.").unwrap(), None);
        }
        let errors = call(json!({"metadata": {"callId": "nope", "attempt": 0}}))
            .attempt_hint("call.")
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["call.metadata.callId", "call.metadata.attempt"]);
    }
}
