//! Vapi (<https://vapi.ai>): [`VapiProvider`], the engine's [`Provider`] over
//! Vapi's REST API, its webhook ([`webhook`]) and its outcome table
//! ([`outcome`]).
//!
//! Sources, cited by path in Vapi's documentation repository
//! (`VapiAI/docs`, published at <https://docs.vapi.ai>):
//! `fern/apis/api/openapi.json` (the API reference: `CreateCallDTO`,
//! `Call`, `ServerMessageStatusUpdate`, `ServerMessageEndOfCallReport`,
//! `HMACAuthenticationPlan`, `BearerAuthenticationPlan`, `MonitorPlan`,
//! `ClientInboundMessageEndCall`), `fern/calls/call-outbound.mdx`,
//! `fern/calls/call-features.mdx` (live call control),
//! `fern/calls/call-concurrency.mdx`, `fern/calls/call-ended-reason.mdx`,
//! `fern/server-url/events.mdx` and `fern/server-url/server-authentication.mdx`.
//!
//! ```text
//! POST {base}/call                           (base: https://api.vapi.ai)
//! Authorization: Bearer {private API key}
//! {"assistantId": scriptId, "phoneNumberId": VAPI_PHONE_NUMBER_ID,
//!  "customer": {"number": to}, "name": callId,
//!  "assistantOverrides": {"variableValues": metadata,
//!                         "metadata": {"orchestratorCallId": callId, "orchestratorAttempt": n}}}
//! → 201 Call {"id", "status": "queued", "subscriptionLimits": {...}, ...}
//! ```
//!
//! Our call id and attempt ride in `assistantOverrides.metadata`: the
//! `Call` object carries `assistantOverrides` back in every webhook's
//! `message.call` and in `GET /call/{id}`, so a webhook that arrives before
//! Vapi's 201 was recorded still finds its attempt. (`CreateCallDTO` has no
//! top-level `metadata`; older API versions did.)
//!
//! Idempotency: `POST /call` documents no idempotency key (no such header
//! or field in the API reference), so a request that timed out after Vapi
//! accepted it may have started a call, and our retry (a timeout is
//! retryable) may start a second one. Vapi's `GET /call` cannot filter by
//! metadata to check first. The request timeout (`PROVIDER_TIMEOUT_MS`)
//! should be generous for this reason.
//!
//! | Vapi's answer | classification |
//! |---|---|
//! | 2xx with an `id`, call not ended | dialled (also with `subscriptionLimits.concurrencyBlocked`: the call exists, and ends with a capacity `endedReason` if it never starts) |
//! | 2xx with `status: "ended"` | by its `endedReason`: capacity → at capacity, account → account error, bad number → permanent; otherwise dialled (its webhook or the status lookup settles it) |
//! | 2xx without an `id` | retryable |
//! | 429 | at capacity, after `Retry-After` |
//! | 401, 403 | account error (the API key) |
//! | 400/402/404/422 naming concurrency or a daily limit | at capacity |
//! | 400/402/404/422 naming credits, billing, subscription, fraud, the assistant, the phone number, or unknown properties | account error |
//! | other 4xx | permanent (e.g. `customer.number` not E.164) |
//! | 5xx, other statuses, timeout, connection errors | retryable |
//!
//! Vapi documents `400` only as "Client/policy failure (limits, validation,
//! missing resources)" and gives no error codes, so 4xx answers are read by
//! the words of their `message` (a string, or an array of strings, in
//! `{"message", "error", "statusCode"}` bodies); those words are the ones
//! Vapi's answers were seen to use, not a documented contract.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::HeaderValue;
use orchestrator_core::validate::validate_provider_call_id;
use orchestrator_core::{
    AttemptRef, CallLookup, DialError, DialRequest, Dialled, HangUpError, LookupError, Provider,
    ReportedStatus, StatusReport,
};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::extract::Timestamp;
use crate::provider::{join, parse_retry_after, quote, ApiKey};

pub mod outcome;
pub mod webhook;

