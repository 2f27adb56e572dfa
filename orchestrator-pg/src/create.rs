//! `create`: new `PENDING` calls with their `call.created` events, or, for a
//! repeated idempotency key, the first call created with it.
//!
//! Creates arriving together are written by one statement (group commit,
//! see `crate::batch`): one `INSERT … SELECT FROM unnest(…)`, one commit,
//! and the counters' statement trigger fired once, however many calls. No
//! explicit transaction and no lock: the unique index on `idempotency_key`
//! decides between concurrent creates. `ON CONFLICT DO NOTHING` skips a
//! repeat instead of failing (a key twice in one batch included: the first
//! row wins); PostgreSQL has then waited for the first inserter to commit,
//! so a second statement, with a fresh snapshot, sees the first call and
//! returns it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use orchestrator_core::call::{Call, CallId, NewCall};
use orchestrator_core::clock;
use orchestrator_core::input::{CallbackUrl, IdempotencyKey};
use orchestrator_core::store::Created;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use crate::batch::Answers;
use crate::error::PgError;
use crate::events::{event_columns, log_events};
use crate::row::{
    call_column_names, call_columns, call_columns_with_delivery, calls_with_delivery,
    metadata_text, CallRow,
};

/// The inserts and their `call.created` events, one row of `$1`.. per call,
/// in one statement.
const INSERT: &str = concat!(
    "WITH input AS ( \
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], \
            $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::text[], $9::uuid[], \
            $10::text[]) \
        AS i(id, to_number, script_id, metadata, created_at, not_before, expires_at, \
             idempotency_key, retry_of, callback_url) \
    ), changed AS ( \
        INSERT INTO calls (id, to_number, script_id, metadata, status, attempts, created_at, \
                           not_before, expires_at, idempotency_key, retry_of, callback_url) \
        SELECT id, to_number, script_id, metadata::json, 'PENDING', 0, created_at, \
               not_before, expires_at, idempotency_key, retry_of, callback_url \
        FROM input \
        ON CONFLICT (idempotency_key) DO NOTHING \
        RETURNING ",
    call_columns!(),
    ", ",
    event_columns!("'call.created'", "calls.created_at"),
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

/// One call to create: its columns as [`INSERT`] takes them.
#[derive(Clone, Debug)]
pub(crate) struct CreateRequest {
    id: Uuid,
    to_number: String,
    script_id: String,
    metadata: Option<String>,
    created_at: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    idempotency_key: Option<String>,
    retry_of: Option<Uuid>,
    callback_url: Option<String>,
}

impl CreateRequest {
    /// Call `id` from `new` at `now`, its instants truncated to the
    /// microseconds PostgreSQL keeps.
    pub(crate) fn new(id: CallId, new: &NewCall, now: DateTime<Utc>) -> Self {
        Self {
            id: id.0,
            to_number: new.payload.to.as_str().to_owned(),
            script_id: new.payload.script_id.as_str().to_owned(),
            metadata: metadata_text(new.payload.metadata.as_ref()),
            created_at: clock::truncate_to_micros(now),
            not_before: new.not_before.map(clock::truncate_to_micros),
            expires_at: new.expires_at.map(clock::truncate_to_micros),
            idempotency_key: new
                .idempotency_key
                .as_ref()
                .map(|key| IdempotencyKey::as_str(key).to_owned()),
            retry_of: new.retry_of.map(|original| original.0),
            callback_url: new
                .callback_url
                .as_ref()
                .map(|url| CallbackUrl::as_str(url).to_owned()),
        }
    }
}

/// Creates each requested call with its `call.created` event, or answers
/// the call that already holds its idempotency key with `created: false`.
/// When the database refuses the batch's statement for a reason of the
/// data's (not an outage), each request is tried alone, so only the one at
/// fault fails.
pub(crate) async fn create(
    mut connection: PoolConnection<Postgres>,
    requests: Vec<CreateRequest>,
) -> Answers<Created> {
    match insert(&mut connection, &requests).await {
        Err(error) if requests.len() > 1 && !error.is_unavailable() => {
            let mut answers = Vec::with_capacity(requests.len());
            for request in &requests {
                let answer = insert(&mut connection, std::slice::from_ref(request))
                    .await
                    .and_then(|mut alone| alone.pop().unwrap_or(Err(PgError::Stopped)));
                answers.push(answer);
            }
            Ok(answers)
        }
        inserted => inserted,
    }
}

/// [`INSERT`] of `requests`, then the first call of each key that was
/// taken already.
async fn insert(connection: &mut PgConnection, requests: &[CreateRequest]) -> Answers<Created> {
    let inserted: Vec<CallRow> = sqlx::query_as(INSERT)
        .bind(requests.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(
            requests
                .iter()
                .map(|r| r.to_number.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            requests
                .iter()
                .map(|r| r.script_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            requests
                .iter()
                .map(|r| r.metadata.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(requests.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.not_before).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.expires_at).collect::<Vec<_>>())
        .bind(
            requests
                .iter()
                .map(|r| r.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(requests.iter().map(|r| r.retry_of).collect::<Vec<_>>())
        .bind(
            requests
                .iter()
                .map(|r| r.callback_url.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *connection)
        .await?;
    let mut created: HashMap<Uuid, Call> = inserted
        .into_iter()
        .map(|row| Call::try_from(row).map(|call| (call.id.0, call)))
        .collect::<Result<_, _>>()?;
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        if let Some(call) = created.remove(&request.id) {
            answers.push(Ok(Created {
                call,
                created: true,
            }));
            continue;
        }
        let first: Option<CallRow> = sqlx::query_as(BY_KEY)
            .bind(request.idempotency_key.as_deref())
            .fetch_optional(&mut *connection)
            .await?;
        answers.push(match first {
            Some(row) => Call::try_from(row).map(|call| Created {
                call,
                created: false,
            }),
            None => Err(PgError::Corrupt(
                "idempotency key conflicted with a call that is gone".into(),
            )),
        });
    }
    Ok(answers)
}
