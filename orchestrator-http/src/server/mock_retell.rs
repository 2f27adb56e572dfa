//! The mock provider's Retell dialect (`mock-provider --dialect retell`):
//! Retell's API as the Retell adapter uses it, and Retell-shaped,
//! Retell-signed webhooks, so a Retell run can be tried end to end without
//! an account.
//!
//! - `POST /v2/create-phone-call` (bearer key required): 201 with a call
//!   object, `call_status: registered`; 400 without `from_number` and
//!   `to_number`; 500 and 429 at the configured fault rates.
//! - `GET /v2/get-call/{call_id}`: the call object as it stands; 404 unknown.
//! - `POST /v2/stop-call/{call_id}`: ends a call still going with
//!   `manual_stopped` (its `call_ended` is sent at once); 204; 404 unknown.
//! - Webhooks to the configured URL, signed `x-retell-signature` with the API
//!   key: a connected call gets `call_started`, then after the call duration
//!   `call_ended` and `call_analyzed`; a call that does not connect gets only
//!   the last two, as Retell documents. Each is re-sent with back-off until a
//!   2xx, at most `webhook_attempts` times.
//!
//! The outcome mix maps to `disconnection_reason`: `COMPLETED` →
//! `user_hangup`, `BUSY` → `dial_busy`, `NO_ANSWER` → `dial_no_answer`,
//! `FAILED` → `error_unknown` (`call_status: error`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orchestrator_core::ReportedStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Url;
use serde_json::{json, Value};

use crate::platforms::retell::RetellWebhookKey;
use crate::provider::ApiKey;
use crate::server::mock_provider::MockProviderConfig;

struct Inner {
    config: MockProviderConfig,
    rng: StdRng,
    calls: HashMap<String, Value>,
    started: u64,
}

/// The Retell dialect of the mock. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct RetellMock {
    inner: Arc<Mutex<Inner>>,
    api_key: ApiKey,
    webhook_url: Url,
    client: reqwest::Client,
}

impl std::fmt::Debug for RetellMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetellMock")
            .field("webhook_url", &self.webhook_url.as_str())
            .finish_non_exhaustive()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

