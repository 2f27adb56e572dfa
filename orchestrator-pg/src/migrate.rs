//! The schema and how it is applied.

use sqlx::PgPool;

use crate::error::PgError;

/// The schema, embedded at build time from `orchestrator-pg/migrations`.
/// [`PgStore::migrate`](crate::PgStore::migrate) applies it; tools may run it
/// directly.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the migrations not applied yet. sqlx takes an advisory lock for
/// the run, so processes starting together apply each migration once.
pub(crate) async fn run(pool: &PgPool) -> Result<(), PgError> {
    Ok(MIGRATOR.run(pool).await?)
}
