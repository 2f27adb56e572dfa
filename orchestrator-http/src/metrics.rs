//! `GET /metrics`: call counts as JSON, or the Prometheus text exposition.
//!
//! By default the answer is the flat JSON map of SPEC section 2
//! (`{"PENDING":n,...}`, all five keys). A client whose `Accept` prefers
//! `text/plain` or `application/openmetrics-text` (a Prometheus scraper
//! does) gets the Prometheus text format 0.0.4 instead; Prometheus accepts
//! it even when it asked for OpenMetrics first. It holds:
//!
//! - `orchestrator_calls{status}`, `orchestrator_slots_in_use`,
//!   `orchestrator_slots_max`: gauges computed from the store at scrape time.
//!   They are rendered per request rather than through the global recorder,
//!   because they describe this router's store, and a process may hold
//!   several routers (tests do);
//! - the engine's own series (`orchestrator_dials_total{outcome}`,
//!   `orchestrator_retries_total`, `orchestrator_webhooks_total{outcome}`,
//!   `orchestrator_dispatch_latency_seconds`, ...), recorded with the
//!   `metrics` crate into a `metrics-exporter-prometheus` recorder installed
//!   once per process by [`prometheus_handle`].

use std::fmt::Write as _;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orchestrator_core::store::StatusCounts;
use orchestrator_core::CallStatus;

use crate::problem::ApiError;
use crate::router::AppState;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets of `orchestrator_dispatch_latency_seconds`, in seconds:
/// from "refilled at once" to "waited a minute for a slot".
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder's handle, installing the recorder on
/// first use. `None` when another `metrics` recorder was installed first
/// (then `/metrics` shows only the scrape-time gauges). Never panics, however
/// often it is called, so tests may build many routers.
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets_for_metric(
                Matcher::Full("orchestrator_dispatch_latency_seconds".to_owned()),
                &LATENCY_BUCKETS,
            ) {
                Ok(with_buckets) => with_buckets,
                Err(error) => {
                    tracing::warn!(%error, "latency buckets refused; using summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe_engine_metrics();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!("another metrics recorder is installed; /metrics will not show the engine's series");
                    None
                }
            }
        })
        .clone()
}

fn describe_engine_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "orchestrator_dials_total",
        "Dial requests by outcome (accepted, retryable, capacity, permanent)."
    );
    describe_counter!(
        "orchestrator_retries_total",
        "Failed attempts re-enqueued with back-off."
    );
    describe_counter!(
        "orchestrator_webhooks_total",
        "Webhooks by outcome (applied, unchanged, ignored, unknown, error)."
    );
    describe_counter!("orchestrator_calls_created_total", "Calls created.");
    describe_counter!(
        "orchestrator_calls_expired_total",
        "Calls expired before they could be dialled."
    );
    describe_counter!(
        "orchestrator_stale_leases_total",
        "Attempts whose lease ran out without a webhook."
    );
    describe_histogram!(
        "orchestrator_dispatch_latency_seconds",
        Unit::Seconds,
        "Time from a call being due to being claimed."
    );
}

/// Which representation the client asked for.
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

/// `GET /metrics`; see the module documentation.
///
/// # Errors
/// 503 when the store cannot be counted.
pub async fn scrape(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let counts = state.orchestrator().counts().await?;
    let mut response = match negotiate(&headers) {
        Format::Json => Json(counts).into_response(),
        Format::Prometheus => {
            let cap = state.orchestrator().config().max_concurrent_calls;
            let mut text = scrape_time_gauges(&counts, cap);
            if let Some(handle) = state.metrics() {
                text.push_str(&handle.render());
            }
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

/// The gauges derived from the store at scrape time, in the text format.
fn scrape_time_gauges(counts: &StatusCounts, cap: u32) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "# HELP orchestrator_calls Calls in the store by status, at scrape time."
    );
    let _ = writeln!(text, "# TYPE orchestrator_calls gauge");
    for status in CallStatus::ALL {
        let _ = writeln!(
            text,
            "orchestrator_calls{{status=\"{status}\"}} {}",
            counts.get(status)
        );
    }
    let _ = writeln!(
        text,
        "# HELP orchestrator_slots_in_use Concurrency slots held (IN_PROGRESS calls) across every process sharing the store."
    );
    let _ = writeln!(text, "# TYPE orchestrator_slots_in_use gauge");
    let _ = writeln!(
        text,
        "orchestrator_slots_in_use {}",
        counts.get(CallStatus::InProgress)
    );
    let _ = writeln!(
        text,
        "# HELP orchestrator_slots_max The cap on concurrent calls (MAX_CONCURRENT_CALLS)."
    );
    let _ = writeln!(text, "# TYPE orchestrator_slots_max gauge");
    let _ = writeln!(text, "orchestrator_slots_max {cap}");
    text
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

    #[test]
    fn gauges_list_every_status_and_the_cap() {
        let mut counts = StatusCounts::default();
        counts.set(CallStatus::InProgress, 4);
        let text = scrape_time_gauges(&counts, 30);
        assert!(text.contains("orchestrator_calls{status=\"EXPIRED\"} 0\n"));
        assert!(text.contains("orchestrator_calls{status=\"IN_PROGRESS\"} 4\n"));
        assert!(text.contains("orchestrator_slots_in_use 4\n"));
        assert!(text.contains("orchestrator_slots_max 30\n"));
    }
}
