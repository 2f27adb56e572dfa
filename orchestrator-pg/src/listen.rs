//! Cross-process wake-ups: LISTEN on the channel the stores' wake-up tasks
//! NOTIFY (`crate::wake`) and on the one the event sequencer notifies (one of each per schema: see
//! `crate::schema`).
//!
//! Every [`crate::PgStore`] runs one listener task on a dedicated connection
//! (outside the main pool, so a busy pool never delays a wake-up). Each
//! notification bumps the store's change counter or its event counter. A
//! notification sent while the connection was down is lost for good, so
//! both counters are also bumped after every reconnect: the engine then
//! runs a round, and event readers read, and find whatever changed in
//! between. The engine's fallback poll covers the time it takes to
//! reconnect.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// The channels one store listens on, and the counter each one bumps.
#[derive(Debug)]
pub(crate) struct Channels {
    /// Notified by the stores' wake-up tasks (`crate::wake`): bumps
    /// `changes`, unless the payload is `origin`.
    pub(crate) calls: String,
    /// This store's payload on `calls`: its own notifications are skipped,
    /// since the store woke its subscribers in process already.
    pub(crate) origin: String,
    /// Bumped with `changes` by other processes' notifications and after a
    /// reconnect: any of them may mean a slot was freed
    /// (`crate::claim::FullCap`).
    pub(crate) slots_freed: Arc<AtomicU64>,
    pub(crate) changes: Arc<watch::Sender<u64>>,
    /// Notified by the event sequencer: bumps `events`.
    pub(crate) events: String,
    pub(crate) events_readable: Arc<watch::Sender<u64>>,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &watch::Sender<u64>) {
    counter.send_modify(|generation| *generation = generation.wrapping_add(1));
}

/// A listener on both `channels`.
pub(crate) async fn connect(pool: &PgPool, channels: &Channels) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([channels.calls.as_str(), channels.events.as_str()])
        .await?;
    Ok(listener)
}

/// Runs until aborted: bumps the counter of the channel of every
/// notification, and both after every reconnect. `listener` is already
/// listening on both channels.
pub(crate) async fn run(pool: PgPool, listener: PgListener, channels: Channels) {
    let bump_changes = || {
        channels.slots_freed.fetch_add(1, Ordering::SeqCst);
        bump(&channels.changes);
    };
    let bump_both = || {
        bump_changes();
        bump(&channels.events_readable);
    };
    let mut listener = Some(listener);
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut current = match listener.take() {
            Some(current) => current,
            None => match connect(&pool, &channels).await {
                Ok(current) => {
                    debug!("listener reconnected");
                    backoff = MIN_BACKOFF;
                    bump_both();
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
                Ok(Some(notification)) if notification.channel() == channels.events => {
                    bump(&channels.events_readable);
                }
                Ok(Some(notification)) if notification.payload() == channels.origin => {}
                Ok(Some(_)) => bump_changes(),
                // The connection dropped and sqlx re-established it: anything
                // notified in between is lost.
                Ok(None) => bump_both(),
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
