//! Waking other processes when a call may have become claimable: after a
//! local write that created a due call, rescheduled one or freed a slot.
//!
//! The write itself sends nothing: a NOTIFY inside a writing transaction
//! takes a server-wide lock at commit and holds it until the commit is
//! flushed, which made every create and settlement wait for the others'
//! flushes. Instead each store runs one task that, when woken, sends
//! `pg_notify(channel, origin)` in a transaction of its own, then waits
//! [`DEBOUNCE`] before sending again: wake-ups arriving meanwhile are folded
//! into one. So other processes hear of a change within about [`DEBOUNCE`]
//! plus a round trip, and a store sends at most one NOTIFY per
//! [`DEBOUNCE`] however fast it writes. The local engine is woken in
//! process, at once; the listener ignores its own store's notifications by
//! their payload, the store's `origin`.
//!
//! A lost notification (the sender's connection fails) costs only latency:
//! the engine's fallback poll finds the change.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::debug;

/// The least time between two notifications from one store.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(5);

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Runs until aborted: on every wake-up of `wake`, notifies `channel` with
/// payload `origin`, then waits [`DEBOUNCE`].
pub(crate) async fn run(pool: PgPool, wake: Arc<Notify>, channel: String, origin: String) {
    loop {
        wake.notified().await;
        if let Err(error) = sqlx::query(NOTIFY)
            .bind(&channel)
            .bind(&origin)
            .execute(&pool)
            .await
        {
            debug!(%error, "could not notify other processes of a change; their fallback poll will find it");
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}
