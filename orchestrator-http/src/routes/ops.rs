//! The operational endpoints: liveness, readiness, the call counts and
//! metrics, and the API's own description.
//!
//! `GET /metrics` answers by default the flat JSON map of call counts per
//! status, every status present and zero-filled (`{"PENDING":n,...}`). A
//! client whose `Accept` prefers `text/plain` or
//! `application/openmetrics-text` (a Prometheus scraper does) gets the
//! Prometheus text format 0.0.4 instead, which Prometheus accepts even when it
//! asked for OpenMetrics first; see [`crate::metrics`] for what it holds.
//!
//! While the store cannot be reached, the Prometheus text is still served
//! (200) with `orchestrator_store_up 0` and the process's own series, so a
//! scraper keeps them through an outage; the JSON map, which holds nothing
//! but the store's counts, is a 503 problem document then, rather than
//! counts made up.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_core::store::StoreError;
use orchestrator_core::EngineError;
use serde_json::json;

use crate::metrics::{prometheus_text, PROMETHEUS_TEXT};
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /health`: the process is up (liveness). Always 200 `{"status": "ok"}`.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: the store answers (readiness): 200 `{"status": "ready"}`.
///
/// # Errors
/// 503 as a problem document when the store cannot be reached.
pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let ready = state.engine().ready().await;
    state.observe_store(&ready);
    match ready {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(EngineError::Store(error)) => Err(ApiError::StoreUnavailable(error)),
        Err(other) => Err(other.into()),
    }
}

/// `GET /metrics`; see the module documentation.
///
/// # Errors
/// 503 for JSON when the store cannot be counted.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let counts = state.engine().counts().await;
    state.observe_store(&counts);
    let mut response = match negotiate(&headers) {
        Format::Json => Json(counts?).into_response(),
        Format::Prometheus => {
            let counts = match counts {
                Ok(counts) => Some(counts),
                // Logged as a transition by `observe_store`, not per scrape.
                Err(EngineError::Store(StoreError::Unavailable(_))) => None,
                Err(other) => return Err(other.into()),
            };
            let cap = state.engine().config().max_concurrent_calls;
            let text = prometheus_text(counts.as_ref(), cap, state.metrics());
            (
                [(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))],
                text,
            )
                .into_response()
        }
    };
    // The representation depends on Accept: caches must key on it.
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    Ok(response)
}

/// `GET /openapi.json`: the OpenAPI 3.1 description of this API (see
/// [`crate::openapi`]), as `application/json`.
pub async fn openapi() -> Response {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| Bytes::from(crate::openapi::document_json()));
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.clone(),
    )
        .into_response()
}

/// Which representation of the metrics the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Prometheus,
}

/// Picks Prometheus text when the best quality (RFC 9110 section 12.5.1)
/// given to `text/plain` or `application/openmetrics-text` is positive and
/// beats the one given to `application/json`; JSON otherwise, including for
/// no `Accept`, `*/*` and ties.
fn negotiate(headers: &HeaderMap) -> Format {
    let (mut json, mut prometheus) = (0.0_f32, 0.0_f32);
    let ranges = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for range in ranges {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|parameter| parameter.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .filter(|q| q.is_finite())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" => json = json.max(quality),
            "text/plain" | "application/openmetrics-text" => prometheus = prometheus.max(quality),
            _ => {}
        }
    }
    if prometheus > 0.0 && prometheus > json {
        Format::Prometheus
    } else {
        Format::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_is_the_default() {
        assert_eq!(negotiate(&HeaderMap::new()), Format::Json);
        assert_eq!(negotiate(&accept("*/*")), Format::Json);
        assert_eq!(negotiate(&accept("application/json")), Format::Json);
        assert_eq!(
            negotiate(&accept("text/html,application/xhtml+xml,*/*;q=0.8")),
            Format::Json
        );
        assert_eq!(
            negotiate(&accept("application/json, text/plain")),
            Format::Json
        );
    }

    #[test]
    fn prometheus_scrapers_get_text() {
        assert_eq!(negotiate(&accept("text/plain")), Format::Prometheus);
        assert_eq!(
            negotiate(&accept("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(&accept("application/json;q=0.5, text/plain")),
            Format::Prometheus
        );
        assert_eq!(negotiate(&accept("text/plain;q=0")), Format::Json);
    }
}
