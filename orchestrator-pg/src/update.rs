//! `update_payload`: a patch to a `PENDING` call's payload.
//!
//! Read-modify-write under the row lock: the state machine decides whether
//! the call may still change and what the payload becomes, so this cannot
//! drift from it. The statement writes only the payload columns; nothing else
//! changes in an update.

use orchestrator_core::call::{Call, CallId, PayloadPatch};
use orchestrator_core::state::{transition, CallEvent};
use sqlx::PgPool;

use crate::error::PgError;
use crate::read::locked;
use crate::row::metadata_text;

const UPDATE_PAYLOAD: &str = "UPDATE calls SET to_number = $2, script_id = $3, \
                              metadata = $4::text::json WHERE id = $1";

/// Applies `patch` to call `id` and returns the call.
/// [`PgError::NotFound`]; [`PgError::Conflict`] when the call is not `PENDING`.
pub(crate) async fn update_payload(
    pool: &PgPool,
    id: CallId,
    patch: &PayloadPatch,
) -> Result<Call, PgError> {
    let mut tx = pool.begin().await?;
    let call = locked(&mut tx, id).await?;
    let payload = patch.apply_to(&call.payload);
    let next = transition(&call, CallEvent::UpdatePayload(payload))
        .map_err(|source| PgError::Conflict { id, source })?;
    sqlx::query(UPDATE_PAYLOAD)
        .bind(id.0)
        .bind(next.payload.to.as_str())
        .bind(next.payload.script_id.as_str())
        .bind(metadata_text(next.payload.metadata.as_ref()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(next)
}
