//! A stand-alone mock of the AI-call provider, over real HTTP, for manual runs
//! and end-to-end tests: it answers the dial requests [`HttpProvider`](crate::HttpProvider)
//! sends and calls the orchestrator's webhook back as a real provider would.
//!
//! - `POST /api/v1/calls` answers `202 {"callId": "mock-<n>"}`, idempotent per
//!   `Idempotency-Key` (a repeat gets the same id and starts nothing); with
//!   an API key configured, a missing or wrong `Authorization: Bearer` is 401;
//!   a body without `to`, `scriptId` or an http(s) `webhookUrl` is 400.
//! - Optionally it answers 503 or 429 (with `Retry-After`) at configured rates.
//! - After the call duration it POSTs `{"callId", "status", "durationSec",
//!   "completedAt"}` to the request's `webhookUrl`, signed with Standard
//!   Webhooks when it has a secret, and re-sends with back-off until a 2xx,
//!   at most [`MockProviderConfig::webhook_attempts`] times (a real provider
//!   retries a 404 too).
//! - `POST /api/v1/calls/{callId}/hangup` (the optional hang-up extension)
//!   ends a live call at once: 200, and its webhook is sent promptly with
//!   status `FAILED` (a call hung up before it completed). A call it does
//!   not know, or one already ended, is 404. Same API key rule as dials.
//! - `GET /health` answers 200.
//!
//! For benchmarks, [`MockProvider::timeline`] tells when each accepted dial
//! arrived and when its webhook was first sent, so slot refill latency and
//! cap utilisation can be read at the provider, as a real provider sees them.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orchestrator_core::simulated::OutcomeMix;
use orchestrator_core::ReportedStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::provider::ApiKey;
use crate::signature::WebhookSecret;

/// How the mock behaves.
#[derive(Clone, Debug)]
pub struct MockProviderConfig {
    /// Time from an accepted dial to its webhook.
    pub call_duration: Duration,
    /// Weights of the reported outcomes.
    pub outcomes: OutcomeMix,
    /// Signs webhooks when set.
    pub webhook_secret: Option<WebhookSecret>,
    /// Requires `Authorization: Bearer {key}` when set.
    pub api_key: Option<ApiKey>,
    /// Fraction of dials answered 503, in `0.0..=1.0`.
    pub server_error_rate: f64,
    /// Fraction of dials answered 429, in `0.0..=1.0`.
    pub capacity_rate: f64,
    /// `Retry-After` sent with a 429, whole seconds.
    pub retry_after: Duration,
    /// Most deliveries of one webhook (the first included).
    pub webhook_attempts: u32,
    /// Seed of the outcome and fault draws.
    pub seed: u64,
}

impl Default for MockProviderConfig {
    /// Calls of 2 s, the default outcome mix (85 % completed), no secret, no
    /// key, no faults, 5 webhook deliveries at most, seed 0.
    fn default() -> Self {
        Self {
            call_duration: Duration::from_secs(2),
            outcomes: OutcomeMix::default(),
            webhook_secret: None,
            api_key: None,
            server_error_rate: 0.0,
            capacity_rate: 0.0,
            retry_after: Duration::from_secs(1),
            webhook_attempts: 5,
            seed: 0,
        }
    }
}

/// An outcome mix written `COMPLETED=85,FAILED=5,BUSY=5,NO_ANSWER=5`
/// (statuses left out weigh 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomeMixArg(pub OutcomeMix);

impl FromStr for OutcomeMixArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = OutcomeMix::zero();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, weight) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not STATUS=WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {weight:?} is not a whole number"))?;
            match name.trim().to_ascii_uppercase().as_str() {
                "COMPLETED" => mix.completed = weight,
                "FAILED" => mix.failed = weight,
                "BUSY" => mix.busy = weight,
                "NO_ANSWER" => mix.no_answer = weight,
                other => {
                    return Err(format!(
                        "unknown status {other:?}; expected COMPLETED, FAILED, BUSY or NO_ANSWER"
                    ))
                }
            }
        }
        if mix.completed + mix.failed + mix.busy + mix.no_answer == 0 {
            return Err("at least one weight must be positive".to_owned());
        }
        Ok(Self(mix))
    }
}

/// One dial request the mock received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedDial {
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// The status the mock answered.
    pub status: u16,
}

/// When one accepted dial arrived and when its webhook was first sent, on
/// this process's monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialTiming {
    /// When the mock accepted the dial (just before answering 202).
    pub arrived: Instant,
    /// When the first delivery of the call's webhook started (after the call
    /// duration, or at once on a hang-up); `None` while the call is live.
    pub webhook_sent: Option<Instant>,
    /// When the orchestrator answered the webhook 2xx (it answers once the
    /// call's attempt is settled); `None` until then.
    pub webhook_answered: Option<Instant>,
}

