//! Call control: cancel a call, retry a finished one, and read a call's
//! dial history.
//!
//! - `POST /calls/{id}/cancel`, optional body `{"reason": string}`: a
//!   `PENDING` call ends `CANCELED` at once (200); an `IN_PROGRESS` call is
//!   never re-dialled and the provider is asked to hang up (202: its webhook
//!   or lease ends it); a `CANCELED` call is answered as it is (200).
//! - `POST /calls/{id}/retry`: a new `PENDING` call from a `FAILED`,
//!   `EXPIRED` or `CANCELED` one (201), with `retryOf` set;
//!   `Idempotency-Key` works as on `POST /calls`.
//! - `GET /calls/{id}/attempts`: `{"items": [Attempt]}` in dial order.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_core::store::Canceled;
use orchestrator_core::Attempt;
use serde::{Deserialize, Serialize};

use crate::extract::{CallIdPath, Member, OptionalJsonBody, UnknownMembers};
use crate::problem::{ApiError, FieldError};
use crate::routes::calls::{created_response, idempotency_key};
use crate::state::AppState;
use crate::telemetry::record_call_id;

/// The body of `POST /calls/{id}/cancel`: `{reason?}`. The whole body is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", expecting = "a JSON object")]
pub struct CancelRequest {
    /// Why; becomes the call's `lastError` when it ends `CANCELED`. `null`
    /// counts as left out (`"canceled"`).
    reason: Member<String>,
    #[serde(flatten)]
    unknown: UnknownMembers,
}

impl CancelRequest {
    /// The members, by wire name.
    pub const FIELDS: [&'static str; 1] = ["reason"];

    /// The reason given, if any.
    fn reason(self) -> Result<Option<String>, Vec<FieldError>> {
        let mut errors = Vec::new();
        self.unknown.report(&Self::FIELDS, &mut errors);
        let reason = self.reason.optional("reason", &mut errors);
        if errors.is_empty() {
            Ok(reason)
        } else {
            Err(errors)
        }
    }
}

/// `POST /calls/{id}/cancel`: 200 + the call `CANCELED` now (it was
/// `PENDING`, or was `CANCELED` already); 202 + the call still
/// `IN_PROGRESS` with `cancelRequestedAt` set (it will not be re-dialled,
/// the provider is asked to hang up, and it ends `CANCELED` unless the
/// provider reports it `COMPLETED`).
///
/// # Errors
/// 400 for a malformed id or a bad `reason` (blank, too long, control
/// characters, not a string); 404; 409 when the call is `COMPLETED`,
/// `FAILED` or `EXPIRED`; 415 for a non-empty body that is not JSON; 503.
pub async fn cancel(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
    OptionalJsonBody(request): OptionalJsonBody<CancelRequest>,
) -> Result<Response, ApiError> {
    record_call_id(id);
    let reason = match request {
        Some(request) => request.reason().map_err(ApiError::Invalid)?,
        None => None,
    };
    let canceled = state.engine().cancel_call(id, reason.as_deref()).await?;
    let status = match &canceled {
        Canceled::Requested(_) => StatusCode::ACCEPTED,
        Canceled::Canceled(_) | Canceled::AlreadyCanceled(_) => StatusCode::OK,
    };
    Ok((status, Json(canceled.call())).into_response())
}

/// `POST /calls/{id}/retry`: 201 + a new `PENDING` call with the payload
/// and callback URL of the original and `retryOf` = its id; the original
/// stays as it is. With an `Idempotency-Key` seen before, 201 + the first
/// retry and `Idempotent-Replayed: true`, as on `POST /calls`.
///
/// # Errors
/// 400 for a malformed id or `Idempotency-Key`; 404; 409 when the call is
/// `PENDING`, `IN_PROGRESS` or `COMPLETED`; 422 when the key was used for
/// another request; 503.
pub async fn retry(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    record_call_id(id);
    let key = idempotency_key(&headers).map_err(|error| ApiError::Invalid(vec![error]))?;
    let created = state.engine().retry_call(id, key).await?;
    if !created.created && created.call.retry_of != Some(id) {
        return Err(ApiError::IdempotencyKeyReused(format!(
            "this Idempotency-Key was first used for call {}, which does not retry call {id}; use a new key",
            created.call.id
        )));
    }
    Ok(created_response(&created))
}

/// The answer of `GET /calls/{id}/attempts`.
#[derive(Debug, Serialize)]
pub struct AttemptList {
    /// Every dial of the call, in dial order.
    pub items: Vec<Attempt>,
}

/// `GET /calls/{id}/attempts`: 200 `{"items": [Attempt]}`, every dial of
/// the call in dial order (empty before the first dial).
///
/// # Errors
/// 400 for a malformed id; 404; 503.
pub async fn attempts(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
) -> Result<Json<AttemptList>, ApiError> {
    record_call_id(id);
    let items = state.engine().attempts(id).await?;
    Ok(Json(AttemptList { items }))
}
