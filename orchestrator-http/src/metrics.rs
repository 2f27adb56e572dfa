//! The Prometheus text exposition of `GET /metrics`, and the recorder that
//! collects the engine's own series.
//!
//! The text holds:
//!
//! - `orchestrator_store_up`: 1 when the store answered this scrape, 0
//!   when it could not be reached;
//! - `orchestrator_slots_max`: the cap on concurrent calls;
//! - `orchestrator_calls{status}`, `orchestrator_slots_in_use`: gauges
//!   computed from the store at scrape time,
//!   left out while the store cannot be reached (a missing series, rather
//!   than a made-up zero). They are rendered per request rather than through
//!   a recorder, because they describe one router's store, and a process may
//!   hold several routers (tests do);
//! - when the router was given a [`PrometheusHandle`]
//!   ([`AppState::with_metrics`](crate::AppState::with_metrics)), the engine's
//!   own series (`orchestrator_dials_total{outcome}`,
//!   `orchestrator_retries_total`, `orchestrator_webhooks_total{outcome}`,
//!   `orchestrator_dispatch_latency_seconds`, `orchestrator_callbacks_total{outcome}`,
//!   `orchestrator_callback_delivery_seconds`, ...), which the engine records
//!   with the `metrics` crate into whatever recorder the process installed.
//!
//! Installing a recorder is process-wide, so the router never does it: the
//! embedder (or the `server` wiring) calls [`prometheus_recorder`].

use std::fmt::Write as _;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orchestrator_core::store::StatusCounts;
use orchestrator_core::CallStatus;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets of `orchestrator_dispatch_latency_seconds`, in seconds:
/// from "refilled at once" to "waited a minute for a slot".
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0,
];

/// Histogram buckets of `orchestrator_callback_delivery_seconds`, in
/// seconds: from "delivered at once" to "delivered after an hour of retries".
const CALLBACK_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The handle of the process-wide Prometheus recorder, for
/// [`AppState::with_metrics`](crate::AppState::with_metrics). The first call
/// installs it as the global `metrics` recorder, with the engine's series
/// described and the dispatch latency as a histogram; later calls return the
/// same handle, so several routers in one process (tests) can share it.
///
/// Whoever serves should call [`PrometheusHandle::run_upkeep`] every few
/// seconds so that histograms stay bounded when nobody scrapes (the `server`
/// feature's `serve` does).
///
/// `None` when another `metrics` recorder was installed first: the
/// engine's series then go there.
pub fn prometheus_recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install_recorder).clone()
}

fn install_recorder() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("orchestrator_dispatch_latency_seconds".to_owned()),
            &LATENCY_BUCKETS,
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full("orchestrator_callback_delivery_seconds".to_owned()),
                &CALLBACK_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder);
    match handle {
        Ok(handle) => {
            describe_engine_metrics();
            Some(handle)
        }
        Err(error) => {
            tracing::warn!(%error, "no Prometheus recorder: /metrics will not show the engine's series");
            None
        }
    }
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
    describe_counter!(
        "orchestrator_cancels_total",
        "Cancel requests that changed a call, by outcome (canceled: was PENDING; requested: was IN_PROGRESS)."
    );
    describe_counter!(
        "orchestrator_hang_ups_total",
        "Hang-ups asked of the provider for canceled live calls, by outcome (hung_up, unsupported, failed)."
    );
    describe_counter!(
        "orchestrator_callbacks_total",
        "Tries of client callback deliveries, by outcome (delivered, retry, failed)."
    );
    describe_histogram!(
        "orchestrator_callback_delivery_seconds",
        Unit::Seconds,
        "Time from a terminal event to its callback's delivery (2xx)."
    );
}

/// The Prometheus text of one scrape: whether the store is up, the gauges
/// derived from `counts` (`None`: the store could not be counted) and the
/// concurrency `cap`, then the series of `recorder`, when there is one.
pub(crate) fn prometheus_text(
    counts: Option<&StatusCounts>,
    cap: u32,
    recorder: Option<&PrometheusHandle>,
) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "# HELP orchestrator_store_up Whether the call store answered this scrape (1) or could not be reached (0)."
    );
    let _ = writeln!(text, "# TYPE orchestrator_store_up gauge");
    let _ = writeln!(text, "orchestrator_store_up {}", u8::from(counts.is_some()));
    let _ = writeln!(
        text,
        "# HELP orchestrator_slots_max The cap on concurrent calls (MAX_CONCURRENT_CALLS)."
    );
    let _ = writeln!(text, "# TYPE orchestrator_slots_max gauge");
    let _ = writeln!(text, "orchestrator_slots_max {cap}");
    if let Some(counts) = counts {
        store_gauges(&mut text, counts);
    }
    if let Some(recorder) = recorder {
        text.push_str(&recorder.render());
    }
    text
}

/// The gauges read from the store.
fn store_gauges(text: &mut String, counts: &StatusCounts) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_list_every_status_and_the_cap() {
        let mut counts = StatusCounts::default();
        counts.set(CallStatus::InProgress, 4);
        let text = prometheus_text(Some(&counts), 30, None);
        assert!(text.contains("orchestrator_store_up 1\n"));
        assert!(text.contains("orchestrator_calls{status=\"EXPIRED\"} 0\n"));
        assert!(text.contains("orchestrator_calls{status=\"IN_PROGRESS\"} 4\n"));
        assert!(text.contains("orchestrator_slots_in_use 4\n"));
        assert!(text.contains("orchestrator_slots_max 30\n"));
    }

    #[test]
    fn without_counts_the_store_is_down_and_its_gauges_absent() {
        let text = prometheus_text(None, 30, None);
        assert!(text.contains("orchestrator_store_up 0\n"));
        assert!(!text.contains("orchestrator_calls{"), "{text}");
        assert!(!text.contains("orchestrator_slots_in_use "), "{text}");
        assert!(text.contains("orchestrator_slots_max 30\n"), "{text}");
    }
}