struct Inner {
    config: MockProviderConfig,
    rng: StdRng,
    by_key: HashMap<String, String>,
    started: u64,
    received: Vec<ReceivedDial>,
    /// Calls started and not ended yet, by provider call id: notified to hang up.
    live: HashMap<String, Arc<Notify>>,
    /// Provider call ids of every hang-up request, in order.
    hang_ups: Vec<String>,
    /// One entry per accepted dial, in acceptance order: `mock-<n>` is entry `n - 1`.
    timeline: Vec<DialTiming>,
}

/// The mock provider. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct MockProvider {
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider").finish_non_exhaustive()
    }
}

impl MockProvider {
    /// A mock behaving as `config` says.
    ///
    /// # Errors
    /// When the HTTP client for webhooks cannot be built.
    pub fn new(config: MockProviderConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                by_key: HashMap::new(),
                started: 0,
                received: Vec::new(),
                live: HashMap::new(),
                hang_ups: Vec::new(),
                timeline: Vec::new(),
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
            .route("/api/v1/calls", post(dial))
            .route("/api/v1/calls/{call_id}/hangup", post(hang_up))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(self.clone())
    }

    /// Every dial request received, in order.
    #[must_use]
    pub fn received(&self) -> Vec<ReceivedDial> {
        self.lock().received.clone()
    }

    /// Webhooks answered with a 2xx.
    #[must_use]
    pub fn webhooks_delivered(&self) -> u64 {
        let answered = self
            .lock()
            .timeline
            .iter()
            .filter(|timing| timing.webhook_answered.is_some())
            .count();
        answered as u64
    }

    /// The provider call ids of every hang-up request received, in order.
    #[must_use]
    pub fn hang_ups(&self) -> Vec<String> {
        self.lock().hang_ups.clone()
    }

    /// When each accepted dial (a 202 that started a call, not an
    /// idempotent repeat) arrived and when its webhook was first sent, in
    /// acceptance order. One entry per call started, kept for the mock's
    /// lifetime (as [`received`](Self::received) keeps every request).
    #[must_use]
    pub fn timeline(&self) -> Vec<DialTiming> {
        self.lock().timeline.clone()
    }

