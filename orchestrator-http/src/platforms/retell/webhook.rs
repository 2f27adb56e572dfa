//! `POST /callbacks/retell`: Retell's webhook, signed with `x-retell-signature`.
//!
//! Body (<https://docs.retellai.com/features/webhook-overview>):
//! `{"event": "call_started" | "call_ended" | "call_analyzed" | ..., "call": {call object}}`.
//! Retell retries a delivery that gets no 2xx within 10 seconds, "up to 3
//! times"; events are sent in order but not blocking; a call that never
//! connected (`dial_failed`, `dial_no_answer`, `dial_busy`) gets no
//! `call_started` but still its `call_ended` and `call_analyzed`.
//!
//! - `call_ended` settles the attempt from the call object (see
//!   [`super::call`] and [`super::outcome`]).
//! - `call_analyzed` carries the same call object plus the analysis, and
//!   settles too: when `call_ended` was lost (three failed deliveries) it is
//!   the first terminal news, and otherwise settling again changes nothing
//!   (settlement is idempotent).
//! - Every other event (`call_started`, `transcript_updated`, `transfer_*`,
//!   and any Retell adds) answers 200 and changes nothing.
//!
//! The attempt is found by `call.call_id`, or else by the `callId` and
//! `attempt` we put in `call.metadata` at the dial.
//!
//! Order of checks: the signature first, on the raw bytes, then the JSON.
//!
//! | outcome | answer |
//! |---|---|
//! | settled, repeated or late | 200 `{"outcome", "callId", "status"}` |
//! | an event we do not settle on | 200 `{"outcome": "ignored", "event"}` |
//! | no Retell key configured, signature missing, malformed, stale or wrong | 401 |
//! | not JSON, `event` missing, wrong types, `call.call_id` missing | 400 naming the field |
//! | neither `call.call_id` nor the metadata names a known call | 404 (Retell retries) |
//! | body over [`MAX_BODY_BYTES`] | 413 |

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use hmac::{Hmac, Mac};
use orchestrator_core::WebhookDelivery;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::call::RetellCall;
use crate::extract::{parse_json, RawBody};
use crate::problem::{ApiError, FieldError};
use crate::provider::ApiKey;
use crate::signature::SignatureError;
use crate::state::AppState;
use crate::telemetry::record_call_id;

/// Largest Retell webhook body accepted, 1 MiB: a `call_ended` or
/// `call_analyzed` call object carries the whole transcript, with word
/// timings and tool calls, so the API's default 64 KiB is too little for a
/// long call.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-retell-signature";

/// How far a signature's timestamp may be from our clock, either way, in
/// milliseconds: Retell's SDKs use 5 minutes (`FIVE_MINUTES = 5 * 60 * 1000`
/// in `RetellAI/retell-python-sdk:src/retell/lib/webhook_auth.py` and
/// `RetellAI/retell-typescript-sdk:src/lib/webhook_auth.ts`).
pub const TOLERANCE_MS: u64 = 5 * 60 * 1000;

type HmacSha256 = Hmac<Sha256>;

/// The key of Retell's webhook signatures: the Retell API key
/// (`RETELL_API_KEY`). Its `Debug` output never shows it.
#[derive(Clone, Debug)]
pub struct RetellWebhookKey(ApiKey);

impl RetellWebhookKey {
    /// The key for `api_key`.
    #[must_use]
    pub fn new(api_key: ApiKey) -> Self {
        Self(api_key)
    }

