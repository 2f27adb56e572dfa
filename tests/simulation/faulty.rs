//! `FaultyStore`: a `Store` that can be taken down for a while, as a
//! database that cannot be reached: every operation then fails with
//! [`StoreError::Unavailable`] and changes nothing. It sits between the
//! engine and the [`CheckedStore`], so the checker sees only the operations
//! that reached the store. The [`Outages`] it was down for are shared with
//! the checker, whose engine rules allow for them (an answer recorded late,
//! an expiry the engine could not write), and it keeps every settlement that
//! applied, so a test can ask what the engine recorded.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use orchestrator_core::{
    async_trait, AttemptRef, Call, CallId, ClaimRequest, Created, ListQuery, NewCall, Page,
    PayloadPatch, Settled, Settlement, StatusCounts, Store, StoreError,
};
use tokio::sync::watch;

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
pub(crate) struct FaultyStore {
    inner: Arc<CheckedStore>,
    outages: Outages,
    settled: Mutex<Vec<(AttemptRef, Settlement)>>,
    /// Provider answers whose recording an outage refused: the attempts
    /// whose `settle` or `record_dial` failed, the provider ids whose
    /// webhook could not be looked up.
    refused_answers: Mutex<BTreeSet<String>>,
}

impl FaultyStore {
    pub(crate) fn new(inner: Arc<CheckedStore>, outages: Outages) -> Self {
        Self {
            inner,
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

    /// [`up`](Self::up), remembering a refusal as a refused `answer`.
    fn up_for_answer(&self, answer: impl FnOnce() -> String) -> Result<(), StoreError> {
        self.up().inspect_err(|_| {
            lock(&self.refused_answers).insert(answer());
        })
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
}

#[async_trait]
impl Store for FaultyStore {
    async fn create(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, StoreError> {
        self.up()?;
        self.inner.create(id, new, now).await
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        self.up()?;
        self.inner.get(id).await
    }

    async fn update_payload(&self, id: CallId, patch: &PayloadPatch) -> Result<Call, StoreError> {
        self.up()?;
        self.inner.update_payload(id, patch).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.up()?;
        self.inner.list(query).await
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        self.up()?;
        self.inner.counts().await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        self.up()?;
        self.inner.claim(request).await
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<bool, StoreError> {
        self.up_for_answer(|| format!("dial {attempt}"))?;
        self.inner.record_dial(attempt, provider_call_id).await
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        self.up_for_answer(|| format!("webhook {provider_call_id}"))?;
        self.inner.find_attempt(provider_call_id).await
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        self.up_for_answer(|| format!("dial or webhook {attempt}"))?;
        let settled = self.inner.settle(attempt, settlement.clone()).await?;
        if let Settled::Applied(_) = settled {
            lock(&self.settled).push((attempt, settlement));
        }
        Ok(settled)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        self.up()?;
        self.inner.expire_due(now).await
    }

    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError> {
        self.up()?;
        self.inner.stale_attempts(now, limit).await
    }

    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.up()?;
        self.inner.next_timer(now).await
    }

    async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.up()?;
        self.inner.purge_ended_before(cutoff, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.up()?;
        self.inner.ping().await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }
}
