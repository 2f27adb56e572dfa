//! Reads: one call, a page of calls, a call's attempts, the attempt behind a
//! provider id, and the locked read every single-call change starts with.
//!
//! A call is read with its outbox row, if any (the call's `callback`).

use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId};
use orchestrator_core::store::{ListFilter, ListQuery, Page};
use orchestrator_core::{Attempt, AttemptOutcome};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::counts;
use crate::error::PgError;
use crate::row::{attempt_ref, call_columns_with_delivery, calls, calls_with_delivery, CallRow};

const GET: &str = concat!(
    "SELECT ",
    call_columns_with_delivery!(),
    " FROM ",
    calls_with_delivery!(),
    " WHERE calls.id = $1"
);

const GET_FOR_UPDATE: &str = concat!(
    "SELECT ",
    call_columns_with_delivery!(),
    " FROM ",
    calls_with_delivery!(),
    " WHERE calls.id = $1 FOR UPDATE OF calls"
);

/// Every listing walks an index on `(created_at, id)` backwards: with
/// `status` or `to_number` first when filtered by one of them.
const LIST: &str = concat!(
    "SELECT ",
    call_columns_with_delivery!(),
    " FROM ",
    calls_with_delivery!()
);

const COUNT: &str = "SELECT count(*) FROM calls";

/// One row per dial in dial order (`claim_seq`), or one row of NULLs for a
/// call never dialled; no row for an unknown call.
const ATTEMPTS: &str = "\
    SELECT attempt.attempt, attempt.claimed_at, attempt.provider_call_id, attempt.outcome, \
           attempt.last_error, attempt.ended_at, attempt.retry_at \
    FROM calls LEFT JOIN call_attempts AS attempt ON attempt.call_id = calls.id \
    WHERE calls.id = $1 \
    ORDER BY attempt.claim_seq";

/// The primary key of `provider_calls`: every id ever recorded stays, so a
/// late webhook for an older attempt is still found.
const FIND_ATTEMPT: &str =
    "SELECT call_id, attempt FROM provider_calls WHERE provider_call_id = $1";

/// The call `id`, or [`PgError::NotFound`].
pub(crate) async fn get(executor: impl PgExecutor<'_>, id: CallId) -> Result<Call, PgError> {
    let row: Option<CallRow> = sqlx::query_as(GET)
        .bind(id.0)
        .fetch_optional(executor)
        .await?;
    Call::try_from(row.ok_or(PgError::NotFound(id))?)
}

/// The call `id`, locked by the transaction `tx` until it ends, or
/// [`PgError::NotFound`]. Single-call changes read through this, compute the
/// next call with the state machine and write it back before `tx` commits,
/// so no other change can slip in between.
pub(crate) async fn locked(tx: &mut PgConnection, id: CallId) -> Result<Call, PgError> {
    let row: Option<CallRow> = sqlx::query_as(GET_FOR_UPDATE)
        .bind(id.0)
        .fetch_optional(tx)
        .await?;
    Call::try_from(row.ok_or(PgError::NotFound(id))?)
}

/// `select` with a `WHERE` clause for every field `filter` sets.
fn filtered<'a>(select: &str, filter: &'a ListFilter) -> QueryBuilder<'a, Postgres> {
    let mut query = QueryBuilder::new(select);
    let mut and = " WHERE ";
    if let Some(status) = filter.status {
        query
            .push(and)
            .push("calls.status = ")
            .push_bind(status.as_str());
        and = " AND ";
    }
    if let Some(to) = &filter.to {
        query
            .push(and)
            .push("calls.to_number = ")
            .push_bind(to.as_str());
        and = " AND ";
    }
    if let Some(script_id) = &filter.script_id {
        query
            .push(and)
            .push("calls.script_id = ")
            .push_bind(script_id.as_str());
        and = " AND ";
    }
    if let Some(from) = filter.created_from {
        query.push(and).push("calls.created_at >= ").push_bind(from);
        and = " AND ";
    }
    if let Some(to) = filter.created_to {
        query.push(and).push("calls.created_at < ").push_bind(to);
    }
    query
}

