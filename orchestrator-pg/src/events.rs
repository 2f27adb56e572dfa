//! The event log: writing a change's event (and its callback delivery) in
//! the statement that makes the change, and reading the log by event id.
//!
//! Writers never assign event ids: an id drawn inside a writing transaction
//! follows the order transactions *started* writing, not the order they
//! committed, and a reader resuming after id N would miss an N − 1 that
//! committed later. Rows are inserted with `id` NULL; the sequencer
//! (`crate::sequencer`) numbers them after they commit, in commit order.
//! Readers see only numbered rows.

use chrono::{DateTime, Utc};
use orchestrator_core::{Call, Event, EventId, EventType};
use sqlx::PgExecutor;

use crate::error::PgError;

/// The CTE `events`, to follow a CTE `changed` that holds one row per
/// changed call with the columns `id`, `status`, `callback_url`,
/// `event_type` (the event's type, NULL when the change keeps the status),
/// `event_at` (when it happened) and `event_call` (`call_event_json` of the
/// changed row): it appends one event per row whose `event_type` is set.
/// Alone, for changes that never end a call (a create, a claim).
macro_rules! log_events {
    () => {
        "events AS ( \
            INSERT INTO call_events (call_id, type, occurred_at, call) \
            SELECT id, event_type, event_at, event_call FROM changed \
            WHERE event_type IS NOT NULL \
            RETURNING seq, call_id, occurred_at \
        )"
    };
}
pub(crate) use log_events;

/// [`log_events!`] and the CTE `deliveries`, which adds the outbox row of
/// each of those events that ends a call with a callback URL, due at once.
///
/// The terminal statuses are `CallStatus::is_terminal`'s; the conformance
/// suite and `tests/postgres.rs` check that the two agree.
macro_rules! log_changes {
    () => {
        concat!(
            $crate::events::log_events!(),
            ", deliveries AS ( \
                INSERT INTO call_deliveries (call_id, event_seq, url, state, attempts, due_at) \
                SELECT events.call_id, events.seq, changed.callback_url, 'PENDING', 0, \
                       events.occurred_at \
                FROM events JOIN changed ON changed.id = events.call_id \
                WHERE changed.callback_url IS NOT NULL \
                  AND changed.status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED') \
            )"
        )
    };
}
pub(crate) use log_changes;

/// The `RETURNING` columns of a change's event besides the call's: its
/// type (`$type`, text), when it happened (`$at`, timestamptz) and the call
/// as the event carries it.
macro_rules! event_columns {
    ($type:literal, $at:literal) => {
        concat!(
            $type,
            "::text AS event_type, ",
            $at,
            "::timestamptz AS event_at, call_event_json(calls) AS event_call"
        )
    };
}
pub(crate) use event_columns;

const AFTER: &str = "\
    SELECT id, type, occurred_at, call::text FROM call_events \
    WHERE id > $1 ORDER BY id LIMIT $2";

const LAST: &str = "SELECT last_id FROM call_event_position";

/// Up to `limit` events with ids above `after`, in id order.
pub(crate) async fn after(
    executor: impl PgExecutor<'_>,
    after: EventId,
    limit: u32,
) -> Result<Vec<Event>, PgError> {
    let rows: Vec<EventRow> = sqlx::query_as(AFTER)
        .bind(id_column(after))
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await?;
    rows.into_iter().map(Event::try_from).collect()
}

/// The last event id assigned; `EventId(0)` before the first.
pub(crate) async fn last_id(executor: impl PgExecutor<'_>) -> Result<EventId, PgError> {
    let last: i64 = sqlx::query_scalar(LAST).fetch_one(executor).await?;
    event_id(last)
}

/// `id` as the `bigint` column holds it; ids past `i64::MAX` are past every id.
pub(crate) fn id_column(id: EventId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

/// An event id from the `bigint` column.
pub(crate) fn event_id(id: i64) -> Result<EventId, PgError> {
    u64::try_from(id)
        .map(EventId)
        .map_err(|_| PgError::Corrupt(format!("event id {id}")))
}

/// One sequenced `call_events` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub(crate) id: i64,
    #[sqlx(rename = "type")]
    pub(crate) kind: String,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) call: String,
}

impl TryFrom<EventRow> for Event {
    type Error = PgError;

    fn try_from(row: EventRow) -> Result<Self, PgError> {
        let corrupt = |problem: String| PgError::Corrupt(format!("event {}: {problem}", row.id));
        let kind = row
            .kind
            .parse::<EventType>()
            .map_err(|error| corrupt(error.to_string()))?;
        let call: Call =
            serde_json::from_str(&row.call).map_err(|error| corrupt(format!("call: {error}")))?;
        Ok(Event {
            id: event_id(row.id)?,
            kind,
            occurred_at: row.occurred_at,
            call,
        })
    }
}
