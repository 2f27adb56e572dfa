//! `POST /callbacks/vapi`: Vapi's server messages
//! (`fern/server-url/events.mdx`): every message is
//! `{"message": {"type": ..., "call": {Call}, ...}}`.
//!
//! Order of checks: authentication first, on the raw bytes, so an
//! unauthenticated sender learns nothing about our parsing; then the
//! message type; then, for the two terminal messages, the body's shape;
//! then the engine settles it.
//!
//! | message | answer |
//! |---|---|
//! | `end-of-call-report`, or `status-update` with `status: "ended"` | settled (or already settled): 200 `{"outcome", "callId", "status"}` |
//! | any other type (`status-update` not ended, `transcript`, `speech-update`, `conversation-update`, `hang`, ...) | 200 `{"outcome": "ignored", "type"}`, nothing changes |
//! | bad or missing credentials | 401 problem naming the header |
//! | no `message`, no `message.type`, no `message.call.id`, no `endedReason`, wrong types | 400 problem naming the field |
//! | neither Vapi's call id nor the echoed `assistantOverrides.metadata` names a known call | 404 |
//! | body over [`MAX_BODY_BYTES`] | 413 |
//!
//! Both terminal messages settle: whichever comes first settles the
//! attempt, the other answers 200 and changes nothing. The outcome is
//! Vapi's `endedReason` (`message.endedReason`, else
//! `message.call.endedReason`) mapped by [`outcome`](super::outcome); the
//! attempt is found by `message.call.id`, or by the call id and attempt we
//! put in `assistantOverrides.metadata` when the webhook beats Vapi's 201.
//!
//! ## Authentication ([`VapiWebhookAuth`])
//!
//! Vapi authenticates its requests to a server URL with a credential
//! (`fern/server-url/server-authentication.mdx`); two kinds are supported:
//!
//! - **HMAC** (`HMACAuthenticationPlan` in the API reference) with its
//!   defaults: `algorithm` `sha256`, `signatureHeader` `x-signature`,
//!   `timestampHeader` `x-timestamp`, `payloadFormat` `{timestamp}.{body}`,
//!   `signatureEncoding` `hex`, `secretIsBase64` false (the key is the
//!   secret's bytes). We compute HMAC-SHA256 over the `x-timestamp` header
//!   value as sent, a `.`, and the raw body, and compare it in constant
//!   time with `x-signature` (hex; a `sha256=` `signaturePrefix` is
//!   accepted; base64 too). The timestamp must be within [`TOLERANCE`] of
//!   now, either way. Vapi does not document its unit: Unix seconds and
//!   milliseconds are both read (a value above 10^11 is milliseconds).
//! - **Bearer token** (`BearerAuthenticationPlan`): the secret in
//!   `Authorization: Bearer <secret>` (the default), or in `X-Vapi-Secret:
//!   <secret>` (the legacy header, "Include Bearer Prefix" off), compared
//!   in constant time. No replay protection: prefer HMAC.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use hmac::{Hmac, Mac};
use orchestrator_core::validate::validate_provider_call_id;
use orchestrator_core::WebhookDelivery;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{ended_report, VapiCall};
use crate::extract::{parse_json, RawBody, Timestamp};
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;
use crate::telemetry::record_call_id;

type HmacSha256 = Hmac<Sha256>;

/// Largest Vapi message accepted: 1 MiB. End-of-call reports carry the
/// transcript, the messages and the analysis of the whole call; an hour of
/// conversation is a few hundred KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How far `x-timestamp` may be from now, either way: Vapi documents no
/// tolerance, so ours for Standard Webhooks.
pub const TOLERANCE: Duration = crate::signature::TOLERANCE;
/// Vapi's default HMAC signature header (`HMACAuthenticationPlan.signatureHeader`).
pub const SIGNATURE_HEADER: &str = "x-signature";
/// Vapi's default HMAC timestamp header (`HMACAuthenticationPlan.timestampHeader`).
pub const TIMESTAMP_HEADER: &str = "x-timestamp";
/// The legacy secret header (`fern/server-url/server-authentication.mdx`).
pub const SECRET_HEADER: &str = "x-vapi-secret";
/// Fewest characters of a webhook secret.
pub const MIN_SECRET_CHARS: usize = 16;
/// The `WWW-Authenticate` challenge of a refused Vapi webhook.
const CHALLENGE: &str = "Vapi realm=\"callbacks\"";

/// A Vapi webhook secret (`VAPI_WEBHOOK_SECRET`): at least
/// [`MIN_SECRET_CHARS`] visible ASCII characters, no spaces. `Debug` never
/// shows it.
#[derive(Clone, Debug)]
pub struct VapiSecret(SecretString);

