//! Benchmark: how fast the engine creates and dispatches calls on the memory store.
//!
//! Creates `CALLS` calls (default 20,000) to 5,000 numbers as fast as one task
//! can, while the engine dials them through a `SimulatedProvider` with
//! millisecond calls, and prints the create latency percentiles and the
//! end-to-end throughput (calls settled per second, wall clock).
//!
//! `cargo run --release --example throughput` (or `CALLS=100000 cargo run ...`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_core::{
    CallStatus, Engine, EngineConfig, MemoryStore, NewCall, OutcomeMix, PhoneNumber,
    ReportedStatus, RetryPolicy, ScriptId, SimulatedProvider, SimulationConfig, Store,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let store = Arc::new(MemoryStore::new());
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_seed(1)
            .with_dial_latency(Duration::from_micros(100)..=Duration::from_micros(500))
            .with_call_duration(Duration::from_millis(1)..=Duration::from_millis(5))
            .with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    let engine = Engine::builder(
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::new(provider.clone()),
    )
    .config(
        EngineConfig::default()
            .with_max_concurrent_calls(30)
            .with_retry(RetryPolicy::new(
                Duration::from_millis(10),
                Duration::from_millis(100),
                3,
                0.2,
            )?),
    )
    .build()?;
    let running = engine.start();

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(calls);
    for n in 0..calls {
        let to = PhoneNumber::parse(&format!("+1415555{:04}", n % 5_000))?;
        let begin = Instant::now();
        engine
            .create_call(NewCall::new(to, ScriptId::parse("welcomeFlow")?))
            .await?;
        latencies.push(begin.elapsed());
    }
    let enqueued = started.elapsed();
    let mut changes = store.subscribe();
    loop {
        let counts = store.counts().await?;
        if counts.get(CallStatus::Pending) + counts.get(CallStatus::InProgress) == 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    let total = started.elapsed();
    running.shutdown().await;

    latencies.sort_unstable();
    let counts = store.counts().await?;
    println!("calls: {calls}, cap 30, 5,000 numbers, memory store, simulated 1-5 ms calls");
    println!(
        "create latency: p50 {:?}, p99 {:?}, max {:?} (all {calls} enqueued in {enqueued:?})",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "settled {} calls in {total:?}: {:.0} calls/s end to end",
        counts.get(CallStatus::Completed) + counts.get(CallStatus::Failed),
        calls as f64 / total.as_secs_f64()
    );
    println!("provider: {} dial requests", provider.requests());
    Ok(())
}
