//! Retell's outcome vocabulary, `disconnection_reason`, mapped onto our
//! dispositions ([`ReportedStatus`]): one table, one function.
//!
//! Sources: the `disconnection_reason` enum of the call object
//! (`RetellAI/retell-python-sdk:src/retell/types/phone_call_response.py`,
//! release 5.60.0) and the meaning of each value
//! (<https://docs.retellai.com/reliability/debug-call-disconnect>, which also
//! gives the `call_status` each reason comes with: `ended`, `not_connected`
//! or `error`). `machine_detected` and `error_inbound_webhook` are from older
//! versions of that page; they are kept so that old accounts map too.
//!
//! | `disconnection_reason` | disposition | why |
//! |---|---|---|
//! | `user_hangup`, `agent_hangup`, `call_transfer`, `inactivity`, `max_duration_reached`, `transfer_bridged`, `transfer_cancelled`, `call_take_over` | `COMPLETED` | the callee answered and the conversation took place; how it ended is the script's business |
//! | `dial_busy` | `BUSY` | "the number dialed is busy" |
//! | `dial_no_answer`, `user_declined` | `NO_ANSWER` | nobody took the call; a declined call is no contact, re-dialled (or not) as no answer is |
//! | `voicemail_reached`, `ivr_reached`, `machine_detected` | `VOICEMAIL` | a machine answered, no person |
//! | `invalid_destination` | `BAD_NUMBER` | "the number dialed is invalid" |
//! | `concurrency_limit_reached`, `no_concurrency_fallback` | `CAPACITY` | Retell had no free slot and never dialled: re-dialled later, the attempt not counted |
//! | `no_valid_payment`, `telephony_provider_permission_denied`, `scam_detected`, `marked_as_spam` | `ACCOUNT_ERROR` | our account, our SIP credentials, our agent or our caller id are at fault: every further dial fails the same way, so the call fails and dialling pauses |
//! | `dial_failed`, `telephony_provider_unavailable`, `sip_routing_error`, `registered_call_timeout`, `error_user_not_joined`, `error_*` (LLM websocket, no audio, ASR, Retell, unknown, legacy `error_twilio`, `error_inbound_webhook`) | `TRANSIENT` | a fault of the platform or the carrier: retried with back-off, bounded by `MAX_ATTEMPTS` |
//! | `manual_stopped` | `FAILED` | we stopped it (cancel): the engine makes a call whose cancel was requested `CANCELED` |
//! | anything else, or none | `FAILED` | see below |
//!
//! Decisions worth stating:
//!
//! - `dial_failed` is "dialing failed with no or unknown SIP error code"; the
//!   page says it can also mean the callee number does not exist or our
//!   number is blocked as spam. With no way to tell, it is retried, and the
//!   retry policy bounds the cost.
//! - `marked_as_spam` links to Retell's "Spam Likely" page, which is about
//!   the caller id (our number) being flagged by carriers: a fault of our
//!   set-up that no retry fixes and that every dial makes worse.
//! - `sip_routing_error` (too many hops or a loop) may be a trunk
//!   misconfiguration as well as a passing carrier fault; it is retried, so
//!   a persistent one costs at most `MAX_ATTEMPTS` dials per call.
//! - An unknown value (Retell adds reasons over time) or a missing one
//!   settles the call `FAILED` with the value as `lastError`: never a second
//!   call to a person who may have been reached, never a failure hidden as a
//!   success, and the reason is there for an operator to read.

use orchestrator_core::ReportedStatus;

