//! The OpenAPI description of `POST /callbacks/retell` (see [`super::webhook`]),
//! listed in the API's document by [`crate::openapi`].

#![allow(dead_code)] // Only the schemas and the path item are used.

use serde::Deserialize;
use utoipa::ToSchema;

/// A Retell webhook: an event and the call object
/// (<https://docs.retellai.com/features/webhook-overview>). Only the members
/// listed are read; the others (transcripts, recordings, analysis) are skipped.
#[derive(Deserialize, ToSchema)]
pub(crate) struct RetellWebhookBody {
    /// `call_ended` and `call_analyzed` settle the call; any other event
    /// (`call_started`, `transcript_updated`, `transfer_*`, ...) is acknowledged and ignored.
    #[schema(example = "call_ended")]
    event: String,
    /// Retell's call object; required for the events that settle.
    call: Option<RetellCallObject>,
}

/// The members of Retell's call object that are read.
#[derive(Deserialize, ToSchema)]
pub(crate) struct RetellCallObject {
    /// Retell's id of the call, as it answered our `create-phone-call`.
    #[schema(example = "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6")]
    call_id: String,
    /// `registered`, `ongoing`, `ended`, `not_connected` or `error`.
    call_status: Option<String>,
    /// Why the call ended; mapped to the outcome by the table in the README.
    #[schema(example = "user_hangup")]
    disconnection_reason: Option<String>,
    /// How long the call lasted, in milliseconds (rounded to seconds for `durationSec`).
    #[schema(minimum = 0)]
    duration_ms: Option<u64>,
    /// When the call ended, in milliseconds since the epoch (the call's `endedAt`).
    end_timestamp: Option<i64>,
    /// What we sent with the dial, echoed: `{"callId": <our call id>, "attempt": <n>}`.
    metadata: Option<serde_json::Value>,
}

/// The answer to a Retell webhook.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct RetellWebhookAnswer {
    /// `applied`, `unchanged` or `ignored` (an event that settles nothing, or an attempt never dialled).
    outcome: String,
    /// The event, when it was ignored.
    event: Option<String>,
    /// Our id of the call, when the event settles.
    call_id: Option<orchestrator_core::CallId>,
    /// The call's status now, when the event settles.
    status: Option<orchestrator_core::CallStatus>,
}

/// Retell's webhook: how a call it placed went.
///
/// Signed by Retell with `x-retell-signature: v=<unix ms>,d=<hex HMAC-SHA256 of
/// the raw body followed by the ms>` keyed with the Retell API key; the
/// timestamp must be within 5 minutes of our clock. Bodies up to 1 MiB.
#[utoipa::path(
    post,
    path = "/callbacks/retell",
    tag = "provider",
    operation_id = "retellWebhook",
    params(("x-retell-signature" = String, Header, description = "`v=<unix ms>,d=<64 hex digits>`.")),
    request_body(content = RetellWebhookBody, content_type = "application/json",
        description = "Read as JSON whatever its `Content-Type`."),
    responses(
        (status = 200, description = "Settled, repeated, late, or an event that settles nothing: acknowledged.",
            body = RetellWebhookAnswer),
        (status = 400, description = "Not JSON, `event` or `call.call_id` missing, wrong types; `errors` names the field.",
            body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No Retell key configured, or the signature is missing, malformed, stale or wrong.",
            body = crate::problem::Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`RetellSignature realm=\"retell\"`."))),
        (status = 404, description = "Neither `call.call_id` nor the echoed metadata names a known call: Retell retries.",
            body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 1 MiB.",
            body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = crate::problem::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
pub(crate) fn retell_webhook() {}