/// Vapi's API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.vapi.ai";
/// The key in `assistantOverrides.metadata` carrying our call id.
pub const METADATA_CALL_ID: &str = "orchestratorCallId";
/// The key in `assistantOverrides.metadata` carrying our attempt number.
pub const METADATA_ATTEMPT: &str = "orchestratorAttempt";
/// Most bytes read of a create-call or control answer.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Most bytes read of a `GET /call/{id}` answer, which carries the whole
/// transcript and messages of an ended call.
const MAX_CALL_BYTES: usize = 8 * 1024 * 1024;

/// How to reach Vapi.
#[derive(Clone, Debug)]
pub struct VapiConfig {
    /// Vapi's API (`VAPI_BASE_URL`, default [`DEFAULT_BASE_URL`]).
    pub base_url: Url,
    /// The private API key (`VAPI_API_KEY`), sent as `Authorization: Bearer`.
    pub api_key: ApiKey,
    /// The id of the Vapi phone number calls are placed from (`VAPI_PHONE_NUMBER_ID`).
    pub phone_number_id: String,
    /// Bound on one request, connection to last byte (`PROVIDER_TIMEOUT_MS`).
    pub timeout: Duration,
}

/// Why a [`VapiProvider`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VapiConfigError {
    /// `VAPI_BASE_URL` is not an absolute http(s) URL.
    #[error("VAPI_BASE_URL must be an absolute http:// or https:// URL")]
    BadBaseUrl,
    /// The API key cannot be sent in a header.
    #[error("VAPI_API_KEY cannot be sent in a header")]
    BadApiKey,
    /// `VAPI_PHONE_NUMBER_ID` is empty.
    #[error("VAPI_PHONE_NUMBER_ID must not be empty")]
    NoPhoneNumberId,
    /// The timeout is zero.
    #[error("PROVIDER_TIMEOUT_MS must be at least 1")]
    ZeroTimeout,
    /// The HTTP client could not be built (TLS set-up).
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// Vapi as the engine's provider. Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct VapiProvider {
    client: reqwest::Client,
    base_url: Url,
    call_url: Url,
    phone_number_id: String,
    /// `Bearer {key}`, marked sensitive.
    authorization: HeaderValue,
}

impl VapiProvider {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`VapiConfigError`] for a bad URL, key or phone number id, a zero
    /// timeout, or a TLS set-up failure.
    pub fn new(config: &VapiConfig) -> Result<Self, VapiConfigError> {
        let call_url = join(&config.base_url, "call").ok_or(VapiConfigError::BadBaseUrl)?;
        if config.timeout.is_zero() {
            return Err(VapiConfigError::ZeroTimeout);
        }
        if config.phone_number_id.trim().is_empty() {
            return Err(VapiConfigError::NoPhoneNumberId);
        }
        let authorization = config.api_key.bearer().ok_or(VapiConfigError::BadApiKey)?;
        let client = crate::provider::outbound_client(config.timeout)
            .build()
            .map_err(VapiConfigError::Client)?;
        Ok(Self {
            client,
            base_url: config.base_url.clone(),
            call_url,
            phone_number_id: config.phone_number_id.trim().to_owned(),
            authorization,
        })
    }

    /// The URL calls are created at, `{base}/call`.
    #[must_use]
    pub fn call_url(&self) -> &Url {
        &self.call_url
    }

    /// `{base}/call/{id}`, the id percent-encoded as one path segment.
    fn call_by_id(&self, provider_call_id: &str) -> Url {
        let mut url = self.call_url.clone();
        // The call URL is an http(s) URL (checked in `new`), so it is a base.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(provider_call_id);
        }
        url
    }

    /// `GET /call/{id}` (API reference: `CallController_findOne`).
    async fn get_call(&self, provider_call_id: &str) -> Result<Option<VapiCall>, String> {
        let response = self
            .client
            .get(self.call_by_id(provider_call_id))
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(|error| transport_reason(&error))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("vapi {}", status.as_u16()));
        }
        let body = read_limited(response, MAX_CALL_BYTES)
            .await
            .map_err(|error| transport_reason(&error))?;
        serde_json::from_slice::<VapiCall>(&body)
            .map(Some)
            .map_err(|error| format!("vapi {}: unreadable call: {error}", status.as_u16()))
    }

    /// Whether `url` (a call's `monitor.controlUrl`) may be sent our
    /// requests: https on Vapi's own domain, or the same origin as the API
    /// base URL (a stand-in in tests).
    fn control_url_allowed(&self, url: &Url) -> bool {
        let vapi_domain = url.scheme() == "https"
            && url
                .host_str()
                .is_some_and(|host| host == "vapi.ai" || host.ends_with(".vapi.ai"));
        vapi_domain || url.origin() == self.base_url.origin()
    }
}

