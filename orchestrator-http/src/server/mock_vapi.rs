//! The mock provider's Vapi dialect (`mock-provider --dialect vapi`): a
//! stand-in for Vapi's API, so a Vapi-shaped run works end to end without
//! an account. It follows the contract the Vapi adapter relies on
//! (see [`crate::platforms::vapi`]):
//!
//! - `POST /call` takes a `CreateCallDTO` (`assistantId`, `phoneNumberId`,
//!   `customer.number` required; 400 `{"message": [...], "error": "Bad
//!   Request", "statusCode": 400}` otherwise) and answers 201 with a Call
//!   (`id`, `status: "queued"`, the `assistantOverrides` sent, `monitor.controlUrl`,
//!   `subscriptionLimits`); with an API key configured, a wrong `Authorization:
//!   Bearer` is 401.
//! - `GET /call/{id}` answers the call as it stands; 404 when unknown.
//! - `POST /control/{id}` with `{"type": "end-call"}` ends a live call with
//!   `endedReason` `manually-canceled`.
//! - Vapi-shaped server messages go to the configured server URL (the
//!   orchestrator's `/callbacks/vapi`): `status-update` `ringing`,
//!   `in-progress`, `ended`, then `end-of-call-report`, each signed as
//!   Vapi's HMAC credential signs by default (`x-timestamp` in Unix
//!   seconds, `x-signature` = hex HMAC-SHA256 of `"{timestamp}.{body}"`)
//!   when a secret is set. Like Vapi by default, nothing is re-sent.
//!
//! Outcomes are drawn from the mock's outcome mix and sent as Vapi reasons:
//! COMPLETED `customer-ended-call`, FAILED `twilio-failed-to-connect-call`,
//! BUSY `customer-busy`, NO_ANSWER `customer-did-not-answer`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orchestrator_core::simulated::OutcomeMix;
use orchestrator_core::ReportedStatus;
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::Url;
use serde_json::{json, Value};

use crate::platforms::vapi::webhook::{VapiSecret, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::provider::ApiKey;

/// How the Vapi mock behaves.
#[derive(Clone, Debug)]
pub struct MockVapiConfig {
    /// Time from a created call to its end.
    pub call_duration: Duration,
    /// Weights of the outcomes.
    pub outcomes: OutcomeMix,
    /// Where server messages go, e.g. `http://127.0.0.1:8080/callbacks/vapi`.
    pub server_url: Url,
    /// Signs server messages (HMAC) when set.
    pub secret: Option<VapiSecret>,
    /// Requires `Authorization: Bearer {key}` when set.
    pub api_key: Option<ApiKey>,
    /// The mock's own base URL, for `monitor.controlUrl`.
    pub public_url: Url,
    /// Seed of the outcome draws.
    pub seed: u64,
}

struct Inner {
    config: MockVapiConfig,
    rng: StdRng,
    calls: HashMap<String, Value>,
}

/// The Vapi mock. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct MockVapi {
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for MockVapi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVapi").finish_non_exhaustive()
    }
}

