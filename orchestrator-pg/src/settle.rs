//! Ending attempts (`settle`) and naming them (`record_dial`), many at a
//! time: each function here is the write of one batch (`crate::batch`), in
//! one transaction, answering every request of the batch on its own.
//!
//! Both apply only to the attempt they name: a settlement to the current
//! `IN_PROGRESS` attempt (so a slot is released exactly once, however many
//! engines or webhooks race), a provider id to any attempt made so far (a
//! late answer for an older attempt still maps the provider's id, so its
//! webhook is found). Each also writes the attempt's row in
//! `call_attempts`.
//!
//! A batch first locks its calls in id order, so two batches (or a batch
//! and a single-row write) never wait on each other in a cycle.
//! Settlements are read-modify-write under those locks: the state machine
//! computes each next call (a cancel request included), in request order,
//! and one statement writes them all back with their events, their
//! callback deliveries and the attempts' outcomes.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, CallStatus};
use orchestrator_core::state::transition;
use orchestrator_core::store::{Settled, Settlement};
use orchestrator_core::{Attempt, EventType};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, Postgres};
use uuid::Uuid;

use crate::batch::Answers;
use crate::error::PgError;
use crate::events::{event_columns, log_changes};
use crate::row::{
    attempts_column, call_columns, call_columns_with_delivery, calls_with_delivery, CallRow,
};

/// The calls of a batch, locked in id order.
const LOCK: &str = concat!(
    "SELECT ",
    call_columns_with_delivery!(),
    " FROM ",
    calls_with_delivery!(),
    " WHERE calls.id = ANY($1) ORDER BY calls.id FOR UPDATE OF calls"
);

/// The calls of a batch of provider ids, locked in id order: only which
/// exist is read.
const LOCK_IDS: &str = "SELECT id FROM calls WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Writes back every field a settlement may change with the change's event
/// (its type and instant), one row of `$1`.. per call; and closes the
/// history row of each call's current claim with one `call_event_seq`
/// value, which orders it among all claims and settlements.
const SETTLE: &str = concat!(
    "WITH input AS ( \
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], \
            $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], \
            $9::text[], $10::bigint[], $11::text[], $12::text[], $13::timestamptz[], \
            $14::timestamptz[], $15::text[], $16::timestamptz[]) \
        AS i(id, status, attempts, last_error, started_at, ended_at, next_attempt_at, \
             lease_expires_at, provider_call_id, duration_sec, outcome, error, \
             attempt_ended_at, retry_at, event_type, event_at) \
    ), changed AS ( \
        UPDATE calls SET status = i.status, attempts = i.attempts, last_error = i.last_error, \
            started_at = i.started_at, ended_at = i.ended_at, \
            next_attempt_at = i.next_attempt_at, lease_expires_at = i.lease_expires_at, \
            provider_call_id = i.provider_call_id, duration_sec = i.duration_sec \
        FROM input AS i WHERE calls.id = i.id \
        RETURNING calls.id, calls.status, calls.callback_url, ",
    event_columns!("i.event_type", "i.event_at"),
    " ), ",
    log_changes!(),
    ", history AS ( \
        UPDATE call_attempts SET settle_seq = nextval('call_event_seq'), outcome = i.outcome, \
            last_error = i.error, ended_at = i.attempt_ended_at, retry_at = i.retry_at \
        FROM input AS i \
        WHERE call_attempts.call_id = i.id AND call_attempts.claim_seq = ( \
            SELECT max(claim_seq) FROM call_attempts AS latest WHERE latest.call_id = i.id) \
    ) \
    SELECT count(*) FROM changed"
);

