//! Ending an attempt (`settle`) and naming it (`record_dial`).
//!
//! Both are read-modify-write under the row lock, and both apply only to the
//! attempt they name: `settle` to the current `IN_PROGRESS` attempt (so a
//! slot is released exactly once, however many engines or webhooks race),
//! `record_dial` to any attempt made so far (a late answer for an older
//! attempt still maps the provider's id, so its webhook is found). Each also
//! writes the attempt's row in `call_attempts`, in the same statement.

use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, CallStatus};
use orchestrator_core::state::transition;
use orchestrator_core::store::{Settled, Settlement};
use sqlx::PgPool;

use crate::error::PgError;
use crate::read::locked;
use crate::row::attempts_column;

/// Writes back every field a settlement may change, and closes the history
/// row of the current claim with one `call_event_seq` value, which orders it
/// among all claims and settlements.
const SETTLE: &str = "\
    WITH call AS ( \
        UPDATE calls SET status = $2, attempts = $3, last_error = $4, started_at = $5, \
            ended_at = $6, next_attempt_at = $7, lease_expires_at = $8, \
            provider_call_id = $9, duration_sec = $10 \
        WHERE id = $1 \
    ) \
    UPDATE call_attempts SET settle_seq = nextval('call_event_seq'), outcome = $11, \
        last_error = $12, ended_at = $13, retry_at = $14 \
    WHERE call_id = $1 AND claim_seq = ( \
        SELECT max(claim_seq) FROM call_attempts WHERE call_id = $1)";

/// Records a provider id for attempt `$2` of call `$1`: the lookup row (the
/// last recording of an id wins), the history row of that attempt's latest
/// claim, and the call itself while the attempt is current (`Accept`).
const RECORD_DIAL: &str = "\
    WITH mapping AS ( \
        INSERT INTO provider_calls (provider_call_id, call_id, attempt) VALUES ($3, $1, $2) \
        ON CONFLICT (provider_call_id) DO UPDATE \
            SET call_id = EXCLUDED.call_id, attempt = EXCLUDED.attempt \
    ), history AS ( \
        UPDATE call_attempts SET provider_call_id = $3 \
        WHERE call_id = $1 AND claim_seq = ( \
            SELECT max(claim_seq) FROM call_attempts WHERE call_id = $1 AND attempt = $2) \
    ) \
    UPDATE calls SET provider_call_id = $3 \
    WHERE id = $1 AND status = 'IN_PROGRESS' AND attempts = $2";

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
        return Ok(Settled::Stale(call));
    }
    let history = History::of(&settlement);
    let next = transition(&call, settlement.clone().into())
        .map_err(|source| PgError::Conflict { id, source })?;
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
        .bind(history.outcome)
        .bind(history.error)
        .bind(history.ended_at)
        .bind(history.retry_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Settled::Applied(next))
}

/// Records that the provider named `attempt` `provider_call_id`; returns
/// whether the call's `providerCallId` was set (the attempt is current and
/// `IN_PROGRESS`). An attempt not yet made records nothing.
/// [`PgError::NotFound`].
pub(crate) async fn record_dial(
    pool: &PgPool,
    attempt: AttemptRef,
    provider_call_id: &str,
) -> Result<bool, PgError> {
    let id = attempt.call_id;
    let mut tx = pool.begin().await?;
    let call = locked(&mut tx, id).await?;
    if attempt.attempt == 0 || attempt.attempt > call.attempts {
        return Ok(false);
    }
    let current = call.status == CallStatus::InProgress && call.attempts == attempt.attempt;
    sqlx::query(RECORD_DIAL)
        .bind(id.0)
        .bind(i64::from(attempt.attempt))
        .bind(provider_call_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(current)
}

/// What a settlement writes into the attempt's history row.
struct History<'a> {
    outcome: &'static str,
    error: Option<&'a str>,
    ended_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
}

impl<'a> History<'a> {
    fn of(settlement: &'a Settlement) -> Self {
        match settlement {
            Settlement::Completed { at, .. } => Self {
                outcome: "COMPLETED",
                error: None,
                ended_at: Some(*at),
                retry_at: None,
            },
            Settlement::Failed { error, at, .. } => Self {
                outcome: "FAILED",
                error: Some(error),
                ended_at: Some(*at),
                retry_at: None,
            },
            Settlement::Retry {
                error, retry_at, ..
            } => Self {
                outcome: "RETRY",
                error: Some(error),
                ended_at: None,
                retry_at: Some(*retry_at),
            },
            Settlement::Capacity { retry_at, .. } => Self {
                outcome: "CAPACITY",
                error: None,
                ended_at: None,
                retry_at: Some(*retry_at),
            },
        }
    }
}