    fn mac(&self, body: &[u8], timestamp_ms: u64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.0.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!());
        mac.update(body);
        mac.update(timestamp_ms.to_string().as_bytes());
        mac
    }

    /// `v=<timestamp_ms>,d=<hex HMAC-SHA256(key, body ‖ decimal timestamp_ms)>`,
    /// as Retell signs (`sign` in `webhook_auth.py`: `input_str + str(timestamp)`,
    /// no separator, lower-case hex digest).
    #[must_use]
    pub fn sign(&self, body: &[u8], timestamp_ms: u64) -> String {
        let digest = self.mac(body, timestamp_ms).finalize().into_bytes();
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("v={timestamp_ms},d={hex}")
    }

    /// Checks `x-retell-signature` over the raw `body` at `now_ms`, as
    /// `verify` in Retell's `webhook_auth.py` does: the whole header must be
    /// `v=<digits>,d=<64 hex digits>` (upper-case hex is accepted, as the
    /// TypeScript SDK does), the timestamp within [`TOLERANCE_MS`] of
    /// `now_ms` either way, and the digest of body followed by the
    /// timestamp's decimal digits (leading zeros dropped, as the SDKs parse
    /// it to a number first) equal, compared in constant time.
    ///
    /// # Errors
    /// A [`SignatureError`] naming the header.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        let value = headers
            .get(SIGNATURE_HEADER)
            .ok_or(SignatureError::MissingHeader(SIGNATURE_HEADER))?
            .to_str()
            .map_err(|_| SignatureError::MalformedHeader(SIGNATURE_HEADER))?;
        let malformed = || SignatureError::MalformedHeader(SIGNATURE_HEADER);
        let (timestamp, digest) = value
            .strip_prefix("v=")
            .and_then(|rest| rest.split_once(",d="))
            .ok_or_else(malformed)?;
        if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let digest = decode_hex(digest).ok_or_else(malformed)?;
        // Too many digits for a u64 is a time far away, not a malformed header.
        let timestamp: u64 = timestamp.parse().unwrap_or(u64::MAX);
        if now_ms.abs_diff(timestamp) > TOLERANCE_MS {
            return Err(SignatureError::StaleHeader(SIGNATURE_HEADER));
        }
        // `verify_slice` compares in constant time (the `subtle` crate underneath).
        self.mac(body, timestamp)
            .verify_slice(&digest)
            .map_err(|_| SignatureError::MismatchIn(SIGNATURE_HEADER))
    }
}

/// 64 hex digits (either case) as 32 bytes.
fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0_u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(bytes)
}

/// The webhook body; members not declared are skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a JSON object")]
struct RetellWebhook {
    event: Option<String>,
    call: Option<RetellCall>,
}

/// The events that settle a call.
const SETTLING_EVENTS: [&str; 2] = ["call_ended", "call_analyzed"];

/// A refused signature as the 401 problem of a platform webhook, with
/// Retell's challenge (RFC 9110 section 15.5.2: a 401 carries one).
fn unauthorized(error: &SignatureError) -> ApiError {
    ApiError::PlatformUnauthorized {
        header: error.header(),
        message: error.to_string(),
        challenge: "RetellSignature realm=\"retell\"",
    }
}

