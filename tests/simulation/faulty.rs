//! `FaultyStore`: a `Store` that can be taken down for a while, as a
//! database that cannot be reached: every operation then fails with
//! [`StoreError::Unavailable`] and changes nothing: a
//! [`HookedStore`] with an [`OutageHook`]. It sits between the
//! engine and the [`CheckedStore`], so the checker sees only the operations
//! that reached the store. The [`Outages`] it was down for are shared with
//! the checker, whose engine rules allow for them (an answer recorded late,
//! an expiry the engine could not write), and it keeps every settlement that
//! applied, so a test can ask what the engine recorded.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use orchestrator_core::hooked::{HookedStore, Operation, StoreHook};
use orchestrator_core::{async_trait, AttemptRef, Settled, Settlement, StoreError};

use crate::checked::CheckedStore;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One outage: its start, and its end once the store is back.
type Outage = (DateTime<Utc>, Option<DateTime<Utc>>);

/// When the store was down, in order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outages(Arc<Mutex<Vec<Outage>>>);

impl Outages {
    /// The store goes down at `at`.
    pub(crate) fn begin(&self, at: DateTime<Utc>) {
        lock(&self.0).push((at, None));
    }

    /// The store is back at `at`.
    pub(crate) fn end(&self, at: DateTime<Utc>) {
        if let Some((_, end @ None)) = lock(&self.0).last_mut() {
            *end = Some(at);
        }
    }

    /// Whether the store is down now.
    pub(crate) fn down(&self) -> bool {
        matches!(lock(&self.0).last(), Some((_, None)))
    }

    /// The outages as windows, an ongoing one ending at `now`.
    fn windows(&self, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        lock(&self.0)
            .iter()
            .map(|(start, end)| (*start, end.unwrap_or(now)))
            .collect()
    }

    /// If an outage's effects (the outage and `slack` after it) reach `now`,
    /// the start of the earliest outage chained to it (each reaching the
    /// next's start): a write landing now may have been attempted as early
    /// as that.
    pub(crate) fn effects_since(
        &self,
        now: DateTime<Utc>,
        slack: chrono::TimeDelta,
    ) -> Option<DateTime<Utc>> {
        let mut chain: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        for (start, end) in self.windows(now) {
            chain = match chain {
                Some((first, reach)) if start <= reach => Some((first, reach.max(end + slack))),
                _ => Some((start, end + slack)),
            };
        }
        chain
            .filter(|(first, reach)| *first <= now && now <= *reach)
            .map(|(first, _)| first)
    }

    /// The latest end (`now` for an ongoing one) of an outage that ended at
    /// or after `at`: work due at `at` could not be written before it.
    pub(crate) fn down_after(
        &self,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.windows(now)
            .into_iter()
            .filter(|(_, end)| *end >= at)
            .map(|(_, end)| end)
            .max()
    }
}

/// A [`Store`] over a [`CheckedStore`] that fails every operation while one
/// of its [`Outages`] lasts.
pub(crate) type FaultyStore = HookedStore<OutageHook>;

/// A [`FaultyStore`] over `inner`, down while one of `outages` lasts.
pub(crate) fn faulty(inner: Arc<CheckedStore>, outages: Outages) -> FaultyStore {
    HookedStore::new(inner, OutageHook::new(outages))
}

/// Refuses every operation during an outage, and keeps what the engine
/// recorded: the settlements that applied, and the provider answers an
/// outage kept from being recorded.
pub(crate) struct OutageHook {
    outages: Outages,
    settled: Mutex<Vec<(AttemptRef, Settlement)>>,
    /// Provider answers whose recording an outage refused: the attempts
    /// whose `settle` or `record_dial` failed, the provider ids whose
    /// webhook could not be looked up.
    refused_answers: Mutex<BTreeSet<String>>,
}

impl OutageHook {
    fn new(outages: Outages) -> Self {
        Self {
            outages,
            settled: Mutex::new(Vec::new()),
            refused_answers: Mutex::new(BTreeSet::new()),
        }
    }

    /// How many provider answers an outage kept from being recorded at
    /// their first try (each counted once however often it was retried).
    pub(crate) fn refused_answers(&self) -> usize {
        lock(&self.refused_answers).len()
    }

    /// Every settlement that applied through this store, in order.
    pub(crate) fn settled(&self) -> Vec<(AttemptRef, Settlement)> {
        lock(&self.settled).clone()
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.outages.down() {
            return Err(StoreError::Unavailable("simulated outage".into()));
        }
        Ok(())
    }

    /// [`up`](Self::up), remembering a refusal as a refused `answer`.
    fn up_for_answer(&self, answer: impl FnOnce() -> String) -> Result<(), StoreError> {
        self.up().inspect_err(|_| {
            lock(&self.refused_answers).insert(answer());
        })
    }
}

#[async_trait]
impl StoreHook for OutageHook {
    async fn before(&self, operation: Operation<'_>) -> Result<(), StoreError> {
        match operation {
            Operation::RecordDial(attempt, _) => self.up_for_answer(|| format!("dial {attempt}")),
            Operation::FindAttempt(provider_call_id) => {
                self.up_for_answer(|| format!("webhook {provider_call_id}"))
            }
            Operation::Settle(attempt, _) => {
                self.up_for_answer(|| format!("dial or webhook {attempt}"))
            }
            _ => self.up(),
        }
    }

    fn settled(&self, attempt: AttemptRef, settlement: &Settlement, result: &Settled) {
        if let Settled::Applied(_) = result {
            lock(&self.settled).push((attempt, settlement.clone()));
        }
    }
}
