//! Retention: deleting terminal calls that ended longer ago than the
//! configured retention, with everything stored about them, so a
//! long-running store (the in-memory one included) stays bounded.
//!
//! Every few seconds a pass deletes batches of a few hundred calls, the
//! oldest end first, until a batch comes back short: each batch is one short
//! store operation, so a backlog (retention switched on over a full store)
//! never holds the store for long. The cutoff comes from the engine's clock
//! and the wait from tokio's, so a simulation on the paused clock replays.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Inner;
use crate::clock;

/// Calls deleted by one store operation.
pub(super) const PURGE_BATCH: u32 = 500;
/// Time between two passes.
pub(super) const PURGE_EVERY: Duration = Duration::from_secs(5);

impl Inner {
    /// Runs a retention pass now and then every [`PURGE_EVERY`], until aborted.
    pub(super) async fn retain(self: Arc<Self>, retention: Duration) {
        loop {
            self.purge_pass(retention).await;
            tokio::time::sleep(PURGE_EVERY).await;
        }
    }

    /// Deletes batches of calls that ended more than `retention` ago until a
    /// batch comes back short or the store fails (the next pass tries again).
    async fn purge_pass(&self, retention: Duration) {
        let mut purged = 0;
        loop {
            let cutoff = clock::sub(self.clock.now(), retention);
            match self.store.purge_ended_before(cutoff, PURGE_BATCH).await {
                Ok(count) => {
                    purged += count;
                    metrics::counter!("orchestrator_calls_purged_total").increment(count);
                    if count < u64::from(PURGE_BATCH) {
                        break;
                    }
                    // Lets the dispatcher and the API in between batches.
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    warn!(
                        error = &error as &dyn std::error::Error,
                        "retention pass failed; the next pass tries again"
                    );
                    break;
                }
            }
        }
        if purged > 0 {
            info!(
                count = purged,
                "deleted calls that ended before the retention period"
            );
        }
    }
}
