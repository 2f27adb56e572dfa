//! [`HookedStore`]: a [`Store`] that asks a [`StoreHook`] before every
//! operation and then delegates to another store (feature `conformance`).
//!
//! For tests that need a store to fail, hang or count: outages, slow
//! backends, failed writes. One wrapper instead of one hand-written
//! delegation per test suite, so a new `Store` method is added here once.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::attempt::Attempt;
use crate::call::{AttemptRef, Call, CallId, CallPatch, NewCall};
use crate::callback::{Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef};
use crate::event::{Event, EventId};
use crate::store::{
    Canceled, ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store,
    StoreError,
};

/// The store operation a hook is asked about, with the arguments a fault
/// may depend on.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Operation<'a> {
    /// [`Store::create`].
    Create,
    /// [`Store::get`].
    Get(CallId),
    /// [`Store::update`].
    Update(CallId),
    /// [`Store::cancel`].
    Cancel(CallId),
    /// [`Store::attempts`].
    Attempts(CallId),
    /// [`Store::list`].
    List,
    /// [`Store::counts`].
    Counts,
    /// [`Store::claim`].
    Claim,
    /// [`Store::record_dial`].
    RecordDial(AttemptRef, &'a str),
    /// [`Store::find_attempt`].
    FindAttempt(&'a str),
    /// [`Store::settle`].
    Settle(AttemptRef, &'a Settlement),
    /// [`Store::expire_due`].
    ExpireDue,
    /// [`Store::stale_attempts`].
    StaleAttempts,
    /// [`Store::next_timer`].
    NextTimer,
    /// [`Store::purge_ended_before`].
    Purge,
    /// [`Store::events_after`].
    EventsAfter,
    /// [`Store::last_event_id`].
    LastEventId,
    /// [`Store::claim_deliveries`].
    ClaimDeliveries,
    /// [`Store::record_delivery`].
    RecordDelivery(DeliveryRef),
    /// [`Store::next_delivery_at`].
    NextDeliveryAt,
    /// [`Store::ping`].
    Ping,
}

/// Decides, before each operation, whether it reaches the inner store.
#[async_trait]
pub trait StoreHook: Send + Sync + 'static {
    /// `Ok` lets the operation through; an error is returned instead of
    /// running it. May wait (a slow backend) or never return (a hung one).
    ///
    /// # Errors
    /// Whatever the fault is.
    async fn before(&self, operation: Operation<'_>) -> Result<(), StoreError>;

    /// Called after a [`Store::settle`] that reached the inner store, with its result.
    fn settled(&self, _attempt: AttemptRef, _settlement: &Settlement, _result: &Settled) {}
}

/// A [`Store`] over `inner` that runs `hook` first.
pub struct HookedStore<H> {
    inner: Arc<dyn Store>,
    hook: H,
}

impl<H> std::fmt::Debug for HookedStore<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore").finish_non_exhaustive()
    }
}

impl<H: StoreHook> HookedStore<H> {
    /// `inner`, asking `hook` before every operation.
    pub fn new(inner: Arc<dyn Store>, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The store underneath.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

#[async_trait]
impl<H: StoreHook> Store for HookedStore<H> {
    async fn create(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, StoreError> {
        self.hook.before(Operation::Create).await?;
        self.inner.create(id, new, now).await
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        self.hook.before(Operation::Get(id)).await?;
        self.inner.get(id).await
    }

    async fn update(
        &self,
        id: CallId,
        patch: &CallPatch,
        now: DateTime<Utc>,
    ) -> Result<Call, StoreError> {
        self.hook.before(Operation::Update(id)).await?;
        self.inner.update(id, patch, now).await
    }

    async fn cancel(
        &self,
        id: CallId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled, StoreError> {
        self.hook.before(Operation::Cancel(id)).await?;
        self.inner.cancel(id, reason, now).await
    }

    async fn attempts(&self, id: CallId) -> Result<Vec<Attempt>, StoreError> {
        self.hook.before(Operation::Attempts(id)).await?;
        self.inner.attempts(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.hook.before(Operation::List).await?;
        self.inner.list(query).await
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        self.hook.before(Operation::Counts).await?;
        self.inner.counts().await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        self.hook.before(Operation::Claim).await?;
        self.inner.claim(request).await
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<Option<Call>, StoreError> {
        self.hook
            .before(Operation::RecordDial(attempt, provider_call_id))
            .await?;
        self.inner.record_dial(attempt, provider_call_id).await
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        self.hook
            .before(Operation::FindAttempt(provider_call_id))
            .await?;
        self.inner.find_attempt(provider_call_id).await
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        self.hook
            .before(Operation::Settle(attempt, &settlement))
            .await?;
        let result = self.inner.settle(attempt, settlement.clone()).await?;
        self.hook.settled(attempt, &settlement, &result);
        Ok(result)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        self.hook.before(Operation::ExpireDue).await?;
        self.inner.expire_due(now).await
    }

    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError> {
        self.hook.before(Operation::StaleAttempts).await?;
        self.inner.stale_attempts(now, limit).await
    }

    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.hook.before(Operation::NextTimer).await?;
        self.inner.next_timer(now).await
    }

    async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.hook.before(Operation::Purge).await?;
        self.inner.purge_ended_before(cutoff, limit).await
    }

    async fn events_after(&self, after: EventId, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.hook.before(Operation::EventsAfter).await?;
        self.inner.events_after(after, limit).await
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        self.hook.before(Operation::LastEventId).await?;
        self.inner.last_event_id().await
    }

    fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.inner.subscribe_events()
    }

    async fn claim_deliveries(&self, request: &DeliveryClaim) -> Result<Vec<Delivery>, StoreError> {
        self.hook.before(Operation::ClaimDeliveries).await?;
        self.inner.claim_deliveries(request).await
    }

    async fn record_delivery(
        &self,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        self.hook
            .before(Operation::RecordDelivery(delivery))
            .await?;
        self.inner.record_delivery(delivery, outcome).await
    }

    async fn next_delivery_at(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.hook.before(Operation::NextDeliveryAt).await?;
        self.inner.next_delivery_at(now).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.hook.before(Operation::Ping).await?;
        self.inner.ping().await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }
}
