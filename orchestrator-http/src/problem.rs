//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error answer of the API, including axum's own rejections, unknown
//! routes, wrong methods, over-large bodies and timeouts, is a [`Problem`]:
//!
//! ```json
//! {"type": "/problems/validation", "title": "Invalid request", "status": 400,
//!  "detail": "to: phone number must start with '+' ...",
//!  "errors": [{"field": "to", "message": "phone number must start with '+' ..."}]}
//! ```
//!
//! `errors` (an extension member, RFC 9457 section 3.2) names the field(s) at
//! fault and is present only when some are: body fields by their JSON name
//! (`to`, `scriptId`, `notBefore`), query parameters by name (`status`,
//! `pageSize`), the path segment as `id`, and headers by their name
//! (`Idempotency-Key`, `webhook-signature`).
//!
//! One exception: a request hyper's HTTP/1 parser cannot read (a control
//! character in a header value, headers over its size limit, a malformed
//! request line) is answered by hyper itself with a bare 400, 431 or 414 and
//! the connection closed, before any layer of ours runs; hyper offers no
//! hook for that answer. Its `ignore_invalid_headers` option would let the
//! request through without the offending header instead, which is worse: a
//! dropped `Idempotency-Key` would create a second call.
//!
//! [`ApiError::parts`] is the one mapping from an error to its status, problem
//! type and title. A 5xx never carries internals: the client gets a generic
//! detail, and the cause is logged once, by the [`log_server_errors`] layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orchestrator_core::store::StoreError;
use orchestrator_core::validate::Invalid;
use orchestrator_core::EngineError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Credentials;
use crate::signature::SignatureError;

/// The media type of problem documents (RFC 9457 section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Problem types of this API. They are URI references relative to the
/// server (RFC 9457 section 3.1.1); `about:blank` is used where the HTTP
/// status says everything (RFC 9457 section 4.2.1).
pub mod types {
    /// The request is well-formed but a value in it is invalid; see `errors`.
    pub const VALIDATION: &str = "/problems/validation";
    /// The body is not JSON, or not the JSON shape expected.
    pub const MALFORMED_BODY: &str = "/problems/malformed-body";
    /// No call has this id (or this provider call id).
    pub const CALL_NOT_FOUND: &str = "/problems/call-not-found";
    /// The call's status does not allow the change (e.g. PATCH after dialling).
    pub const CALL_NOT_PENDING: &str = "/problems/call-not-pending";
    /// The call's status does not allow the action (cancel a completed
    /// call, retry a pending one).
    pub const CALL_STATUS_CONFLICT: &str = "/problems/call-status-conflict";
    /// An `Idempotency-Key` was reused with a different request.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "/problems/idempotency-key-reused";
    /// The operation requires an API key, and the request had none or a wrong one.
    pub const UNAUTHENTICATED: &str = "/problems/unauthenticated";
    /// The webhook signature is missing or wrong.
    pub const INVALID_SIGNATURE: &str = "/problems/invalid-signature";
    /// The store cannot be reached; retry later.
    pub const STORE_UNAVAILABLE: &str = "/problems/store-unavailable";
    /// The request did not complete within the server's request timeout.
    pub const TIMEOUT: &str = "/problems/timeout";
    /// An unexpected server error; details are in the server's log.
    pub const INTERNAL: &str = "/problems/internal";
    /// The status code says it all (RFC 9457 section 4.2.1).
    pub const ABOUT_BLANK: &str = "about:blank";
}

/// One field at fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field: a JSON member (`scriptId`), query parameter (`pageSize`),
    /// path parameter (`id`) or header (`Idempotency-Key`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<Invalid> for FieldError {
    fn from(invalid: Invalid) -> Self {
        Self::new(invalid.field, invalid.message)
    }
}

/// An RFC 9457 problem details document, as this API writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/validation",
    "title": "Invalid request",
    "status": 400,
    "detail": "scriptId: is required",
    "errors": [{"field": "scriptId", "message": "is required"}]
}))]
pub struct Problem {
    /// The problem type, a URI reference relative to the server, or
    /// `about:blank` when the status says it all.
    #[serde(rename = "type")]
    #[schema(example = "/problems/validation")]
    pub problem_type: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// The fields at fault, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response()
    }
}

