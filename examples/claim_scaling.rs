//! Benchmark: what a memory-store claim costs as calls pile up that it must
//! not take: calls scheduled ahead (`notBefore` tomorrow) and a backlog of
//! due calls to a number that already has a call in progress.
//!
//! For each backlog size it prints the mean time of a claim that takes the
//! one call due to a free number, and the rate at which an engine running
//! over that store accepts new calls (each created call is dialled at once
//! by a simulated provider with millisecond calls, so every create also
//! wakes a claim). A claim that walked every `PENDING` call would grow with
//! the backlog; one that reads the due-time and per-number indexes does not.
//!
//! `cargo run --example claim_scaling` (debug figures; `--release` for
//! production-like ones). `BACKLOGS=3000,30000,300000` sets the sizes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use orchestrator_core::Clock;
use orchestrator_core::{
    CallId, CallStatus, ClaimRequest, Engine, EngineConfig, MemoryStore, NewCall, OutcomeMix,
    PhoneNumber, ReportedStatus, ScriptId, SimulatedProvider, SimulationConfig, Store, SystemClock,
};

/// Claims timed per backlog.
const CLAIMS: u32 = 2_000;
/// Calls created through the engine per backlog.
const CREATES: u32 = 2_000;

/// What piles up in the store.
#[derive(Clone, Copy, Debug)]
enum Backlog {
    /// `PENDING` calls to distinct numbers, due tomorrow.
    ScheduledAhead,
    /// Due `PENDING` calls to one number with a call in progress.
    BusyNumber,
}

fn number(n: u32) -> anyhow::Result<PhoneNumber> {
    Ok(PhoneNumber::parse(&format!("+44207{:07}", n % 10_000_000))?)
}

fn call(to: PhoneNumber) -> anyhow::Result<NewCall> {
    Ok(NewCall::new(to, ScriptId::parse("welcomeFlow")?))
}

fn claim_one(now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        now,
        max_in_flight: u32::MAX,
        limit: 1,
        lease: Duration::from_secs(900),
    }
}

/// A store holding `size` calls of `backlog`.
async fn store_with(backlog: Backlog, size: u32) -> anyhow::Result<Arc<MemoryStore>> {
    let store = Arc::new(MemoryStore::new());
    let now = SystemClock.now();
    let busy = number(9_999_999)?;
    if let Backlog::BusyNumber = backlog {
        store
            .create(CallId::new_v7(now), &call(busy.clone())?, now)
            .await?;
        store.claim(&claim_one(now)).await?;
    }
    for n in 0..size {
        let mut new = match backlog {
            Backlog::ScheduledAhead => call(number(n)?)?,
            Backlog::BusyNumber => call(busy.clone())?,
        };
        if let Backlog::ScheduledAhead = backlog {
            new.not_before = Some(now + TimeDelta::days(1));
        }
        store.create(CallId::new_v7(now), &new, now).await?;
    }
    Ok(store)
}

/// The mean time of a claim that takes the one call due to a free number.
async fn mean_claim(store: &MemoryStore) -> anyhow::Result<Duration> {
    let mut spent = Duration::ZERO;
    for n in 0..CLAIMS {
        let now = SystemClock.now();
        store
            .create(CallId::new_v7(now), &call(number(5_000_000 + n)?)?, now)
            .await?;
        let started = Instant::now();
        let claimed = store.claim(&claim_one(now)).await?;
        spent += started.elapsed();
        anyhow::ensure!(claimed.len() == 1, "the due call was not claimed");
    }
    Ok(spent / CLAIMS)
}

/// Creates per second through an engine dialling each call at once.
async fn creates_per_second(store: Arc<MemoryStore>) -> anyhow::Result<f64> {
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_seed(1)
            .with_dial_latency(Duration::from_micros(100)..=Duration::from_micros(500))
            .with_call_duration(Duration::from_millis(1)..=Duration::from_millis(5))
            .with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>, Arc::new(provider))
        .config(EngineConfig::default().with_max_concurrent_calls(30))
        .build()?;
    let running = engine.start();
    let started = Instant::now();
    for n in 0..CREATES {
        engine.create_call(call(number(6_000_000 + n)?)?).await?;
    }
    let rate = f64::from(CREATES) / started.elapsed().as_secs_f64();
    running.shutdown().await;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<u32> = std::env::var("BACKLOGS")
        .ok()
        .map(|sizes| {
            sizes
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![3_000, 30_000]);
    for backlog in [Backlog::ScheduledAhead, Backlog::BusyNumber] {
        for &size in &sizes {
            let store = store_with(backlog, size).await?;
            let pending = store.counts().await?.get(CallStatus::Pending);
            let claim = mean_claim(&store).await?;
            let store = store_with(backlog, size).await?;
            let rate = creates_per_second(store).await?;
            println!(
                "{backlog:?} backlog {size:>7} ({pending} PENDING): claim of the one due call {claim:>10.2?} mean; \
                 {rate:>6.0} creates/s through a running engine"
            );
        }
    }
    Ok(())
}