/// Verifies and settles one Retell webhook; see the module documentation.
///
/// # Errors
/// 400, 401, 404 as above; 413; 503.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let key = state
        .retell_webhook_key()
        .ok_or_else(|| unauthorized(&SignatureError::NoKeyFor(SIGNATURE_HEADER)))?;
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    key.verify(&headers, &body, now_ms)
        .map_err(|error| unauthorized(&error))?;
    let webhook: RetellWebhook = parse_json(&body)?;
    let Some(event) = webhook.event else {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "event",
            "is required",
        )]));
    };
    if !SETTLING_EVENTS.contains(&event.as_str()) {
        tracing::debug!(event, "retell webhook ignored");
        return Ok(Json(json!({"outcome": "ignored", "event": event})));
    }
    let Some(call) = webhook.call else {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "call",
            "is required",
        )]));
    };
    let attempt = call.attempt_hint("call.");
    let report = call.report("call.");
    let (attempt, report) = match (attempt, report) {
        (Ok(attempt), Ok(report)) => (attempt, report),
        (attempt, report) => {
            let mut errors = report.err().unwrap_or_default();
            errors.extend(attempt.err().unwrap_or_default());
            return Err(ApiError::Invalid(errors));
        }
    };
    if let Some(attempt) = attempt {
        record_call_id(attempt.call_id);
    }
    let outcome = state
        .engine()
        .handle_webhook(WebhookDelivery { report, attempt })
        .await?;
    let settled = outcome.call();
    if attempt.is_none() {
        record_call_id(settled.id);
    }
    tracing::info!(event, outcome = outcome.label(), status = %settled.status, "retell webhook handled");
    Ok(Json(json!({
        "outcome": outcome.label(),
        "callId": settled.id,
        "status": settled.status,
    })))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    /// The vector of Retell's own test suite
    /// (`RetellAI/retell-python-sdk:tests/test_webhook_auth.py`).
    const BODY: &str = r#"{"event":"call_ended"}"#;
    const API_KEY: &str = "test-api-key";
    const TIMESTAMP: u64 = 1_700_000_000_000;
    const EXPECTED_DIGEST: &str =
        "07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e";

    fn key() -> RetellWebhookKey {
        RetellWebhookKey::new(API_KEY.parse().unwrap())
    }

    fn headers(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(signature).unwrap());
        headers
    }

    #[test]
    fn signing_reproduces_retells_test_vector() {
        assert_eq!(
            key().sign(BODY.as_bytes(), TIMESTAMP),
            format!("v={TIMESTAMP},d={EXPECTED_DIGEST}")
        );
    }

    #[test]
    fn the_vector_verifies_within_five_minutes_either_way() {
        let signature = headers(&format!("v={TIMESTAMP},d={EXPECTED_DIGEST}"));
        for now in [
            TIMESTAMP,
            TIMESTAMP + TOLERANCE_MS,
            TIMESTAMP - TOLERANCE_MS,
        ] {
            assert_eq!(
                key().verify(&signature, BODY.as_bytes(), now),
                Ok(()),
                "{now}"
            );
        }
        for now in [TIMESTAMP + TOLERANCE_MS + 1, TIMESTAMP - TOLERANCE_MS - 1] {
            assert_eq!(
                key().verify(&signature, BODY.as_bytes(), now),
                Err(SignatureError::StaleHeader(SIGNATURE_HEADER))
            );
        }
        let upper = headers(&format!(
            "v={TIMESTAMP},d={}",
            EXPECTED_DIGEST.to_ascii_uppercase()
        ));
        assert_eq!(key().verify(&upper, BODY.as_bytes(), TIMESTAMP), Ok(()));
    }

    #[test]
    fn a_changed_body_or_key_does_not_verify() {
        let signature = headers(&format!("v={TIMESTAMP},d={EXPECTED_DIGEST}"));
        let mismatch = Err(SignatureError::MismatchIn(SIGNATURE_HEADER));
        assert_eq!(
            key().verify(&signature, format!("{BODY} ").as_bytes(), TIMESTAMP),
            mismatch
        );
        let other = RetellWebhookKey::new("wrong-api-key".parse().unwrap());
        assert_eq!(
            other.verify(&signature, BODY.as_bytes(), TIMESTAMP),
            mismatch
        );
    }

    /// The malformed signatures of Retell's test suite, and an absent header.
    #[test]
    fn malformed_signatures_are_refused() {
        let malformed = Err(SignatureError::MalformedHeader(SIGNATURE_HEADER));
        for signature in [
            String::new(),
            format!("v={TIMESTAMP}"),
            format!("d={EXPECTED_DIGEST},v={TIMESTAMP}"),
            format!("prefix-v={TIMESTAMP},d={EXPECTED_DIGEST}"),
            format!("v={TIMESTAMP},d={EXPECTED_DIGEST}-suffix"),
            format!("v={TIMESTAMP},d=not-hex"),
            format!("v={TIMESTAMP},d={}", &EXPECTED_DIGEST[2..]),
            format!("v=-{TIMESTAMP},d={EXPECTED_DIGEST}"),
            format!("v={TIMESTAMP},d={EXPECTED_DIGEST},extra=value"),
        ] {
            assert_eq!(
                key().verify(&headers(&signature), BODY.as_bytes(), TIMESTAMP),
                malformed,
                "{signature:?}"
            );
        }
        assert_eq!(
            key().verify(&HeaderMap::new(), BODY.as_bytes(), TIMESTAMP),
            Err(SignatureError::MissingHeader(SIGNATURE_HEADER))
        );
    }
}
