//! `create`: a new `PENDING` call and its `call.created` event, or the first
//! call created with the same idempotency key.
//!
//! No transaction and no lock: the unique index on `idempotency_key` decides
//! between concurrent creates. `ON CONFLICT DO NOTHING` makes a repeat return
//! no row instead of failing; PostgreSQL has then waited for the first
//! inserter to commit, so a second statement, with a fresh snapshot, sees the
//! first call and returns it.

use chrono::{DateTime, Utc};
use orchestrator_core::call::{Call, CallId, NewCall};
use orchestrator_core::clock;
use orchestrator_core::input::{CallbackUrl, IdempotencyKey};
use orchestrator_core::store::Created;
use sqlx::PgPool;

use crate::error::PgError;
use crate::events::{event_columns, log_events};
use crate::row::{
    call_column_names, call_columns, call_columns_with_delivery, calls_with_delivery,
    metadata_text, CallRow,
};

/// The insert and its `call.created` event, in one statement.
const INSERT: &str = concat!(
    "WITH changed AS ( \
        INSERT INTO calls (id, to_number, script_id, metadata, status, attempts, created_at, \
                           not_before, expires_at, idempotency_key, retry_of, callback_url) \
        VALUES ($1, $2, $3, $4::text::json, 'PENDING', 0, $5, $6, $7, $8, $9, $10) \
        ON CONFLICT (idempotency_key) DO NOTHING \
        RETURNING ",
    call_columns!(),
    ", ",
    event_columns!("'call.created'", "$5"),
    "), ",
    log_events!(),
    " SELECT ",
    call_column_names!(),
    " FROM changed"
);

const BY_KEY: &str = concat!(
    "SELECT ",
    call_columns_with_delivery!(),
    " FROM ",
    calls_with_delivery!(),
    " WHERE calls.idempotency_key = $1"
);

/// Creates call `id` from `new` at `now` (truncated to the microseconds
/// PostgreSQL keeps) with its `call.created` event, or returns the call that
/// already holds `new.idempotency_key` with `created: false`.
pub(crate) async fn create(
    pool: &PgPool,
    id: CallId,
    new: &NewCall,
    now: DateTime<Utc>,
) -> Result<Created, PgError> {
    let inserted: Option<CallRow> = sqlx::query_as(INSERT)
        .bind(id.0)
        .bind(new.payload.to.as_str())
        .bind(new.payload.script_id.as_str())
        .bind(metadata_text(new.payload.metadata.as_ref()))
        .bind(clock::truncate_to_micros(now))
        .bind(new.not_before.map(clock::truncate_to_micros))
        .bind(new.expires_at.map(clock::truncate_to_micros))
        .bind(new.idempotency_key.as_ref().map(IdempotencyKey::as_str))
        .bind(new.retry_of.map(|original| original.0))
        .bind(new.callback_url.as_ref().map(CallbackUrl::as_str))
        .fetch_optional(pool)
        .await?;
    if let Some(row) = inserted {
        return Ok(Created {
            call: Call::try_from(row)?,
            created: true,
        });
    }
    let first: Option<CallRow> = sqlx::query_as(BY_KEY)
        .bind(new.idempotency_key.as_ref().map(IdempotencyKey::as_str))
        .fetch_optional(pool)
        .await?;
    let first = first.ok_or_else(|| {
        PgError::Corrupt("idempotency key conflicted with a call that is gone".into())
    })?;
    Ok(Created {
        call: Call::try_from(first)?,
        created: false,
    })
}
