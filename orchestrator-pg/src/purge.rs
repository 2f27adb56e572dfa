//! Retention: deleting calls that ended before a cutoff, with everything
//! stored about them.
//!
//! One statement per batch, so each batch commits on its own and holds its
//! row locks only for the time it takes to delete a few hundred rows:
//! - the ended calls are picked oldest end first through the `calls_ended`
//!   index, `FOR UPDATE SKIP LOCKED` (a row another transaction holds, say a
//!   late webhook reading the call, is left to the next batch instead of
//!   waited for);
//! - their attempt history and provider ids go with them through the
//!   foreign keys' `ON DELETE CASCADE`; a later webhook naming one of those
//!   provider ids finds no call, like any unknown id;
//! - their events and callback delivery are deleted by the same statement
//!   (no foreign keys there: the event log's inserts stay cheap);
//! - the statement-level delete trigger subtracts them from the per-status
//!   counters in the same statement, so counts stay exact.
//!
//! Which statuses are terminal comes from the state machine's
//! [`CallStatus::is_terminal`], so a new terminal status is purged without
//! a change here.

use chrono::{DateTime, Utc};
use orchestrator_core::call::CallStatus;
use sqlx::PgExecutor;

use crate::error::PgError;

const PURGE: &str = "\
    WITH doomed AS ( \
        SELECT id FROM calls \
        WHERE ended_at < $1 AND status = ANY($2) \
        ORDER BY ended_at \
        LIMIT $3 \
        FOR UPDATE SKIP LOCKED \
    ), events AS ( \
        DELETE FROM call_events USING doomed WHERE call_events.call_id = doomed.id \
    ), deliveries AS ( \
        DELETE FROM call_deliveries USING doomed WHERE call_deliveries.call_id = doomed.id \
    ) \
    DELETE FROM calls USING doomed WHERE calls.id = doomed.id";

/// Deletes up to `limit` calls in a terminal status whose `ended_at` is
/// before `cutoff`, oldest end first, with their attempts, provider ids,
/// events and delivery;
/// returns how many calls were deleted.
pub(crate) async fn ended_before(
    executor: impl PgExecutor<'_>,
    cutoff: DateTime<Utc>,
    limit: u32,
) -> Result<u64, PgError> {
    let terminal: Vec<&str> = CallStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
        .map(CallStatus::as_str)
        .collect();
    let deleted = sqlx::query(PURGE)
        .bind(cutoff)
        .bind(terminal)
        .bind(i64::from(limit))
        .execute(executor)
        .await?;
    Ok(deleted.rows_affected())
}
