//! The durable timers: expiry, lapsed leases and the next instant anything
//! is due. Each is one statement, safe to run from every process at once.

use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, CallId};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::PgError;
use crate::events::{event_columns, log_changes};
use crate::row::attempt_ref;

/// The `Expire` transition, set-based: `EXPIRED`, `ended_at = now`, no
/// back-off; with each call's `call.expired` event and callback delivery.
/// `SKIP LOCKED` leaves rows another transaction holds (being claimed,
/// patched or expired by another engine) to the next round instead of
/// queueing on them.
const EXPIRE: &str = concat!(
    "WITH due AS ( \
        SELECT id FROM calls WHERE status = 'PENDING' AND expires_at <= $1 \
        FOR UPDATE SKIP LOCKED \
    ), changed AS ( \
        UPDATE calls SET status = 'EXPIRED', ended_at = $1, next_attempt_at = NULL \
        FROM due WHERE calls.id = due.id \
        RETURNING calls.id, calls.created_at, calls.status, calls.callback_url, ",
    event_columns!("'call.expired'", "$1"),
    " ), ",
    log_changes!(),
    " SELECT id FROM changed ORDER BY created_at, id"
);

/// A read only: the caller settles each attempt, and `settle` tolerates
/// engines racing to do so.
const STALE: &str = "\
    SELECT id, attempts FROM calls \
    WHERE status = 'IN_PROGRESS' AND lease_expires_at <= $1 \
    ORDER BY lease_expires_at, id \
    LIMIT $2";

/// Each branch is a `min` over a partial index, so this stays cheap however
/// many calls wait.
const NEXT_TIMER: &str = "\
    SELECT LEAST( \
        (SELECT min(due_at) FROM calls WHERE status = 'PENDING' AND due_at > $1), \
        (SELECT min(expires_at) FROM calls WHERE status = 'PENDING' AND expires_at > $1), \
        (SELECT min(lease_expires_at) FROM calls \
         WHERE status = 'IN_PROGRESS' AND lease_expires_at > $1))";

/// Expires every `PENDING` call whose `expires_at` is at or before `now`
/// (truncated to the microseconds PostgreSQL keeps); returns their ids,
/// oldest first.
pub(crate) async fn expire_due(
    executor: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<CallId>, PgError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(EXPIRE)
        .bind(orchestrator_core::clock::truncate_to_micros(now))
        .fetch_all(executor)
        .await?;
    Ok(ids.into_iter().map(CallId).collect())
}

/// Up to `limit` current attempts whose lease ended at or before `now`,
/// earliest lease first.
pub(crate) async fn stale_attempts(
    executor: impl PgExecutor<'_>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<AttemptRef>, PgError> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(STALE)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await?;
    rows.into_iter()
        .map(|(call_id, attempts)| attempt_ref(call_id, attempts))
        .collect()
}

/// The earliest instant after `now` at which a call becomes due, expires or
/// its lease ends; `None` when nothing waits.
pub(crate) async fn next_timer(
    executor: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, PgError> {
    Ok(sqlx::query_scalar(NEXT_TIMER)
        .bind(now)
        .fetch_one(executor)
        .await?)
}
