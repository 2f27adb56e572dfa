//! `MemoryStore`: a complete in-process [`Store`], for embedding, tests and the simulation.
//!
//! One mutex guards all state, so every method is trivially atomic; nothing is
//! awaited while it is held. Indexes are ordered maps, so iteration order (and
//! therefore behaviour) is deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::call::{AttemptRef, Call, CallId, CallStatus, NewCall, PayloadPatch};
use crate::clock;
use crate::input::IdempotencyKey;
use crate::phone::PhoneNumber;
use crate::state::{transition, CallEvent};
use crate::store::{
    ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store, StoreError,
};

type Key = (DateTime<Utc>, CallId);

#[derive(Default)]
struct State {
    calls: HashMap<CallId, Call>,
    /// Every call, ordered by (creation time, id): listing without a filter.
    all: BTreeSet<Key>,
    /// Per status, the calls ordered by (creation time, id).
    by_status: [BTreeSet<Key>; 5],
    /// PENDING calls by due time, by expiry, and IN_PROGRESS calls by lease
    /// end: the timers, so rounds never scan every call.
    pending_due: BTreeSet<Key>,
    pending_expiry: BTreeSet<Key>,
    leases: BTreeSet<Key>,
    /// Numbers with a call in progress, and that call.
    busy_numbers: BTreeMap<PhoneNumber, CallId>,
    idempotency_keys: HashMap<IdempotencyKey, CallId>,
    provider_ids: HashMap<String, AttemptRef>,
}