/// A string that cannot be a [`VapiSecret`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a Vapi webhook secret must be at least 16 visible ASCII characters, without spaces")]
pub struct BadVapiSecret;

impl std::str::FromStr for VapiSecret {
    type Err = BadVapiSecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < MIN_SECRET_CHARS || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BadVapiSecret);
        }
        Ok(Self(SecretString::from(s)))
    }
}

impl VapiSecret {
    fn bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }

    /// The hex HMAC-SHA256 of `"{timestamp}.{body}"`: the `x-signature`
    /// Vapi sends under its HMAC credential's defaults (for the mock and tests).
    #[must_use]
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(timestamp, body).finalize().into_bytes();
        tag.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The secret itself, to send as a bearer token (for the mock and tests).
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    fn mac(&self, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.bytes()).unwrap_or_else(|_| unreachable!());
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// How Vapi's webhooks are authenticated (`VAPI_WEBHOOK_AUTH`).
#[derive(Clone, Debug)]
pub enum VapiWebhookAuth {
    /// Vapi's HMAC credential with its defaults (see the module documentation).
    Hmac(VapiSecret),
    /// Vapi's bearer-token credential: `Authorization: Bearer` or `X-Vapi-Secret`.
    Bearer(VapiSecret),
    /// No check at all (`VAPI_WEBHOOK_INSECURE`): anyone who can reach the
    /// route can settle calls. Development only.
    Unverified,
}

/// Why a Vapi webhook's credentials were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VapiAuthError {
    /// A required header is absent.
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// A header is not what the scheme expects.
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    /// `x-timestamp` is more than [`TOLERANCE`] away from now.
    #[error("header x-timestamp is more than 5 minutes from the server's time")]
    Stale,
    /// The signature or the secret does not match.
    #[error("header {0} does not match")]
    NoMatch(&'static str),
}

impl VapiAuthError {
    /// The header at fault.
    #[must_use]
    pub fn header(&self) -> &'static str {
        match self {
            VapiAuthError::Missing(name)
            | VapiAuthError::Malformed(name)
            | VapiAuthError::NoMatch(name) => name,
            VapiAuthError::Stale => TIMESTAMP_HEADER,
        }
    }
}

impl From<VapiAuthError> for ApiError {
    fn from(error: VapiAuthError) -> Self {
        ApiError::PlatformUnauthorized {
            header: error.header(),
            message: error.to_string(),
            challenge: CHALLENGE,
        }
    }
}

impl VapiWebhookAuth {
    /// Checks a request's `headers` against its raw `body` at `now_ms`
    /// (Unix milliseconds).
    ///
    /// # Errors
    /// A [`VapiAuthError`] naming the header at fault.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), VapiAuthError> {
        match self {
            VapiWebhookAuth::Unverified => Ok(()),
            VapiWebhookAuth::Hmac(secret) => verify_hmac(secret, headers, body, now_ms),
            VapiWebhookAuth::Bearer(secret) => verify_bearer(secret, headers),
        }
    }
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, VapiAuthError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map(str::trim)
                .map_err(|_| VapiAuthError::Malformed(name))
        })
        .transpose()
}

fn verify_hmac(
    secret: &VapiSecret,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<(), VapiAuthError> {
    let timestamp =
        header(headers, TIMESTAMP_HEADER)?.ok_or(VapiAuthError::Missing(TIMESTAMP_HEADER))?;
    let signature =
        header(headers, SIGNATURE_HEADER)?.ok_or(VapiAuthError::Missing(SIGNATURE_HEADER))?;
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| VapiAuthError::Malformed(TIMESTAMP_HEADER))?;
    // Vapi does not say whether it sends seconds or milliseconds; 10^11
    // seconds is the year 5138, so anything larger is milliseconds.
    let sent_ms = if sent.unsigned_abs() > 100_000_000_000 {
        sent
    } else {
        sent.saturating_mul(1000)
    };
    let tolerance_ms = u64::try_from(TOLERANCE.as_millis()).unwrap_or(u64::MAX);
    if now_ms.abs_diff(sent_ms) > tolerance_ms {
        return Err(VapiAuthError::Stale);
    }
    let encoded = signature.strip_prefix("sha256=").unwrap_or(signature);
    let candidates = [
        decode_hex(encoded),
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).ok(),
    ];
    let mac = secret.mac(timestamp, body);
    // `verify_slice` compares in constant time and refuses other lengths.
    let matched = candidates
        .into_iter()
        .flatten()
        .any(|candidate| mac.clone().verify_slice(&candidate).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VapiAuthError::NoMatch(SIGNATURE_HEADER))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn verify_bearer(secret: &VapiSecret, headers: &HeaderMap) -> Result<(), VapiAuthError> {
    let (name, presented) = if let Some(value) = header(headers, SECRET_HEADER)? {
        (SECRET_HEADER, value)
    } else if let Some(value) = header(headers, "authorization")? {
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(VapiAuthError::Malformed("authorization"))?;
        ("authorization", token)
    } else {
        return Err(VapiAuthError::Missing("authorization"));
    };
    // `ct_eq` on slices of different lengths is false, in time independent of the contents.
    if bool::from(presented.as_bytes().ct_eq(secret.bytes())) {
        Ok(())
    } else {
        Err(VapiAuthError::NoMatch(name))
    }
}