/// Records provider ids, one per row of `$1`..: for each attempt made so
/// far, the lookup row (the last recording of an id wins) and the history
/// row of that attempt's latest claim; and the call itself while the
/// attempt is current (`Accept`), which it then returns. The ids and the
/// provider ids of one statement are distinct.
const RECORD_DIAL: &str = concat!(
    "WITH input AS ( \
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[]) \
        AS i(id, attempt, provider_call_id) \
    ), made AS ( \
        SELECT i.id, i.attempt, i.provider_call_id FROM input AS i \
        JOIN calls AS c ON c.id = i.id AND i.attempt BETWEEN 1 AND c.attempts \
    ), mapping AS ( \
        INSERT INTO provider_calls (provider_call_id, call_id, attempt) \
        SELECT provider_call_id, id, attempt FROM made \
        ON CONFLICT (provider_call_id) DO UPDATE \
            SET call_id = EXCLUDED.call_id, attempt = EXCLUDED.attempt \
    ), history AS ( \
        UPDATE call_attempts SET provider_call_id = m.provider_call_id \
        FROM made AS m \
        WHERE call_attempts.call_id = m.id AND call_attempts.claim_seq = ( \
            SELECT max(claim_seq) FROM call_attempts AS latest \
            WHERE latest.call_id = m.id AND latest.attempt = m.attempt) \
    ) \
    UPDATE calls SET provider_call_id = m.provider_call_id \
    FROM made AS m \
    WHERE calls.id = m.id AND calls.status = 'IN_PROGRESS' AND calls.attempts = m.attempt \
    RETURNING ",
    call_columns!()
);

