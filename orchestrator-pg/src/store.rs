//! [`PgStore`]: the [`Store`] on PostgreSQL.
//!
//! Each `Store` method delegates to the query function of its family
//! (`create`, `read`, `update`, `cancel`, `claim`, `settle`, `timers`,
//! `counts`, `purge`, `events`, `deliveries`), which returns the crate's
//! own error; `?` turns that into a [`StoreError`] through the crate's one
//! mapping. What stays here is what belongs to the store rather than to a
//! query: the pool, the background tasks (the listener, the counter fold,
//! the event sequencer, the wake-up of other processes, the batch writers),
//! the change counter behind [`Store::subscribe`] and
//! the event counter behind [`Store::subscribe_events`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, CallPatch, NewCall};
use orchestrator_core::store::{
    ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store, StoreError,
};
use orchestrator_core::{
    Attempt, Canceled, Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef, Event, EventId,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::batch::Batcher;
use crate::claim::FullCap;
use crate::create::CreateRequest;
use crate::error::PgError;
use crate::schema::{Namespace, SchemaName};
use crate::sequencer::Sequencer;
use crate::settle::SettleRequest;
use crate::{
    cancel, claim, connect, counts, create, deliveries, events, listen, migrate, purge, read,
    sequencer, settle, timers, update, wake,
};

/// Most creates, settlements, or provider ids one transaction writes.
const MAX_BATCH: usize = 500;
/// Batches of creates written at once.
const CREATE_BATCHES_IN_FLIGHT: usize = 4;
/// Batches of settlements written at once.
const SETTLE_BATCHES_IN_FLIGHT: usize = 3;
/// Batches of provider ids written at once.
const DIAL_BATCHES_IN_FLIGHT: usize = 2;

/// Connections of the pool [`PgStore::connect`] opens.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long [`PgStore::connect`] keeps retrying a refused connection, and
/// how long its pool waits for a free connection before a call fails with
/// [`StoreError::Unavailable`].
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How [`PgStore::connect_with`] connects. `Default` is what
/// [`PgStore::connect`] uses; set the fields that differ:
///
/// ```
/// # fn demo() -> Result<(), orchestrator_pg::InvalidSchemaName> {
/// use orchestrator_pg::{PgStoreOptions, SchemaName};
///
/// let options = PgStoreOptions {
///     schema: SchemaName::new("orchestrator")?,
///     ..PgStoreOptions::default()
/// };
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgStoreOptions {
    /// The schema the store's tables, functions and migrations table live
    /// in; [`PgStore::migrate`] creates it if missing. Default `public`.
    /// A database shared with another application should give the store a
    /// schema of its own: its `_sqlx_migrations` then cannot meet the
    /// application's, nor its tables the application's.
    pub schema: SchemaName,
    /// Connections of the pool. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// How long a refused connection is retried at start, and how long a
    /// query waits for a free connection. Default [`DEFAULT_ACQUIRE_TIMEOUT`].
    pub acquire_timeout: Duration,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        Self {
            schema: SchemaName::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }
}

/// A [`Store`] on PostgreSQL. Cheap to clone: clones share the pool, the
/// listener and the change counter.
///
/// Construct with [`PgStore::connect`], [`PgStore::connect_with`] or
/// [`PgStore::from_pool`], then apply the schema with [`PgStore::migrate`].
/// Each store runs its background tasks on the tokio runtime it was built
/// in: the LISTEN connection, the folding of the status counters, the
/// event sequencer (which gives committed events their ids in commit
/// order), the debounced NOTIFY that wakes other processes, and the three
/// batch writers of creates, settlements and provider ids (group commit:
/// requests arriving together share one transaction). They stop when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    namespace: Arc<Namespace>,
    changes: Arc<watch::Sender<u64>>,
    events: Arc<watch::Sender<u64>>,
    sequencer: Arc<Sequencer>,
    /// Wakes the task that tells other processes of a change (`crate::wake`).
    wake_others: Arc<Notify>,
    /// Skips claims while every slot is known to be taken.
    full_cap: Arc<FullCap>,
    /// Creates, written in batches (`crate::batch`).
    creates: Batcher<CreateRequest, Created>,
    /// Settlements, written in batches (`crate::batch`).
    settlements: Batcher<SettleRequest, Settled>,
    /// Provider ids, written in batches.
    dials: Batcher<(AttemptRef, String), Option<Call>>,
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
            .field("schema", &self.namespace.schema)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// [`connect_with`](Self::connect_with) with the default options: a
    /// store in schema `public`, a pool of up to [`DEFAULT_MAX_CONNECTIONS`]
    /// connections.
    ///
    /// # Errors
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        Self::connect_with(database_url, &PgStoreOptions::default()).await
    }

    /// Opens a pool to `database_url` (`postgres://user:password@host:port/database`,
    /// with `?sslmode=require`, `verify-ca` or `verify-full` for TLS, and
    /// `sslrootcert=<path to a PEM file>` for a CA not among the Mozilla
    /// roots compiled in) and starts listening for changes. A refused
    /// connection is retried for up to `options.acquire_timeout`, in case
    /// the server is still starting. Every connection resolves unqualified
    /// names in `options.schema` (see [`PgStoreOptions::schema`]). Does not
    /// apply migrations: call [`migrate`](Self::migrate).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] for a malformed URL, a refused login, a
    /// missing database, a TLS failure (certificate not trusted, name not
    /// matching), or when the server's `search_path` resolves the store's
    /// names to another schema than `options.schema` (a store in `public`
    /// on a role whose own schema comes first). A connection failure names
    /// the host and port (or socket) it tried, never the credentials.
    pub async fn connect_with(
        database_url: &str,
        options: &PgStoreOptions,
    ) -> Result<Self, StoreError> {
        let connect_options = connect::options(database_url, &options.schema)?;
        let pool = connect::open(
            connect_options,
            &options.schema,
            options.max_connections,
            options.acquire_timeout,
        )
        .await?;
        Ok(Self::start(pool, options.schema.clone()).await?)
    }

    /// A store on an existing pool, in the schema its connections resolve
    /// unqualified names to (`current_schema()`, which must be a valid
    /// [`SchemaName`]). Opens one more connection, outside the pool, with
    /// the same options, to LISTEN for changes made by other processes;
    /// returns once it listens, so no change committed after this returns
    /// goes unnoticed. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the listening connection cannot be
    /// opened; [`StoreError::Backend`] when no schema of the pool's
    /// `search_path` exists or its name cannot be a [`SchemaName`], and for
    /// other failures.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        let schema = connect::current_schema(&pool)
            .await?
            .ok_or(PgError::NoSchema)?;
        let schema = SchemaName::new(&schema).map_err(PgError::PoolSchema)?;
        Ok(Self::start(pool, schema).await?)
    }

    async fn start(pool: PgPool, schema: SchemaName) -> Result<Self, PgError> {
        let namespace = Arc::new(Namespace::new(schema));
        let changes = Arc::new(watch::Sender::new(0));
        let events = Arc::new(watch::Sender::new(0));
        // Tells this store's notifications from other processes'.
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let wake_others = Arc::new(Notify::new());
        let full_cap = Arc::new(FullCap::default());
        let channels = listen::Channels {
            slots_freed: full_cap.freed_counter(),
            calls: namespace.channel.clone(),
            origin: origin.clone(),
            changes: Arc::clone(&changes),
            events: namespace.events_channel.clone(),
            events_readable: Arc::clone(&events),
        };
        let listener_pool = listen::listener_pool(&pool);
        let listener = listen::connect(&listener_pool, &channels)
            .await
            .map_err(|error| PgError::connect(connect::target(&pool.connect_options()), error))?;
        let sequencer = Arc::new(Sequencer::new());
        let (creates, creating) = Batcher::start(
            pool.clone(),
            MAX_BATCH,
            CREATE_BATCHES_IN_FLIGHT,
            create::create,
        );
        let (settlements, settling) = Batcher::start(
            pool.clone(),
            MAX_BATCH,
            SETTLE_BATCHES_IN_FLIGHT,
            settle::settle,
        );
        let (dials, recording) = Batcher::start(
            pool.clone(),
            MAX_BATCH,
            DIAL_BATCHES_IN_FLIGHT,
            settle::record_dial,
        );
        let tasks = vec![
            creating,
            settling,
            recording,
            tokio::spawn(listen::run(listener_pool, listener, channels)),
            tokio::spawn(counts::compact_periodically(
                pool.clone(),
                namespace.compact_lock,
            )),
            tokio::spawn(sequencer::run(
                pool.clone(),
                Arc::clone(&sequencer),
                namespace.sequence_lock,
                namespace.events_channel.clone(),
                Arc::clone(&events),
            )),
            tokio::spawn(wake::run(
                pool.clone(),
                Arc::clone(&wake_others),
                namespace.channel.clone(),
                origin,
            )),
        ];
        Ok(Self {
            pool,
            namespace,
            changes,
            events,
            sequencer,
            wake_others,
            full_cap,
            creates,
            settlements,
            dials,
            _background: Arc::new(Background(tasks)),
        })
    }

    /// Creates the database `database_url` names (by default the user's
    /// name, as in PostgreSQL) unless it exists, and returns whether it did.
    /// Connects with the URL's host, credentials and TLS settings to the
    /// server's `postgres` database (or `template1` when `postgres` is
    /// missing or closed to the role), so the role needs the `CREATEDB`
    /// attribute only when the database is missing. A refused connection is
    /// retried for up to [`DEFAULT_ACQUIRE_TIMEOUT`].
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`StoreError::Backend`] also when the
    /// role may not create the database.
    pub async fn create_database_if_missing(database_url: &str) -> Result<bool, StoreError> {
        let options = database_url
            .parse::<PgConnectOptions>()
            .map_err(PgError::url)?;
        Ok(migrate::create_database_if_missing(&options, DEFAULT_ACQUIRE_TIMEOUT).await?)
    }

    /// Creates the store's schema if it is missing, then applies the
    /// embedded migrations ([`MIGRATOR`](crate::MIGRATOR)) that are not
    /// applied yet, recording them in the schema's own `_sqlx_migrations`
    /// table. Safe to run from several processes at once (sqlx serialises
    /// them with an advisory lock) and again on every start.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] when the schema cannot be created, a
    /// migration fails or the applied ones differ from the embedded ones.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Ok(migrate::run(&self.pool, &self.namespace.schema).await?)
    }

    /// Deletes up to `limit` calls in a terminal status (`COMPLETED`,
    /// `FAILED`, `EXPIRED`, `CANCELED`, any status the state machine calls
    /// terminal) whose `ended_at` is before `cutoff`, oldest end first, with
    /// their attempt history, provider ids, events and callback delivery;
    /// returns how many calls it deleted.
    /// One short transaction: call it again while it returns `limit` to
    /// purge a backlog in small batches. Rows another transaction holds are
    /// skipped, not waited for. Counts stay exact. A webhook naming a
    /// deleted call's provider id later finds no call.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached;
    /// [`StoreError::Backend`] for other failures.
    pub async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(purge::ended_before(&self.pool, cutoff, limit).await?)
    }

    /// The schema the store lives in.
    #[must_use]
    pub fn schema(&self) -> &SchemaName {
        &self.namespace.schema
    }

    /// The connection pool, e.g. for health checks or ad-hoc queries. Its
    /// connections resolve unqualified names in [`schema`](Self::schema).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Queues `request` for the next batch of settlements and answers it.
    async fn settle_as(&self, request: SettleRequest) -> Result<Settled, StoreError> {
        let settled = self.settlements.submit(request).await?;
        if matches!(settled, Settled::Applied(_)) {
            // Every applied settlement changes the status and frees a slot.
            self.full_cap.freed();
            self.sequencer.written();
            self.bump();
        }
        Ok(settled)
    }

    /// After a committed change of ours that may let a claim take a call
    /// (a due call created or rescheduled, a slot freed): wakes this
    /// process's subscribers at once, and other processes through one
    /// debounced NOTIFY (`crate::wake`).
    fn bump(&self) {
        listen::bump(&self.changes);
        self.wake_others.notify_one();
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
        let created = self
            .creates
            .submit(CreateRequest::new(id, new, now))
            .await?;
        if created.created {
            self.sequencer.written();
            self.bump();
        }
        Ok(created)
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        Ok(read::get(&self.pool, id).await?)
    }

    async fn update(
        &self,
        id: CallId,
        patch: &CallPatch,
        now: DateTime<Utc>,
    ) -> Result<Call, StoreError> {
        let call = update::update(&self.pool, id, patch, now).await?;
        if patch.reschedules() {
            // An earlier `notBefore` may make the call due now.
            self.bump();
        }
        Ok(call)
    }

    async fn cancel(
        &self,
        id: CallId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled, StoreError> {
        let canceled = cancel::cancel(&self.pool, id, reason, now).await?;
        // Only a PENDING call changes status (and logs `call.canceled`).
        if matches!(canceled, Canceled::Canceled(_)) {
            self.sequencer.written();
        }
        Ok(canceled)
    }

    async fn attempts(&self, id: CallId) -> Result<Vec<Attempt>, StoreError> {
        Ok(read::attempts(&self.pool, id).await?)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        Ok(read::list(&self.pool, query).await?)
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        Ok(counts::read(&self.pool).await?)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        let claimed = claim::claim(
            &self.pool,
            self.namespace.claim_lock,
            &self.full_cap,
            request,
        )
        .await?;
        if !claimed.is_empty() {
            self.sequencer.written();
        }
        Ok(claimed)
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<Option<Call>, StoreError> {
        Ok(self
            .dials
            .submit((attempt, provider_call_id.to_owned()))
            .await?)
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        Ok(read::find_attempt(&self.pool, provider_call_id).await?)
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        self.settle_as(SettleRequest {
            attempt,
            settlement,
            provider_call_id: None,
        })
        .await
    }

    async fn settle_reported(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        self.settle_as(SettleRequest {
            attempt,
            settlement,
            provider_call_id: Some(provider_call_id.to_owned()),
        })
        .await
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        let expired = timers::expire_due(&self.pool, now).await?;
        if !expired.is_empty() {
            self.sequencer.written();
        }
        Ok(expired)
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

    async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        PgStore::purge_ended_before(self, cutoff, limit).await
    }

    async fn events_after(&self, after: EventId, limit: u32) -> Result<Vec<Event>, StoreError> {
        // Read-your-writes: every event this process committed is numbered.
        self.sequencer.caught_up().await;
        Ok(events::after(&self.pool, after, limit).await?)
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        self.sequencer.caught_up().await;
        Ok(events::last_id(&self.pool).await?)
    }

    fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    async fn claim_deliveries(&self, request: &DeliveryClaim) -> Result<Vec<Delivery>, StoreError> {
        // A delivery is claimed once its event has an id.
        self.sequencer.caught_up().await;
        Ok(deliveries::claim(&self.pool, request).await?)
    }

    async fn record_delivery(
        &self,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        Ok(deliveries::record(&self.pool, delivery, outcome).await?)
    }

    async fn next_delivery_at(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(deliveries::next_at(&self.pool, now).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(connect::ping(&self.pool).await?)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
