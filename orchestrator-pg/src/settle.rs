//! Ending an attempt (`settle`) and naming it (`record_dial`).
//!
//! Both apply only to the attempt they name: `settle` to the current
//! `IN_PROGRESS` attempt (so a slot is released exactly once, however many
//! engines or webhooks race), `record_dial` to any attempt made so far (a
//! late answer for an older attempt still maps the provider's id, so its
//! webhook is found). Each also writes the attempt's row in
//! `call_attempts`, in the same statement.
//!
//! `settle` is read-modify-write under the row lock: the state machine
//! computes the next call (a cancel request included), and one statement
//! writes it back with its event, its callback delivery when it ends a call
//! with a callback URL, and the attempt's outcome. `record_dial` is one
//! statement: its `UPDATE` rechecks that the attempt is current on the
//! latest row version, so it needs no lock taken first.

use orchestrator_core::call::{AttemptRef, Call, CallStatus};
use orchestrator_core::state::transition;
use orchestrator_core::store::{Settled, Settlement};
use orchestrator_core::{Attempt, EventType};
use sqlx::PgPool;

use crate::error::PgError;
use crate::events::{event_columns, log_changes};
use crate::read::locked;
use crate::row::{attempts_column, call_columns, CallRow};

/// Writes back every field a settlement may change with the change's event
/// (`$15` its type, `$16` when), and closes the history row of the current
/// claim with one `call_event_seq` value, which orders it among all claims
/// and settlements.
const SETTLE: &str = concat!(
    "WITH changed AS ( \
        UPDATE calls SET status = $2, attempts = $3, last_error = $4, started_at = $5, \
            ended_at = $6, next_attempt_at = $7, lease_expires_at = $8, \
            provider_call_id = $9, duration_sec = $10 \
        WHERE id = $1 \
        RETURNING calls.id, calls.status, calls.callback_url, ",
    event_columns!("$15", "$16"),
    " ), ",
    log_changes!(),
    " UPDATE call_attempts SET settle_seq = nextval('call_event_seq'), outcome = $11, \
        last_error = $12, ended_at = $13, retry_at = $14 \
    WHERE call_id = $1 AND claim_seq = ( \
        SELECT max(claim_seq) FROM call_attempts WHERE call_id = $1)"
);

/// Records a provider id for attempt `$2` of call `$1`, if that attempt was
/// made: the lookup row (the last recording of an id wins), the history row
/// of that attempt's latest claim, and the call itself while the attempt is
/// current (`Accept`), which it then returns.
const RECORD_DIAL: &str = concat!(
    "WITH made AS ( \
        SELECT id FROM calls WHERE id = $1 AND $2 BETWEEN 1 AND attempts \
    ), mapping AS ( \
        INSERT INTO provider_calls (provider_call_id, call_id, attempt) \
        SELECT $3, id, $2 FROM made \
        ON CONFLICT (provider_call_id) DO UPDATE \
            SET call_id = EXCLUDED.call_id, attempt = EXCLUDED.attempt \
    ), history AS ( \
        UPDATE call_attempts SET provider_call_id = $3 \
        WHERE call_id = (SELECT id FROM made) AND claim_seq = ( \
            SELECT max(claim_seq) FROM call_attempts WHERE call_id = $1 AND attempt = $2) \
    ) \
    UPDATE calls SET provider_call_id = $3 \
    WHERE id = $1 AND status = 'IN_PROGRESS' AND attempts = $2 \
    RETURNING ",
    call_columns!()
);

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM calls WHERE id = $1)";

/// What a settled attempt's history row says.
fn history(settlement: &Settlement, cancel_requested: bool) -> Attempt {
    // Only the outcome fields are written; the rest of the row stays.
    Attempt::started(0, settlement.at()).settled(settlement, cancel_requested)
}

/// Applies `settlement` to `attempt` if it is the call's current
/// `IN_PROGRESS` attempt; otherwise returns the call unchanged as
/// [`Settled::Stale`]. [`PgError::NotFound`]; [`PgError::Conflict`] if the
/// state machine refuses the settlement.
pub(crate) async fn settle(
    pool: &PgPool,
    attempt: AttemptRef,
    settlement: Settlement,
) -> Result<Settled, PgError> {
    let id = attempt.call_id;
    let mut tx = pool.begin().await?;
    let call = locked(&mut tx, id).await?;
    if call.status != CallStatus::InProgress || call.attempts != attempt.attempt {
        // Ended now, not when the dropped transaction's rollback gets sent:
        // until then the row stays locked, and a claim would skip the call.
        tx.rollback().await?;
        return Ok(Settled::Stale(call));
    }
    let dial = history(&settlement, call.cancel_requested_at.is_some());
    let at = settlement.at();
    let next = match transition(&call, settlement.into()) {
        Ok(next) => next,
        Err(source) => {
            tx.rollback().await?;
            return Err(PgError::Conflict { id, source });
        }
    };
    let event = EventType::of_change(Some(call.status), next.status);
    sqlx::query(SETTLE)
        .bind(id.0)
        .bind(next.status.as_str())
        .bind(attempts_column(id, next.attempts)?)
        .bind(next.last_error.as_deref())
        .bind(next.started_at)
        .bind(next.ended_at)
        .bind(next.next_attempt_at)
        .bind(next.lease_expires_at)
        .bind(next.provider_call_id.as_deref())
        .bind(next.duration_sec.map(i64::from))
        .bind(dial.outcome.as_str())
        .bind(dial.error)
        .bind(dial.ended_at)
        .bind(dial.retry_at)
        .bind(event.map(EventType::as_str))
        .bind(at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Settled::Applied(next))
}

/// Records that the provider named `attempt` `provider_call_id`; returns
/// the call when that set its `providerCallId` (the attempt is current and
/// `IN_PROGRESS`). An attempt not yet made records nothing.
/// [`PgError::NotFound`].
pub(crate) async fn record_dial(
    pool: &PgPool,
    attempt: AttemptRef,
    provider_call_id: &str,
) -> Result<Option<Call>, PgError> {
    let id = attempt.call_id;
    let accepted: Option<CallRow> = sqlx::query_as(RECORD_DIAL)
        .bind(id.0)
        .bind(i64::from(attempt.attempt))
        .bind(provider_call_id)
        .fetch_optional(pool)
        .await?;
    if let Some(row) = accepted {
        return Ok(Some(Call::try_from(row)?));
    }
    // Not current: rare, so telling an unknown call apart costs a second
    // statement only here.
    let exists: bool = sqlx::query_scalar(EXISTS)
        .bind(id.0)
        .fetch_one(pool)
        .await?;
    if exists {
        Ok(None)
    } else {
        Err(PgError::NotFound(id))
    }
}
