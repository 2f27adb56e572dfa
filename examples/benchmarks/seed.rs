//! Seeding calls through the store's own API (`Store::create` from many
//! tasks), so the rows are whatever the current schema makes of a call.
//! Seeding is not measured: it runs with `synchronous_commit = off` on its
//! database, reset before any measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use orchestrator_core::{CallId, Metadata, NewCall, PhoneNumber, ScriptId, Store};
use orchestrator_pg::{PgStore, PgStoreOptions};

use crate::cluster::Pg;
use crate::process::bounded;
use crate::progress;

/// Longest one store call (a create, a claim, a settle) may take.
pub(crate) const CALL_WITHIN: Duration = Duration::from_secs(60);

/// Concurrent creating tasks (and pool connections) while seeding.
pub(crate) const TASKS: u64 = 32;

/// The `i`-th benchmark number: a Saudi mobile number, `+96650` and seven
/// digits, so ten million distinct ones.
pub(crate) fn number(i: u64) -> String {
    format!("+96650{:07}", i % 10_000_000)
}

/// The calls to create: `to(i)` and `created_at(i)` for `i` in `range`.
#[derive(Clone)]
pub(crate) struct Calls {
    /// Indexes of the calls.
    pub range: std::ops::Range<u64>,
    /// The number of call `i` (see [`number`]).
    pub to: Arc<dyn Fn(u64) -> String + Send + Sync>,
    /// The creation time of call `i` (`None`: now).
    pub created_at: Option<Arc<dyn Fn(u64) -> DateTime<Utc> + Send + Sync>>,
}

impl Calls {
    /// Calls `range` to [`number`]`(i)`, created now.
    pub(crate) fn numbered(range: std::ops::Range<u64>) -> Self {
        Self {
            range,
            to: Arc::new(number),
            created_at: None,
        }
    }
}

/// A store on `database` for the benchmark itself (claims, counts), its
/// pool of `connections`.
pub(crate) async fn store(pg: &Pg, database: &str, connections: u32) -> anyhow::Result<PgStore> {
    PgStore::connect_with(
        &pg.url(database),
        &PgStoreOptions {
            max_connections: connections,
            ..PgStoreOptions::default()
        },
    )
    .await
    .with_context(|| format!("connecting to {database}"))
}

/// Closes `store`'s connections now rather than when its tasks notice.
pub(crate) async fn close(store: PgStore) {
    store.pool().close().await;
    drop(store);
}

/// A fresh database `database` with the store's migrations and `calls`
/// created in it; returns its URL.
pub(crate) async fn backlog(pg: &Pg, database: &str, calls: Calls) -> anyhow::Result<String> {
    let url = pg.create_database(database).await?;
    let setup = store(pg, database, 2).await?;
    bounded("migrate", CALL_WITHIN, setup.migrate()).await?;
    close(setup).await;
    create(pg, database, calls).await?;
    Ok(url)
}

/// Creates `calls` in `database` through `Store::create` from [`TASKS`]
/// tasks, with `synchronous_commit = off` for the while.
///
/// # Errors
/// The first error of a create.
pub(crate) async fn create(pg: &Pg, database: &str, calls: Calls) -> anyhow::Result<()> {
    let total = calls.range.end - calls.range.start;
    if total == 0 {
        return Ok(());
    }
    pg.seeding(database, true).await?;
    let store = store(pg, database, TASKS as u32).await?;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(calls.range.start));
    let done = Arc::new(AtomicU64::new(0));
    let script = ScriptId::parse("welcomeFlow").map_err(|error| anyhow::anyhow!("{error:?}"))?;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, next, done, calls, script) = (
            store.clone(),
            Arc::clone(&next),
            Arc::clone(&done),
            calls.clone(),
            script.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let stop = |error: anyhow::Error| {
                // The others stop at their next call.
                next.store(u64::MAX / 2, Ordering::Relaxed);
                Err(error)
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls.range.end {
                    return anyhow::Ok(());
                }
                let text = (calls.to)(i);
                let to = match PhoneNumber::parse(&text) {
                    Ok(to) => to,
                    Err(error) => return stop(anyhow::anyhow!("number {text}: {error}")),
                };
                let mut new = NewCall::new(to, script.clone());
                new.payload.metadata = Some(
                    Metadata::new(serde_json::json!({"customer": i, "campaign": "bench"}))
                        .map_err(|error| anyhow::anyhow!("{error:?}"))?,
                );
                let now = calls.created_at.as_ref().map_or_else(Utc::now, |at| at(i));
                let created = bounded(
                    "Store::create",
                    CALL_WITHIN,
                    store.create(CallId::new_v7(now), &new, now),
                );
                if let Err(error) = created.await {
                    return stop(error);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % 100_000 == 0 {
                    progress!("  seeded {finished} of {total} calls");
                }
            }
        }));
    }
    let mut outcome = Ok(());
    for task in tasks {
        let result = task
            .await
            .context("a seeding task panicked")
            .and_then(|result| result);
        if outcome.is_ok() {
            outcome = result;
        }
    }
    let elapsed = started.elapsed();
    close(store).await;
    pg.seeding(database, false).await?;
    outcome?;
    progress!(
        "  seeded {total} calls in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Polls `done` every `every` until it is true, for at most `within`.
///
/// # Errors
/// When `within` passes first, naming `what`.
pub(crate) async fn wait_until(
    what: &str,
    within: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}