/// The disposition of a Retell call that ended with `disconnection_reason`
/// (see the module table). Unknown reasons are [`ReportedStatus::Failed`].
#[must_use]
pub fn disposition(disconnection_reason: &str) -> ReportedStatus {
    match disconnection_reason {
        "user_hangup"
        | "agent_hangup"
        | "call_transfer"
        | "inactivity"
        | "max_duration_reached"
        | "transfer_bridged"
        | "transfer_cancelled"
        | "call_take_over" => ReportedStatus::Completed,
        "dial_busy" => ReportedStatus::Busy,
        "dial_no_answer" | "user_declined" => ReportedStatus::NoAnswer,
        "voicemail_reached" | "ivr_reached" | "machine_detected" => ReportedStatus::Voicemail,
        "invalid_destination" => ReportedStatus::BadNumber,
        "concurrency_limit_reached" | "no_concurrency_fallback" => ReportedStatus::Capacity,
        "no_valid_payment"
        | "telephony_provider_permission_denied"
        | "scam_detected"
        | "marked_as_spam" => ReportedStatus::AccountError,
        "dial_failed"
        | "telephony_provider_unavailable"
        | "sip_routing_error"
        | "registered_call_timeout" => ReportedStatus::Transient,
        error if error.starts_with("error_") => ReportedStatus::Transient,
        _ => ReportedStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test per row of the table, each naming every value of its row.
    fn assert_row(reasons: &[&str], expected: ReportedStatus) {
        for reason in reasons {
            assert_eq!(disposition(reason), expected, "{reason}");
        }
    }

    #[test]
    fn a_conversation_that_took_place_is_completed() {
        assert_row(
            &[
                "user_hangup",
                "agent_hangup",
                "call_transfer",
                "inactivity",
                "max_duration_reached",
                "transfer_bridged",
                "transfer_cancelled",
                "call_take_over",
            ],
            ReportedStatus::Completed,
        );
    }

    #[test]
    fn a_busy_line_is_busy() {
        assert_row(&["dial_busy"], ReportedStatus::Busy);
    }

    #[test]
    fn no_answer_and_a_declined_call_are_no_answer() {
        assert_row(
            &["dial_no_answer", "user_declined"],
            ReportedStatus::NoAnswer,
        );
    }

    #[test]
    fn a_machine_answering_is_voicemail() {
        assert_row(
            &["voicemail_reached", "ivr_reached", "machine_detected"],
            ReportedStatus::Voicemail,
        );
    }

    #[test]
    fn an_invalid_destination_is_a_bad_number() {
        assert_row(&["invalid_destination"], ReportedStatus::BadNumber);
    }

    #[test]
    fn no_free_slot_at_retell_is_capacity() {
        assert_row(
            &["concurrency_limit_reached", "no_concurrency_fallback"],
            ReportedStatus::Capacity,
        );
    }

    #[test]
    fn payment_credentials_scam_and_spam_flags_are_account_errors() {
        assert_row(
            &[
                "no_valid_payment",
                "telephony_provider_permission_denied",
                "scam_detected",
                "marked_as_spam",
            ],
            ReportedStatus::AccountError,
        );
    }

    #[test]
    fn platform_and_carrier_faults_are_transient() {
        assert_row(
            &[
                "dial_failed",
                "telephony_provider_unavailable",
                "sip_routing_error",
                "registered_call_timeout",
                "error_user_not_joined",
                "error_llm_websocket_open",
                "error_llm_websocket_lost_connection",
                "error_llm_websocket_runtime",
                "error_llm_websocket_corrupt_payload",
                "error_no_audio_received",
                "error_asr",
                "error_retell",
                "error_unknown",
                "error_twilio",
                "error_inbound_webhook",
            ],
            ReportedStatus::Transient,
        );
    }

    #[test]
    fn our_own_stop_is_failed_for_the_engine_to_cancel() {
        assert_row(&["manual_stopped"], ReportedStatus::Failed);
    }

    #[test]
    fn unknown_reasons_fail_without_a_second_call() {
        assert_row(
            &["", "a_reason_from_the_future", "USER_HANGUP", "errors"],
            ReportedStatus::Failed,
        );
    }

    /// Every value of the SDK's enum (release 5.60.0) has a row of its own:
    /// none falls through to the unknown default.
    #[test]
    fn every_documented_reason_is_in_the_table() {
        let documented = [
            "user_hangup",
            "agent_hangup",
            "call_transfer",
            "voicemail_reached",
            "ivr_reached",
            "inactivity",
            "max_duration_reached",
            "concurrency_limit_reached",
            "no_concurrency_fallback",
            "no_valid_payment",
            "scam_detected",
            "dial_busy",
            "dial_failed",
            "dial_no_answer",
            "invalid_destination",
            "telephony_provider_permission_denied",
            "telephony_provider_unavailable",
            "sip_routing_error",
            "marked_as_spam",
            "user_declined",
            "error_llm_websocket_open",
            "error_llm_websocket_lost_connection",
            "error_llm_websocket_runtime",
            "error_llm_websocket_corrupt_payload",
            "error_no_audio_received",
            "error_asr",
            "error_retell",
            "error_unknown",
            "error_user_not_joined",
            "registered_call_timeout",
            "transfer_bridged",
            "transfer_cancelled",
            "call_take_over",
        ];
        for reason in documented {
            assert_ne!(disposition(reason), ReportedStatus::Failed, "{reason}");
        }
    }
}
