//! How a `calls` row maps to and from a [`Call`].

use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, CallPayload, CallStatus};
use orchestrator_core::{Metadata, PhoneNumber, ScriptId};
use uuid::Uuid;

use crate::error::PgError;

/// The `calls` columns a [`CallRow`] reads, for `SELECT` and `RETURNING`
/// lists. `metadata` is read as text so that it round-trips byte for byte.
macro_rules! call_columns {
    () => {
        "id, to_number, script_id, metadata::text AS metadata, status, attempts, last_error, \
         created_at, started_at, ended_at, not_before, expires_at, next_attempt_at, \
         lease_expires_at, provider_call_id, duration_sec"
    };
}
pub(crate) use call_columns;

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
            retry_of: None,
            cancel_requested_at: None,
            cancel_reason: None,
            callback_url: None,
            callback: None,
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
