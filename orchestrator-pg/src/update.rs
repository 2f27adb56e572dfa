//! `update`: a patch to a `PENDING` call's payload and schedule.
//!
//! Read-modify-write under the row lock: the state machine decides whether
//! the call may still change and what it becomes, and the schedule rule is
//! checked against the call as it is under the lock, so neither can drift
//! from the memory store. The statement writes only the columns a patch can
//! change; the status stays, so no event is written.

use chrono::{DateTime, Utc};
use orchestrator_core::call::{Call, CallId, CallPatch};
use orchestrator_core::state::{transition, CallEvent};
use orchestrator_core::validate::validate_schedule;
use sqlx::PgPool;

use crate::error::PgError;
use crate::read::locked;
use crate::row::metadata_text;

const UPDATE: &str = "UPDATE calls SET to_number = $2, script_id = $3, \
                      metadata = $4::text::json, not_before = $5, expires_at = $6 WHERE id = $1";

/// Applies `patch` to call `id` at `now` and returns the call.
/// [`PgError::NotFound`]; [`PgError::Conflict`] when the call is not
/// `PENDING`; [`PgError::Invalid`] when the schedule rule fails.
pub(crate) async fn update(
    pool: &PgPool,
    id: CallId,
    patch: &CallPatch,
    now: DateTime<Utc>,
) -> Result<Call, PgError> {
    let mut tx = pool.begin().await?;
    let call = locked(&mut tx, id).await?;
    // A refusal ends the transaction now, so the row lock goes with it
    // (see `settle`).
    let checked = transition(&call, CallEvent::Update(patch.clone()))
        .map_err(|source| PgError::Conflict { id, source })
        .and_then(|next| {
            validate_schedule(&next, patch, now).map_err(PgError::Invalid)?;
            Ok(next)
        });
    let next = match checked {
        Ok(next) => next,
        Err(error) => {
            tx.rollback().await?;
            return Err(error);
        }
    };
    sqlx::query(UPDATE)
        .bind(id.0)
        .bind(next.payload.to.as_str())
        .bind(next.payload.script_id.as_str())
        .bind(metadata_text(next.payload.metadata.as_ref()))
        .bind(next.not_before)
        .bind(next.expires_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(next)
}
