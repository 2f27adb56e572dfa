//! `POST /callbacks/call-status`: the provider's webhook, by which it reports
//! how a call it placed ended.
//!
//! Order of checks: the Standard Webhooks signature first, on the raw bytes
//! (when a secret is configured), so an unauthenticated sender learns
//! nothing about our validation; then the query hint and the JSON body; then
//! the engine settles it. The provider's side is treated leniently where
//! that is harmless: any `Content-Type` is read as JSON, and unknown body
//! members or query parameters are ignored (providers add fields over time).
//!
//! | outcome | answer |
//! |---|---|
//! | settled, repeated/late, or naming an attempt never dialled | 200 `{"outcome", "callId", "status"}` |
//! | bad signature | 401 |
//! | unknown status, wrong types, bad timestamp, bad query values | 400 |
//! | neither the provider id nor the query names a known call | 404 (the provider retries) |

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use orchestrator_core::provider::parse_webhook_query;
use orchestrator_core::validate::validate_provider_call_id;
use orchestrator_core::{AttemptRef, CallId, ReportedStatus, StatusReport, WebhookDelivery};
use serde::Deserialize;
use serde_json::json;

use crate::extract::{parse_json, Member, QueryPairs, RawBody, Timestamp};
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;
use crate::telemetry::record_call_id;

/// The webhook body: `{callId, status, durationSec?, completedAt?}`. Members
/// it does not declare are ignored: providers add fields over time.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", expecting = "a JSON object")]
pub struct CallStatusWebhook {
    /// The provider's id of the call.
    call_id: Member<String>,
    /// `COMPLETED`, `FAILED`, `BUSY` or `NO_ANSWER`.
    status: Member<ReportedStatus>,
    /// Call duration in seconds.
    duration_sec: Member<u32>,
    /// When the call ended (RFC 3339).
    completed_at: Member<Timestamp>,
}

impl TryFrom<CallStatusWebhook> for StatusReport {
    type Error = Vec<FieldError>;

    fn try_from(webhook: CallStatusWebhook) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let provider_call_id = webhook
            .call_id
            .required("callId", &mut errors)
            .filter(|id| match validate_provider_call_id(id) {
                Ok(()) => true,
                Err(invalid) => {
                    errors.push(invalid.into());
                    false
                }
            });
        // The generic contract carries four statuses; the other dispositions
        // are for platform adapters, which map their own vocabularies.
        let status = webhook
            .status
            .required("status", &mut errors)
            .filter(|status| {
                let generic = ReportedStatus::GENERIC.contains(status);
                if !generic {
                    errors.push(FieldError::new(
                        "status",
                        "must be one of COMPLETED, FAILED, BUSY, NO_ANSWER",
                    ));
                }
                generic
            });
        let duration_sec = webhook.duration_sec.optional("durationSec", &mut errors);
        let completed_at = webhook.completed_at.optional("completedAt", &mut errors);
        match (provider_call_id, status) {
            (Some(provider_call_id), Some(status)) if errors.is_empty() => Ok(StatusReport {
                provider_call_id,
                status,
                duration_sec,
                completed_at: completed_at.map(|at| at.0),
                reason: None,
            }),
            _ => Err(errors),
        }
    }
}

/// Settles one webhook; see the module documentation for the answers.
///
/// # Errors
/// 400, 401, 404 as above; 413; 503.
pub async fn call_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryPairs,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(secret) = state.webhook_secret() {
        let now = chrono::Utc::now().timestamp();
        secret
            .verify(&headers, &body, now)
            .map_err(ApiError::Unauthorized)?;
    }
    let attempt = attempt_hint(&query)?;
    if let Some(attempt) = attempt {
        record_call_id(attempt.call_id);
    }
    let webhook: CallStatusWebhook = parse_json(&body)?;
    let report = StatusReport::try_from(webhook).map_err(ApiError::Invalid)?;
    let delivery = WebhookDelivery { report, attempt };
    let outcome = state.engine().handle_webhook(delivery).await?;
    let call = outcome.call();
    if attempt.is_none() {
        record_call_id(call.id);
    }
    tracing::info!(outcome = outcome.label(), status = %call.status, "webhook handled");
    Ok(Json(json!({
        "outcome": outcome.label(),
        "callId": call.id,
        "status": call.status,
    })))
}

/// The `callId`/`attempt` we put in the webhook URL: both or neither.
fn attempt_hint(query: &QueryPairs) -> Result<Option<AttemptRef>, ApiError> {
    let (call_id, attempt) = (query.get("callId"), query.get("attempt"));
    let mut errors = Vec::new();
    if let Some(raw) = call_id {
        if raw.parse::<CallId>().is_err() {
            errors.push(FieldError::new(
                "callId",
                format!("{raw:?} is not a call id (a UUID)"),
            ));
        }
    }
    if let Some(raw) = attempt {
        if !raw.parse::<u32>().is_ok_and(|n| n > 0) {
            errors.push(FieldError::new(
                "attempt",
                format!("must be a whole number of at least 1, not {raw:?}"),
            ));
        }
    }
    match (call_id, attempt) {
        (Some(_), None) => errors.push(FieldError::new("attempt", "is required with callId")),
        (None, Some(_)) => errors.push(FieldError::new("callId", "is required with attempt")),
        _ => {}
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    Ok(call_id
        .zip(attempt)
        .and_then(|(call_id, attempt)| parse_webhook_query(call_id, attempt)))
}
