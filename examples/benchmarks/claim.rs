//! Claim: what one `Store::claim` (up to 30 calls, 30 free slots) and one
//! `GET /metrics` cost as the queue grows (10k and 1M calls), and with a
//! backlog of 200k due calls to one number that has a call in progress,
//! queued ahead of every other number's calls, against the same claim
//! without that backlog.
//!
//! Seeding goes through `Store::create` and is done once per database, then
//! topped up before each run to replace what the previous run's claims took,
//! so the million calls are created once. Claims are timed with no server
//! running; each batch is settled (untimed) so the next claim finds its
//! slots free, as `orchestrator-pg/examples/claim_latency.rs` does. One call
//! stays `IN_PROGRESS` throughout under a day's lease; the server that serves
//! `/metrics` runs with a cap of 1, which that call fills, so its
//! dispatcher takes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use chrono::{TimeDelta, Utc};
use orchestrator_core::{CallStatus, ClaimRequest, Settlement, Store};
use orchestrator_pg::PgStore;

use crate::mock::Mock;
use crate::process::bounded;
use crate::report::{Figure, Ratio, Section, Target};
use crate::seed::{self, close, number, store, Calls, CALL_WITHIN};
use crate::server::{Server, Spec};
use crate::stats::{format, ms, quantile, sorted};
use crate::{progress, Bench};

/// Calls per claim, and free slots when claiming.
const BATCH: u32 = 30;
/// Distinct numbers of the growing queue: at a million calls, ten share each.
const NUMBERS: u64 = 100_000;
/// Index of the number that holds a call in progress.
const HELD: u64 = 9_500_000;
/// Lease of the call held in progress: longer than the whole run.
const HELD_LEASE: Duration = Duration::from_secs(86_400);

/// Median and p99 of one run's samples, in ms.
#[derive(Clone, Copy, Debug)]
struct Latency {
    median: f64,
    p99: f64,
}

impl Latency {
    fn of(samples: Vec<f64>) -> Self {
        let samples = sorted(samples);
        Self {
            median: quantile(&samples, 0.5),
            p99: quantile(&samples, 0.99),
        }
    }
}

/// The four figures of one case: claim and `/metrics`, median and p99.
struct Case {
    claim_median: Figure,
    claim_p99: Figure,
    metrics_median: Figure,
    metrics_p99: Figure,
}

impl Case {
    fn new(label: &str) -> Self {
        Self {
            claim_median: Figure::new(format!("claim of 30, {label}: median"), "ms"),
            claim_p99: Figure::new(format!("claim of 30, {label}: p99"), "ms"),
            metrics_median: Figure::new(format!("`GET /metrics`, {label}: median"), "ms"),
            metrics_p99: Figure::new(format!("`GET /metrics`, {label}: p99"), "ms"),
        }
    }

    fn push(&mut self, claim: Latency, metrics: Latency) {
        self.claim_median.samples.push(claim.median);
        self.claim_p99.samples.push(claim.p99);
        self.metrics_median.samples.push(metrics.median);
        self.metrics_p99.samples.push(metrics.p99);
    }

    fn figures(self) -> [Figure; 4] {
        [
            self.claim_median,
            self.claim_p99,
            self.metrics_median,
            self.metrics_p99,
        ]
    }
}