/// Everything a handler, extractor or middleware of this API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Values in the request are invalid (400).
    #[error("{}", summarise(.0))]
    Invalid(Vec<FieldError>),
    /// The body is not JSON, or not the JSON shape expected (400).
    #[error("{0}")]
    MalformedBody(String),
    /// The path could not be decoded (400).
    #[error("{0}")]
    MalformedPath(String),
    /// The query string could not be decoded (400).
    #[error("{0}")]
    MalformedQuery(String),
    /// The body is not `application/json` (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body exceeds the limit, in bytes (413).
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// No call with this id (404).
    #[error("{0}")]
    CallNotFound(String),
    /// No route for this path (404).
    #[error("no resource at {0}")]
    RouteNotFound(String),
    /// The call is not `PENDING` any more (409).
    #[error("{0}")]
    CallNotPending(String),
    /// The call's status does not allow the action, e.g. canceling a
    /// `COMPLETED` call or retrying a `PENDING` one (409).
    #[error("{0}")]
    CallStatusConflict(String),
    /// An `Idempotency-Key` was reused with a different payload (422).
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// The webhook signature was refused (401).
    #[error("{0}")]
    Unauthorized(SignatureError),
    /// A platform's webhook (Vapi, Retell) failed that platform's
    /// authentication scheme (401), naming the header at fault.
    #[error("{message}")]
    PlatformUnauthorized {
        /// The header at fault, e.g. `x-signature`.
        header: &'static str,
        /// What is wrong, without secrets.
        message: String,
        /// The `WWW-Authenticate` challenge, e.g. `Vapi realm="callbacks"`.
        challenge: &'static str,
    },
    /// The operation requires an API key, and the request had none or a
    /// wrong one (401).
    #[error("{0}")]
    Unauthenticated(Credentials),
    /// The store cannot be reached (503); the cause is logged, not sent.
    #[error("store unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The request did not complete in time (503).
    #[error("the request did not complete within {0:?}")]
    Timeout(Duration),
    /// Anything else (500); the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Most field errors reported in one problem document: a hostile body with
/// thousands of unknown members must not get a megabyte of answer.
pub const MAX_REPORTED_ERRORS: usize = 20;

