//! Cross-process wake-ups: LISTEN on the channel the `calls` triggers NOTIFY
//! (one per schema: see `crate::schema`).
//!
//! Every [`crate::PgStore`] runs one listener task on a dedicated connection
//! (outside the main pool, so a busy pool never delays a wake-up). Each
//! notification bumps the store's change counter. A notification sent while
//! the connection was down is lost for good, so the counter is also bumped
//! after every reconnect: the engine then runs a round and finds whatever
//! changed in between. The engine's fallback poll covers the time it takes
//! to reconnect.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The `application_name` of listening connections, so operators (and
/// tests) can tell them apart in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "orchestrator-pg-listener";

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A pool of one connection for the listener, with the options of `pool`.
/// Lazy: [`connect`] opens it.
pub(crate) fn listener_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(
            (*pool.connect_options())
                .clone()
                .application_name(LISTENER_APPLICATION_NAME),
        )
}

/// A listener on `channel`.
pub(crate) async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Runs until aborted: bumps `changes` on every notification and after every
/// reconnect. `listener` is already listening on `channel`.
pub(crate) async fn run(
    pool: PgPool,
    listener: PgListener,
    channel: String,
    changes: Arc<watch::Sender<u64>>,
) {
    let bump = || changes.send_modify(|generation| *generation = generation.wrapping_add(1));
    let mut listener = Some(listener);
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut current = match listener.take() {
            Some(current) => current,
            None => match connect(&pool, &channel).await {
                Ok(current) => {
                    debug!("listener reconnected");
                    backoff = MIN_BACKOFF;
                    bump();
                    current
                }
                Err(error) => {
                    warn!(%error, retry_in = ?backoff, "cannot listen for call changes; relying on the fallback poll");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        loop {
            match current.try_recv().await {
                Ok(Some(_)) => bump(),
                // The connection dropped and sqlx re-established it: anything
                // notified in between is lost.
                Ok(None) => bump(),
                Err(error) => {
                    warn!(%error, "listener connection failed; reconnecting");
                    break;
                }
            }
        }
        // Start again from a new listener: after an error sqlx may still
        // hold the broken connection.
        drop(current);
        tokio::time::sleep(backoff).await;
    }
}
