//! Vapi's `endedReason` mapped onto our dispositions ([`ReportedStatus`]).
//!
//! Sources: the `endedReason` enum of the `Call` schema in Vapi's API
//! reference (`VapiAI/docs:fern/apis/api/openapi.json`, 627 values when
//! this table was written) and their meanings in
//! <https://docs.vapi.ai/calls/call-ended-reason>
//! (`VapiAI/docs:fern/calls/call-ended-reason.mdx`) and
//! <https://docs.vapi.ai/calls/troubleshoot-call-errors>.
//!
//! The vocabulary is large and grows with every speech, model and
//! telephony vendor Vapi adds, so the table is exact values first, then
//! prefix rules for the families (`call.in-progress.error-vapifault-*`,
//! `pipeline-error-*`, ...). The first match wins. A value no rule knows
//! is [`UNKNOWN`]: see there why.
//!
//! Vapi's reason string itself is kept as the report's `reason`, so it
//! becomes the call's `lastError`.

use orchestrator_core::ReportedStatus;

use ReportedStatus::{
    AccountError, BadNumber, Busy, Capacity, Completed, Failed, NoAnswer, Transient, Voicemail,
};

/// What a reason no rule knows maps to: `FAILED`, no retry, with Vapi's
/// reason as `lastError` (and a warning in the log).
///
/// Not `TRANSIENT`: a new value may well be a new way for a conversation to
/// end normally (Vapi's own events page shows `"hangup"`, which is not in
/// the enum), and retrying it would call the person a second time. A
/// failed call can be re-queued with `POST /calls/{id}/retry` once a human
/// has read the reason; an unwanted second call cannot be undone.
pub const UNKNOWN: ReportedStatus = Failed;

/// Exact `endedReason` values, with the disposition each maps to.
/// The meanings quoted are from `fern/calls/call-ended-reason.mdx`.
pub const EXACT: &[(&str, ReportedStatus)] = &[
    // "Call worked normally, then ended": the conversation took place.
    ("customer-ended-call", Completed),
    ("assistant-ended-call", Completed),
    ("assistant-ended-call-after-message-spoken", Completed),
    ("assistant-ended-call-with-hangup-task", Completed),
    ("assistant-said-end-call-phrase", Completed),
    ("assistant-forwarded-call", Completed),
    ("exceeded-max-duration", Completed),
    ("silence-timed-out", Completed),
    ("customer-ended-call-before-warm-transfer", Completed),
    ("customer-ended-call-after-warm-transfer-attempt", Completed),
    ("customer-ended-call-during-transfer", Completed),
    ("call.in-progress.twilio-completed-call", Completed),
    ("call.in-progress.sip-completed-call", Completed),
    ("vonage-completed", Completed),
    // Hooks the assistant was configured with ended the call as designed.
    ("call.ringing.hook-executed-say", Completed),
    ("call.ringing.hook-executed-transfer", Completed),
    ("call.ending.hook-executed-say", Completed),
    ("call.ending.hook-executed-transfer", Completed),
    // No contact: the re-dial policy decides.
    ("customer-busy", Busy),
    ("customer-did-not-answer", NoAnswer),
    ("voicemail", Voicemail),
    // "Twilio reported the customer dialed an invalid number."
    ("twilio-reported-customer-misdialed", BadNumber),
    // "International calling is not supported on this Vapi number": this
    // number cannot be called from our set-up, while domestic numbers
    // still can, so it fails the call without pausing all dialling.
    ("call.start.error-vapi-number-international", BadNumber),
    // Capacity: the call never started; re-queued without using an attempt.
    (
        "call.start.error-subscription-concurrency-limit-reached",
        Capacity,
    ),
    (
        "call.start.error-vapi-number-outbound-daily-limit",
        Capacity,
    ),
    // Account and billing: every further call would fail the same way.
    ("call.start.error-subscription-frozen", AccountError),
    (
        "call.start.error-subscription-insufficient-credits",
        AccountError,
    ),
    (
        "call.start.error-subscription-wallet-does-not-exist",
        AccountError,
    ),
    ("call.start.error-subscription-upgrade-failed", AccountError),
    ("call.start.error-fraud-check-failed", AccountError),
    (
        "call.start.error-enterprise-feature-not-available-recording-consent",
        AccountError,
    ),
    // Resource resolution: our assistant, phone number or server set-up.
    (
        "call-start-error-neither-assistant-nor-server-set",
        AccountError,
    ),
    ("call.start.error-get-assistant", AccountError),
    ("call.start.error-get-phone-number", AccountError),
    ("call.start.error-get-resources-validation", AccountError),
    ("call.start.error-get-transport", AccountError),
    (
        "call.start.assistant-version-error-validation",
        AccountError,
    ),
    ("assistant-not-found", AccountError),
    ("assistant-not-valid", AccountError),
    (
        "phone-call-provider-bypass-enabled-but-no-call-received",
        AccountError,
    ),
    // Infrastructure, ours or a carrier's: retried with back-off.
    // `worker-shutdown`: "The call should be retried automatically."
    ("worker-shutdown", Transient),
    ("phone-call-provider-closed-websocket", Transient),
    ("twilio-failed-to-connect-call", Transient),
    ("vonage-failed-to-connect-call", Transient),
    ("vonage-disconnected", Transient),
    ("assistant-join-timed-out", Transient),
    ("call.start.error-get-customer", Transient),
    (
        "call.in-progress.error-assistant-did-not-receive-customer-audio",
        Transient,
    ),
    (
        "call.in-progress.error-sip-outbound-call-failed-to-connect",
        Transient,
    ),
    // Ended by us or deleted: FAILED (the engine makes a call it was asked
    // to cancel CANCELED).
    ("manually-canceled", Failed),
    ("scheduled-call-deleted", Failed),
    ("call-deleted", Failed),
    // Reached, then a transfer or forward failed: the person was spoken
    // to, so no re-dial; the reason says what to fix.
    ("call.in-progress.error-transfer-failed", Failed),
    ("call.forwarding.operator-busy", Failed),
    ("call.forwarding.no-answer", Failed),
    ("vonage-rejected", Failed),
    // Web and inbound calls; never the outcome of a call we place.
    ("customer-did-not-give-microphone-permission", Failed),
    (
        "call.in-progress.error-sip-inbound-call-failed-to-connect",
        Failed,
    ),
    (
        "call.ringing.error-sip-inbound-call-failed-to-connect",
        Failed,
    ),
    (
        "call.ringing.sip-inbound-caller-hungup-before-call-connect",
        Failed,
    ),
];

