//! How soon an event reaches a reader after its change commits, on one node
//! and across two, and how many events a completed call writes.
//!
//! ```text
//! cargo run --release -p orchestrator-pg --example event_latency --features testing
//! ```
//! Starts a throwaway local cluster with durable commits and two stores on
//! it, as two nodes would have. `SAMPLES` times (default 500), creates a
//! call through node A and times, from the moment `create_call` returned
//! (the change committed), until the `call.created` event arrives on an
//! event stream of node A and on one of node B (`Engine::events`, what
//! `GET /events` serves). Then burns down 1,000 calls through a simulated
//! provider and counts the events written per completed call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use orchestrator_core::{
    CallStatus, Engine, EngineConfig, EventFilter, EventId, EventStream, NewCall, OutcomeMix,
    PhoneNumber, ReportedStatus, ScriptId, SimulatedProvider, SimulationConfig, Store,
};
use orchestrator_pg::testing::{start_cluster, ClusterConfig};
use orchestrator_pg::PgStore;

fn at(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        at(&samples, 0.5),
        at(&samples, 0.99),
        at(&samples, 1.0),
        samples.len()
    );
}

fn engine(store: &Arc<PgStore>) -> anyhow::Result<Engine> {
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_seed(1)
            .with_dial_latency(Duration::ZERO..=Duration::from_micros(500))
            .with_call_duration(Duration::ZERO..=Duration::from_millis(1))
            .with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    Ok(
        Engine::builder(Arc::clone(store) as Arc<dyn Store>, Arc::new(provider))
            .config(EngineConfig::default().with_max_concurrent_calls(100))
            .build()?,
    )
}

async fn next_created(stream: &mut EventStream, started: Instant) -> anyhow::Result<Duration> {
    let event = stream.next().await.context("stream ended")??;
    anyhow::ensure!(event.call.status == CallStatus::Pending, "{event:?}");
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: usize = std::env::var("SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let durable = ["fsync", "synchronous_commit", "full_page_writes"]
        .map(|name| (name.to_owned(), "on".to_owned()))
        .to_vec();
    let cluster = start_cluster(&ClusterConfig {
        settings: durable,
        ..ClusterConfig::default()
    });
    let url = cluster.url("postgres");
    let a = Arc::new(PgStore::connect(&url).await.context("connect")?);
    a.migrate().await.context("migrate")?;
    let b = Arc::new(PgStore::connect(&url).await.context("connect")?);
    let (node_a, node_b) = (engine(&a)?, engine(&b)?);
    let mut on_a = node_a.events(Some(EventId(0)), EventFilter::default());
    let mut on_b = node_b.events(Some(EventId(0)), EventFilter::default());
    let (mut same_node, mut other_node) = (Vec::new(), Vec::new());
    for n in 0..samples {
        let new = NewCall::new(
            PhoneNumber::parse(&format!("+1212{}", 2_000_000 + n))?,
            ScriptId::parse("welcomeFlow")?,
        );
        node_a.create_call(new).await?;
        let committed = Instant::now();
        let (same, other) = tokio::join!(
            next_created(&mut on_a, committed),
            next_created(&mut on_b, committed)
        );
        same_node.push(same?);
        other_node.push(other?);
    }
    report("event latency, same node (commit to reader)", same_node);
    report("event latency, other node (commit to reader)", other_node);

    let running = node_a.start();
    loop {
        if a.counts().await?.get(CallStatus::Completed) as usize >= samples {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(a.pool())
        .await?;
    println!(
        "events per completed call: {:.2} ({events} events, {samples} calls)",
        events as f64 / samples as f64
    );
    Ok(())
}
