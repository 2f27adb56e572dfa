//! Reads: one call, a page of calls, the attempt behind a provider id, and
//! the locked read every single-call change starts with.

use orchestrator_core::call::{AttemptRef, Call, CallId};
use orchestrator_core::store::{ListQuery, Page};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::counts;
use crate::error::PgError;
use crate::row::{attempt_ref, call_columns, calls, CallRow};

const GET: &str = concat!("SELECT ", call_columns!(), " FROM calls WHERE id = $1");

const GET_FOR_UPDATE: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls WHERE id = $1 FOR UPDATE"
);

/// Both listings walk an index on `(created_at, id)` (with `status` first
/// when filtered) backwards.
const LIST_ALL: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
);

const LIST_STATUS: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls WHERE status = $3 ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
);

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

/// One page of calls, newest first, and the total of the filter. Both come
/// from one REPEATABLE READ snapshot, so the total counts the rows the page
/// was cut from, as in the memory store.
pub(crate) async fn list(pool: &PgPool, query: &ListQuery) -> Result<Page, PgError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let limit = i64::from(query.page_size());
    let offset = i64::try_from(query.offset()).unwrap_or(i64::MAX);
    let rows: Vec<CallRow> = match query.status() {
        None => {
            sqlx::query_as(LIST_ALL)
                .bind(limit)
                .bind(offset)
                .fetch_all(&mut *tx)
                .await?
        }
        Some(status) => {
            sqlx::query_as(LIST_STATUS)
                .bind(limit)
                .bind(offset)
                .bind(status.as_str())
                .fetch_all(&mut *tx)
                .await?
        }
    };
    let total = counts::total(&mut *tx, query.status()).await?;
    tx.commit().await?;
    Ok(Page {
        items: calls(rows)?,
        page: query.page(),
        page_size: query.page_size(),
        total,
    })
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
