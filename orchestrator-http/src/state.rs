//! What every handler shares: the engine, the webhook secret, the API keys,
//! the metrics handle, the request limits, and what was last seen of the
//! store's health.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use orchestrator_core::store::StoreError;
use orchestrator_core::{Engine, EngineError};
use tokio::sync::watch;

use crate::auth::ApiKeys;
use crate::platforms::retell::RetellWebhookKey;
use crate::platforms::vapi::webhook::VapiWebhookAuth;
use crate::signature::WebhookSecret;

/// Bounds on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes (default 64 KiB); larger bodies get 413.
    pub body_bytes: usize,
    /// Longest time to answer one request (default 10 s); slower requests
    /// get 503. A stream (`GET /events`) counts until its headers are sent.
    pub request_timeout: Duration,
    /// Longest an event stream stays silent: a comment line is sent when
    /// nothing else was for this long (default 15 s).
    pub event_keep_alive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            event_keep_alive: Duration::from_secs(15),
        }
    }
}

/// What every handler shares. Cheap to clone.
///
/// ```no_run
/// # fn demo(engine: orchestrator_core::Engine) -> Result<(), Box<dyn std::error::Error>> {
/// use orchestrator_http::{metrics, router, AppState};
///
/// let mut state = AppState::new(engine);
/// // The embedder decides whether this process exports the engine's series.
/// if let Some(handle) = metrics::prometheus_recorder() {
///     state = state.with_metrics(handle);
/// }
/// let app = router(state);
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    webhook_secret: Option<WebhookSecret>,
    api_keys: Option<ApiKeys>,
    metrics: Option<PrometheusHandle>,
    limits: Limits,
    store_health: Arc<Mutex<StoreHealth>>,
    /// Set once the server shuts down: event streams end.
    closing: Arc<watch::Sender<bool>>,
    retell_webhook_key: Option<RetellWebhookKey>,
    /// Platform webhooks: how each is authenticated; `None` while that
    /// platform is not in use (its route then answers 404).
    vapi_webhook: Option<Arc<VapiWebhookAuth>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("engine", &self.engine)
            .field("signed_webhooks", &self.webhook_secret.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl AppState {
    /// State over `engine`, with no webhook secret, no API keys, no metrics
    /// handle and default limits. Installs nothing process-wide.
    #[must_use]
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            webhook_secret: None,
            api_keys: None,
            metrics: None,
            limits: Limits::default(),
            store_health: Arc::default(),
            closing: Arc::new(watch::Sender::new(false)),
            retell_webhook_key: None,
            vapi_webhook: None,
        }
    }

    /// Requires a Standard Webhooks signature on every webhook.
    #[must_use]
    pub fn with_webhook_secret(mut self, secret: Option<WebhookSecret>) -> Self {
        self.webhook_secret = secret;
        self
    }

    /// Requires one of `keys` as `Authorization: Bearer <key>` on every
    /// operation but the liveness and readiness probes and the provider's
    /// webhooks (see [`crate::auth`]); `None` lets every request in.
    #[must_use]
    pub fn with_api_keys(mut self, keys: Option<ApiKeys>) -> Self {
        self.api_keys = keys;
        self
    }

    /// Adds the engine's own series (dials, retries, webhooks, dispatch
    /// latency) to the Prometheus text of `GET /metrics`, rendered from
    /// `handle`: the handle of the `metrics` recorder the process installed,
    /// e.g. [`crate::metrics::prometheus_recorder`]. Without a handle
    /// `/metrics` still serves the counts, as JSON and as Prometheus gauges.
    #[must_use]
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Replaces the request limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Accepts Retell's webhooks (`POST /callbacks/retell`), verifying
    /// `x-retell-signature` with `key` (the Retell API key); without a key
    /// they are refused with 401.
    #[must_use]
    pub fn with_retell_webhook_key(mut self, key: Option<RetellWebhookKey>) -> Self {
        self.retell_webhook_key = key;
        self
    }

    /// The key of Retell's webhook signatures, when Retell is in use.
    #[must_use]
    pub fn retell_webhook_key(&self) -> Option<&RetellWebhookKey> {
        self.retell_webhook_key.as_ref()
    }

    /// Serves Vapi's webhook (`POST /callbacks/vapi`), authenticated by `auth`.
    #[must_use]
    pub fn with_vapi_webhook(mut self, auth: VapiWebhookAuth) -> Self {
        self.vapi_webhook = Some(Arc::new(auth));
        self
    }

    /// How Vapi's webhook is authenticated, when it is served.
    #[must_use]
    pub fn vapi_webhook(&self) -> Option<&VapiWebhookAuth> {
        self.vapi_webhook.as_deref()
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The webhook secret, when signatures are required.
    #[must_use]
    pub fn webhook_secret(&self) -> Option<&WebhookSecret> {
        self.webhook_secret.as_ref()
    }

    /// The API keys, when the client API requires one.
    #[must_use]
    pub fn api_keys(&self) -> Option<&ApiKeys> {
        self.api_keys.as_ref()
    }

    /// The Prometheus handle, when one was given.
    #[must_use]
    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.metrics.as_ref()
    }

    /// The request limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Ends every event stream (`GET /events`) of this state and its
    /// clones, now and from now on, so that a graceful shutdown does not
    /// wait for clients that never hang up. Clients reconnect (elsewhere)
    /// and resume by id. The `server` feature's `serve` calls it when its
    /// shutdown begins.
    pub fn close_event_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Follows [`close_event_streams`](Self::close_event_streams).
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Notes whether the store could be reached, as a readiness check, a
    /// scrape or the server's periodic check just found, and logs when that
    /// changes: a warning when it becomes unreachable, and a line saying for
    /// how long it was down when it is reachable again. The cause is not
    /// repeated here: the failed request, or the dispatcher, logs it.
    pub(crate) fn observe_store<T>(&self, result: &Result<T, EngineError>) {
        let reachable = !matches!(result, Err(EngineError::Store(StoreError::Unavailable(_))));
        let now = Instant::now();
        // The record has no invariant a panic could break.
        let mut health = self
            .store_health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (*health, reachable) {
            (StoreHealth::Unreachable { since }, true) => {
                *health = StoreHealth::Reachable;
                tracing::info!(
                    down_for_seconds = now.duration_since(since).as_secs_f64(),
                    "store reachable again"
                );
            }
            (StoreHealth::Unknown | StoreHealth::Reachable, false) => {
                *health = StoreHealth::Unreachable { since: now };
                tracing::warn!("store unreachable");
            }
            (StoreHealth::Unknown, true) => *health = StoreHealth::Reachable,
            (StoreHealth::Reachable, true) | (StoreHealth::Unreachable { .. }, false) => {}
        }
    }
}

/// What was last seen of the store.
#[derive(Clone, Copy, Debug, Default)]
enum StoreHealth {
    /// Not asked yet.
    #[default]
    Unknown,
    /// It answered.
    Reachable,
    /// It could not be reached, since this instant.
    Unreachable { since: Instant },
}