impl RetellMock {
    /// A mock behaving as `config` says (its `api_key` is ignored: `api_key`
    /// is required here, as Retell signs webhooks with it), sending its
    /// webhooks to `webhook_url` (the orchestrator's `/callbacks/retell`).
    ///
    /// # Errors
    /// When the HTTP client for webhooks cannot be built.
    pub fn new(
        config: MockProviderConfig,
        api_key: ApiKey,
        webhook_url: Url,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                calls: HashMap::new(),
                started: 0,
            })),
            api_key,
            webhook_url,
            client,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mock's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v2/create-phone-call", post(create_phone_call))
            .route("/v2/get-call/{call_id}", get(get_call))
            .route("/v2/stop-call/{call_id}", post(stop_call))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {}", self.api_key.expose()).as_str())
    }

    /// Sets the call's state; `None` when it had already ended.
    fn end(
        &self,
        call_id: &str,
        call_status: &str,
        reason: &str,
        duration: Duration,
    ) -> Option<Value> {
        let mut inner = self.lock();
        let call = inner.calls.get_mut(call_id)?;
        if matches!(
            call["call_status"].as_str(),
            Some("ended" | "not_connected" | "error")
        ) {
            return None;
        }
        let now = chrono::Utc::now().timestamp_millis();
        call["call_status"] = json!(call_status);
        call["disconnection_reason"] = json!(reason);
        call["end_timestamp"] = json!(now);
        call["duration_ms"] = json!(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        Some(call.clone())
    }

    /// Sends one event, signed, re-sending with back-off (0.25 s doubling,
    /// at most 4 s) until a 2xx or the attempts run out.
    async fn send(&self, event: &str, call: &Value) {
        let body = json!({"event": event, "call": call}).to_string();
        let key = RetellWebhookKey::new(self.api_key.clone());
        let attempts = self.lock().config.webhook_attempts.max(1);
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=attempts {
            let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            let sent = self
                .client
                .post(self.webhook_url.clone())
                .header("content-type", "application/json")
                .header("x-retell-signature", key.sign(body.as_bytes(), now_ms))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(event, call_id = %call["call_id"], "retell webhook delivered");
                    return;
                }
                Ok(response) => {
                    tracing::warn!(event, attempt, status = %response.status(), "retell webhook refused")
                }
                Err(error) => {
                    tracing::warn!(event, attempt, %error, "retell webhook not delivered")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }

    /// One call's life: its events, in Retell's order.
    async fn live(self, call_id: String, outcome: ReportedStatus) {
        let duration = self.lock().config.call_duration;
        let connected = matches!(outcome, ReportedStatus::Completed);
        if connected {
            let started = {
                let mut inner = self.lock();
                inner.calls.get_mut(&call_id).map(|call| {
                    call["call_status"] = json!("ongoing");
                    call["start_timestamp"] = json!(chrono::Utc::now().timestamp_millis());
                    call.clone()
                })
            };
            if let Some(call) = started {
                self.send("call_started", &call).await;
            }
        }
        tokio::time::sleep(duration).await;
        let (status, reason) = match outcome {
            ReportedStatus::Completed => ("ended", "user_hangup"),
            ReportedStatus::Busy => ("not_connected", "dial_busy"),
            ReportedStatus::NoAnswer => ("not_connected", "dial_no_answer"),
            _ => ("error", "error_unknown"),
        };
        // A stopped call has already sent its `call_ended`.
        if let Some(call) = self.end(&call_id, status, reason, duration) {
            self.send("call_ended", &call).await;
            let mut analyzed = call;
            analyzed["call_analysis"] =
                json!({"call_summary": "A mock call.", "call_successful": connected});
            self.send("call_analyzed", &analyzed).await;
        }
    }
}

async fn create_phone_call(
    State(mock): State<RetellMock>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !mock.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "API key is missing or invalid.");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let numbers = body
        .get("from_number")
        .and_then(Value::as_str)
        .zip(body.get("to_number").and_then(Value::as_str));
    if numbers.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid request format, please check API reference.",
        );
    }
    let (call, outcome) = {
        let mut guard = mock.lock();
        let inner = &mut *guard;
        let roll: f64 = inner.rng.random();
        if roll < inner.config.server_error_rate {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected server error occurred.",
            );
        }
        if roll < inner.config.server_error_rate + inner.config.capacity_rate {
            let retry_after = inner.config.retry_after.as_secs().to_string();
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Account rate limited, please throttle your requests.",
            );
            if let Ok(value) = retry_after.parse() {
                response.headers_mut().insert("retry-after", value);
            }
            return response;
        }
        inner.started += 1;
        let call_id = format!("mock_retell_{}", inner.started);
        let outcome = inner.config.outcomes.pick(&mut inner.rng);
        let mut call = json!({
            "call_type": "phone_call",
            "call_id": call_id,
            "agent_id": body.get("override_agent_id").cloned().unwrap_or(json!("mock_agent")),
            "agent_version": 1,
            "call_status": "registered",
            "direction": "outbound",
            "from_number": body["from_number"],
            "to_number": body["to_number"],
        });
        for member in ["metadata", "retell_llm_dynamic_variables"] {
            if let Some(value) = body.get(member) {
                call[member] = value.clone();
            }
        }
        inner.calls.insert(call_id, call.clone());
        (call, outcome)
    };
    let call_id = call["call_id"].as_str().unwrap_or_default().to_owned();
    tracing::info!(%call_id, ?outcome, "retell call registered");
    tokio::spawn(mock.clone().live(call_id, outcome));
    (StatusCode::CREATED, Json(call)).into_response()
}

async fn get_call(
    State(mock): State<RetellMock>,
    headers: HeaderMap,
    Path(call_id): Path<String>,
) -> Response {
    if !mock.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "API key is missing or invalid.");
    }
    match mock.lock().calls.get(&call_id) {
        Some(call) => Json(call.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "Call not found."),
    }
}

async fn stop_call(
    State(mock): State<RetellMock>,
    headers: HeaderMap,
    Path(call_id): Path<String>,
) -> Response {
    if !mock.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "API key is missing or invalid.");
    }
    if !mock.lock().calls.contains_key(&call_id) {
        return error(StatusCode::NOT_FOUND, "Call not found.");
    }
    if let Some(call) = mock.end(&call_id, "ended", "manual_stopped", Duration::ZERO) {
        tracing::info!(%call_id, "retell call stopped");
        tokio::spawn(async move { mock.send("call_ended", &call).await });
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Serves `mock` on `listener` until `shutdown` completes.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mock: &RetellMock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, mock.router())
        .with_graceful_shutdown(shutdown)
        .await
}
