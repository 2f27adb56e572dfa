//! What every handler shares: the engine, the webhook secret, the metrics
//! handle and the request limits.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use orchestrator_core::Engine;

use crate::signature::WebhookSecret;

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
    metrics: Option<PrometheusHandle>,
    limits: Limits,
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
    /// State over `orchestrator`, with no webhook secret, no metrics handle
    /// and default limits. Installs nothing process-wide.
    #[must_use]
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            webhook_secret: None,
            metrics: None,
            limits: Limits::default(),
        }
    }

    /// Requires a Standard Webhooks signature on every webhook.
    #[must_use]
    pub fn with_webhook_secret(mut self, secret: Option<WebhookSecret>) -> Self {
        self.webhook_secret = secret;
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
}