fn slot(status: CallStatus) -> usize {
    CallStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

impl State {
    /// Replaces a call, keeping every index true.
    fn put(&mut self, call: Call) {
        if let Some(old) = self.calls.remove(&call.id) {
            self.unindex(&old);
        }
        self.all.insert((call.created_at, call.id));
        self.by_status[slot(call.status)].insert((call.created_at, call.id));
        match call.status {
            CallStatus::Pending => {
                self.pending_due.insert((call.due_at(), call.id));
                if let Some(at) = call.expires_at {
                    self.pending_expiry.insert((at, call.id));
                }
            }
            CallStatus::InProgress => {
                self.busy_numbers.insert(call.payload.to.clone(), call.id);
                if let Some(at) = call.lease_expires_at {
                    self.leases.insert((at, call.id));
                }
            }
            CallStatus::Completed | CallStatus::Failed | CallStatus::Expired => {}
        }
        self.calls.insert(call.id, call);
    }

    fn unindex(&mut self, old: &Call) {
        self.by_status[slot(old.status)].remove(&(old.created_at, old.id));
        self.pending_due.remove(&(old.due_at(), old.id));
        if let Some(at) = old.expires_at {
            self.pending_expiry.remove(&(at, old.id));
        }
        if let Some(at) = old.lease_expires_at {
            self.leases.remove(&(at, old.id));
        }
        if old.status == CallStatus::InProgress {
            self.busy_numbers.remove(&old.payload.to);
        }
    }

    /// The first key of `index` strictly after `now`.
    fn first_after(index: &BTreeSet<Key>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        index
            .range((Excluded((now, CallId(uuid::Uuid::max()))), Unbounded))
            .next()
            .map(|(at, _)| *at)
    }

    fn get(&self, id: CallId) -> Result<&Call, StoreError> {
        self.calls.get(&id).ok_or(StoreError::NotFound(id))
    }

    fn apply(&mut self, id: CallId, event: CallEvent) -> Result<Call, StoreError> {
        let next = transition(self.get(id)?, event)
            .map_err(|source| StoreError::Conflict { id, source })?;
        self.put(next.clone());
        Ok(next)
    }

    fn in_progress(&self) -> usize {
        self.by_status[slot(CallStatus::InProgress)].len()
    }
}

/// An in-memory [`Store`]. Cheap to create; data lives as long as the value.
pub struct MemoryStore {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let calls = self.state.lock().map_or(0, |state| state.calls.len());
        f.debug_struct("MemoryStore")
            .field("calls", &calls)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the indexes half-updated
        // (`put` does not panic), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Every call, ordered by id: for tests and simulations that check invariants.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Call> {
        let state = self.lock();
        let mut calls: Vec<Call> = state.calls.values().cloned().collect();
        calls.sort_by_key(|call| call.id);
        calls
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, StoreError> {
        let call = {
            let mut state = self.lock();
            if let Some(key) = &new.idempotency_key {
                if let Some(first) = state.idempotency_keys.get(key) {
                    let call = state.get(*first)?.clone();
                    return Ok(Created {
                        call,
                        created: false,
                    });
                }
                state.idempotency_keys.insert(key.clone(), id);
            }
            let call = Call::new(id, new, clock::truncate_to_micros(now));
            state.put(call.clone());
            call
        };
        // The copy taken under the lock: once the lock is released, a running
        // dispatcher may claim the call, and the caller must still see it as
        // it was created.
        self.bump();
        Ok(Created {
            call,
            created: true,
        })
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        self.lock().get(id).cloned()
    }

    async fn update_payload(&self, id: CallId, patch: &PayloadPatch) -> Result<Call, StoreError> {
        let mut state = self.lock();
        let payload = patch.apply_to(&state.get(id)?.payload);
        state.apply(id, CallEvent::UpdatePayload(payload))
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let state = self.lock();
        let offset = usize::try_from(query.offset()).unwrap_or(usize::MAX);
        let size = query.page_size() as usize;
        let (items, total) = match query.status() {
            Some(status) => {
                let index = &state.by_status[slot(status)];
                let items = index.iter().rev().skip(offset).take(size);
                (collect(&state, items), index.len())
            }
            None => {
                let items = state.all.iter().rev().skip(offset).take(size);
                (collect(&state, items), state.all.len())
            }
        };
        Ok(Page {
            items,
            page: query.page(),
            page_size: query.page_size(),
            total: total as u64,
        })
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        let state = self.lock();
        let mut counts = StatusCounts::default();
        for status in CallStatus::ALL {
            counts.set(status, state.by_status[slot(status)].len() as u64);
        }
        Ok(counts)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        let mut state = self.lock();
        let free = (request.max_in_flight as usize).saturating_sub(state.in_progress());
        let want = free.min(request.limit as usize);
        if want == 0 {
            return Ok(Vec::new());
        }
        let now = request.now;
        let mut chosen: Vec<CallId> = Vec::with_capacity(want);
        let mut numbers: BTreeSet<&PhoneNumber> = BTreeSet::new();
        for (_, id) in &state.by_status[slot(CallStatus::Pending)] {
            let call = &state.calls[id];
            let due = call.due_at() <= now && call.expires_at.is_none_or(|at| at > now);
            let to = &call.payload.to;
            if due && !state.busy_numbers.contains_key(to) && numbers.insert(to) {
                chosen.push(*id);
                if chosen.len() == want {
                    break;
                }
            }
        }
        let lease_until = clock::add(now, request.lease);
        chosen
            .into_iter()
            .map(|id| {
                state.apply(
                    id,
                    CallEvent::Claim {
                        at: now,
                        lease_until,
                    },
                )
            })
            .collect()
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let call = state.get(attempt.call_id)?;
        if attempt.attempt == 0 || attempt.attempt > call.attempts {
            return Ok(false);
        }
        let current = call.status == CallStatus::InProgress && call.attempts == attempt.attempt;
        state
            .provider_ids
            .insert(provider_call_id.to_owned(), attempt);
        if current {
            state.apply(
                attempt.call_id,
                CallEvent::Accept {
                    provider_call_id: provider_call_id.to_owned(),
                },
            )?;
        }
        Ok(current)
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        Ok(self.lock().provider_ids.get(provider_call_id).copied())
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let settled = {
            let mut state = self.lock();
            let call = state.get(attempt.call_id)?;
            if call.status != CallStatus::InProgress || call.attempts != attempt.attempt {
                return Ok(Settled::Stale(call.clone()));
            }
            Settled::Applied(state.apply(attempt.call_id, settlement.into())?)
        };
        self.bump();
        Ok(settled)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        let mut state = self.lock();
        let due: Vec<CallId> = state
            .pending_expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in &due {
            state.apply(*id, CallEvent::Expire { at: now })?;
        }
        Ok(due)
    }

    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError> {
        let state = self.lock();
        Ok(state
            .leases
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit as usize)
            .map(|(_, id)| state.calls[id].current_attempt())
            .collect())
    }

    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let state = self.lock();
        Ok([&state.pending_due, &state.pending_expiry, &state.leases]
            .into_iter()
            .filter_map(|index| State::first_after(index, now))
            .min())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn collect<'a>(state: &State, keys: impl Iterator<Item = &'a Key>) -> Vec<Call> {
    keys.map(|(_, id)| state.calls[id].clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::store::Settlement;
    use crate::ScriptId;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
    }

    fn new_call(n: u32) -> NewCall {
        NewCall::new(
            PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap(),
            ScriptId::parse("welcomeFlow").unwrap(),
        )
    }

    fn claim_all(now: DateTime<Utc>) -> ClaimRequest {
        ClaimRequest {
            now,
            max_in_flight: u32::MAX,
            limit: 100,
            lease: Duration::from_secs(60),
        }
    }

    async fn create(store: &MemoryStore, n: u32) -> Call {
        let id = CallId::v7_from_parts(at(0), [n.to_be_bytes()[3]; 10]);
        store.create(id, &new_call(n), at(0)).await.unwrap().call
    }

    /// `create` returns the call it stored, not the call as it is by the time
    /// the caller reads it: a claimer spinning on another thread takes every
    /// new call at once, and still every call comes back `PENDING`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_returns_the_call_as_created_while_a_claimer_takes_it() {
        let store = Arc::new(MemoryStore::new());
        let stop = Arc::new(AtomicBool::new(false));
        let claimer = tokio::spawn({
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            async move {
                let mut claimed = 0;
                while !stop.load(Ordering::Relaxed) {
                    claimed += store.claim(&claim_all(at(1))).await.unwrap().len();
                    tokio::task::yield_now().await;
                }
                claimed
            }
        });
        for n in 0..2_000 {
            let new = new_call(n);
            let created = store
                .create(CallId::new_v7(at(0)), &new, at(0))
                .await
                .unwrap();
            assert_eq!(created.call.status, CallStatus::Pending, "call {n}");
            assert_eq!(created.call.attempts, 0, "call {n}");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(claimer.await.unwrap() > 0, "the claimer took no call");
    }

    #[tokio::test]
    async fn snapshot_lists_every_call_as_it_is_ordered_by_id() {
        let store = MemoryStore::new();
        assert_eq!(store.snapshot(), Vec::<Call>::new());
        let second = create(&store, 2).await;
        let first = create(&store, 1).await;
        store.claim(&claim_all(at(1))).await.unwrap();
        let snapshot = store.snapshot();
        assert_eq!(
            snapshot.iter().map(|call| call.id).collect::<Vec<_>>(),
            [first.id, second.id]
        );
        for call in &snapshot {
            assert_eq!(call, &store.get(call.id).await.unwrap());
            assert_eq!(call.status, CallStatus::InProgress);
        }
    }

    /// The change counter moves by one for each create and each applied
    /// settle; claims, reads, recorded dials and stale settles leave it.
    #[tokio::test]
    async fn the_change_counter_counts_creates_and_applied_settles() {
        let store = MemoryStore::new();
        let changes = store.subscribe();
        assert_eq!(*changes.borrow(), 0);
        let call = create(&store, 1).await;
        create(&store, 2).await;
        assert_eq!(*changes.borrow(), 2);

        store.claim(&claim_all(at(1))).await.unwrap();
        store.get(call.id).await.unwrap();
        let attempt = AttemptRef {
            call_id: call.id,
            attempt: 1,
        };
        store.record_dial(attempt, "p-1").await.unwrap();
        assert_eq!(*changes.borrow(), 2);

        let completed = Settlement::Completed {
            at: at(2),
            duration_sec: None,
        };
        store.settle(attempt, completed.clone()).await.unwrap();
        assert_eq!(*changes.borrow(), 3);
        assert!(matches!(
            store.settle(attempt, completed).await.unwrap(),
            Settled::Stale(_)
        ));
        assert_eq!(*changes.borrow(), 3);
    }
}
