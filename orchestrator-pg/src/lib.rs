//! # orchestrator-pg
//!
//! The PostgreSQL [`Store`](orchestrator_core::Store) of the call
//! orchestrator: calls survive any process crash, the global cap and the
//! one-call-per-number rule are enforced by the database across every
//! process sharing it, and LISTEN/NOTIFY wakes every engine within
//! milliseconds of a change.
//!
//! - [`store`]: [`PgStore`] and its thin `Store` implementation, which
//!   delegates each method to the query function of its family:
//!   - `create`: insert, or return the call holding the idempotency key;
//!   - `read`: one call, a page of calls, the attempt behind a provider id;
//!   - `update`: patch a `PENDING` call's payload;
//!   - `claim`: the claim transaction (the cap and the per-number rule);
//!   - `settle`: end an attempt, record the provider's id for one;
//!   - `timers`: expiry, lapsed leases, the next instant anything is due;
//!   - `counts`: exact per-status counts that stay cheap at millions of calls.
//! - `connect`: opening the pool (a failure names the server tried), ping.
//! - `listen`: the LISTEN task behind [`PgStore::subscribe`](orchestrator_core::Store::subscribe).
//! - `row`: a `calls` row to a [`Call`](orchestrator_core::Call).
//! - `error`: the one mapping from PostgreSQL failures to
//!   [`StoreError`](orchestrator_core::StoreError) categories.
//! - [`MIGRATOR`]: the schema, embedded from `migrations/`.
//! - `testing` (feature `testing`): a fresh database per test.
//!
//! ```no_run
//! # async fn demo() -> Result<(), orchestrator_core::StoreError> {
//! use orchestrator_pg::PgStore;
//!
//! let store = PgStore::connect("postgres://orchestrator@localhost/orchestrator").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```

mod claim;
mod connect;
mod counts;
mod create;
mod error;
mod listen;
mod migrate;
mod purge;
mod read;
mod row;
mod schema;
mod settle;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod timers;
mod update;

pub use listen::LISTENER_APPLICATION_NAME;
pub use migrate::MIGRATOR;
pub use schema::{InvalidSchemaName, SchemaName};
pub use store::{PgStore, PgStoreOptions};