/// How a family of reasons sharing a prefix maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Every reason with the prefix maps to this disposition.
    Always(ReportedStatus),
    /// A speech, model or voice vendor failed inside Vapi's pipeline: our
    /// credentials or quota at that vendor (BYOK) when the reason carries
    /// one of [`CREDENTIAL_MARKERS`], which is an account error; otherwise
    /// (5xx, time-outs, "failed") a transient fault.
    Pipeline,
}

/// Prefix rules, tried in order after [`EXACT`].
pub const PREFIXES: &[(&str, Rule)] = &[
    // "Vapi infrastructure or platform credential failure. You are
    // typically not charged for these calls."
    ("call.in-progress.error-vapifault-", Rule::Always(Transient)),
    ("call.start.error-vapifault-", Rule::Always(Transient)),
    // "A third-party provider (OpenAI, Deepgram, etc.) returned a server
    // error. Outside Vapi's control." Also SIP 403/407/408/480/503.
    (
        "call.in-progress.error-providerfault-",
        Rule::Always(Transient),
    ),
    // "Legacy error format. When using your own provider keys (BYOK), these
    // typically indicate credential or quota issues on your account with
    // that provider."
    ("pipeline-error-", Rule::Pipeline),
    ("call.in-progress.error-pipeline-", Rule::Pipeline),
    (
        "pipeline-no-available-llm-model",
        Rule::Always(AccountError),
    ),
    // Warm-transfer failures after the person was reached.
    (
        "call.in-progress.error-warm-transfer-",
        Rule::Always(Failed),
    ),
    // "Assistant resolution (via server URL)": our own server's answers.
    ("assistant-request-", Rule::Always(AccountError)),
    // "These occur before the call connects, during resource setup."
    ("call.start.error-", Rule::Always(AccountError)),
    // Any other in-progress error: a fault during the call.
    ("call.in-progress.error-", Rule::Always(Transient)),
];

/// Substrings of a pipeline reason that say our credentials, plan or
/// configuration at the vendor are at fault (status codes 400, 401, 402,
/// 403 and 404, and the vendors' own words for it).
pub const CREDENTIAL_MARKERS: &[&str] = &[
    "-400-",
    "-401-",
    "-402-",
    "-403-",
    "-404-",
    "unauthorized",
    "api-key",
    "auth-failed",
    "invalid-credentials",
    "exceeded-quota",
    "quota-exceeded",
    "out-of-credits",
    "requested-payment",
    "requested-upgrade",
    "invalid-config",
    "voice-not-found",
    "invalid-voice",
    "blocked-",
    "disabled-by-owner",
    "not-allowed",
    "no-available-llm-model",
];

