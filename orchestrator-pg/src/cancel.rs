//! `cancel`: a client ends a call, or asks a live one to end.
//!
//! Read-modify-write under the row lock, through the state machine
//! (`CallEvent::Cancel`): a `PENDING` call ends `CANCELED` with its
//! `call.canceled` event (and its callback delivery) in the same statement;
//! an `IN_PROGRESS` call only records the request, which its settlement
//! then honours (see `crate::settle`); a call canceled already is left as
//! it is.

use chrono::{DateTime, Utc};
use orchestrator_core::call::{CallId, CallStatus};
use orchestrator_core::clock;
use orchestrator_core::state::{transition, CallEvent};
use orchestrator_core::store::Canceled;
use orchestrator_core::EventType;
use sqlx::PgPool;

use crate::error::PgError;
use crate::events::{event_columns, log_changes};
use crate::read::locked;

/// Writes back every field a cancel may change, with the change's event
/// when the status changed (`$8` its type, NULL for none).
const CANCEL: &str = concat!(
    "WITH changed AS ( \
        UPDATE calls SET status = $2, last_error = $3, ended_at = $4, next_attempt_at = $5, \
            cancel_requested_at = $6, cancel_reason = $7 \
        WHERE id = $1 \
        RETURNING calls.id, calls.status, calls.callback_url, ",
    event_columns!("$8", "$9"),
    " ), ",
    log_changes!(),
    " SELECT count(*) FROM events"
);

/// Cancels call `id` at `now` (truncated to the microseconds PostgreSQL
/// keeps) with `reason`; also returns whether an event was written.
/// [`PgError::NotFound`]; [`PgError::Conflict`] for a call that ended
/// otherwise.
pub(crate) async fn cancel(
    pool: &PgPool,
    id: CallId,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Canceled, PgError> {
    let now = clock::truncate_to_micros(now);
    let mut tx = pool.begin().await?;
    let call = locked(&mut tx, id).await?;
    if call.status == CallStatus::Canceled {
        // Ended now, so the row lock goes with it (see `settle`).
        tx.rollback().await?;
        return Ok(Canceled::AlreadyCanceled(call));
    }
    let cancel = CallEvent::Cancel {
        at: now,
        reason: reason.to_owned(),
    };
    let next = match transition(&call, cancel) {
        Ok(next) => next,
        Err(source) => {
            tx.rollback().await?;
            return Err(PgError::Conflict { id, source });
        }
    };
    let event = EventType::of_change(Some(call.status), next.status);
    if next != call {
        sqlx::query(CANCEL)
            .bind(id.0)
            .bind(next.status.as_str())
            .bind(next.last_error.as_deref())
            .bind(next.ended_at)
            .bind(next.next_attempt_at)
            .bind(next.cancel_requested_at)
            .bind(next.cancel_reason.as_deref())
            .bind(event.map(EventType::as_str))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(if call.status == CallStatus::Pending {
        Canceled::Canceled(next)
    } else {
        Canceled::Requested(next)
    })
}
