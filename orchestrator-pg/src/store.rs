//! [`PgStore`]: the [`Store`] on PostgreSQL.
//!
//! Changes to one call (`update_payload`, `record_dial`, `settle`) read the
//! row `FOR UPDATE`, compute the next call with
//! [`orchestrator_core::state::transition`] itself, and write it back in the
//! same transaction, so they cannot drift from the state machine. The two
//! set-based changes (`claim`, `expire_due`) are single statements that spell
//! out their transition; the conformance suite checks they agree with the
//! memory store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, CallStatus, NewCall, PayloadPatch};
use orchestrator_core::clock;
use orchestrator_core::input::IdempotencyKey;
use orchestrator_core::state::{transition, CallEvent};
use orchestrator_core::store::{
    ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store, StoreError,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::{OrStore, PgError};
use crate::row::{call_columns, calls, metadata_text, CallRow};
use crate::{claim, counts, listen, MIGRATOR};

/// Connections of the pool [`PgStore::connect`] opens.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long [`PgStore::connect`]'s pool waits for a free connection before a
/// call fails with [`StoreError::Unavailable`].
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Store::ping`] waits before calling the database unavailable.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

const INSERT: &str = concat!(
    "INSERT INTO calls (id, to_number, script_id, metadata, status, attempts, created_at, \
                        not_before, expires_at, idempotency_key) \
     VALUES ($1, $2, $3, $4::text::json, 'PENDING', 0, $5, $6, $7, $8) \
     ON CONFLICT (idempotency_key) DO NOTHING \
     RETURNING ",
    call_columns!()
);

const BY_KEY: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls WHERE idempotency_key = $1"
);

const GET: &str = concat!("SELECT ", call_columns!(), " FROM calls WHERE id = $1");

const GET_FOR_UPDATE: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls WHERE id = $1 FOR UPDATE"
);

const UPDATE_PAYLOAD: &str = "UPDATE calls SET to_number = $2, script_id = $3, \
                              metadata = $4::text::json WHERE id = $1";

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

const FIND_ATTEMPT: &str =
    "SELECT call_id, attempt FROM provider_calls WHERE provider_call_id = $1";

/// Writes back every field a settlement may change, and closes the history
/// row of the current claim with one `call_event_seq` value.
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

/// The `Expire` transition, set-based. `SKIP LOCKED` leaves rows another
/// transaction holds (being claimed, patched or expired by another engine)
/// to the next round instead of queueing on them.
const EXPIRE: &str = "\
    WITH due AS ( \
        SELECT id FROM calls WHERE status = 'PENDING' AND expires_at <= $1 \
        FOR UPDATE SKIP LOCKED \
    ), expired AS ( \
        UPDATE calls SET status = 'EXPIRED', ended_at = $1, next_attempt_at = NULL \
        FROM due WHERE calls.id = due.id \
        RETURNING calls.id, calls.created_at \
    ) \
    SELECT id FROM expired ORDER BY created_at, id";

const STALE: &str = "\
    SELECT id, attempts FROM calls \
    WHERE status = 'IN_PROGRESS' AND lease_expires_at <= $1 \
    ORDER BY lease_expires_at, id \
    LIMIT $2";

/// Each branch is a `min` over a partial index, so this stays cheap however
/// many calls wait.
const NEXT_TIMER: &str = "\
    SELECT LEAST( \
        (SELECT min(due_at) FROM calls WHERE status = 'PENDING' AND due_at > $1), \
        (SELECT min(expires_at) FROM calls WHERE status = 'PENDING' AND expires_at > $1), \
        (SELECT min(lease_expires_at) FROM calls \
         WHERE status = 'IN_PROGRESS' AND lease_expires_at > $1))";

const LIST_ALL: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
);

const LIST_STATUS: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls WHERE status = $3 ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
);

/// A [`Store`] on PostgreSQL. Cheap to clone: clones share the pool, the
/// listener and the change counter.
///
/// Construct with [`PgStore::connect`] or [`PgStore::from_pool`], then apply
/// the schema with [`PgStore::migrate`]. Each store runs two background
/// tasks on the tokio runtime it was built in (the LISTEN connection, and
/// the folding of the status counters); they stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    changes: Arc<watch::Sender<u64>>,
    _background: Arc<Background>,
}

/// Aborts the store's background tasks when the last clone goes.
struct Background(Vec<JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Opens a pool of up to [`DEFAULT_MAX_CONNECTIONS`] connections to
    /// `database_url` (`postgres://user:password@host:port/database`) and
    /// starts listening for changes. Does not apply migrations: call
    /// [`migrate`](Self::migrate).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] for a malformed URL or a refused login.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
            .connect(database_url)
            .await
            .or_store()?;
        Self::from_pool(pool).await
    }

    /// A store on an existing pool. Opens one more connection, outside the
    /// pool, with the same options, to LISTEN for changes made by other
    /// processes; returns once it listens, so no change committed after this
    /// returns goes unnoticed. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the listening connection cannot be
    /// opened; [`StoreError::Backend`] for other failures.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        let listener_pool = listen::listener_pool(&pool);
        let listener = listen::connect(&listener_pool).await.or_store()?;
        let changes = Arc::new(watch::Sender::new(0));
        let tasks = vec![
            tokio::spawn(listen::run(listener_pool, listener, Arc::clone(&changes))),
            tokio::spawn(counts::compact_periodically(pool.clone())),
        ];
        Ok(Self {
            pool,
            changes,
            _background: Arc::new(Background(tasks)),
        })
    }

    /// Applies the embedded migrations ([`MIGRATOR`]) that are not applied
    /// yet. Safe to run from several processes at once (sqlx serialises them
    /// with an advisory lock) and again on every start.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] when a migration fails or the applied ones
    /// differ from the embedded ones.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.or_store()
    }

    /// The connection pool, e.g. for health checks or ad-hoc queries.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn bump(&self) {
        self.changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    async fn create_inner(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, PgError> {
        let inserted: Option<CallRow> = sqlx::query_as(INSERT)
            .bind(id.0)
            .bind(new.payload.to.as_str())
            .bind(new.payload.script_id.as_str())
            .bind(metadata_text(new.payload.metadata.as_ref()))
            .bind(clock::truncate_to_micros(now))
            .bind(new.not_before)
            .bind(new.expires_at)
            .bind(new.idempotency_key.as_ref().map(IdempotencyKey::as_str))
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = inserted {
            return Ok(Created {
                call: Call::try_from(row)?,
                created: true,
            });
        }
        // ON CONFLICT DO NOTHING returned nothing, so the key is taken by a
        // committed call (PostgreSQL waited for its inserter to finish);
        // this new statement's snapshot sees it.
        let first: Option<CallRow> = sqlx::query_as(BY_KEY)
            .bind(new.idempotency_key.as_ref().map(IdempotencyKey::as_str))
            .fetch_optional(&self.pool)
            .await?;
        let first = first.ok_or_else(|| {
            PgError::Corrupt("idempotency key conflicted with a call that is gone".into())
        })?;
        Ok(Created {
            call: Call::try_from(first)?,
            created: false,
        })
    }

    async fn update_inner(&self, id: CallId, patch: &PayloadPatch) -> Result<Call, StoreError> {
        let mut tx = self.pool.begin().await.or_store()?;
        let call = locked(&mut tx, id).await?;
        let payload = patch.apply_to(&call.payload);
        let next = transition(&call, CallEvent::UpdatePayload(payload))
            .map_err(|source| StoreError::Conflict { id, source })?;
        sqlx::query(UPDATE_PAYLOAD)
            .bind(id.0)
            .bind(next.payload.to.as_str())
            .bind(next.payload.script_id.as_str())
            .bind(metadata_text(next.payload.metadata.as_ref()))
            .execute(&mut *tx)
            .await
            .or_store()?;
        tx.commit().await.or_store()?;
        Ok(next)
    }

    async fn settle_inner(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let id = attempt.call_id;
        let mut tx = self.pool.begin().await.or_store()?;
        let call = locked(&mut tx, id).await?;
        if call.status != CallStatus::InProgress || call.attempts != attempt.attempt {
            return Ok(Settled::Stale(call));
        }
        let history = History::of(&settlement);
        let next = transition(&call, settlement.clone().into())
            .map_err(|source| StoreError::Conflict { id, source })?;
        let attempts = i32::try_from(next.attempts)
            .map_err(|_| PgError::Corrupt(format!("call {id}: attempts {}", next.attempts)))
            .or_store()?;
        sqlx::query(SETTLE)
            .bind(id.0)
            .bind(next.status.as_str())
            .bind(attempts)
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
            .await
            .or_store()?;
        tx.commit().await.or_store()?;
        Ok(Settled::Applied(next))
    }

    async fn list_inner(&self, query: &ListQuery) -> Result<Page, PgError> {
        // One snapshot for the page and its total, as the memory store gives.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let limit = i64::from(query.page_size());
        let offset = i64::try_from(query.offset()).unwrap_or(i64::MAX);
        let rows: Vec<CallRow> = match query.status() {
            None => {
                sqlx::query_as(LIST_ALL)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&mut *tx)
                    .await?
            }
            Some(status) => {
                sqlx::query_as(LIST_STATUS)
                    .bind(limit)
                    .bind(offset)
                    .bind(status.as_str())
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        let total = counts::total(&mut tx, query.status()).await?;
        tx.commit().await?;
        Ok(Page {
            items: calls(rows)?,
            page: query.page(),
            page_size: query.page_size(),
            total,
        })
    }

    async fn record_dial_inner(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<bool, StoreError> {
        let id = attempt.call_id;
        let mut tx = self.pool.begin().await.or_store()?;
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
            .await
            .or_store()?;
        tx.commit().await.or_store()?;
        Ok(current)
    }
}

/// The call `id`, locked by `tx` until it ends. Errors: `NotFound`.
async fn locked(tx: &mut PgConnection, id: CallId) -> Result<Call, StoreError> {
    let row: Option<CallRow> = sqlx::query_as(GET_FOR_UPDATE)
        .bind(id.0)
        .fetch_optional(tx)
        .await
        .or_store()?;
    let row = row.ok_or(StoreError::NotFound(id))?;
    Call::try_from(row).or_store()
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
            Settlement::Retry { error, retry_at } => Self {
                outcome: "RETRY",
                error: Some(error),
                ended_at: None,
                retry_at: Some(*retry_at),
            },
            Settlement::Capacity { retry_at } => Self {
                outcome: "CAPACITY",
                error: None,
                ended_at: None,
                retry_at: Some(*retry_at),
            },
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, StoreError> {
        let created = self.create_inner(id, new, now).await.or_store()?;
        if created.created {
            // The trigger's NOTIFY reaches other processes; this process's
            // subscribers learn at once, even while the listener reconnects.
            self.bump();
        }
        Ok(created)
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        let row: Option<CallRow> = sqlx::query_as(GET)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .or_store()?;
        Call::try_from(row.ok_or(StoreError::NotFound(id))?).or_store()
    }

    async fn update_payload(&self, id: CallId, patch: &PayloadPatch) -> Result<Call, StoreError> {
        self.update_inner(id, patch).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.list_inner(query).await.or_store()
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        let mut conn = self.pool.acquire().await.or_store()?;
        counts::read(&mut conn).await.or_store()
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        let mut tx = self.pool.begin().await.or_store()?;
        let claimed = claim::claim(&mut tx, request).await.or_store()?;
        tx.commit().await.or_store()?;
        Ok(claimed)
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<bool, StoreError> {
        self.record_dial_inner(attempt, provider_call_id).await
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        // PostgreSQL text cannot hold NUL, so no such id was ever recorded.
        if provider_call_id.contains('\0') {
            return Ok(None);
        }
        let row: Option<(Uuid, i32)> = sqlx::query_as(FIND_ATTEMPT)
            .bind(provider_call_id)
            .fetch_optional(&self.pool)
            .await
            .or_store()?;
        row.map(|(call_id, attempt)| {
            let attempt = u32::try_from(attempt).map_err(|_| {
                PgError::Corrupt(format!("provider_calls: attempt {attempt} of {call_id}"))
            })?;
            Ok::<_, PgError>(AttemptRef {
                call_id: CallId(call_id),
                attempt,
            })
        })
        .transpose()
        .or_store()
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let settled = self.settle_inner(attempt, settlement).await?;
        if matches!(settled, Settled::Applied(_)) {
            self.bump();
        }
        Ok(settled)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(EXPIRE)
            .bind(now)
            .fetch_all(&self.pool)
            .await
            .or_store()?;
        Ok(ids.into_iter().map(CallId).collect())
    }

    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError> {
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(STALE)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .or_store()?;
        rows.into_iter()
            .map(|(call_id, attempts)| {
                let attempt = u32::try_from(attempts).map_err(|_| {
                    PgError::Corrupt(format!("call {call_id}: attempts {attempts}"))
                })?;
                Ok(AttemptRef {
                    call_id: CallId(call_id),
                    attempt,
                })
            })
            .collect::<Result<_, PgError>>()
            .or_store()
    }

    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar(NEXT_TIMER)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .or_store()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Readiness probes want a prompt answer, not the pool's acquire timeout.
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(PING_TIMEOUT, ping).await {
            Ok(result) => result.map(|_| ()).or_store(),
            Err(elapsed) => Err(StoreError::Unavailable(Box::new(elapsed))),
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