/// The create-call body (API reference `CreateCallDTO`; example in
/// `fern/calls/call-outbound.mdx`).
#[must_use]
pub fn create_call_body(request: &DialRequest, phone_number_id: &str) -> Value {
    let mut overrides = json!({
        // `AssistantOverrides.metadata`: "metadata you want to store on the
        // assistant"; echoed in `Call.assistantOverrides`.
        "metadata": {
            METADATA_CALL_ID: request.attempt.call_id,
            METADATA_ATTEMPT: request.attempt.attempt,
        },
    });
    // `AssistantOverrides.variableValues`: values for the assistant's
    // `{{ template }}` variables. Our metadata is always an object.
    if let (Some(metadata), Some(object)) = (&request.metadata, overrides.as_object_mut()) {
        object.insert("variableValues".to_owned(), metadata.clone());
    }
    json!({
        "assistantId": request.script_id,
        "phoneNumberId": phone_number_id,
        // `CreateCustomerDTO.number`; Vapi checks E.164 by default
        // (`numberE164CheckEnabled`), which our numbers always are.
        "customer": {"number": request.to},
        // `CreateCallDTO.name`, at most 40 characters, "just for your own
        // reference": our call id (36) shows in Vapi's dashboard.
        "name": request.attempt.call_id.to_string(),
        "assistantOverrides": overrides,
    })
}

/// The parts of Vapi's `Call` object we read (API reference schema `Call`).
/// Unknown members are ignored: Vapi adds fields often.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VapiCall {
    /// `id`: Vapi's call id.
    pub id: Option<String>,
    /// `status`: `scheduled, queued, ringing, in-progress, forwarding, ended`
    /// (also `not-found`, `deletion-failed`).
    pub status: Option<String>,
    /// `endedReason`, once ended.
    pub ended_reason: Option<String>,
    /// `startedAt` (ISO 8601).
    pub started_at: Option<Timestamp>,
    /// `endedAt` (ISO 8601).
    pub ended_at: Option<Timestamp>,
    /// `assistantOverrides`, as given at creation.
    pub assistant_overrides: Option<AssistantOverrides>,
    /// `monitor`: the live-control URL.
    pub monitor: Option<Monitor>,
    /// `subscriptionLimits`, in the create-call answer only
    /// (`fern/calls/call-concurrency.mdx`).
    pub subscription_limits: Option<SubscriptionLimits>,
}

/// `Call.assistantOverrides`: only `metadata` is read back.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AssistantOverrides {
    /// `metadata`, where we put our call id and attempt.
    pub metadata: Option<Value>,
}

/// `Call.monitor` (schema `Monitor`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Monitor {
    /// `controlUrl`: "the URL where the assistant's calls can be controlled
    /// in real-time" (when `assistant.monitorPlan.controlEnabled`).
    pub control_url: Option<String>,
}

/// `subscriptionLimits` of a create-call answer (schema `SubscriptionLimits`).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SubscriptionLimits {
    /// "True if this call was blocked by the Call Concurrency limit".
    pub concurrency_blocked: bool,
}

