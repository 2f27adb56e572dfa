//! The request span every line logged while answering a request is in, and
//! the one way handlers add the call id to it.

use axum::extract::Request;
use tracing::Span;

/// The span of one request: method, path, request id (`x-request-id`), and
/// `call_id`, left empty until a handler calls [`record_call_id`].
pub(crate) fn request_span(request: &Request) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        call_id = tracing::field::Empty,
    )
}

/// Records the call id in the current request's span, so every line logged
/// for a call-related request carries it.
pub(crate) fn record_call_id(id: impl std::fmt::Display) {
    Span::current().record("call_id", tracing::field::display(id));
}