    /// Whether `authorization` is what the configured API key asks for.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let inner = self.lock();
        let Some(key) = &inner.config.api_key else {
            return true;
        };
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {}", key.expose()).as_str())
    }

    /// Decides the answer to one dial and records it.
    fn decide(&self, headers: &HeaderMap, body: Value) -> (StatusCode, Value, Option<Planned>) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let idempotency_key = header("idempotency-key");
        let authorization = header("authorization");
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (status, answer, planned) = 'decide: {
            if let Some(key) = &inner.config.api_key {
                if authorization.as_deref() != Some(format!("Bearer {}", key.expose()).as_str()) {
                    break 'decide (
                        StatusCode::UNAUTHORIZED,
                        json!({"error": "bad api key"}),
                        None,
                    );
                }
            }
            let webhook_url = body
                .get("webhookUrl")
                .and_then(Value::as_str)
                .and_then(|url| reqwest::Url::parse(url).ok())
                .filter(|url| matches!(url.scheme(), "http" | "https"));
            let valid = body.get("to").is_some_and(Value::is_string)
                && body.get("scriptId").is_some_and(Value::is_string);
            let (Some(webhook_url), true) = (webhook_url, valid) else {
                break 'decide (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "to, scriptId and an http(s) webhookUrl are required"}),
                    None,
                );
            };
            if let Some(id) = idempotency_key.as_ref().and_then(|k| inner.by_key.get(k)) {
                break 'decide (StatusCode::ACCEPTED, json!({"callId": id}), None);
            }
            let roll: f64 = inner.rng.random();
            if roll < inner.config.server_error_rate {
                break 'decide (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "busy"}),
                    None,
                );
            }
            if roll < inner.config.server_error_rate + inner.config.capacity_rate {
                break 'decide (
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "at capacity"}),
                    None,
                );
            }
            inner.started += 1;
            let id = format!("mock-{}", inner.started);
            let index = inner.timeline.len();
            inner.timeline.push(DialTiming {
                arrived: Instant::now(),
                webhook_sent: None,
                webhook_answered: None,
            });
            let hung_up = Arc::new(Notify::new());
            inner.live.insert(id.clone(), Arc::clone(&hung_up));
            if let Some(key) = &idempotency_key {
                inner.by_key.insert(key.clone(), id.clone());
            }
            let status = inner.config.outcomes.pick(&mut inner.rng);
            let planned = Planned {
                index,
                provider_call_id: id.clone(),
                webhook_url,
                status,
                hung_up,
            };
            (StatusCode::ACCEPTED, json!({"callId": id}), Some(planned))
        };
        inner.received.push(ReceivedDial {
            idempotency_key,
            authorization,
            body,
            status: status.as_u16(),
        });
        (status, answer, planned)
    }

    /// Sends the webhook of one call after its duration, re-sending with
    /// back-off (0.25 s doubling, at most 4 s) until a 2xx or the attempts run out.
    async fn call_back(self, planned: Planned) {
        let (duration, secret, attempts) = {
            let inner = self.lock();
            (
                inner.config.call_duration,
                inner.config.webhook_secret.clone(),
                inner.config.webhook_attempts.max(1),
            )
        };
        let started = tokio::time::Instant::now();
        let status = tokio::select! {
            biased;
            () = planned.hung_up.notified() => ReportedStatus::Failed,
            () = tokio::time::sleep(duration) => planned.status,
        };
        {
            let mut inner = self.lock();
            inner.live.remove(&planned.provider_call_id);
            inner.timeline[planned.index].webhook_sent = Some(Instant::now());
        }
        let body = json!({
            "callId": planned.provider_call_id,
            "status": status.as_str(),
            "durationSec": started.elapsed().as_secs(),
            "completedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .to_string();
        // One message id for every re-send, as Standard Webhooks asks.
        let message_id = format!("msg_{}", planned.provider_call_id);
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=attempts {
            let mut request = self
                .client
                .post(planned.webhook_url.clone())
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(secret) = &secret {
                let signed = secret.sign_headers(
                    &message_id,
                    chrono::Utc::now().timestamp(),
                    body.as_bytes(),
                );
                request = request
                    .header("webhook-id", signed.id)
                    .header("webhook-timestamp", signed.timestamp.to_string())
                    .header("webhook-signature", signed.signature);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    self.lock().timeline[planned.index].webhook_answered = Some(Instant::now());
                    tracing::info!(provider_call_id = %planned.provider_call_id, status = status.as_str(), "webhook delivered");
                    return;
                }
                Ok(response) => {
                    tracing::warn!(provider_call_id = %planned.provider_call_id, attempt, status = %response.status(), "webhook refused");
                }
                Err(error) => {
                    tracing::warn!(provider_call_id = %planned.provider_call_id, attempt, %error, "webhook not delivered");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }
}

/// A webhook to send later.
struct Planned {
    /// The call's entry in [`Inner::timeline`].
    index: usize,
    provider_call_id: String,
    webhook_url: reqwest::Url,
    status: ReportedStatus,
    /// Notified when the call is hung up.
    hung_up: Arc<Notify>,
}

async fn dial(
    State(mock): State<MockProvider>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let (status, answer, planned) = mock.decide(&headers, parsed);
    if let Some(planned) = planned {
        tracing::info!(provider_call_id = %planned.provider_call_id, "call started");
        tokio::spawn(mock.clone().call_back(planned));
    }
    let mut response = (status, Json(answer)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = mock.lock().config.retry_after.as_secs().to_string();
        if let Ok(value) = retry_after.parse() {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

/// `POST /api/v1/calls/{callId}/hangup`: ends a live call (its webhook
/// follows at once), or 404 for a call that is unknown or ended.
async fn hang_up(
    State(mock): State<MockProvider>,
    Path(call_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !mock.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad api key"})),
        )
            .into_response();
    }
    let live = {
        let mut inner = mock.lock();
        inner.hang_ups.push(call_id.clone());
        inner.live.remove(&call_id)
    };
    match live {
        Some(hung_up) => {
            tracing::info!(provider_call_id = %call_id, "call hung up");
            hung_up.notify_one();
            (StatusCode::OK, Json(json!({"callId": call_id}))).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no live call with this id"})),
        )
            .into_response(),
    }
}

/// Serves `mock` on `listener` until `shutdown` completes.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mock: &MockProvider,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, mock.router())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_mixes_parse_and_name_their_mistakes() {
        let OutcomeMixArg(mix) = "COMPLETED=7, busy=3".parse().unwrap();
        assert_eq!(
            (mix.completed, mix.failed, mix.busy, mix.no_answer),
            (7, 0, 3, 0)
        );
        assert!("COMPLETED=x".parse::<OutcomeMixArg>().is_err());
        assert!("RINGING=1"
            .parse::<OutcomeMixArg>()
            .unwrap_err()
            .contains("RINGING"));
        assert!("COMPLETED=0".parse::<OutcomeMixArg>().is_err());
    }
}
