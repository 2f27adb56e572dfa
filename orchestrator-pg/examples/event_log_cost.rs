//! What the store's writes cost on PostgreSQL: creates from 32 concurrent
//! tasks, then a burn-down of those calls through the engine.
//!
//! ```text
//! cargo run --release -p orchestrator-pg --example event_log_cost --features testing
//! ```
//! Starts a throwaway local cluster with durable commits (`fsync=on`,
//! `synchronous_commit=on`, `full_page_writes=on`), creates `CALLS` calls
//! (default 10,000) to as many numbers from `TASKS` tasks (default 32), then
//! starts an engine with a cap of 1,000 over a simulated provider whose
//! calls last 0–1 ms and waits until every call is `COMPLETED`. Prints
//! creates per second with latency percentiles, and completed calls per
//! second. It uses only the API that existed before the event log, so the
//! same file measures a build from before it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use orchestrator_core::{
    CallStatus, Engine, EngineConfig, NewCall, OutcomeMix, PhoneNumber, ReportedStatus, ScriptId,
    SimulatedProvider, SimulationConfig, Store,
};
use orchestrator_pg::testing::{start_cluster, ClusterConfig};
use orchestrator_pg::PgStore;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn at(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls = env("CALLS", 10_000);
    let tasks = env("TASKS", 32);
    let durable = ["fsync", "synchronous_commit", "full_page_writes"]
        .map(|name| (name.to_owned(), "on".to_owned()))
        .to_vec();
    let cluster = start_cluster(&ClusterConfig {
        settings: durable,
        ..ClusterConfig::default()
    });
    let url = cluster.url("postgres");
    let store = Arc::new(PgStore::connect(&url).await.context("connect")?);
    store.migrate().await.context("migrate")?;
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_seed(1)
            .with_dial_latency(Duration::ZERO..=Duration::from_micros(500))
            .with_call_duration(Duration::ZERO..=Duration::from_millis(1))
            .with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    let engine = Engine::builder(
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::new(provider.clone()),
    )
    .config(
        EngineConfig::default()
            .with_max_concurrent_calls(1000)
            .with_claim_batch(1000),
    )
    .build()?;

    let started = Instant::now();
    let per_task = calls / tasks;
    let mut creators = Vec::new();
    for task in 0..tasks {
        let engine = engine.clone();
        creators.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task);
            for n in 0..per_task {
                let number = 2_000_000 + task * per_task + n;
                let new = NewCall::new(
                    PhoneNumber::parse(&format!("+1212{number}")).expect("valid number"),
                    ScriptId::parse("welcomeFlow").expect("valid script"),
                );
                let sent = Instant::now();
                engine.create_call(new).await.expect("created");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(calls);
    for creator in creators {
        latencies.extend(creator.await?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let created = latencies.len();
    println!(
        "create: {created} calls from {tasks} tasks in {:.2} s = {:.0} creates/s; latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        created as f64 / elapsed.as_secs_f64(),
        at(&latencies, 0.5),
        at(&latencies, 0.99),
    );

    let started = Instant::now();
    let running = engine.start();
    loop {
        let counts = store.counts().await?;
        if counts.get(CallStatus::Completed) as usize >= created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "burn-down: {created} calls completed in {:.2} s = {:.0} calls/s (cap 1000)",
        elapsed.as_secs_f64(),
        created as f64 / elapsed.as_secs_f64(),
    );
    running.shutdown().await;
    Ok(())
}