impl VapiCall {
    /// Our call and attempt, from `assistantOverrides.metadata`, when both
    /// keys are there.
    ///
    /// # Errors
    /// The field at fault and what is wrong, when a key is there but is not
    /// a call id (UUID) or an attempt number of at least 1.
    pub fn echoed_attempt(&self) -> Result<Option<AttemptRef>, (&'static str, String)> {
        let Some(metadata) = self
            .assistant_overrides
            .as_ref()
            .and_then(|overrides| overrides.metadata.as_ref())
        else {
            return Ok(None);
        };
        let (call_id, attempt) = (
            metadata.get(METADATA_CALL_ID),
            metadata.get(METADATA_ATTEMPT),
        );
        let (Some(call_id), Some(attempt)) = (call_id, attempt) else {
            return Ok(None);
        };
        let call_id = call_id.as_str().and_then(|raw| raw.parse().ok()).ok_or((
            "message.call.assistantOverrides.metadata.orchestratorCallId",
            format!("{call_id} is not a call id (a UUID)"),
        ))?;
        let attempt = attempt
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or((
                "message.call.assistantOverrides.metadata.orchestratorAttempt",
                format!("{attempt} is not a whole number of at least 1"),
            ))?;
        Ok(Some(AttemptRef { call_id, attempt }))
    }
}

/// The report of a Vapi call that ended with `ended_reason`, between
/// `started_at` and `ended_at` when known. `reason` keeps Vapi's value.
#[must_use]
pub fn ended_report(
    provider_call_id: &str,
    ended_reason: Option<&str>,
    started_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
) -> StatusReport {
    let status = ended_reason.map_or(outcome::UNKNOWN, outcome::disposition);
    let duration_sec = started_at.zip(ended_at).and_then(|(start, end)| {
        let seconds = (end.0 - start.0).num_milliseconds().max(0) as f64 / 1000.0;
        // Whole seconds, rounded: a 41.6 s call is 42 s.
        Some(seconds.round()).and_then(|s| u32::try_from(s as u64).ok())
    });
    StatusReport {
        provider_call_id: provider_call_id.to_owned(),
        status,
        duration_sec,
        completed_at: ended_at.map(|at| at.0),
        reason: Some(
            ended_reason
                .unwrap_or("ended without an endedReason")
                .to_owned(),
        ),
    }
}

fn transport_reason(error: &reqwest::Error) -> String {
    let reason = if error.is_timeout() {
        "vapi timeout"
    } else if error.is_connect() {
        "vapi unreachable"
    } else {
        "vapi request failed"
    };
    tracing::debug!(%error, reason, "Vapi request failed");
    reason.to_owned()
}

/// Reads at most `limit` bytes of the body.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// The words of an error answer: its `message` (a string, or strings
/// joined with `"; "`), else the start of the body.
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| match value.get("message")? {
            Value::String(text) => Some(text.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        });
    quote(message.as_deref().map_or(body, str::as_bytes))
}

/// Classifies a 4xx answer other than 429 by its status and words.
fn refusal(status: StatusCode, message: &str, retry_after: Option<Duration>) -> DialError {
    let reason = if message.is_empty() {
        format!("vapi {}", status.as_u16())
    } else {
        format!("vapi {}: {message}", status.as_u16())
    };
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return DialError::Account { reason };
    }
    let words = message.to_ascii_lowercase();
    let says = |needles: &[&str]| needles.iter().any(|needle| words.contains(needle));
    if says(&["concurrency", "daily limit", "daily-limit"]) {
        return DialError::AtCapacity { retry_after };
    }
    if says(&[
        "credit",
        "frozen",
        "wallet",
        "subscription",
        "payment",
        "billing",
        "fraud",
    ]) {
        return DialError::Account { reason };
    }
    // The callee's number first: "customer.number must be a valid phone
    // number" also says "phone number".
    if says(&["customer", "e.164", "e164"]) {
        return DialError::Permanent { reason };
    }
    if says(&[
        "assistant",
        "phonenumber",
        "phone number",
        "squad",
        "workflow",
        "should not exist",
        "api key",
    ]) || status == StatusCode::NOT_FOUND
        || status == StatusCode::PAYMENT_REQUIRED
    {
        return DialError::Account { reason };
    }
    DialError::Permanent { reason }
}

