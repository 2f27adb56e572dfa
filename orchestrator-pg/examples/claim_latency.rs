//! Claim and count latency at 10,000 and 1,000,000 PENDING calls.
//!
//! ```text
//! cargo run --release -p orchestrator-pg --example claim_latency --features testing
//! ```
//! Uses `DATABASE_URL` when set (a new database is created in it), otherwise
//! a throwaway local cluster (`fsync=off`, so durability costs are not in the
//! figures). Each sample claims a batch of 30 under a cap of 30, then
//! settles the batch (untimed) so the cap is free for the next sample.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::call::CallStatus;
use orchestrator_core::store::{ClaimRequest, ListQuery, Settlement};
use orchestrator_core::Store;
use orchestrator_pg::{testing, PgStore};

const SAMPLES: usize = 200;
const BATCH: u32 = 30;
/// Distinct numbers among the generated calls: at 1,000,000 calls, ten
/// calls share each number, so the claim meets repeated numbers.
const NUMBERS: i64 = 100_000;

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 0, 0, 0).unwrap()
}

/// Adds PENDING calls until there are `target` calls, created one
/// millisecond apart from `base()`, to `NUMBERS` distinct numbers.
async fn fill(store: &PgStore, target: i64) -> anyhow::Result<()> {
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(store.pool())
        .await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO calls (id, to_number, script_id, metadata, status, attempts, created_at) \
         SELECT gen_random_uuid(), '+1' || (2000000000 + i % $3)::text, 'welcomeFlow', \
                '{\"customer\": 1}', 'PENDING', 0, $4 + i * interval '1 millisecond' \
         FROM generate_series($1, $2 - 1) AS i",
    )
    .bind(existing)
    .bind(target)
    .bind(NUMBERS)
    .bind(base())
    .execute(store.pool())
    .await?;
    // What autovacuum would have done by now on a live database: statistics
    // for the planner and a fresh visibility map.
    sqlx::query("VACUUM ANALYZE calls")
        .execute(store.pool())
        .await?;
    println!(
        "filled to {target} calls in {:.1?} (insert + vacuum analyze)",
        started.elapsed()
    );
    Ok(())
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {label:<34} median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms   ({} samples)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
}

async fn measure(store: &PgStore, pending: i64) -> anyhow::Result<()> {
    let now = base() + chrono::TimeDelta::days(30);
    let request = ClaimRequest {
        now,
        max_in_flight: BATCH,
        limit: BATCH,
        lease: Duration::from_secs(900),
    };
    let mut claims = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let claimed = store.claim(&request).await?;
        claims.push(started.elapsed());
        ensure!(claimed.len() == BATCH as usize, "claimed {}", claimed.len());
        for call in claimed {
            store
                .settle(
                    call.current_attempt(),
                    Settlement::Completed {
                        at: now,
                        duration_sec: Some(30),
                    },
                )
                .await?;
        }
    }
    let mut counts = Vec::with_capacity(SAMPLES);
    let mut lists = Vec::with_capacity(SAMPLES);
    let mut timers = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let totals = store.counts().await?;
        counts.push(started.elapsed());
        ensure!(totals.total() >= pending as u64, "{totals:?}");

        let started = Instant::now();
        store
            .list(&ListQuery::by_status(Some(CallStatus::Pending)))
            .await?;
        lists.push(started.elapsed());

        let started = Instant::now();
        store.next_timer(now).await?;
        timers.push(started.elapsed());
    }
    println!("{pending} PENDING calls:");
    report("claim 30 (cap 30)", claims);
    report("counts()", counts);
    report("list PENDING, page 1 of 20", lists);
    report("next_timer()", timers);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = testing::fresh_database_url().await;
    let store = PgStore::connect(&url).await.context("connect")?;
    store.migrate().await.context("migrate")?;
    for target in [10_000, 1_000_000] {
        fill(&store, target).await?;
        let claimed_so_far: i64 = sqlx::query_scalar("SELECT count(*) FROM call_attempts")
            .fetch_one(store.pool())
            .await?;
        measure(&store, target - claimed_so_far).await?;
    }
    Ok(())
}