/// Runs the scenario.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Section> {
    let sizes: [u64; 2] = bench.size([10_000, 1_000_000], [2_000, 20_000]);
    let backlog: u64 = bench.size(200_000, 5_000);
    let others: u64 = bench.size(10_000, 2_000);
    let samples: usize = bench.size(50, 20);
    let mut figures = Vec::new();

    // The growing queue.
    let database = "bench_claim";
    bench.pg.create_database(database).await?;
    let mut queue = Queue::new(bench, database).await?;
    for size in sizes {
        let mut case = Case::new(&format!("{} calls queued", format(size as f64)));
        for run in 1..=bench.runs {
            queue.top_up(size, 0).await?;
            let (claim, metrics) = queue
                .measure(samples, &format!("claim-{size}-{run}"))
                .await?;
            progress!(
                "  run {run}, {size} queued: claim median {} ms, p99 {} ms; /metrics median {} ms",
                format(claim.median),
                format(claim.p99),
                format(metrics.median)
            );
            case.push(claim, metrics);
        }
        figures.extend(case.figures());
    }
    queue.close().await;
    bench.pg.drop_database(database).await?;

    // The busy number: without, then with, its backlog.
    let database = "bench_claim_busy";
    bench.pg.create_database(database).await?;
    let mut queue = Queue::new(bench, database).await?;
    let mut without = Case::new(&format!(
        "{} calls queued, no backlog",
        format(others as f64)
    ));
    for run in 1..=bench.runs {
        queue.top_up(others, 0).await?;
        let (claim, metrics) = queue
            .measure(samples, &format!("claim-busy-0-{run}"))
            .await?;
        progress!(
            "  run {run}, no backlog: claim median {} ms, p99 {} ms",
            format(claim.median),
            format(claim.p99)
        );
        without.push(claim, metrics);
    }
    queue.add_backlog(backlog).await?;
    let mut with = Case::new(&format!(
        "{} calls queued behind {} due calls to one busy number",
        format(others as f64),
        format(backlog as f64)
    ));
    for run in 1..=bench.runs {
        queue.top_up(others, backlog).await?;
        let (claim, metrics) = queue
            .measure(samples, &format!("claim-busy-{backlog}-{run}"))
            .await?;
        progress!(
            "  run {run}, {backlog} backlog: claim median {} ms, p99 {} ms",
            format(claim.median),
            format(claim.p99)
        );
        with.push(claim, metrics);
    }
    queue.close().await;
    bench.pg.drop_database(database).await?;

    let ratio = Ratio::of(
        format!(
            "claim with a {} one-number backlog ÷ without",
            format(backlog as f64)
        ),
        &with.claim_median,
        &without.claim_median,
    );
    let targets = vec![Target {
        goal: format!(
            "claim with a {} one-number backlog within 2 × of the same claim without",
            format(backlog as f64)
        ),
        measured: format!("{:.2} ×", ratio.value),
        met: ratio.value <= 2.0,
    }];
    figures.extend(without.figures());
    figures.extend(with.figures());
    Ok(Section {
        title: "Claim and `/metrics` latency by queue size and behind a busy number".to_owned(),
        about: vec![
            format!(
                "`Store::claim` of up to {BATCH} calls with {BATCH} free slots (`max_in_flight` = calls \
                 in progress + {BATCH}), timed in the benchmark process over a pool of 4 connections, \
                 {samples} claims per run after one untimed warm-up claim; each batch is settled \
                 (untimed) before the next. Every claim must return {BATCH} calls. `GET /metrics` \
                 (JSON): {samples} sequential requests per run on a kept-alive connection to the \
                 `orchestrator` binary over the same database, after one warm-up."
            ),
            format!(
                "Calls are created through `Store::create` ({} tasks), once per database, and topped up \
                 before each run to the stated number of `PENDING` calls; then `VACUUM ANALYZE` (what \
                 autovacuum would have done on a live database). The growing queue cycles over \
                 {} numbers. The busy-number case: one call `IN_PROGRESS` to a number, {} more \
                 calls to it created earlier than the {} calls to other numbers (so a claim meets them \
                 first, oldest first), against the same database before that backlog was added.",
                seed::TASKS,
                format(NUMBERS as f64),
                format(backlog as f64),
                format(others as f64)
            ),
        ],
        figures,
        details: Vec::new(),
        ratios: vec![ratio],
        targets,
    })
}

/// One claim database: its store, the call held in progress, and the next
/// fresh call index.
struct Queue<'a> {
    bench: &'a Bench,
    database: &'a str,
    store: PgStore,
    next: u64,
    held: u32,
}

impl<'a> Queue<'a> {
    /// Migrates `database` and puts one call in progress under a day's lease.
    async fn new(bench: &'a Bench, database: &'a str) -> anyhow::Result<Self> {
        let store = store(&bench.pg, database, 4).await?;
        bounded("migrate", CALL_WITHIN, store.migrate()).await?;
        let oldest = Utc::now() - TimeDelta::days(3);
        seed::create(
            &bench.pg,
            database,
            Calls {
                range: HELD..HELD + 1,
                to: Arc::new(number),
                created_at: Some(Arc::new(move |_| oldest)),
            },
        )
        .await?;
        let request = ClaimRequest {
            now: Utc::now(),
            max_in_flight: 1,
            limit: 1,
            lease: HELD_LEASE,
        };
        let claimed = bounded("Store::claim", CALL_WITHIN, store.claim(&request)).await?;
        ensure!(claimed.len() == 1, "could not put a call in progress");
        Ok(Self {
            bench,
            database,
            store,
            next: 0,
            held: 1,
        })
    }