/// The first look at a message: only its type.
#[derive(Debug, Deserialize)]
struct Envelope {
    message: Option<Head>,
}

#[derive(Debug, Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<serde_json::Value>,
}

/// A terminal message (`ServerMessageEndOfCallReport`,
/// `ServerMessageStatusUpdate`): the members we read.
#[derive(Debug, Deserialize)]
struct Terminal {
    message: TerminalMessage,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TerminalMessage {
    ended_reason: Option<String>,
    started_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    call: Option<VapiCall>,
}

/// Handles one Vapi message; see the module documentation for the answers.
///
/// # Errors
/// 400, 401, 404 as above; 413; 503.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Without Vapi as the provider no call has a Vapi call id.
    let Some(auth) = state.vapi_webhook() else {
        return Err(ApiError::CallNotFound(
            "Vapi is not the provider (PROVIDER=vapi), so no call has a Vapi call id".to_owned(),
        ));
    };
    auth.verify(&headers, &body, chrono::Utc::now().timestamp_millis())?;
    let envelope: Envelope = parse_json(&body)?;
    let head = envelope
        .message
        .ok_or_else(|| ApiError::invalid("message", "is required"))?;
    let kind = head
        .kind
        .ok_or_else(|| ApiError::invalid("message.type", "is required"))?;
    let terminal = kind == "end-of-call-report"
        || (kind == "status-update"
            && head.status.as_ref().and_then(|s| s.as_str()) == Some("ended"));
    if !terminal {
        tracing::debug!(message_type = %kind, "Vapi message ignored");
        return Ok(Json(json!({"outcome": "ignored", "type": kind})));
    }
    let Terminal { message } = parse_json(&body)?;
    let mut errors = Vec::new();
    let call = message.call.unwrap_or_default();
    let provider_call_id = match call.id.as_deref() {
        None => {
            errors.push(FieldError::new("message.call.id", "is required"));
            None
        }
        Some(id) => match validate_provider_call_id(id) {
            Ok(()) => Some(id.to_owned()),
            Err(invalid) => {
                errors.push(FieldError::new("message.call.id", invalid.to_string()));
                None
            }
        },
    };
    let ended_reason = message
        .ended_reason
        .clone()
        .or_else(|| call.ended_reason.clone());
    if ended_reason.is_none() {
        errors.push(FieldError::new("message.endedReason", "is required"));
    }
    let attempt = match call.echoed_attempt() {
        Ok(attempt) => attempt,
        Err((field, problem)) => {
            errors.push(FieldError::new(field, problem));
            None
        }
    };
    let Some(provider_call_id) = provider_call_id.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    if let Some(attempt) = attempt {
        record_call_id(attempt.call_id);
    }
    let report = ended_report(
        &provider_call_id,
        ended_reason.as_deref(),
        message.started_at.or(call.started_at),
        message.ended_at.or(call.ended_at),
    );
    let delivery = WebhookDelivery { report, attempt };
    let outcome = state.engine().handle_webhook(delivery).await?;
    let settled = outcome.call();
    if attempt.is_none() {
        record_call_id(settled.id);
    }
    tracing::info!(
        outcome = outcome.label(),
        status = %settled.status,
        message_type = %kind,
        ended_reason = ?ended_reason,
        "Vapi webhook handled"
    );
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

    const NOW_MS: i64 = 1_752_999_000_000;