/// `ids` sorted, without repeats, as the locking statements bind them.
fn distinct(ids: &[Uuid]) -> Vec<Uuid> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Locks the calls `ids` names (in id order) and returns those that exist.
async fn lock(tx: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<CallId, Call>, PgError> {
    let rows: Vec<CallRow> = sqlx::query_as(LOCK)
        .bind(distinct(ids))
        .fetch_all(&mut *tx)
        .await?;
    rows.into_iter()
        .map(|row| Call::try_from(row).map(|call| (call.id, call)))
        .collect()
}

/// What a settled attempt's history row says.
fn history(settlement: &Settlement, cancel_requested: bool) -> Attempt {
    // Only the outcome fields are written; the rest of the row stays.
    Attempt::started(0, settlement.at()).settled(settlement, cancel_requested)
}

/// The columns of [`SETTLE`], one entry per applied settlement.
#[derive(Default)]
struct Writes {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    attempts: Vec<i32>,
    last_error: Vec<Option<String>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    ended_at: Vec<Option<DateTime<Utc>>>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
    lease_expires_at: Vec<Option<DateTime<Utc>>>,
    provider_call_id: Vec<Option<String>>,
    duration_sec: Vec<Option<i64>>,
    outcome: Vec<&'static str>,
    error: Vec<Option<String>>,
    attempt_ended_at: Vec<Option<DateTime<Utc>>>,
    retry_at: Vec<Option<DateTime<Utc>>>,
    event_type: Vec<Option<&'static str>>,
    event_at: Vec<DateTime<Utc>>,
}

impl Writes {
    fn push(
        &mut self,
        next: &Call,
        attempt: Attempt,
        event: Option<EventType>,
        at: DateTime<Utc>,
    ) -> Result<(), PgError> {
        self.id.push(next.id.0);
        self.status.push(next.status.as_str());
        self.attempts.push(attempts_column(next.id, next.attempts)?);
        self.last_error.push(next.last_error.clone());
        self.started_at.push(next.started_at);
        self.ended_at.push(next.ended_at);
        self.next_attempt_at.push(next.next_attempt_at);
        self.lease_expires_at.push(next.lease_expires_at);
        self.provider_call_id.push(next.provider_call_id.clone());
        self.duration_sec.push(next.duration_sec.map(i64::from));
        self.outcome.push(attempt.outcome.as_str());
        self.error.push(attempt.error);
        self.attempt_ended_at.push(attempt.ended_at);
        self.retry_at.push(attempt.retry_at);
        self.event_type.push(event.map(EventType::as_str));
        self.event_at.push(at);
        Ok(())
    }
}

/// One settlement to write: of `attempt`, with the provider id its webhook
/// reported when that is to be recorded first
/// ([`orchestrator_core::Store::settle_reported`]).
pub(crate) struct SettleRequest {
    pub(crate) attempt: AttemptRef,
    pub(crate) settlement: Settlement,
    pub(crate) provider_call_id: Option<String>,
}

/// Applies each settlement to its attempt if that is the call's current
/// `IN_PROGRESS` attempt, else answers the call unchanged as
/// [`Settled::Stale`]; per request, [`PgError::NotFound`], or
/// [`PgError::Conflict`] if the state machine refuses the settlement.
/// Provider ids to record are recorded first, as [`record_dial`] does.
/// Requests are taken in order, so a second settlement of one attempt in
/// the same batch is stale.
pub(crate) async fn settle(
    mut connection: PoolConnection<Postgres>,
    requests: Vec<SettleRequest>,
) -> Answers<Settled> {
    let ids: Vec<Uuid> = requests
        .iter()
        .map(|request| request.attempt.call_id.0)
        .collect();
    let mut tx = connection.begin().await?;
    let mut calls = lock(&mut tx, &ids).await?;
    // Provider ids not recorded yet: the usual webhook comes after the
    // dial's answer was recorded, and then there is nothing to write.
    let named: Vec<(AttemptRef, String)> = requests
        .iter()
        .filter_map(|request| {
            let named = request.provider_call_id.as_deref()?;
            let call = calls.get(&request.attempt.call_id)?;
            let recorded = call.current_attempt() == request.attempt
                && call.provider_call_id.as_deref() == Some(named);
            (!recorded).then(|| (request.attempt, named.to_owned()))
        })
        .collect();
    if !named.is_empty() {
        for accepted in record(&mut tx, &named)
            .await?
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(call) = calls.get_mut(&accepted.id) {
                call.provider_call_id = accepted.provider_call_id;
            }
        }
    }
    let mut writes = Writes::default();
    let mut answers = Vec::with_capacity(requests.len());
    for SettleRequest {
        attempt,
        settlement,
        ..
    } in requests
    {
        let id = attempt.call_id;
        let Some(call) = calls.get(&id) else {
            answers.push(Err(PgError::NotFound(id)));
            continue;
        };
        if call.status != CallStatus::InProgress || call.attempts != attempt.attempt {
            answers.push(Ok(Settled::Stale(call.clone())));
            continue;
        }
        let dial = history(&settlement, call.cancel_requested_at.is_some());
        let at = settlement.at();
        match transition(call, settlement.into()) {
            Ok(next) => {
                let event = EventType::of_change(Some(call.status), next.status);
                writes.push(&next, dial, event, at)?;
                answers.push(Ok(Settled::Applied(next.clone())));
                calls.insert(id, next);
            }
            Err(source) => answers.push(Err(PgError::Conflict { id, source })),
        }
    }
    if writes.id.is_empty() && named.is_empty() {
        // Ends the transaction now: until the rollback is sent the rows stay
        // locked, and a claim would skip them.
        tx.rollback().await?;
        return Ok(answers);
    }
    if writes.id.is_empty() {
        tx.commit().await?;
        return Ok(answers);
    }
    sqlx::query(SETTLE)
        .bind(&writes.id)
        .bind(&writes.status)
        .bind(&writes.attempts)
        .bind(&writes.last_error)
        .bind(&writes.started_at)
        .bind(&writes.ended_at)
        .bind(&writes.next_attempt_at)
        .bind(&writes.lease_expires_at)
        .bind(&writes.provider_call_id)
        .bind(&writes.duration_sec)
        .bind(&writes.outcome)
        .bind(&writes.error)
        .bind(&writes.attempt_ended_at)
        .bind(&writes.retry_at)
        .bind(&writes.event_type)
        .bind(&writes.event_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(answers)
}

/// Records that the provider named each attempt its provider id; answers,
/// per request, the call when that set its `providerCallId` (the attempt is
/// current and `IN_PROGRESS`), `None` when it did not (an attempt not yet
/// made records nothing), or [`PgError::NotFound`]. Requests naming one call
/// or one provider id twice are written in request order, so the last wins.
pub(crate) async fn record_dial(
    mut connection: PoolConnection<Postgres>,
    requests: Vec<(AttemptRef, String)>,
) -> Answers<Option<Call>> {
    let ids: Vec<Uuid> = requests
        .iter()
        .map(|(attempt, _)| attempt.call_id.0)
        .collect();
    let mut tx = connection.begin().await?;
    let found: HashSet<Uuid> = sqlx::query_scalar(LOCK_IDS)
        .bind(distinct(&ids))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let mut answers = record(&mut tx, &requests).await?;
    for (answer, (attempt, _)) in answers.iter_mut().zip(&requests) {
        if !found.contains(&attempt.call_id.0) {
            *answer = Err(PgError::NotFound(attempt.call_id));
        }
    }
    tx.commit().await?;
    Ok(answers)
}

/// [`RECORD_DIAL`] for `requests`, in `tx`, which holds their calls' locks:
/// per request, the call when its `providerCallId` was set.
async fn record(tx: &mut PgConnection, requests: &[(AttemptRef, String)]) -> Answers<Option<Call>> {
    let mut answers: Vec<Result<Option<Call>, PgError>> =
        requests.iter().map(|_| Ok(None)).collect();
    for round in distinct_rounds(requests) {
        let mut id = Vec::with_capacity(round.len());
        let mut attempt = Vec::with_capacity(round.len());
        let mut provider_call_id = Vec::with_capacity(round.len());
        for &index in &round {
            let (made, named) = &requests[index];
            id.push(made.call_id.0);
            attempt.push(attempts_column(made.call_id, made.attempt)?);
            provider_call_id.push(named.as_str());
        }
        let accepted: Vec<CallRow> = sqlx::query_as(RECORD_DIAL)
            .bind(&id)
            .bind(&attempt)
            .bind(&provider_call_id)
            .fetch_all(&mut *tx)
            .await?;
        for row in accepted {
            let call = Call::try_from(row)?;
            if let Some(&index) = round
                .iter()
                .find(|&&index| requests[index].0.call_id == call.id)
            {
                answers[index] = Ok(Some(call));
            }
        }
    }
    Ok(answers)
}

/// Splits request indexes into rounds in which no call and no provider id
/// repeats, keeping the order of requests that share either.
fn distinct_rounds(requests: &[(AttemptRef, String)]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<(Vec<usize>, HashSet<CallId>, HashSet<&str>)> = Vec::new();
    for (index, (attempt, named)) in requests.iter().enumerate() {
        // After the last round holding either key, so same-key requests
        // keep their order.
        let after = rounds
            .iter()
            .rposition(|(_, calls, names)| {
                calls.contains(&attempt.call_id) || names.contains(named.as_str())
            })
            .map_or(0, |last| last + 1);
        if after == rounds.len() {
            rounds.push((Vec::new(), HashSet::new(), HashSet::new()));
        }
        let (round, calls, names) = &mut rounds[after];
        round.push(index);
        calls.insert(attempt.call_id);
        names.insert(named.as_str());
    }
    rounds.into_iter().map(|(round, _, _)| round).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(call: u128, attempt: u32, named: &str) -> (AttemptRef, String) {
        (
            AttemptRef {
                call_id: CallId(Uuid::from_u128(call)),
                attempt,
            },
            named.to_owned(),
        )
    }

    #[test]
    fn rounds_never_repeat_a_call_or_a_provider_id_and_keep_their_order() {
        let requests = [
            request(1, 1, "a"),
            request(2, 1, "b"),
            request(1, 1, "c"),
            request(3, 1, "a"),
            request(4, 1, "d"),
        ];
        assert_eq!(distinct_rounds(&requests), [vec![0, 1, 4], vec![2, 3]]);
    }

    #[test]
    fn a_batch_without_repeats_is_one_round() {
        let requests = [request(1, 1, "a"), request(2, 2, "b")];
        assert_eq!(distinct_rounds(&requests), [vec![0, 1]]);
    }
}
