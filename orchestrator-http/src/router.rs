//! The HTTP API's router: routes of SPEC section 2 (bare and under `/api/v1`),
//! shared state, the health endpoints and the cross-cutting layers (request
//! id, tracing, problem documents for every error, request timeout, body limit).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use orchestrator_core::{EngineError, Orchestrator};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::problem::{problem_for_bare_errors, ApiError};
use crate::signature::WebhookSecret;
use crate::{calls, metrics, webhook};

/// The prefix under which every route is served a second time, for compatibility.
pub const API_PREFIX: &str = "/api/v1";

/// Bounds on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes (default 64 KiB); larger bodies get 413.
    pub body_bytes: usize,
    /// Longest time to answer one request (default 10 s); slower requests get 503.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    orchestrator: Orchestrator,
    webhook_secret: Option<WebhookSecret>,
    metrics: Option<PrometheusHandle>,
    limits: Limits,
}

impl AppState {
    /// State over `orchestrator`, with no webhook secret and default limits.
    /// Installs the process-wide Prometheus recorder if none is installed yet
    /// (see [`metrics::prometheus_handle`]).
    #[must_use]
    pub fn new(orchestrator: Orchestrator) -> Self {
        Self {
            orchestrator,
            webhook_secret: None,
            metrics: metrics::prometheus_handle(),
            limits: Limits::default(),
        }
    }

    /// Requires a Standard Webhooks signature on every webhook.
    #[must_use]
    pub fn with_webhook_secret(mut self, secret: Option<WebhookSecret>) -> Self {
        self.webhook_secret = secret;
        self
    }

    /// Replaces the request limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The engine.
    #[must_use]
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// The webhook secret, when signatures are required.
    #[must_use]
    pub fn webhook_secret(&self) -> Option<&WebhookSecret> {
        self.webhook_secret.as_ref()
    }

    /// The Prometheus handle, when this process's recorder is ours.
    #[must_use]
    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.metrics.as_ref()
    }

    /// The request limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// The API's routes, mounted at `/` and at [`API_PREFIX`].
///
/// | method and path | handler |
/// |---|---|
/// | `POST /calls`, `GET /calls` | [`calls::create`], [`calls::list`] |
/// | `GET /calls/{id}`, `PATCH /calls/{id}` | [`calls::get`], [`calls::update`] |
/// | `GET /metrics` | [`metrics::scrape`] |
/// | `POST /callbacks/call-status` | [`webhook::call_status`] |
/// | `GET /health`, `GET /ready` | liveness, readiness |
pub fn router(state: AppState) -> Router {
    let api: Router<AppState> = Router::new()
        .route("/calls", post(calls::create).get(calls::list))
        .route("/calls/{id}", get(calls::get).patch(calls::update))
        .route("/metrics", get(metrics::scrape))
        .route("/callbacks/call-status", post(webhook::call_status))
        .route("/health", get(health))
        .route("/ready", get(ready));
    let limits = state.limits;
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default();
                    // `call_id` is filled in by the call handlers, so every
                    // line logged for a call-related request carries it.
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id,
                        call_id = tracing::field::Empty,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(limits.body_bytes));
    Router::new()
        .merge(api.clone())
        .nest(API_PREFIX, api)
        .fallback(unknown_route)
        .layer(layers)
        .with_state(state)
}

/// Records the call id in the request's span (see [`router`]).
pub(crate) fn record_call_id(id: impl std::fmt::Display) {
    tracing::Span::current().record("call_id", tracing::field::display(id));
}

async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::RouteNotFound(request.uri().path().to_owned())
}

/// `GET /health`: the process is up (liveness). Always 200.
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: the store answers (readiness). 200, or 503 as a problem document.
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.orchestrator.ready().await {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(EngineError::Store(error)) => Err(ApiError::StoreUnavailable(error)),
        Err(other) => Err(other.into()),
    }
}
