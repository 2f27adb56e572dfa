//! Exact calls-per-status from the `call_status_counts` delta rows.
//!
//! The `calls` triggers append one signed row per status a statement changed,
//! so a count is a sum over a handful of rows instead of a scan of millions of
//! calls; a background task folds the rows together so the handful stays small.

use std::time::Duration;

use orchestrator_core::call::CallStatus;
use orchestrator_core::store::StatusCounts;
use sqlx::{PgExecutor, PgPool};
use tracing::debug;

use crate::error::PgError;
use crate::schema::LockKey;

/// How often each store folds the delta rows. One fold covers every writer
/// in every process, so the table holds about this many seconds of changes.
pub(crate) const COMPACT_EVERY: Duration = Duration::from_secs(1);

const COUNTS: &str = "SELECT status, sum(delta)::bigint FROM call_status_counts GROUP BY status";

const TOTAL: &str = "SELECT COALESCE(sum(delta), 0)::bigint FROM call_status_counts \
                     WHERE $1::text IS NULL OR status = $1";

/// Calls per status, zero-filled.
pub(crate) async fn read(executor: impl PgExecutor<'_>) -> Result<StatusCounts, PgError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(COUNTS).fetch_all(executor).await?;
    let mut counts = StatusCounts::default();
    for (status, count) in rows {
        let status = status
            .parse::<CallStatus>()
            .map_err(|error| PgError::Corrupt(format!("call_status_counts: {error}")))?;
        counts.set(status, non_negative(count)?);
    }
    Ok(counts)
}

/// Calls in `status`, or all calls.
pub(crate) async fn total(
    executor: impl PgExecutor<'_>,
    status: Option<CallStatus>,
) -> Result<u64, PgError> {
    let total: i64 = sqlx::query_scalar(TOTAL)
        .bind(status.map(CallStatus::as_str))
        .fetch_one(executor)
        .await?;
    non_negative(total)
}

fn non_negative(count: i64) -> Result<u64, PgError> {
    u64::try_from(count)
        .map_err(|_| PgError::Corrupt(format!("call_status_counts sums to {count}")))
}

/// Folds the delta rows every [`COMPACT_EVERY`] until aborted, under the
/// advisory lock `lock` (the schema's: see `crate::schema`). Failures are
/// harmless (counts stay exact, only slower to sum) and expected before the
/// migrations ran, so they are logged at debug level only.
pub(crate) async fn compact_periodically(pool: PgPool, lock: LockKey) {
    let mut ticks = tokio::time::interval(COMPACT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = sqlx::query("SELECT compact_call_status_counts($1, $2)")
            .bind(lock.0)
            .bind(lock.1)
            .execute(&pool)
            .await
        {
            debug!(%error, "could not compact call_status_counts");
        }
    }
}
