//! Pausing dialling after an account error.
//!
//! When the provider says our account or configuration is at fault (no
//! credits, a frozen subscription, an unknown assistant), every further dial
//! would fail the same way and burn a call each. The engine then stops
//! claiming for [`account_error_pause`](crate::EngineConfig::account_error_pause),
//! logs it at error level and shows it in the `orchestrator_dialling_paused`
//! gauge; calls keep waiting `PENDING`, expiry and stale leases still run.
//! The pause is this engine's: other engines sharing the store pause when
//! they meet the error themselves.

use chrono::{DateTime, Utc};
use tracing::{error, info};

use super::{Engine, Inner};
use crate::clock;

impl Inner {
    /// Pauses claiming until `now + account_error_pause` because of `reason`.
    pub(super) fn pause_dialling(&self, reason: &str) {
        let until = clock::add(self.clock.now(), self.config.account_error_pause);
        self.paused_until.send_modify(|paused| {
            *paused = Some(paused.map_or(until, |at| at.max(until)));
        });
        metrics::gauge!("orchestrator_dialling_paused").set(1.0);
        metrics::counter!("orchestrator_account_errors_total").increment(1);
        error!(reason, resume_at = %until, "the provider reported an account or configuration error: dialling is paused so the queue is not burnt through; fix the account, then resume (or wait)");
    }

    /// The end of the pause in force at `now`, if any; clears one that ended.
    pub(super) fn paused_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let until = (*self.paused_until.borrow())?;
        if until > now {
            return Some(until);
        }
        self.resume();
        None
    }

    fn resume(&self) {
        let resumed = self
            .paused_until
            .send_if_modified(|paused| paused.take().is_some());
        if resumed {
            metrics::gauge!("orchestrator_dialling_paused").set(0.0);
            info!("dialling resumed");
        }
    }
}

impl Engine {
    /// Until when dialling is paused after an account error, if it is.
    #[must_use]
    pub fn dialling_paused_until(&self) -> Option<DateTime<Utc>> {
        let now = self.inner.clock.now();
        self.inner
            .paused_until
            .borrow()
            .filter(|until| *until > now)
    }

    /// Ends a pause after an account error now (once the account is fixed).
    pub fn resume_dialling(&self) {
        self.inner.resume();
    }
}