impl MockVapi {
    /// A mock behaving as `config` says.
    ///
    /// # Errors
    /// When the HTTP client for server messages cannot be built.
    pub fn new(config: MockVapiConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                calls: HashMap::new(),
            })),
            client,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mock's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/call", post(create_call))
            .route("/call/{id}", get(get_call))
            .route("/control/{id}", post(control))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(self.clone())
    }

    /// Sends `message` to the server URL, signed when a secret is set.
    async fn send(&self, message: Value) {
        let (url, secret) = {
            let inner = self.lock();
            (inner.config.server_url.clone(), inner.config.secret.clone())
        };
        let body = json!({"message": message}).to_string();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json");
        if let Some(secret) = &secret {
            let timestamp = chrono::Utc::now().timestamp().to_string();
            request = request
                .header(SIGNATURE_HEADER, secret.sign(&timestamp, body.as_bytes()))
                .header(TIMESTAMP_HEADER, timestamp);
        }
        match request.body(body).send().await {
            Ok(response) => {
                tracing::info!(status = %response.status(), message_type = %message["type"], "Vapi server message sent");
            }
            Err(error) => tracing::warn!(%error, "Vapi server message not delivered"),
        }
    }

    /// Plays one call: ringing, in progress, then its end after the call
    /// duration, unless it was ended (hung up) meanwhile.
    async fn play(self, id: String, status: ReportedStatus) {
        let duration = self.lock().config.call_duration;
        for step in ["ringing", "in-progress"] {
            let Some(call) = self.set_status(&id, step) else {
                return;
            };
            self.send(json!({"type": "status-update", "status": step, "call": call}))
                .await;
        }
        tokio::time::sleep(duration).await;
        let reason = match status {
            ReportedStatus::Completed => "customer-ended-call",
            ReportedStatus::Busy => "customer-busy",
            ReportedStatus::NoAnswer => "customer-did-not-answer",
            _ => "twilio-failed-to-connect-call",
        };
        self.end(&id, reason).await;
    }

    /// Sets a live call's status; `None` when it has ended.
    fn set_status(&self, id: &str, status: &str) -> Option<Value> {
        let mut inner = self.lock();
        let call = inner.calls.get_mut(id)?;
        if call["status"] == "ended" {
            return None;
        }
        call["status"] = json!(status);
        Some(call.clone())
    }

    /// Ends a live call with `reason` and sends its two terminal messages.
    async fn end(&self, id: &str, reason: &str) {
        let Some(mut call) = self.set_status(id, "ended") else {
            return;
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        call["endedReason"] = json!(reason);
        call["endedAt"] = json!(now);
        self.lock().calls.insert(id.to_owned(), call.clone());
        self.send(json!({"type": "status-update", "status": "ended", "endedReason": reason, "call": call}))
            .await;
        self.send(json!({
            "type": "end-of-call-report",
            "endedReason": reason,
            "call": call,
            "startedAt": call["startedAt"],
            "endedAt": now,
            "artifact": {"transcript": "AI: Hello, this is a mock call.", "messages": []},
            "analysis": {},
        }))
        .await;
    }
}

async fn create_call(
    State(mock): State<MockVapi>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut guard = mock.lock();
    let inner = &mut *guard;
    if let Some(key) = &inner.config.api_key {
        let sent = headers.get("authorization").and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {}", key.expose()).as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa.", "error": "Unauthorized", "statusCode": 401})),
            )
                .into_response();
        }
    }
    let missing: Vec<String> = [
        ("assistantId", body["assistantId"].is_string()),
        ("phoneNumberId", body["phoneNumberId"].is_string()),
        ("customer.number", body["customer"]["number"].is_string()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(field, _)| format!("{field} must be a string"))
    .collect();
    if !missing.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": missing, "error": "Bad Request", "statusCode": 400})),
        )
            .into_response();
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let call = json!({
        "id": id,
        "orgId": "mock-org",
        "type": "outboundPhoneCall",
        "createdAt": now,
        "updatedAt": now,
        "startedAt": now,
        "status": "queued",
        "assistantId": body["assistantId"],
        "phoneNumberId": body["phoneNumberId"],
        "customer": body["customer"],
        "name": body["name"],
        "assistantOverrides": body["assistantOverrides"],
        "monitor": {"controlUrl": format!("{}control/{id}", inner.config.public_url)},
    });
    inner.calls.insert(id.clone(), call.clone());
    let status = inner.config.outcomes.pick(&mut inner.rng);
    drop(guard);
    tracing::info!(provider_call_id = %id, "call created");
    tokio::spawn(mock.clone().play(id, status));
    let mut answer = call;
    answer["subscriptionLimits"] =
        json!({"concurrencyBlocked": false, "concurrencyLimit": 10, "remainingConcurrentCalls": 9});
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn get_call(State(mock): State<MockVapi>, Path(id): Path<String>) -> Response {
    match mock.lock().calls.get(&id) {
        Some(call) => Json(call.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Not Found", "statusCode": 404})),
        )
            .into_response(),
    }
}

async fn control(
    State(mock): State<MockVapi>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    if body["type"] != "end-call" {
        return StatusCode::BAD_REQUEST;
    }
    if !mock.lock().calls.contains_key(&id) {
        return StatusCode::NOT_FOUND;
    }
    tracing::info!(provider_call_id = %id, "call ended by control");
    let ended = mock.clone();
    tokio::spawn(async move { ended.end(&id, "manually-canceled").await });
    StatusCode::OK
}
