//! # orchestrator-pg
//!
//! The PostgreSQL [`Store`](orchestrator_core::Store) of the call
//! orchestrator: calls survive any process crash, the global cap and the
//! one-call-per-number rule are enforced by the database across every
//! process sharing it, and LISTEN/NOTIFY wakes every engine within
//! milliseconds of a change.
//!
//! - [`store`]: [`PgStore`], the `Store` implementation.
//! - `claim`: the claim transaction (the cap and the per-number rule).
//! - `listen`: the LISTEN task behind [`PgStore::subscribe`](orchestrator_core::Store::subscribe).
//! - `counts`: exact per-status counts that stay cheap at millions of calls.
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
mod counts;
mod error;
mod listen;
mod row;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use listen::LISTENER_APPLICATION_NAME;
pub use store::PgStore;

/// The schema, embedded at build time from `orchestrator-pg/migrations`.
/// [`PgStore::migrate`] applies it; tools may run it directly.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