/// The disposition of `ended_reason` by the table, or `None` for a value
/// no rule knows.
#[must_use]
pub fn classify(ended_reason: &str) -> Option<ReportedStatus> {
    if let Some((_, status)) = EXACT.iter().find(|(reason, _)| *reason == ended_reason) {
        return Some(*status);
    }
    let (_, rule) = PREFIXES
        .iter()
        .find(|(prefix, _)| ended_reason.starts_with(prefix))?;
    Some(match rule {
        Rule::Always(status) => *status,
        Rule::Pipeline => {
            if CREDENTIAL_MARKERS
                .iter()
                .any(|marker| ended_reason.contains(marker))
            {
                AccountError
            } else {
                Transient
            }
        }
    })
}

/// The disposition of `ended_reason`: [`classify`], or [`UNKNOWN`] (logged
/// as a warning) for a value no rule knows.
#[must_use]
pub fn disposition(ended_reason: &str) -> ReportedStatus {
    classify(ended_reason).unwrap_or_else(|| {
        tracing::warn!(
            ended_reason,
            "unknown Vapi endedReason: the call fails without retry; POST /calls/{{id}}/retry re-queues it"
        );
        UNKNOWN
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPLETED_ROWS: &[&str] = &[
        "customer-ended-call",
        "assistant-ended-call",
        "assistant-ended-call-after-message-spoken",
        "assistant-ended-call-with-hangup-task",
        "assistant-said-end-call-phrase",
        "assistant-forwarded-call",
        "exceeded-max-duration",
        "silence-timed-out",
        "customer-ended-call-before-warm-transfer",
        "customer-ended-call-after-warm-transfer-attempt",
        "customer-ended-call-during-transfer",
        "call.in-progress.twilio-completed-call",
        "call.in-progress.sip-completed-call",
        "vonage-completed",
        "call.ringing.hook-executed-say",
        "call.ringing.hook-executed-transfer",
        "call.ending.hook-executed-say",
        "call.ending.hook-executed-transfer",
    ];
    const BUSY_ROWS: &[&str] = &["customer-busy"];
    const NO_ANSWER_ROWS: &[&str] = &["customer-did-not-answer"];
    const VOICEMAIL_ROWS: &[&str] = &["voicemail"];
    const BAD_NUMBER_ROWS: &[&str] = &[
        "twilio-reported-customer-misdialed",
        "call.start.error-vapi-number-international",
    ];
    const CAPACITY_ROWS: &[&str] = &[
        "call.start.error-subscription-concurrency-limit-reached",
        "call.start.error-vapi-number-outbound-daily-limit",
    ];
    const ACCOUNT_ROWS: &[&str] = &[
        "call.start.error-subscription-frozen",
        "call.start.error-subscription-insufficient-credits",
        "call.start.error-subscription-wallet-does-not-exist",
        "call.start.error-subscription-upgrade-failed",
        "call.start.error-fraud-check-failed",
        "call.start.error-enterprise-feature-not-available-recording-consent",
        "call-start-error-neither-assistant-nor-server-set",
        "call.start.error-get-assistant",
        "call.start.error-get-phone-number",
        "call.start.error-get-resources-validation",
        "call.start.error-get-transport",
        "call.start.assistant-version-error-validation",
        "assistant-not-found",
        "assistant-not-valid",
        "phone-call-provider-bypass-enabled-but-no-call-received",
        // Prefix rules.
        "assistant-request-failed",
        "assistant-request-returned-invalid-assistant",
        "call.start.error-some-future-setup-error",
        "pipeline-no-available-llm-model",
    ];
    const TRANSIENT_ROWS: &[&str] = &[
        "worker-shutdown",
        "phone-call-provider-closed-websocket",
        "twilio-failed-to-connect-call",
        "vonage-failed-to-connect-call",
        "vonage-disconnected",
        "assistant-join-timed-out",
        "call.start.error-get-customer",
        "call.in-progress.error-assistant-did-not-receive-customer-audio",
        "call.in-progress.error-sip-outbound-call-failed-to-connect",
        // Prefix rules: Vapi's and its vendors' faults, whatever the code.
        "call.in-progress.error-vapifault-worker-died",
        "call.in-progress.error-vapifault-openai-401-unauthorized",
        "call.start.error-vapifault-database-error",
        "call.start.error-vapifault-get-org",
        "call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable",
        "call.in-progress.error-providerfault-openai-503-server-overloaded-error",
        "call.in-progress.error-some-future-fault",
    ];
    const PIPELINE_ACCOUNT_ROWS: &[&str] = &[
        "pipeline-error-openai-401-unauthorized",
        "pipeline-error-openai-403-model-access-denied",
        "pipeline-error-openai-429-exceeded-quota",
        "pipeline-error-openai-400-bad-request-validation-failed",
        "pipeline-error-eleven-labs-voice-not-found",
        "pipeline-error-eleven-labs-invalid-api-key",
        "pipeline-error-eleven-labs-blocked-free-plan-and-requested-upgrade",
        "pipeline-error-deepgram-returning-401-invalid-credentials",
        "call.in-progress.error-pipeline-no-available-llm-model",
    ];
    const PIPELINE_TRANSIENT_ROWS: &[&str] = &[
        "pipeline-error-openai-500-server-error",
        "pipeline-error-openai-503-server-overloaded-error",
        "pipeline-error-openai-429-rate-limit-reached",
        "pipeline-error-openai-llm-failed",
        "pipeline-error-cartesia-socket-hang-up",
        "call.in-progress.error-pipeline-ws-model-connection-failed",
    ];
    const FAILED_ROWS: &[&str] = &[
        "manually-canceled",
        "scheduled-call-deleted",
        "call-deleted",
        "call.in-progress.error-transfer-failed",
        "call.in-progress.error-warm-transfer-max-duration",
        "call.in-progress.error-warm-transfer-assistant-cancelled",
        "call.forwarding.operator-busy",
        "call.forwarding.no-answer",
        "vonage-rejected",
        "customer-did-not-give-microphone-permission",
        "call.in-progress.error-sip-inbound-call-failed-to-connect",
        "call.ringing.error-sip-inbound-call-failed-to-connect",
        "call.ringing.sip-inbound-caller-hungup-before-call-connect",
    ];
    const TESTED: &[(&[&str], ReportedStatus)] = &[
        (COMPLETED_ROWS, Completed),
        (BUSY_ROWS, Busy),
        (NO_ANSWER_ROWS, NoAnswer),
        (VOICEMAIL_ROWS, Voicemail),
        (BAD_NUMBER_ROWS, BadNumber),
        (CAPACITY_ROWS, Capacity),
        (ACCOUNT_ROWS, AccountError),
        (TRANSIENT_ROWS, Transient),
        (PIPELINE_ACCOUNT_ROWS, AccountError),
        (PIPELINE_TRANSIENT_ROWS, Transient),
        (FAILED_ROWS, Failed),
    ];

    fn check(expected: ReportedStatus, reasons: &[&str]) {
        for reason in reasons {
            assert_eq!(classify(reason), Some(expected), "{reason}");
        }
    }

    #[test]
    fn normal_endings_complete_the_call() {
        check(Completed, COMPLETED_ROWS);
    }

    #[test]
    fn no_contact_is_busy_no_answer_or_voicemail() {
        check(Busy, BUSY_ROWS);
        check(NoAnswer, NO_ANSWER_ROWS);
        check(Voicemail, VOICEMAIL_ROWS);
    }

    #[test]
    fn misdialled_and_unreachable_international_numbers_are_bad_numbers() {
        check(BadNumber, BAD_NUMBER_ROWS);
    }

    #[test]
    fn concurrency_and_daily_limits_are_capacity() {
        check(Capacity, CAPACITY_ROWS);
    }

    #[test]
    fn billing_and_configuration_errors_are_account_errors() {
        check(AccountError, ACCOUNT_ROWS);
    }

    #[test]
    fn infrastructure_faults_are_transient() {
        check(Transient, TRANSIENT_ROWS);
    }

    #[test]
    fn pipeline_errors_are_account_errors_when_our_vendor_credentials_are_at_fault() {
        check(AccountError, PIPELINE_ACCOUNT_ROWS);
        check(Transient, PIPELINE_TRANSIENT_ROWS);
    }

    #[test]
    fn our_hang_up_deletions_and_failed_transfers_fail_without_retry() {
        check(Failed, FAILED_ROWS);
    }

    #[test]
    fn unknown_reasons_fail_without_retry() {
        assert_eq!(classify("hangup"), None);
        assert_eq!(classify(""), None);
        assert_eq!(disposition("some-reason-vapi-adds-next-year"), Failed);
        assert_eq!(UNKNOWN, Failed);
    }

    #[test]
    fn every_row_of_the_exact_table_has_a_test() {
        // Each exact row is named, with its disposition, by one of the
        // tests above: a row added without a test shows up here.
        for (reason, status) in EXACT {
            assert!(
                TESTED
                    .iter()
                    .any(|(rows, tested)| tested == status && rows.contains(reason)),
                "{reason} has no test"
            );
        }
    }

    /// Every value of the `endedReason` enum in Vapi's API reference
    /// (`VapiAI/docs:fern/apis/api/openapi.json`, schema `Call`) is known
    /// to the table: none falls to the unknown default.
    #[test]
    fn every_documented_reason_is_classified() {
        let reasons = include_str!("../../../tests/fixtures/vapi/ended-reasons.txt");
        let values: Vec<&str> = reasons
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .collect();
        assert!(values.len() > 600, "{}", values.len());
        let unknown: Vec<&&str> = values.iter().filter(|r| classify(r).is_none()).collect();
        assert!(unknown.is_empty(), "{unknown:?}");
    }
}