    /// Creates calls to the growing set of numbers until `pending` calls
    /// besides the `backlog` are `PENDING`, then vacuums.
    async fn top_up(&mut self, pending: u64, backlog: u64) -> anyhow::Result<()> {
        let counts = bounded("Store::counts", CALL_WITHIN, self.store.counts()).await?;
        let now = counts.get(CallStatus::Pending) - backlog;
        if now >= pending {
            return Ok(());
        }
        let range = self.next..self.next + (pending - now);
        self.next = range.end;
        seed::create(
            &self.bench.pg,
            self.database,
            Calls {
                range,
                to: Arc::new(|i| number(i % NUMBERS)),
                created_at: None,
            },
        )
        .await?;
        self.vacuum().await
    }

    /// `backlog` due calls to the held call's number, created before
    /// every other `PENDING` call.
    async fn add_backlog(&mut self, backlog: u64) -> anyhow::Result<()> {
        let base = Utc::now() - TimeDelta::days(2);
        seed::create(
            &self.bench.pg,
            self.database,
            Calls {
                range: 0..backlog,
                to: Arc::new(|_| number(HELD)),
                created_at: Some(Arc::new(move |i| {
                    base + TimeDelta::milliseconds(i64::try_from(i).unwrap_or(i64::MAX))
                })),
            },
        )
        .await?;
        self.vacuum().await
    }

    async fn vacuum(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        bounded(
            "VACUUM ANALYZE",
            Duration::from_secs(600),
            sqlx::raw_sql("VACUUM ANALYZE").execute(self.store.pool()),
        )
        .await?;
        progress!(
            "  VACUUM ANALYZE in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// `samples` timed claims, then `samples` timed `GET /metrics`.
    async fn measure(&self, samples: usize, name: &str) -> anyhow::Result<(Latency, Latency)> {
        self.bench.pg.checkpoint().await?;
        let mut claims = Vec::with_capacity(samples);
        for sample in 0..=samples {
            let now = Utc::now();
            let request = ClaimRequest {
                now,
                max_in_flight: self.held + BATCH,
                limit: BATCH,
                lease: Duration::from_secs(900),
            };
            let started = Instant::now();
            let claimed = bounded("Store::claim", CALL_WITHIN, self.store.claim(&request)).await?;
            let elapsed = started.elapsed();
            ensure!(
                claimed.len() == BATCH as usize,
                "a claim returned {} calls, not {BATCH}",
                claimed.len()
            );
            if sample > 0 {
                claims.push(ms(elapsed));
            }
            for call in claimed {
                let settled = self.store.settle(
                    call.current_attempt(),
                    Settlement::Completed {
                        at: now,
                        duration_sec: Some(0),
                    },
                );
                bounded("Store::settle", CALL_WITHIN, settled).await?;
            }
        }

        let mock = Mock::start(Duration::from_secs(3600))?;
        let server = Server::start(
            self.bench,
            name,
            &Spec {
                database_url: &self.bench.pg.url(self.database),
                provider_url: &mock.url,
                max_concurrent_calls: self.held,
            },
        )
        .await?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut metrics = Vec::with_capacity(samples);
        for sample in 0..=samples {
            let started = Instant::now();
            let response = client
                .get(format!("{}/metrics", server.url))
                .header("accept", "application/json")
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            let elapsed = started.elapsed();
            ensure!(status == 200, "GET /metrics answered {status}");
            ensure!(!body.is_empty(), "GET /metrics answered an empty body");
            if sample > 0 {
                metrics.push(ms(elapsed));
            }
        }
        server.stop().await?;
        drop(mock);
        let counts = bounded("Store::counts", CALL_WITHIN, self.store.counts()).await?;
        ensure!(
            counts.get(CallStatus::InProgress) == u64::from(self.held),
            "the server dispatched calls while only serving /metrics"
        );
        Ok((Latency::of(claims), Latency::of(metrics)))
    }

    async fn close(self) {
        close(self.store).await;
    }
}