/// One page of calls, newest first, and the total of the filter. Both come
/// from one REPEATABLE READ snapshot, so the total counts the rows the page
/// was cut from, as in the memory store. A filter on the status alone (or
/// none) is counted from the per-status counters; any other is counted.
pub(crate) async fn list(pool: &PgPool, query: &ListQuery) -> Result<Page, PgError> {
    let filter = query.filter();
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let limit = i64::from(query.page_size());
    let offset = i64::try_from(query.offset()).unwrap_or(i64::MAX);
    let mut page = filtered(LIST, filter);
    page.push(" ORDER BY calls.created_at DESC, calls.id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows: Vec<CallRow> = page.build_query_as().fetch_all(&mut *tx).await?;
    let by_status_only = filter.to.is_none()
        && filter.script_id.is_none()
        && filter.created_from.is_none()
        && filter.created_to.is_none();
    let total = if by_status_only {
        counts::total(&mut *tx, filter.status).await?
    } else {
        let counted: i64 = filtered(COUNT, filter)
            .build_query_scalar()
            .fetch_one(&mut *tx)
            .await?;
        u64::try_from(counted).unwrap_or_default()
    };
    tx.commit().await?;
    Ok(Page {
        items: calls(rows)?,
        page: query.page(),
        page_size: query.page_size(),
        total,
    })
}

/// One `call_attempts` row, or the NULLs of a call never dialled.
#[derive(Debug, sqlx::FromRow)]
struct AttemptRow {
    attempt: Option<i32>,
    claimed_at: Option<DateTime<Utc>>,
    provider_call_id: Option<String>,
    outcome: Option<String>,
    last_error: Option<String>,
    ended_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
}

/// Every dial of call `id`, in dial order, or [`PgError::NotFound`].
pub(crate) async fn attempts(
    executor: impl PgExecutor<'_>,
    id: CallId,
) -> Result<Vec<Attempt>, PgError> {
    let rows: Vec<AttemptRow> = sqlx::query_as(ATTEMPTS)
        .bind(id.0)
        .fetch_all(executor)
        .await?;
    if rows.is_empty() {
        return Err(PgError::NotFound(id));
    }
    let corrupt = |problem: String| PgError::Corrupt(format!("call {id}: {problem}"));
    rows.into_iter()
        .filter_map(|row| Some((row.attempt?, row)))
        .map(|(attempt, row)| {
            Ok(Attempt {
                attempt: u32::try_from(attempt)
                    .map_err(|_| corrupt(format!("attempt {attempt}")))?,
                dialled_at: row
                    .claimed_at
                    .ok_or_else(|| corrupt(format!("attempt {attempt} has no claim time")))?,
                provider_call_id: row.provider_call_id,
                outcome: match row.outcome.as_deref() {
                    None => AttemptOutcome::InProgress,
                    Some(outcome) => outcome
                        .parse::<AttemptOutcome>()
                        .map_err(|_| corrupt(format!("attempt {attempt} outcome {outcome:?}")))?,
                },
                error: row.last_error,
                ended_at: row.ended_at,
                retry_at: row.retry_at,
            })
        })
        .collect()
}

/// The attempt the provider named `provider_call_id`, if one was recorded.
pub(crate) async fn find_attempt(
    executor: impl PgExecutor<'_>,
    provider_call_id: &str,
) -> Result<Option<AttemptRef>, PgError> {
    // PostgreSQL text cannot hold NUL, so no such id was ever recorded (and
    // binding one would fail).
    if provider_call_id.contains('\0') {
        return Ok(None);
    }
    let row: Option<(Uuid, i32)> = sqlx::query_as(FIND_ATTEMPT)
        .bind(provider_call_id)
        .fetch_optional(executor)
        .await?;
    row.map(|(call_id, attempt)| attempt_ref(call_id, attempt))
        .transpose()
}