    fn secret() -> VapiSecret {
        "vapi-test-secret-0123456789".parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn an_hmac_signature_of_timestamp_dot_body_verifies() {
        let body = br#"{"message":{"type":"status-update","status":"ringing"}}"#;
        let auth = VapiWebhookAuth::Hmac(secret());
        for timestamp in [(NOW_MS / 1000).to_string(), NOW_MS.to_string()] {
            let signature = secret().sign(&timestamp, body);
            let signed = headers(&[
                (TIMESTAMP_HEADER, timestamp.clone()),
                (SIGNATURE_HEADER, signature.clone()),
            ]);
            assert_eq!(auth.verify(&signed, body, NOW_MS), Ok(()));
            let prefixed = headers(&[
                (TIMESTAMP_HEADER, timestamp),
                (SIGNATURE_HEADER, format!("sha256={signature}")),
            ]);
            assert_eq!(auth.verify(&prefixed, body, NOW_MS), Ok(()));
        }
    }

    #[test]
    fn the_hmac_matches_an_independent_computation() {
        // HMAC-SHA256(key = "vapi-test-secret-0123456789", "1752999000.{}"),
        // computed with Python's hmac module.
        assert_eq!(
            secret().sign("1752999000", b"{}"),
            "e56606712a2a5d8631fce9cbeef764de8b1d2542c8fab7a3114edfae7e0df521"
        );
    }

    #[test]
    fn forged_stale_and_missing_signatures_are_refused() {
        let body = b"{}";
        let auth = VapiWebhookAuth::Hmac(secret());
        let timestamp = (NOW_MS / 1000).to_string();
        let forged = headers(&[
            (TIMESTAMP_HEADER, timestamp.clone()),
            (SIGNATURE_HEADER, "00".repeat(32)),
        ]);
        assert_eq!(
            auth.verify(&forged, body, NOW_MS),
            Err(VapiAuthError::NoMatch(SIGNATURE_HEADER))
        );
        let other_body = headers(&[
            (TIMESTAMP_HEADER, timestamp.clone()),
            (SIGNATURE_HEADER, secret().sign(&timestamp, b"{ }")),
        ]);
        assert_eq!(
            auth.verify(&other_body, body, NOW_MS),
            Err(VapiAuthError::NoMatch(SIGNATURE_HEADER))
        );
        for skew in [-301, 301] {
            let stale = (NOW_MS / 1000 + skew).to_string();
            let signed = headers(&[
                (TIMESTAMP_HEADER, stale.clone()),
                (SIGNATURE_HEADER, secret().sign(&stale, body)),
            ]);
            assert_eq!(
                auth.verify(&signed, body, NOW_MS),
                Err(VapiAuthError::Stale),
                "{skew}"
            );
        }
        let within = (NOW_MS / 1000 - 299).to_string();
        let signed = headers(&[
            (TIMESTAMP_HEADER, within.clone()),
            (SIGNATURE_HEADER, secret().sign(&within, body)),
        ]);
        assert_eq!(auth.verify(&signed, body, NOW_MS), Ok(()));
        assert_eq!(
            auth.verify(&headers(&[(SIGNATURE_HEADER, "ab".into())]), body, NOW_MS),
            Err(VapiAuthError::Missing(TIMESTAMP_HEADER))
        );
        assert_eq!(
            auth.verify(
                &headers(&[
                    (TIMESTAMP_HEADER, "soon".into()),
                    (SIGNATURE_HEADER, "ab".into())
                ]),
                body,
                NOW_MS
            ),
            Err(VapiAuthError::Malformed(TIMESTAMP_HEADER))
        );
    }

    #[test]
    fn a_bearer_secret_is_accepted_in_either_documented_header() {
        let auth = VapiWebhookAuth::Bearer(secret());
        let token = secret().expose().to_owned();
        assert_eq!(
            auth.verify(
                &headers(&[("authorization", format!("Bearer {token}"))]),
                b"",
                0
            ),
            Ok(())
        );
        assert_eq!(
            auth.verify(&headers(&[(SECRET_HEADER, token.clone())]), b"", 0),
            Ok(())
        );
        assert_eq!(
            auth.verify(&headers(&[(SECRET_HEADER, format!("{token}x"))]), b"", 0),
            Err(VapiAuthError::NoMatch(SECRET_HEADER))
        );
        assert_eq!(
            auth.verify(
                &headers(&[("authorization", format!("Basic {token}"))]),
                b"",
                0
            ),
            Err(VapiAuthError::Malformed("authorization"))
        );
        assert_eq!(
            auth.verify(&HeaderMap::new(), b"", 0),
            Err(VapiAuthError::Missing("authorization"))
        );
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert_eq!("short".parse::<VapiSecret>().unwrap_err(), BadVapiSecret);
        assert_eq!(
            "has a space in it, long".parse::<VapiSecret>().unwrap_err(),
            BadVapiSecret
        );
    }
}
