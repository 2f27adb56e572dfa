//! The schema and how it is applied; creating the database and the schema
//! it goes into.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::connect;
use crate::error::PgError;
use crate::schema::SchemaName;

/// The schema, embedded at build time from `orchestrator-pg/migrations`.
/// [`PgStore::migrate`](crate::PgStore::migrate) applies it; tools may run it
/// directly, on a connection whose `search_path` names the store's schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// SQLSTATE `duplicate_database`: another process created it first.
const DUPLICATE_DATABASE: &str = "42P04";
/// SQLSTATE `duplicate_schema`.
const DUPLICATE_SCHEMA: &str = "42P06";
/// SQLSTATE `unique_violation`: what a `CREATE SCHEMA` that loses the race
/// inside the catalog's unique index (rather than at its existence check)
/// reports.
const UNIQUE_VIOLATION: &str = "23505";

/// Databases that exist on every server and accept connections, tried in
/// this order to run `CREATE DATABASE` from, as PostgreSQL's `createdb` does.
const MAINTENANCE_DATABASES: [&str; 2] = ["postgres", "template1"];

/// Creates `schema` if it does not exist, then applies the migrations not
/// applied yet, recording them in `schema`'s own `_sqlx_migrations` (the
/// pool's `search_path` names `schema`). sqlx takes an advisory lock for the
/// run, so processes starting together apply each migration once.
pub(crate) async fn run(pool: &PgPool, schema: &SchemaName) -> Result<(), PgError> {
    create_schema_if_missing(pool, schema).await?;
    let mut connection = pool.acquire().await?;
    match MIGRATOR.run(&mut *connection).await {
        Ok(()) => Ok(()),
        Err(error) => {
            // sqlx leaves its session-level lock held when a run fails; a
            // pooled connection would keep it, and every later migration of
            // this database, in any process, would wait for it forever.
            // Closing the connection releases it.
            let _ = connection.detach().close().await;
            Err(error.into())
        }
    }
}

/// Checks before creating, so a role that owns an existing schema but may
/// not create schemas in the database can still migrate.
async fn create_schema_if_missing(pool: &PgPool, schema: &SchemaName) -> Result<(), PgError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(pool)
            .await?;
    if exists {
        return Ok(());
    }
    let create = format!("CREATE SCHEMA {}", schema.quoted());
    match sqlx::query(&create).execute(pool).await {
        Err(sqlx::Error::Database(db))
            if matches!(
                db.code().as_deref(),
                Some(DUPLICATE_SCHEMA | UNIQUE_VIOLATION)
            ) =>
        {
            Ok(())
        }
        result => result.map(drop).map_err(PgError::from),
    }
}

/// Creates the database `options` names (by default, the user's name, as
/// PostgreSQL's default) unless it exists; returns whether it was created.
/// Connects with the same settings (host, credentials, TLS) to a
/// maintenance database to do so, retrying for up to `timeout` while the
/// server is starting.
pub(crate) async fn create_database_if_missing(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<bool, PgError> {
    let name = options
        .get_database()
        .unwrap_or_else(|| options.get_username())
        .to_owned();
    let mut admin = maintenance_connection(options, timeout).await?;
    let result = create_database(&mut admin, &name).await;
    let _ = admin.close().await;
    result
}

async fn create_database(admin: &mut PgConnection, name: &str) -> Result<bool, PgError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await?;
    if exists {
        return Ok(false);
    }
    match sqlx::query(&format!("CREATE DATABASE {}", quote_identifier(name)))
        .execute(&mut *admin)
        .await
    {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// A connection to the first maintenance database that accepts one, retried
/// while the server is starting. When none does, the first refusal is
/// reported (usually the more telling one).
async fn maintenance_connection(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, PgError> {
    let [first, fallback] = MAINTENANCE_DATABASES;
    let refused = match connect::first_connection(&options.clone().database(first), timeout).await {
        Ok(connection) => return Ok(connection),
        Err(error) if error.is_missing_or_forbidden_database() => error,
        Err(error) => return Err(error),
    };
    connect::first_connection(&options.clone().database(fallback), timeout)
        .await
        .map_err(|_| refused)
}

/// `name` as an SQL identifier: in double quotes, inner quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_identifier("orchestrator"), "\"orchestrator\"");
        assert_eq!(quote_identifier("My \"db\""), "\"My \"\"db\"\"\"");
    }
}
