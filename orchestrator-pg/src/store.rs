//! [`PgStore`]: the [`Store`] on PostgreSQL.
//!
//! Each `Store` method delegates to the query function of its family
//! (`create`, `read`, `update`, `claim`, `settle`, `timers`, `counts`), which
//! returns the crate's own error; `?` turns that into a [`StoreError`]
//! through the crate's one mapping. What stays here is what belongs to the
//! store rather than to a query: the pool, the background tasks and the
//! change counter behind [`Store::subscribe`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, NewCall, PayloadPatch};
use orchestrator_core::store::{
    ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store, StoreError,
};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::PgError;
use crate::{claim, connect, counts, create, listen, migrate, read, settle, timers, update};

/// Connections of the pool [`PgStore::connect`] opens.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long [`PgStore::connect`] keeps retrying a refused connection, and
/// how long its pool waits for a free connection before a call fails with
/// [`StoreError::Unavailable`].
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// starts listening for changes. A refused connection is retried for up
    /// to [`DEFAULT_ACQUIRE_TIMEOUT`], in case the server is still starting.
    /// Does not apply migrations: call [`migrate`](Self::migrate).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] for a malformed URL, a refused login or a
    /// missing database. A connection failure names the host and port (or
    /// socket) it tried, never the credentials.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        let pool = connect::open(
            database_url,
            DEFAULT_MAX_CONNECTIONS,
            DEFAULT_ACQUIRE_TIMEOUT,
        )
        .await?;
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
        let listener = listen::connect(&listener_pool)
            .await
            .map_err(|error| PgError::connect(connect::target(&pool.connect_options()), error))?;
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

    /// Applies the embedded migrations ([`MIGRATOR`](crate::MIGRATOR)) that
    /// are not applied yet. Safe to run from several processes at once (sqlx
    /// serialises them with an advisory lock) and again on every start.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] when a migration fails or the applied ones
    /// differ from the embedded ones.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Ok(migrate::run(&self.pool).await?)
    }

    /// The connection pool, e.g. for health checks or ad-hoc queries.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Wakes this process's subscribers at once after a change of ours. The
    /// trigger's NOTIFY reaches every process too, but only through the
    /// listener, which may be reconnecting.
    fn bump(&self) {
        self.changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
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
        let created = create::create(&self.pool, id, new, now).await?;
        if created.created {
            self.bump();
        }
        Ok(created)
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        Ok(read::get(&self.pool, id).await?)
    }

    async fn update_payload(&self, id: CallId, patch: &PayloadPatch) -> Result<Call, StoreError> {
        Ok(update::update_payload(&self.pool, id, patch).await?)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        Ok(read::list(&self.pool, query).await?)
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        Ok(counts::read(&self.pool).await?)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        Ok(claim::claim(&self.pool, request).await?)
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(settle::record_dial(&self.pool, attempt, provider_call_id).await?)
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        Ok(read::find_attempt(&self.pool, provider_call_id).await?)
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let settled = settle::settle(&self.pool, attempt, settlement).await?;
        if matches!(settled, Settled::Applied(_)) {
            self.bump();
        }
        Ok(settled)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        Ok(timers::expire_due(&self.pool, now).await?)
    }

    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError> {
        Ok(timers::stale_attempts(&self.pool, now, limit).await?)
    }

    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(timers::next_timer(&self.pool, now).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(connect::ping(&self.pool).await?)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
