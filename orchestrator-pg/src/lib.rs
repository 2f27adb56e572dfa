//! # orchestrator-pg
//!
//! The PostgreSQL [`Store`](orchestrator_core::Store) of the call
//! orchestrator: calls survive any process crash, the global cap and the
//! one-call-per-number rule are enforced by the database across every
//! process sharing it, and a change wakes this process's engine at once and
//! every other process's within milliseconds (one debounced NOTIFY).
//!
//! - [`store`]: [`PgStore`] and its thin `Store` implementation, which
//!   delegates each method to the query function of its family:
//!   - `create`: insert with its `call.created` event, or return the call
//!     holding the idempotency key;
//!   - `read`: one call, a filtered page of calls, a call's attempts, the
//!     attempt behind a provider id;
//!   - `update`: patch a `PENDING` call's payload and schedule;
//!   - `cancel`: end a `PENDING` call, or record the request on a live one;
//!   - `claim`: the claim transaction (the cap and the per-number rule),
//!     skipped while the cap is known to be full;
//!   - `settle`: end attempts, record the provider's ids for them, a batch
//!     per transaction;
//!   - `timers`: expiry, lapsed leases, the next instant anything is due;
//!   - `counts`: exact per-status counts that stay cheap at millions of calls;
//!   - `purge`: retention, deleting ended calls in small batches;
//!   - `events`: the event and delivery every change of status writes in
//!     its own statement, and reading the log by id;
//!   - `deliveries`: the callback outbox (claim, record, next due).
//! - `batch`: group commit: settlements, and provider ids, that arrive
//!   together share one transaction (one commit for many calls).
//! - `sequencer`: the task that gives committed events their ids in commit
//!   order (writers cannot: an id drawn in a transaction follows the order
//!   writers started, not the order they committed).
//! - `connect`: opening the pool (a failure names the server tried), ping.
//! - `schema`: the schema a store lives in ([`SchemaName`],
//!   [`PgStoreOptions::schema`]) and the channel and lock keys derived from it.
//! - `listen`: the LISTEN task behind [`PgStore::subscribe`](orchestrator_core::Store::subscribe)
//!   and [`PgStore::subscribe_events`](orchestrator_core::Store::subscribe_events).
//! - `wake`: the task that tells other processes of a change with one
//!   debounced NOTIFY, sent outside the writing transactions (a NOTIFY
//!   inside them made every commit wait for the others' flushes).
//! - `row`: a `calls` row, with its delivery, to a [`Call`](orchestrator_core::Call).
//! - `error`: the one mapping from PostgreSQL failures to
//!   [`StoreError`](orchestrator_core::StoreError) categories.
//! - `migrate` ([`MIGRATOR`]): the schema, embedded from `migrations/`;
//!   creating the database and the store's schema.
//! - `testing` (feature `testing`): a fresh database per test, and clusters
//!   of a test's own.
//!
//! # Connecting
//!
//! The URL is `postgres://user:password@host:port/database` with libpq's
//! TLS parameters: `sslmode` (`disable`, `prefer` (the default), `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (a PEM file of the CA that
//! signed the server's certificate; without it only the Mozilla roots
//! compiled in are trusted), `sslcert` and `sslkey`. TLS is rustls; a
//! certificate that cannot be verified fails the connection with
//! [`StoreError::Backend`](orchestrator_core::StoreError::Backend) naming
//! the server.
//!
//! A store lives in one schema, `public` unless [`PgStoreOptions::schema`]
//! names another: its tables, functions and its own `_sqlx_migrations` are
//! there, its notification channels and advisory locks are keyed by it. In a
//! database shared with another application, give it a schema of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use orchestrator_pg::{PgStore, PgStoreOptions, SchemaName};
//!
//! let url = "postgres://orchestrator:secret@db.example.com/app?sslmode=verify-full";
//! PgStore::create_database_if_missing(url).await?;
//! let options = PgStoreOptions {
//!     schema: SchemaName::new("orchestrator")?,
//!     ..PgStoreOptions::default()
//! };
//! let store = PgStore::connect_with(url, &options).await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```

mod batch;
mod cancel;
mod claim;
mod connect;
mod counts;
mod create;
mod deliveries;
mod error;
mod events;
mod listen;
mod migrate;
mod purge;
mod read;
mod row;
mod schema;
mod sequencer;
mod settle;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod timers;
mod update;
mod wake;

pub use listen::LISTENER_APPLICATION_NAME;
pub use migrate::MIGRATOR;
pub use schema::{InvalidSchemaName, SchemaName};
pub use store::{PgStore, PgStoreOptions};