#[async_trait]
impl Provider for VapiProvider {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        let body = create_call_body(request, &self.phone_number_id);
        let response = self
            .client
            .post(self.call_url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&body)
            .send()
            .await
            .map_err(|error| DialError::Retryable {
                reason: transport_reason(&error),
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let answer = read_limited(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|error| DialError::Retryable {
                reason: transport_reason(&error),
            })?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(DialError::AtCapacity { retry_after });
        }
        if status.is_client_error() {
            return Err(refusal(status, &error_message(&answer), retry_after));
        }
        if !status.is_success() {
            return Err(DialError::Retryable {
                reason: format!("vapi {}", status.as_u16()),
            });
        }
        let call = serde_json::from_slice::<VapiCall>(&answer).unwrap_or_default();
        let Some(provider_call_id) = call
            .id
            .clone()
            .filter(|id| validate_provider_call_id(id).is_ok())
        else {
            return Err(DialError::Retryable {
                reason: format!("vapi {}: no call id in the response", status.as_u16()),
            });
        };
        if call.status.as_deref() == Some("ended") {
            let reason = call
                .ended_reason
                .clone()
                .unwrap_or_else(|| "ended at creation".to_owned());
            match outcome::disposition(&reason) {
                ReportedStatus::Capacity => return Err(DialError::AtCapacity { retry_after }),
                ReportedStatus::AccountError => return Err(DialError::Account { reason }),
                ReportedStatus::BadNumber => return Err(DialError::Permanent { reason }),
                // Its webhook, or the status lookup, settles it by the table.
                _ => {}
            }
        }
        if call
            .subscription_limits
            .is_some_and(|l| l.concurrency_blocked)
        {
            tracing::info!(
                provider_call_id,
                "Vapi created the call but its concurrency limit blocks it for now"
            );
        }
        Ok(Dialled { provider_call_id })
    }

    /// Ends a live call through its live-control URL: `GET /call/{id}` for
    /// `monitor.controlUrl`, then `POST {controlUrl}` with
    /// `{"type": "end-call"}` (`fern/calls/call-features.mdx`, "End Call";
    /// schema `ClientInboundMessageEndCall`). Vapi's REST API has no other
    /// way: `PATCH /call/{id}` only renames, `DELETE /call/{id}` deletes
    /// the record. Needs `monitorPlan.controlEnabled` (default true) and
    /// `controlAuthenticationEnabled` off (the default): with it on, the
    /// control URL wants the *public* key, which we do not hold.
    async fn hang_up(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<(), HangUpError> {
        let call = match self.get_call(provider_call_id).await {
            Ok(Some(call)) => call,
            // A call Vapi does not know is not live.
            Ok(None) => return Ok(()),
            Err(reason) => return Err(HangUpError::Failed { reason }),
        };
        if call.status.as_deref() == Some("ended") {
            return Ok(());
        }
        let control_url = call
            .monitor
            .and_then(|monitor| monitor.control_url)
            .ok_or_else(|| HangUpError::Failed {
                reason: "vapi call has no monitor.controlUrl (is the assistant's monitorPlan.controlEnabled off?)".to_owned(),
            })?;
        let control_url = Url::parse(&control_url)
            .ok()
            .filter(|url| self.control_url_allowed(url))
            .ok_or_else(|| HangUpError::Failed {
                reason: "vapi monitor.controlUrl is not an https URL on vapi.ai".to_owned(),
            })?;
        let response = self
            .client
            .post(control_url)
            .json(&json!({"type": "end-call"}))
            .send()
            .await
            .map_err(|error| HangUpError::Failed {
                reason: transport_reason(&error),
            })?;
        let status = response.status();
        let _ = read_limited(response, MAX_ANSWER_BYTES).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(HangUpError::Failed {
                reason: format!("vapi control {}", status.as_u16()),
            })
        }
    }