fn summarise(errors: &[FieldError]) -> String {
    let mut summary = errors
        .iter()
        .take(MAX_REPORTED_ERRORS)
        .map(|error| format!("{}: {}", error.field, error.message))
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > MAX_REPORTED_ERRORS {
        summary.push_str(&format!(
            "; and {} more",
            errors.len() - MAX_REPORTED_ERRORS
        ));
    }
    summary
}

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(field, message)])
    }

    /// The one mapping of errors to `(status, problem type, title)`.
    #[must_use]
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use types::*;
        match self {
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, VALIDATION, "Invalid request"),
            ApiError::MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                MALFORMED_BODY,
                "Malformed request body",
            ),
            ApiError::MalformedPath(_) | ApiError::MalformedQuery(_) => {
                (StatusCode::BAD_REQUEST, ABOUT_BLANK, "Bad Request")
            }
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ABOUT_BLANK,
                "Unsupported Media Type",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ABOUT_BLANK,
                "Content Too Large",
            ),
            ApiError::CallNotFound(_) => (StatusCode::NOT_FOUND, CALL_NOT_FOUND, "Call not found"),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, ABOUT_BLANK, "Not Found"),
            ApiError::CallNotPending(_) => (
                StatusCode::CONFLICT,
                CALL_NOT_PENDING,
                "Call is not pending",
            ),
            ApiError::CallStatusConflict(_) => (
                StatusCode::CONFLICT,
                CALL_STATUS_CONFLICT,
                "Call status does not allow this",
            ),
            ApiError::IdempotencyKeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                IDEMPOTENCY_KEY_REUSED,
                "Idempotency key reused",
            ),
            ApiError::Unauthorized(_) | ApiError::PlatformUnauthorized { .. } => (
                StatusCode::UNAUTHORIZED,
                INVALID_SIGNATURE,
                "Invalid webhook signature",
            ),
            ApiError::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                UNAUTHENTICATED,
                "Authentication required",
            ),
            ApiError::StoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                STORE_UNAVAILABLE,
                "Store unavailable",
            ),
            ApiError::Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TIMEOUT,
                "Request timed out",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                INTERNAL,
                "Internal server error",
            ),
        }
    }

    /// The problem document for this error. Server errors get a generic detail.
    #[must_use]
    pub fn to_problem(&self) -> Problem {
        let (status, problem_type, title) = self.parts();
        let detail = match self {
            ApiError::StoreUnavailable(_) => {
                "the call store cannot be reached right now; retry later".to_owned()
            }
            ApiError::Internal(_) => {
                "an unexpected error occurred; it has been logged with this request's x-request-id"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Invalid(errors) => errors.iter().take(MAX_REPORTED_ERRORS).cloned().collect(),
            ApiError::Unauthorized(error) => {
                vec![FieldError::new(error.header(), error.to_string())]
            }
            ApiError::PlatformUnauthorized {
                header, message, ..
            } => vec![FieldError::new(*header, message.clone())],
            ApiError::Unauthenticated(error) => {
                vec![FieldError::new("Authorization", error.to_string())]
            }
            _ => Vec::new(),
        };
        Problem {
            problem_type: problem_type.to_owned(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    /// The problem document, with the headers its status calls for. Pure: a
    /// server error's cause rides along in the response's extensions, for
    /// [`log_server_errors`] to log once.
    fn into_response(self) -> Response {
        let mut response = self.to_problem().into_response();
        match &self {
            // RFC 9110 section 15.5.2: a 401 carries a challenge. Standard
            // Webhooks has no registered scheme; the token names what is expected.
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("StandardWebhooks realm=\"call-status\""),
                );
            }
            ApiError::PlatformUnauthorized { challenge, .. } => {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            // RFC 6750 section 3: the challenge names the scheme, and an
            // error code when a token was presented but is wrong.
            ApiError::Unauthenticated(credentials) => {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(match credentials {
                        Credentials::Missing => "Bearer realm=\"orchestrator\"",
                        Credentials::Invalid => {
                            "Bearer realm=\"orchestrator\", error=\"invalid_token\""
                        }
                    }),
                );
            }
            // RFC 9110 section 10.2.3: tell clients when to come back.
            ApiError::StoreUnavailable(_) | ApiError::Timeout(_) => {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if response.status().is_server_error() {
            response
                .extensions_mut()
                .insert(ServerError(Arc::new(self)));
        }
        response
    }
}

/// A server error whose cause is to be logged, on its way from
/// [`ApiError::into_response`] to [`log_server_errors`].
#[derive(Clone, Debug)]
struct ServerError(Arc<ApiError>);

/// Middleware: logs the cause of every 5xx [`ApiError`] answer, once, in the
/// request's span. The client got a generic detail; the log has the chain of
/// causes. Store outages and timeouts are warnings (they pass), anything else
/// an error.
pub async fn log_server_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(ServerError(error)) = response.extensions().get::<ServerError>() {
        let cause = ErrorChain(error.as_ref());
        match error.as_ref() {
            ApiError::StoreUnavailable(_) | ApiError::Timeout(_) => {
                tracing::warn!(error = %cause, status = response.status().as_u16(), "request failed");
            }
            _ => {
                tracing::error!(error = %cause, status = response.status().as_u16(), "request failed")
            }
        }
    }
    response
}

/// An error and its sources, joined by `": "`, each printed once.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Invalid(invalid) => ApiError::Invalid(vec![invalid.into()]),
            EngineError::NotFound(message) => ApiError::CallNotFound(message),
            EngineError::Conflict { id, source } => match source.event {
                "cancel" => ApiError::CallStatusConflict(format!(
                    "call {id} is {}; only a PENDING or IN_PROGRESS call can be canceled",
                    source.from
                )),
                "retry" => ApiError::CallStatusConflict(format!(
                    "call {id} is {}; only a FAILED, EXPIRED or CANCELED call can be retried",
                    source.from
                )),
                _ => ApiError::CallNotPending(format!(
                    "call {id} is {}; only a PENDING call can be changed",
                    source.from
                )),
            },
            EngineError::Store(StoreError::Unavailable(source)) => {
                ApiError::StoreUnavailable(StoreError::Unavailable(source))
            }
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

/// Middleware: turns any error answer that is not yet a problem document
/// (axum's 405, tower-http's 413, ...) into one with the same status,
/// keeping the other headers (e.g. `Allow`). A safety net, so clients can
/// rely on `application/problem+json` for every 4xx and 5xx.
pub async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(PROBLEM_JSON));
    if is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let reason = status.canonical_reason().unwrap_or("Error");
    let detail = match status {
        // axum adds the `Allow` header outside this middleware, so it cannot be quoted here.
        StatusCode::METHOD_NOT_ALLOWED => {
            "this resource does not support the method; the Allow header lists those it does"
                .to_owned()
        }
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
        _ => reason.to_owned(),
    };
    let problem = Problem {
        problem_type: types::ABOUT_BLANK.to_owned(),
        title: reason.to_owned(),
        status: status.as_u16(),
        detail,
        errors: Vec::new(),
    };
    // The old body is dropped, so its length and type go with it.
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_do_not_leak_their_cause() {
        let error = ApiError::Internal("password=hunter2 at db:5432".into());
        let problem = error.to_problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("hunter2"));
    }

    #[test]
    fn validation_errors_name_every_field() {
        let error = ApiError::Invalid(vec![
            FieldError::new("to", "must be E.164"),
            FieldError::new("scriptId", "must not be empty"),
        ]);
        let problem = error.to_problem();
        assert_eq!(problem.problem_type, types::VALIDATION);
        assert_eq!(problem.errors.len(), 2);
        assert_eq!(
            problem.detail,
            "to: must be E.164; scriptId: must not be empty"
        );
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "/problems/validation");
        assert_eq!(json["errors"][1]["field"], "scriptId");
    }
}
