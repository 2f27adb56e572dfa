//! The callback outbox: claiming due deliveries for one try each, recording
//! how a try went, and when the next one is due.
//!
//! A delivery row is inserted by the statement that ends its call (see
//! `crate::events`), keyed by the call (one terminal event per call) and
//! pointing at its event by `seq`. It is claimed only once its event has an
//! id, which is the `webhook-id` its receiver sees on every try. Claims work
//! like call claims, without the lock: `FOR UPDATE SKIP LOCKED` over the due
//! rows, earliest due first, so claimers in many processes never take one
//! delivery at once; a claimed try holds the row by its due time (moved to
//! the end of the try's lease), so once a lease runs out without an answer
//! the delivery is due again and the next claim takes it with one more try.

use chrono::{DateTime, Utc};
use orchestrator_core::callback::NO_ANSWER_RECORDED;
use orchestrator_core::{
    clock, CallbackState, CallbackUrl, Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef, Event,
};
use sqlx::PgExecutor;

use crate::error::PgError;
use crate::events::{id_column, EventRow};

/// `$1` now, `$2` limit, `$3` the lease's end, `$4` the tries allowed,
/// `$5` the error of a delivery whose last try went unanswered.
///
/// `exhausted` fails, instead of claiming, the due deliveries whose last
/// allowed try lost its lease; `picked` locks the due, sequenced rest;
/// `claimed` starts their next try.
const CLAIM: &str = "\
    WITH exhausted AS ( \
        UPDATE call_deliveries SET state = 'FAILED', last_error = $5, due_at = NULL \
        WHERE call_id IN ( \
            SELECT call_id FROM call_deliveries \
            WHERE state = 'PENDING' AND due_at <= $1 AND attempts >= $4 \
            FOR UPDATE SKIP LOCKED) \
    ), picked AS ( \
        SELECT delivery.call_id, delivery.due_at, event.id AS event_id \
        FROM call_deliveries AS delivery JOIN call_events AS event ON event.seq = delivery.event_seq \
        WHERE delivery.state = 'PENDING' AND delivery.due_at <= $1 AND delivery.attempts < $4 \
          AND event.id IS NOT NULL \
        ORDER BY delivery.due_at, event.id \
        LIMIT $2 \
        FOR UPDATE OF delivery SKIP LOCKED \
    ), claimed AS ( \
        UPDATE call_deliveries SET attempts = call_deliveries.attempts + 1, due_at = $3 \
        FROM picked WHERE call_deliveries.call_id = picked.call_id \
        RETURNING picked.due_at AS was_due, picked.event_id, call_deliveries.url, \
                  call_deliveries.attempts \
    ) \
    SELECT event.id, event.type, event.occurred_at, event.call::text, claimed.url, \
           claimed.attempts \
    FROM claimed JOIN call_events AS event ON event.id = claimed.event_id \
    ORDER BY claimed.was_due, event.id";

/// `$1` the event id, `$2` the try; `$3` the new state, `$4` the error
/// (NULL keeps the last one), `$5` when it is next due (NULL unless PENDING).
const RECORD: &str = "\
    UPDATE call_deliveries AS delivery \
    SET state = $3, last_error = COALESCE($4, delivery.last_error), due_at = $5 \
    FROM call_events AS event \
    WHERE event.id = $1 AND delivery.call_id = event.call_id AND delivery.event_seq = event.seq \
      AND delivery.state = 'PENDING' AND delivery.attempts = $2";

const NEXT: &str = "\
    SELECT min(due_at) FROM call_deliveries WHERE state = 'PENDING' AND due_at > $1";

/// One claimed delivery: its event and where and which try to send it.
#[derive(Debug, sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    event: EventRow,
    url: String,
    attempts: i32,
}

/// Claims as [`orchestrator_core::Store::claim_deliveries`] says, in one
/// statement.
pub(crate) async fn claim(
    executor: impl PgExecutor<'_>,
    request: &DeliveryClaim,
) -> Result<Vec<Delivery>, PgError> {
    let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM)
        .bind(request.now)
        .bind(i64::from(request.limit))
        .bind(clock::add(request.now, request.lease))
        .bind(i64::from(request.max_attempts))
        .bind(NO_ANSWER_RECORDED)
        .fetch_all(executor)
        .await?;
    rows.into_iter()
        .map(|row| {
            let event = Event::try_from(row.event)?;
            let corrupt = |problem: String| {
                PgError::Corrupt(format!("delivery of event {}: {problem}", event.id))
            };
            let url = CallbackUrl::parse(row.url).map_err(|error| corrupt(error.to_string()))?;
            let attempt = u32::try_from(row.attempts)
                .map_err(|_| corrupt(format!("attempts {}", row.attempts)))?;
            Ok(Delivery {
                event,
                url,
                attempt,
            })
        })
        .collect()
}

/// Records `outcome` for try `delivery` if it is the delivery's current try
/// and the delivery is `PENDING`; returns whether it did.
pub(crate) async fn record(
    executor: impl PgExecutor<'_>,
    delivery: DeliveryRef,
    outcome: DeliveryOutcome,
) -> Result<bool, PgError> {
    let (state, error, due_at): (CallbackState, Option<String>, Option<DateTime<Utc>>) =
        match outcome {
            DeliveryOutcome::Delivered { .. } => (CallbackState::Delivered, None, None),
            DeliveryOutcome::Retry { error, retry_at } => {
                (CallbackState::Pending, Some(error), Some(retry_at))
            }
            DeliveryOutcome::Failed { error, .. } => (CallbackState::Failed, Some(error), None),
        };
    let recorded = sqlx::query(RECORD)
        .bind(id_column(delivery.event_id))
        .bind(i64::from(delivery.attempt))
        .bind(state.as_str())
        .bind(error)
        .bind(due_at)
        .execute(executor)
        .await?;
    Ok(recorded.rows_affected() > 0)
}

/// The earliest instant after `now` at which a `PENDING` delivery is due.
pub(crate) async fn next_at(
    executor: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, PgError> {
    Ok(sqlx::query_scalar(NEXT)
        .bind(now)
        .fetch_one(executor)
        .await?)
}