    /// `GET /call/{id}`: `ended` settles by the outcome table; `scheduled`,
    /// `queued`, `ringing`, `in-progress` and `forwarding` are live; a 404
    /// (or `not-found`) is unknown.
    async fn call_status(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<CallLookup, LookupError> {
        let call = match self.get_call(provider_call_id).await {
            Ok(Some(call)) => call,
            Ok(None) => return Ok(CallLookup::Unknown),
            Err(reason) => return Err(LookupError::Failed { reason }),
        };
        Ok(match call.status.as_deref() {
            Some("ended") => CallLookup::Ended(ended_report(
                provider_call_id,
                call.ended_reason.as_deref(),
                call.started_at,
                call.ended_at,
            )),
            Some("not-found") => CallLookup::Unknown,
            _ => CallLookup::Live,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use orchestrator_core::{CallId, PhoneNumber};

    use super::*;

    fn request(metadata: Option<Value>) -> DialRequest {
        let at = Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap();
        DialRequest {
            attempt: AttemptRef {
                call_id: CallId::v7_from_parts(at, [7; 10]),
                attempt: 2,
            },
            to: PhoneNumber::parse("+14155550100").unwrap(),
            script_id: "5b0a4a08-133c-4146-9315-0984f8c6be80".into(),
            metadata,
        }
    }

    #[test]
    fn the_create_call_body_follows_create_call_dto() {
        let request = request(Some(json!({"name": "Sara"})));
        let body = create_call_body(&request, "42b4b25d-031e-4786-857f-63b346c9580f");
        let call_id = request.attempt.call_id.to_string();
        assert_eq!(
            body,
            json!({
                "assistantId": "5b0a4a08-133c-4146-9315-0984f8c6be80",
                "phoneNumberId": "42b4b25d-031e-4786-857f-63b346c9580f",
                "customer": {"number": "+14155550100"},
                "name": call_id,
                "assistantOverrides": {
                    "variableValues": {"name": "Sara"},
                    "metadata": {"orchestratorCallId": call_id, "orchestratorAttempt": 2},
                },
            })
        );
        assert!(call_id.len() <= 40, "CreateCallDTO.name has maxLength 40");
        let bare = create_call_body(&self::request(None), "p");
        assert!(bare["assistantOverrides"].get("variableValues").is_none());
    }

    #[test]
    fn four_hundreds_are_classified_by_their_words() {
        let bad = StatusCode::BAD_REQUEST;
        let capacity = |message: &str| refusal(bad, message, None);
        assert_eq!(
            capacity("Over Concurrency Limit"),
            DialError::AtCapacity { retry_after: None }
        );
        for message in [
            "Insufficient credits. Please add credits to your account.",
            "Subscription is frozen",
            "Couldn't Get Assistant. `assistantId` 123 Does Not Exist.",
            "Couldn't Get Phone Number. `phoneNumberId` x Does Not Exist.",
            "property assistantOverride should not exist",
        ] {
            assert!(
                matches!(refusal(bad, message, None), DialError::Account { .. }),
                "{message}"
            );
        }
        assert!(matches!(
            refusal(
                bad,
                "customer.number must be a valid phone number in the E.164 format",
                None
            ),
            DialError::Permanent { .. }
        ));
        assert!(matches!(
            refusal(StatusCode::UNAUTHORIZED, "Invalid Key", None),
            DialError::Account { .. }
        ));
        assert!(matches!(
            refusal(bad, "something else", None),
            DialError::Permanent { .. }
        ));
    }

    #[test]
    fn error_messages_read_strings_and_arrays() {
        assert_eq!(
            error_message(br#"{"message":["a should not exist","b must be a string"],"error":"Bad Request","statusCode":400}"#),
            "a should not exist; b must be a string"
        );
        assert_eq!(
            error_message(br#"{"message":"Over Concurrency Limit"}"#),
            "Over Concurrency Limit"
        );
        assert_eq!(error_message(b"upstream\nbroke"), "upstream broke");
    }

    #[test]
    fn ended_reports_keep_the_reason_and_round_the_duration() {
        let start = Timestamp::parse("2025-07-20T10:00:00.000Z").unwrap();
        let end = Timestamp::parse("2025-07-20T10:00:41.600Z").unwrap();
        let report = ended_report("c-1", Some("customer-busy"), Some(start), Some(end));
        assert_eq!(report.status, ReportedStatus::Busy);
        assert_eq!(report.duration_sec, Some(42));
        assert_eq!(report.completed_at, Some(end.0));
        assert_eq!(report.reason.as_deref(), Some("customer-busy"));
        let bare = ended_report("c-1", None, None, None);
        assert_eq!(bare.status, outcome::UNKNOWN);
        assert_eq!(bare.duration_sec, None);
    }
}
