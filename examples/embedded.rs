//! Embedding the orchestrator in a program: an in-memory store, the simulated
//! provider with some faults switched on, 300 calls to 60 numbers (so most
//! numbers have several calls queued, dialled one after the other), progress
//! printed once a second, and a graceful shutdown once every call is terminal.
//!
//! Run it with `cargo run --example embedded`; it finishes in a few seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use orchestrator_core::{
    CallStatus, Engine, EngineConfig, Faults, MemoryStore, Metadata, NewCall, PhoneNumber,
    RedialPolicy, RetryPolicy, ScriptId, SimulatedProvider, SimulationConfig, StatusCounts,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

const CALLS: usize = 300;
const NUMBERS: u32 = 60;
/// Every tenth call must be dialled within this long of its creation, so
/// calls stuck behind others to the same number show up as EXPIRED.
const SHORT_DEADLINE: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// The run normally takes a few seconds; past this something is wrong.
const GIVE_UP_AFTER: Duration = Duration::from_secs(45);

#[tokio::main]
async fn main() -> Result<()> {
    // Production timings are minutes; these are shrunk so the demo is quick.
    let config = EngineConfig::default()
        .with_max_concurrent_calls(30)
        .with_retry(RetryPolicy::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
            RetryPolicy::DEFAULT_MAX_ATTEMPTS,
            RetryPolicy::DEFAULT_JITTER,
        )?)
        // Lost webhooks are among the faults: a short lease turns each into a
        // "webhook timeout" retry within seconds instead of 15 minutes.
        .with_lease(Duration::from_secs(3))
        .with_capacity_retry_after(Duration::from_millis(300))
        .with_redial(RedialPolicy::default().with_busy(true))
        .with_shutdown_grace(Duration::from_secs(2));
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_seed(42)
            .with_dial_latency(Duration::from_millis(10)..=Duration::from_millis(50))
            .with_call_duration(Duration::from_millis(100)..=Duration::from_millis(600))
            .with_faults(
                Faults::default()
                    .with_server_error(0.05)
                    .with_at_capacity(0.05, Some(Duration::from_millis(250)))
                    .with_permanent_error(0.01)
                    .with_timeout(0.02, Duration::from_millis(500))
                    .with_lost_webhook(0.03)
                    .with_duplicate_webhook(0.05)
                    .with_early_webhook(0.05),
            ),
    );
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(provider.clone()))
        .config(config)
        .seed(42)
        .build()
        .context("engine configuration")?;
    let running = engine.start();
    let started = Instant::now();

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for seq in 0..CALLS {
        let to = PhoneNumber::parse(&format!("+96650{:07}", rng.random_range(0..NUMBERS)))?;
        let mut new = NewCall::new(to, ScriptId::parse("welcomeFlow")?);
        new.payload.metadata = Some(Metadata::new(
            json!({ "campaign": "embedded-demo", "seq": seq }),
        )?);
        if seq % 10 == 9 {
            new.expires_at = Some(Utc::now() + SHORT_DEADLINE);
        }
        engine.create_call(new).await?;
    }
    println!(
        "enqueued {CALLS} calls to {NUMBERS} numbers in {:?}",
        started.elapsed()
    );

    // Wake on every store change to notice the end at once, and on a
    // one-second tick to report progress.
    let mut changes = engine.store().subscribe();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let counts = loop {
        tokio::select! {
            biased;
            _ = progress.tick() => {
                let counts = engine.counts().await?;
                println!("{:>5.1}s  {}", started.elapsed().as_secs_f64(), render(&counts));
            }
            _ = changes.changed() => {}
        }
        let counts = engine.counts().await?;
        if counts.get(CallStatus::Pending) + counts.get(CallStatus::InProgress) == 0 {
            break counts;
        }
        if started.elapsed() > GIVE_UP_AFTER {
            running.shutdown().await;
            bail!(
                "calls still open after {GIVE_UP_AFTER:?}: {}",
                render(&counts)
            );
        }
    };

    println!(
        "all {} calls terminal after {:.1}s",
        counts.total(),
        started.elapsed().as_secs_f64()
    );
    println!("final  {}", render(&counts));
    println!(
        "provider: {} dial requests, {} calls started, {} webhooks sent",
        provider.requests(),
        provider.started_calls().len(),
        provider.webhooks_sent()
    );
    running.shutdown().await;
    println!("engine shut down");
    Ok(())
}

/// `PENDING=3 IN_PROGRESS=30 ...`, every status in life-cycle order.
fn render(counts: &StatusCounts) -> String {
    CallStatus::ALL
        .iter()
        .map(|status| format!("{status}={}", counts.get(*status)))
        .collect::<Vec<_>>()
        .join(" ")
}
