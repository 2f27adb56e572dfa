//! Fault tests: real `orchestrator` processes over loopback HTTP, a real
//! PostgreSQL cluster the tests stop and restart, and a provider stand-in
//! that records every dial and webhook it sees. Each scenario injects one
//! kind of fault under load and then checks what a user and an operator
//! must be able to rely on:
//!
//! - [`store_outage`]: PostgreSQL restarted, then down for seconds: nothing
//!   lost, no double dial, the cap held, provider answers and webhooks given
//!   during the outage applied after it, wake-ups back to milliseconds.
//! - [`node_crash`]: `kill -9` of one of two nodes: nothing lost, no double
//!   dial, the cap held across both; the dead node's calls settle through
//!   the survivor.
//! - [`slow_connections`]: thousands of connections that never finish their
//!   request do not keep `/health` from answering.
//! - [`callbacks`]: client callbacks from two nodes, a receiver that refuses
//!   each event's first three tries, and `kill -9` of one node: every
//!   terminal event delivered, each under one `webhook-id`.
//! - [`sigterm`]: SIGTERM with a stalled client: no dial after the signal,
//!   webhooks still taken while requests drain, exit 0 within the bound.
//!
//! The scenarios run one at a time (see [`serial`]): they measure latencies
//! on a small machine and must not load it for each other. Every wait is on
//! a condition with a deadline; the only fixed durations are the faults
//! themselves (how long PostgreSQL stays down, how long a provider call
//! lasts). Each orchestrator's output goes to a file under
//! `target/tmp/faults/`, named in failure messages.

mod api;
mod callbacks;
mod checks;
mod cluster;
mod node;
mod node_crash;
mod sigterm;
mod slow_connections;
mod stand_in;
mod store_outage;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

/// The Standard Webhooks secret shared by the stand-in and the nodes.
pub const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Holds the one-scenario-at-a-time lock (tokio's, which a scenario that
/// panicked releases like any other).
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Polls `check` every 20 ms until it yields a value; panics naming `what`
/// when `within` has passed first.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Some(())` when `condition` holds: a [`wait_until`] check over state
/// that is read synchronously.
pub async fn ready(condition: bool) -> Option<()> {
    condition.then_some(())
}

/// Where a scenario's process logs go: `target/tmp/faults/<scenario>-<pid>/`.
pub fn log_dir(scenario: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("faults")
        .join(format!("{scenario}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    dir
}

/// `numbers` as milliseconds, sorted: (median, 90th percentile, maximum).
pub fn percentiles(mut numbers: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    if numbers.is_empty() {
        return None;
    }
    numbers.sort();
    let at = |fraction: f64| {
        let index = ((numbers.len() - 1) as f64 * fraction).round() as usize;
        numbers[index]
    };
    Some((at(0.5), at(0.9), numbers[numbers.len() - 1]))
}

/// `duration` in milliseconds with one decimal, for the printed figures.
pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
