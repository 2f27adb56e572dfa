//! How a `calls` row maps to and from a [`Call`].

use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, CallPayload, CallStatus};
use orchestrator_core::{
    CallbackState, CallbackStatus, CallbackUrl, Metadata, PhoneNumber, ScriptId,
};
use uuid::Uuid;

use crate::error::PgError;

/// The `calls` columns a [`CallRow`] reads, qualified, for `SELECT … FROM
/// calls` and `RETURNING` lists. `metadata` is read as text so that it
/// round-trips byte for byte.
macro_rules! call_columns {
    () => {
        "calls.id, calls.to_number, calls.script_id, calls.metadata::text AS metadata, \
         calls.status, calls.attempts, calls.last_error, calls.created_at, calls.started_at, \
         calls.ended_at, calls.not_before, calls.expires_at, calls.next_attempt_at, \
         calls.lease_expires_at, calls.provider_call_id, calls.duration_sec, calls.retry_of, \
         calls.cancel_requested_at, calls.cancel_reason, calls.callback_url"
    };
}
pub(crate) use call_columns;

/// The names [`call_columns!`] gives its columns, for selecting them from a
/// CTE whose `RETURNING` list was [`call_columns!`].
macro_rules! call_column_names {
    () => {
        "id, to_number, script_id, metadata, status, attempts, last_error, created_at, \
         started_at, ended_at, not_before, expires_at, next_attempt_at, lease_expires_at, \
         provider_call_id, duration_sec, retry_of, cancel_requested_at, cancel_reason, \
         callback_url"
    };
}
pub(crate) use call_column_names;

/// [`call_columns!`] and the call's delivery, for reads `FROM`
/// [`calls_with_delivery!`].
macro_rules! call_columns_with_delivery {
    () => {
        concat!(
            $crate::row::call_columns!(),
            ", delivery.state AS callback_state, delivery.attempts AS callback_attempts, \
             delivery.last_error AS callback_last_error"
        )
    };
}
pub(crate) use call_columns_with_delivery;

/// `calls` with the outbox row of each call's terminal event, if any (its
/// primary key is the call's id).
macro_rules! calls_with_delivery {
    () => {
        "calls LEFT JOIN call_deliveries AS delivery ON delivery.call_id = calls.id"
    };
}
pub(crate) use calls_with_delivery;

/// One `calls` row as PostgreSQL returns it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CallRow {
    id: Uuid,
    to_number: String,
    script_id: String,
    metadata: Option<String>,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
    provider_call_id: Option<String>,
    duration_sec: Option<i64>,
    retry_of: Option<Uuid>,
    cancel_requested_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
    callback_url: Option<String>,
    /// The delivery's columns: absent from `RETURNING` lists (a change of
    /// status either finds no delivery or creates it `PENDING`) and `NULL`
    /// when the call has no delivery yet.
    #[sqlx(default)]
    callback_state: Option<String>,
    #[sqlx(default)]
    callback_attempts: Option<i32>,
    #[sqlx(default)]
    callback_last_error: Option<String>,
}

impl TryFrom<CallRow> for Call {
    type Error = PgError;

    fn try_from(row: CallRow) -> Result<Self, PgError> {
        let id = CallId(row.id);
        let corrupt = |problem: String| PgError::Corrupt(format!("call {id}: {problem}"));
        // Stored numbers were valid when written; numbering plans change, so
        // only their canonical form is checked on the way back.
        let to = PhoneNumber::from_canonical(&row.to_number)
            .map_err(|error| corrupt(format!("to_number: {error}")))?;
        let script_id = ScriptId::parse(row.script_id)
            .map_err(|error| corrupt(format!("script_id: {error}")))?;
        let metadata = row
            .metadata
            .as_deref()
            .map(Metadata::parse)
            .transpose()
            .map_err(|error| corrupt(format!("metadata: {error}")))?;
        let status = row
            .status
            .parse::<CallStatus>()
            .map_err(|error| corrupt(error.to_string()))?;
        let attempts = u32::try_from(row.attempts)
            .map_err(|_| corrupt(format!("attempts {}", row.attempts)))?;
        let duration_sec = row
            .duration_sec
            .map(u32::try_from)
            .transpose()
            .map_err(|_| corrupt(format!("duration_sec {:?}", row.duration_sec)))?;
        let callback_url = row
            .callback_url
            .map(CallbackUrl::parse)
            .transpose()
            .map_err(|error| corrupt(format!("callback_url: {error}")))?;
        // A call with a callback URL shows its delivery, or a pending one
        // with no tries before its terminal event creates the row.
        let callback = match (&callback_url, row.callback_state) {
            (None, _) => None,
            (Some(_), None) => Some(CallbackStatus::default()),
            (Some(_), Some(state)) => Some(CallbackStatus {
                state: state.parse::<CallbackState>().map_err(corrupt)?,
                attempts: row
                    .callback_attempts
                    .and_then(|attempts| u32::try_from(attempts).ok())
                    .ok_or_else(|| {
                        corrupt(format!("delivery attempts {:?}", row.callback_attempts))
                    })?,
                last_error: row.callback_last_error,
            }),
        };
        Ok(Call {
            id,
            payload: CallPayload {
                to,
                script_id,
                metadata,
            },
            status,
            attempts,
            last_error: row.last_error,
            created_at: row.created_at,
            started_at: row.started_at,
            ended_at: row.ended_at,
            not_before: row.not_before,
            expires_at: row.expires_at,
            next_attempt_at: row.next_attempt_at,
            lease_expires_at: row.lease_expires_at,
            provider_call_id: row.provider_call_id,
            duration_sec,
            retry_of: row.retry_of.map(CallId),
            cancel_requested_at: row.cancel_requested_at,
            cancel_reason: row.cancel_reason,
            callback_url,
            callback,
        })
    }
}

/// `metadata` as the JSON text we store (`None` stays SQL `NULL`).
pub(crate) fn metadata_text(metadata: Option<&Metadata>) -> Option<String> {
    metadata.map(Metadata::to_string)
}

/// Rows to calls, failing on the first invalid row.
pub(crate) fn calls(rows: Vec<CallRow>) -> Result<Vec<Call>, PgError> {
    rows.into_iter().map(Call::try_from).collect()
}

/// Attempt `attempt` of call `call_id`, from an `integer` column.
pub(crate) fn attempt_ref(call_id: Uuid, attempt: i32) -> Result<AttemptRef, PgError> {
    let id = CallId(call_id);
    let attempt = u32::try_from(attempt)
        .map_err(|_| PgError::Corrupt(format!("call {id}: attempt {attempt}")))?;
    Ok(AttemptRef {
        call_id: id,
        attempt,
    })
}

/// `attempts` as the `integer` column holds it. Only a corrupt row could
/// have counted past `i32::MAX`.
pub(crate) fn attempts_column(id: CallId, attempts: u32) -> Result<i32, PgError> {
    i32::try_from(attempts).map_err(|_| PgError::Corrupt(format!("call {id}: attempts {attempts}")))
}

#[cfg(test)]
mod tests {
    /// The names of the `RETURNING` list, in order: what a CTE re-selects.
    #[test]
    fn the_column_names_are_those_of_the_column_list() {
        let names: Vec<String> = call_columns!()
            .split(',')
            .map(|column| {
                let column = column.trim();
                let name = column.rsplit(" AS ").next().unwrap_or(column);
                name.trim_start_matches("calls.").to_owned()
            })
            .collect();
        let expected: Vec<&str> = call_column_names!().split(',').map(str::trim).collect();
        assert_eq!(names, expected);
    }
}
