//! Opening the pool, and the health check.
//!
//! sqlx's pool retries a refused connection until its acquire timeout (the
//! server may be starting next to us) and then reports only "pool timed
//! out", which hides why. So the first connection is opened here, with the
//! same retries, and a failure names the server we tried and the last
//! refusal; the pool is built once that connection succeeded.
//!
//! Every connection of a store in a schema other than `public` starts with
//! `search_path` set to that schema alone (the `options` startup parameter,
//! so it holds from the first statement, for the pool, the listener and the
//! migrator alike): the store's unqualified table names, and sqlx's
//! `_sqlx_migrations`, resolve there and never to a host application's
//! tables. A store in `public` sends no such parameter, as before, so
//! poolers that refuse startup parameters keep working with it.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};
use tokio::time::Instant;

use crate::error::PgError;
use crate::schema::SchemaName;

/// How long [`ping`] waits before calling the database unavailable.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// First wait between connection attempts; doubles up to a fifth of the
/// time allowed, as sqlx's pool does.
const FIRST_RETRY: Duration = Duration::from_millis(10);

/// The server `options` points at, for messages: `host:port`, or the Unix
/// socket's path. Never the user name or the password.
pub(crate) fn target(options: &PgConnectOptions) -> String {
    let host = options.get_host();
    let port = options.get_port();
    // sqlx connects through a socket when one is set or the host is a directory.
    match options.get_socket() {
        Some(directory) => format!("{}/.s.PGSQL.{port}", directory.display()),
        None if host.starts_with('/') => format!("{host}/.s.PGSQL.{port}"),
        None if host.contains(':') => format!("[{host}]:{port}"),
        None => format!("{host}:{port}"),
    }
}

/// `url` parsed, with the search path of `schema`.
pub(crate) fn options(url: &str, schema: &SchemaName) -> Result<PgConnectOptions, PgError> {
    let options: PgConnectOptions = url.parse().map_err(PgError::url)?;
    if schema.as_str() == SchemaName::DEFAULT {
        return Ok(options);
    }
    // Appended last, so it wins over a search_path the URL's own `options`
    // may set. The name needs no quoting (see `SchemaName`).
    Ok(options.options([("search_path", schema.as_str())]))
}

/// A pool of up to `max_connections` connections with `options`, each
/// acquired within `acquire_timeout`, once one connection to the server
/// succeeded and showed that unqualified names resolve to `schema` (or to
/// no schema yet: migrating creates it). A refused connection (or a server
/// still starting) is retried for up to `acquire_timeout`; any other failure
/// is reported at once.
pub(crate) async fn open(
    options: PgConnectOptions,
    schema: &SchemaName,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, PgError> {
    let mut probe = first_connection(&options, acquire_timeout).await?;
    let resolved = current_schema(&mut probe).await;
    // Only the answers mattered; the pool opens its own connections.
    let _ = probe.close().await;
    match resolved? {
        Some(found) if found != schema.as_str() => {
            return Err(PgError::OtherSchema {
                expected: schema.clone(),
                found,
            })
        }
        _ => {}
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options.clone())
        .await
        .map_err(|error| PgError::connect(target(&options), error))
}

/// One connection with `options`. A refused connection (or a server still
/// starting) is retried for up to `timeout`; any other failure is reported
/// at once, naming the server.
pub(crate) async fn first_connection(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, PgError> {
    let deadline = Instant::now() + timeout;
    let mut wait = FIRST_RETRY;
    loop {
        let error = match tokio::time::timeout_at(deadline, options.connect()).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => error,
            Err(_) => sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()),
        };
        if !may_be_starting(&error) || Instant::now() + wait >= deadline {
            return Err(PgError::connect(target(options), error));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(timeout / 5);
    }
}

/// The schema unqualified names resolve to on `executor`'s connection: the
/// first schema of its `search_path` that exists, or `None`.
pub(crate) async fn current_schema(
    executor: impl sqlx::PgExecutor<'_>,
) -> Result<Option<String>, PgError> {
    Ok(sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(executor)
        .await?)
}

/// Whether a failed connection may succeed soon: the port is not open yet,
/// or the server says it is starting up (57P03) or full (53300). The same
/// rule as sqlx's pool.
fn may_be_starting(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(&*code, "57P03" | "53300")),
        _ => false,
    }
}

/// Answers within [`PING_TIMEOUT`] whether the database serves queries:
/// readiness probes want a prompt answer, not the pool's acquire timeout.
pub(crate) async fn ping(pool: &PgPool) -> Result<(), PgError> {
    let ping = sqlx::query("SELECT 1").execute(pool);
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(result) => result.map(|_| ()).map_err(PgError::from),
        Err(_) => Err(PgError::Timeout(PING_TIMEOUT)),
    }
}
