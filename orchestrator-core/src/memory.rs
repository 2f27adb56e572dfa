//! `MemoryStore`: a complete in-process [`Store`], for embedding, tests and the simulation.
//!
//! One mutex guards all state, so every method is trivially atomic; nothing is
//! awaited while it is held. Indexes are ordered maps, so iteration order (and
//! therefore behaviour) is deterministic.
//!
//! Every method costs what it touches, not what the store holds: a claim
//! walks only the oldest due call of each number that is free, timers read
//! the first entry of an index ordered by time, and retention deletes from
//! an index ordered by `endedAt`, so neither calls scheduled far ahead nor a
//! backlog waiting for a busy number slow anything down, and a store that
//! purges stays bounded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::attempt::Attempt;
use crate::call::{AttemptRef, Call, CallId, CallPatch, CallStatus, NewCall};
use crate::callback::{
    CallbackState, CallbackStatus, Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef,
    NO_ANSWER_RECORDED,
};
use crate::clock;
use crate::event::{Event, EventId};
use crate::input::{CallbackUrl, IdempotencyKey};
use crate::phone::PhoneNumber;
use crate::state::{transition, CallEvent};
use crate::store::{
    Canceled, ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store,
    StoreError,
};
use crate::validate::validate_schedule;

/// An instant and a call: ordered by the instant, then the id.
type Key = (DateTime<Utc>, CallId);

/// The last key at `at`: ranges up to it include every call at that instant.
fn last_at(at: DateTime<Utc>) -> Key {
    (at, CallId(uuid::Uuid::max()))
}

/// The due `PENDING` calls to one number, oldest first (creation time, then
/// id), and which of them is in [`State::heads`].
#[derive(Default)]
struct Queue {
    calls: BTreeSet<Key>,
    head: Option<Key>,
}

/// The outbox entry of one terminal event.
struct DeliveryRow {
    call_id: CallId,
    url: CallbackUrl,
    state: CallbackState,
    attempts: u32,
    last_error: Option<String>,
    /// While `PENDING`: when it is next due (its retry time, or its lease's
    /// end while a try holds it); its key in [`State::deliveries_due`].
    due: Option<DateTime<Utc>>,
}

impl DeliveryRow {
    fn status(&self) -> CallbackStatus {
        CallbackStatus {
            state: self.state,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
        }
    }
}

struct State {
    calls: HashMap<CallId, Call>,
    /// Every call to each number, ordered by (creation time, id): listing by `to`.
    by_number: HashMap<PhoneNumber, BTreeSet<Key>>,
    /// The event log, by id; ids are drawn under the lock, so in commit order.
    events: BTreeMap<EventId, Event>,
    last_event: u64,
    events_of: HashMap<CallId, Vec<EventId>>,
    /// Every dial of each call, in dial order.
    attempts_of: HashMap<CallId, Vec<Attempt>>,
    /// The outbox, by event id, and its `PENDING` entries by due time.
    deliveries: HashMap<EventId, DeliveryRow>,
    deliveries_due: BTreeSet<(DateTime<Utc>, EventId)>,
    /// Every call, ordered by (creation time, id): listing without a filter.
    all: BTreeSet<Key>,
    /// Per status, the calls ordered by (creation time, id).
    by_status: [BTreeSet<Key>; 6],
    /// PENDING calls by due time, by expiry, and IN_PROGRESS calls by lease
    /// end: the timers, so rounds never scan every call.
    pending_due: BTreeSet<Key>,
    pending_expiry: BTreeSet<Key>,
    leases: BTreeSet<Key>,
    /// Terminal calls by `endedAt`: what retention deletes, oldest end first.
    ended: BTreeSet<Key>,
    /// `PENDING` calls due at or before `promoted_until`, per number. A claim
    /// at `now` first moves this line to `now` (walking `pending_due` only
    /// between the two instants), so during a claim these are exactly the
    /// due calls, whatever is scheduled later.
    ready: BTreeMap<PhoneNumber, Queue>,
    promoted_until: DateTime<Utc>,
    /// The oldest ready call of every number without a call in progress, by
    /// (creation time, id): a claim walks these, so it costs the calls it
    /// takes, not the calls waiting behind a busy number.
    heads: BTreeSet<Key>,
    /// Numbers with a call in progress, and that call.
    busy_numbers: BTreeMap<PhoneNumber, CallId>,
    idempotency_keys: HashMap<IdempotencyKey, CallId>,
    /// The idempotency key each call was created with, to free it on purge.
    key_of: HashMap<CallId, IdempotencyKey>,
    provider_ids: HashMap<String, AttemptRef>,
    /// The provider ids recorded for each call, to forget them on purge.
    provider_ids_of: HashMap<CallId, Vec<String>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            calls: HashMap::new(),
            by_number: HashMap::new(),
            events: BTreeMap::new(),
            last_event: 0,
            events_of: HashMap::new(),
            attempts_of: HashMap::new(),
            deliveries: HashMap::new(),
            deliveries_due: BTreeSet::new(),
            all: BTreeSet::new(),
            by_status: Default::default(),
            pending_due: BTreeSet::new(),
            pending_expiry: BTreeSet::new(),
            leases: BTreeSet::new(),
            ended: BTreeSet::new(),
            ready: BTreeMap::new(),
            promoted_until: DateTime::<Utc>::MIN_UTC,
            heads: BTreeSet::new(),
            busy_numbers: BTreeMap::new(),
            idempotency_keys: HashMap::new(),
            key_of: HashMap::new(),
            provider_ids: HashMap::new(),
            provider_ids_of: HashMap::new(),
        }
    }
}

impl State {
    /// Replaces a call, keeping every index true.
    fn put(&mut self, call: Call) {
        if let Some(old) = self.calls.remove(&call.id) {
            self.unindex(&old);
        }
        let key = (call.created_at, call.id);
        self.all.insert(key);
        self.by_number
            .entry(call.payload.to.clone())
            .or_default()
            .insert(key);
        self.by_status[call.status.index()].insert(key);
        match call.status {
            CallStatus::Pending => {
                self.pending_due.insert((call.due_at(), call.id));
                if let Some(at) = call.expires_at {
                    self.pending_expiry.insert((at, call.id));
                }
                if call.due_at() <= self.promoted_until {
                    self.enqueue(&call.payload.to, key);
                }
            }
            CallStatus::InProgress => {
                self.busy_numbers.insert(call.payload.to.clone(), call.id);
                self.refresh_head(&call.payload.to);
                if let Some(at) = call.lease_expires_at {
                    self.leases.insert((at, call.id));
                }
            }
            CallStatus::Completed
            | CallStatus::Failed
            | CallStatus::Expired
            | CallStatus::Canceled => {
                if let Some(at) = call.ended_at {
                    self.ended.insert((at, call.id));
                }
            }
        }
        self.calls.insert(call.id, call);
    }

    /// Takes `old` out of every index (not out of `calls`).
    fn unindex(&mut self, old: &Call) {
        let key = (old.created_at, old.id);
        self.all.remove(&key);
        if let Some(calls) = self.by_number.get_mut(&old.payload.to) {
            calls.remove(&key);
            if calls.is_empty() {
                self.by_number.remove(&old.payload.to);
            }
        }
        self.by_status[old.status.index()].remove(&key);
        self.pending_due.remove(&(old.due_at(), old.id));
        if let Some(at) = old.expires_at {
            self.pending_expiry.remove(&(at, old.id));
        }
        if let Some(at) = old.lease_expires_at {
            self.leases.remove(&(at, old.id));
        }
        if let Some(at) = old.ended_at {
            self.ended.remove(&(at, old.id));
        }
        match old.status {
            CallStatus::Pending if old.due_at() <= self.promoted_until => {
                self.dequeue(&old.payload.to, key);
            }
            CallStatus::InProgress => {
                self.busy_numbers.remove(&old.payload.to);
                self.refresh_head(&old.payload.to);
            }
            _ => {}
        }
    }

    fn enqueue(&mut self, to: &PhoneNumber, key: Key) {
        self.ready.entry(to.clone()).or_default().calls.insert(key);
        self.refresh_head(to);
    }

    fn dequeue(&mut self, to: &PhoneNumber, key: Key) {
        if let Some(queue) = self.ready.get_mut(to) {
            queue.calls.remove(&key);
        }
        self.refresh_head(to);
    }

    /// Makes `heads` hold `to`'s oldest ready call if, and only if, the
    /// number has no call in progress; drops the number's queue once empty.
    fn refresh_head(&mut self, to: &PhoneNumber) {
        let busy = self.busy_numbers.contains_key(to);
        let Some(queue) = self.ready.get_mut(to) else {
            return;
        };
        if let Some(head) = queue.head.take() {
            self.heads.remove(&head);
        }
        if queue.calls.is_empty() {
            self.ready.remove(to);
            return;
        }
        if !busy {
            queue.head = queue.calls.first().copied();
            self.heads.extend(queue.head);
        }
    }

    /// Moves the line between ready and not yet due to `now`: promotes the
    /// `PENDING` calls that fell due since the last claim (or, if `now` is
    /// earlier than that claim's, demotes those not due at `now`).
    fn promote(&mut self, now: DateTime<Utc>) {
        let (from, to, promote) = match now.cmp(&self.promoted_until) {
            std::cmp::Ordering::Equal => return,
            std::cmp::Ordering::Greater => (self.promoted_until, now, true),
            std::cmp::Ordering::Less => (now, self.promoted_until, false),
        };
        let moved: Vec<(PhoneNumber, Key)> = self
            .pending_due
            .range((Excluded(last_at(from)), Included(last_at(to))))
            .map(|(_, id)| {
                let call = &self.calls[id];
                (call.payload.to.clone(), (call.created_at, call.id))
            })
            .collect();
        self.promoted_until = now;
        for (number, key) in moved {
            if promote {
                self.enqueue(&number, key);
            } else {
                self.dequeue(&number, key);
            }
        }
    }

    /// Up to `want` calls a claim at `now` takes, oldest first: among the
    /// due calls not past their expiry, the oldest of each free number.
    /// Requires `promoted_until == now`.
    fn claimable(&self, now: DateTime<Utc>, want: usize) -> Vec<CallId> {
        let mut chosen: BTreeSet<Key> = BTreeSet::new();
        for head in &self.heads {
            // A number's pick is its head unless the head has expired (and
            // `expire_due` has not run yet): then a younger call of that
            // number, which may sort after later heads. So stop only once
            // `want` picks are all older than the next head.
            if chosen.len() == want && chosen.last().is_some_and(|last| last < head) {
                break;
            }
            let to = &self.calls[&head.1].payload.to;
            let pick = self.ready.get(to).and_then(|queue| {
                queue
                    .calls
                    .iter()
                    .find(|(_, id)| self.calls[id].expires_at.is_none_or(|at| at > now))
            });
            if let Some(pick) = pick {
                chosen.insert(*pick);
                if chosen.len() > want {
                    chosen.pop_last();
                }
            }
        }
        chosen.into_iter().map(|(_, id)| id).collect()
    }

    /// Deletes a call and everything stored about it.
    fn remove(&mut self, id: CallId) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        self.unindex(&call);
        if let Some(key) = self.key_of.remove(&id) {
            self.idempotency_keys.remove(&key);
        }
        self.attempts_of.remove(&id);
        for event_id in self.events_of.remove(&id).unwrap_or_default() {
            self.events.remove(&event_id);
            if let Some(row) = self.deliveries.remove(&event_id) {
                if let Some(due) = row.due {
                    self.deliveries_due.remove(&(due, event_id));
                }
            }
        }
        for provider_call_id in self.provider_ids_of.remove(&id).unwrap_or_default() {
            if self
                .provider_ids
                .get(&provider_call_id)
                .is_some_and(|attempt| attempt.call_id == id)
            {
                self.provider_ids.remove(&provider_call_id);
            }
        }
    }

    /// The first key of `index` strictly after `now`.
    fn first_after(index: &BTreeSet<Key>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        index
            .range((Excluded(last_at(now)), Unbounded))
            .next()
            .map(|(at, _)| *at)
    }

    fn get(&self, id: CallId) -> Result<&Call, StoreError> {
        self.calls.get(&id).ok_or(StoreError::NotFound(id))
    }

    /// Applies `event` at `at` and logs the change of status, if any.
    fn apply(
        &mut self,
        id: CallId,
        event: CallEvent,
        at: DateTime<Utc>,
    ) -> Result<Call, StoreError> {
        let before = self.get(id)?;
        let from = before.status;
        let next =
            transition(before, event).map_err(|source| StoreError::Conflict { id, source })?;
        self.put(next.clone());
        self.log(Some(from), &next, at);
        Ok(next)
    }

    /// Appends the event of `call`'s change from `from` at `at`, if its
    /// status changed, and the delivery of a terminal event to its callback URL.
    fn log(&mut self, from: Option<CallStatus>, call: &Call, at: DateTime<Utc>) {
        let Some(mut event) = Event::of_change(from, call, at) else {
            return;
        };
        self.last_event += 1;
        let id = EventId(self.last_event);
        event.id = id;
        self.events_of.entry(call.id).or_default().push(id);
        if let (true, Some(url)) = (event.kind.is_terminal(), &call.callback_url) {
            self.deliveries.insert(
                id,
                DeliveryRow {
                    call_id: call.id,
                    url: url.clone(),
                    state: CallbackState::Pending,
                    attempts: 0,
                    last_error: None,
                    due: Some(at),
                },
            );
            self.deliveries_due.insert((at, id));
        }
        self.events.insert(id, event);
    }

    /// Moves delivery `id`'s due time (`None`: no longer due), keeping the
    /// index true, and shows its state on its call.
    fn update_delivery(&mut self, id: EventId, change: impl FnOnce(&mut DeliveryRow)) {
        let Some(row) = self.deliveries.get_mut(&id) else {
            return;
        };
        if let Some(due) = row.due {
            self.deliveries_due.remove(&(due, id));
        }
        change(row);
        if let Some(due) = row.due {
            self.deliveries_due.insert((due, id));
        }
        let status = row.status();
        if let Some(call) = self.calls.get_mut(&row.call_id) {
            call.callback = Some(status);
        }
    }

    fn in_progress(&self) -> usize {
        self.by_status[CallStatus::InProgress.index()].len()
    }
}

/// An in-memory [`Store`]. Cheap to create; data lives as long as the value.
pub struct MemoryStore {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    events: watch::Sender<u64>,
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
            events: watch::Sender::new(0),
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

    /// Runs `change` under the lock, then tells event readers when it
    /// appended events (after the lock is released, so they can read them).
    fn logged<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let (value, appended) = {
            let mut state = self.lock();
            let before = state.last_event;
            let value = change(&mut state);
            (value, state.last_event != before)
        };
        if appended {
            self.events.send_modify(|generation| *generation += 1);
        }
        value
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
        let now = clock::truncate_to_micros(now);
        let (call, created) = self.logged(|state| {
            if let Some(key) = &new.idempotency_key {
                if let Some(first) = state.idempotency_keys.get(key) {
                    return Ok((state.get(*first)?.clone(), false));
                }
                state.idempotency_keys.insert(key.clone(), id);
                state.key_of.insert(id, key.clone());
            }
            let call = Call::new(id, new, now);
            state.put(call.clone());
            state.log(None, &call, now);
            Ok::<_, StoreError>((call, true))
        })?;
        if !created {
            return Ok(Created {
                call,
                created: false,
            });
        }
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

    async fn update(
        &self,
        id: CallId,
        patch: &CallPatch,
        now: DateTime<Utc>,
    ) -> Result<Call, StoreError> {
        let mut state = self.lock();
        let next = transition(state.get(id)?, CallEvent::Update(patch.clone()))
            .map_err(|source| StoreError::Conflict { id, source })?;
        validate_schedule(&next, patch, now).map_err(StoreError::Invalid)?;
        state.put(next.clone());
        drop(state);
        if patch.reschedules() {
            // An earlier `notBefore` may make the call due now.
            self.bump();
        }
        Ok(next)
    }

    async fn cancel(
        &self,
        id: CallId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled, StoreError> {
        let now = clock::truncate_to_micros(now);
        self.logged(|state| {
            let call = state.get(id)?;
            let was = call.status;
            if was == CallStatus::Canceled {
                return Ok(Canceled::AlreadyCanceled(call.clone()));
            }
            let event = CallEvent::Cancel {
                at: now,
                reason: reason.to_owned(),
            };
            let call = state.apply(id, event, now)?;
            Ok(if was == CallStatus::Pending {
                Canceled::Canceled(call)
            } else {
                Canceled::Requested(call)
            })
        })
    }

    async fn attempts(&self, id: CallId) -> Result<Vec<Attempt>, StoreError> {
        let state = self.lock();
        state.get(id)?;
        Ok(state.attempts_of.get(&id).cloned().unwrap_or_default())
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let state = self.lock();
        let offset = usize::try_from(query.offset()).unwrap_or(usize::MAX);
        let size = query.page_size() as usize;
        let filter = query.filter();
        // The narrowest index that holds every match, newest first.
        let empty = BTreeSet::new();
        let index = match (&filter.to, filter.status) {
            (Some(to), _) => state.by_number.get(to).unwrap_or(&empty),
            (None, Some(status)) => &state.by_status[status.index()],
            (None, None) => &state.all,
        };
        let only_index = filter.to.is_none()
            && filter.script_id.is_none()
            && filter.created_from.is_none()
            && filter.created_to.is_none();
        let (items, total) = if only_index {
            let items = index.iter().rev().skip(offset).take(size);
            (collect(&state, items), index.len())
        } else {
            let mut matching = index
                .iter()
                .rev()
                .filter(|(_, id)| filter.matches(&state.calls[id]));
            let items = collect(&state, matching.by_ref().skip(offset).take(size));
            let seen = offset.saturating_add(items.len());
            (items, seen + matching.count())
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
            counts.set(status, state.by_status[status.index()].len() as u64);
        }
        Ok(counts)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        self.logged(|state| {
            let free = (request.max_in_flight as usize).saturating_sub(state.in_progress());
            let want = free.min(request.limit as usize);
            if want == 0 {
                return Ok(Vec::new());
            }
            let now = request.now;
            state.promote(now);
            let chosen = state.claimable(now, want);
            let lease_until = clock::add(now, request.lease);
            chosen
                .into_iter()
                .map(|id| {
                    let call = state.apply(
                        id,
                        CallEvent::Claim {
                            at: now,
                            lease_until,
                        },
                        now,
                    )?;
                    state
                        .attempts_of
                        .entry(id)
                        .or_default()
                        .push(Attempt::started(call.attempts, now));
                    Ok(call)
                })
                .collect()
        })
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<Option<Call>, StoreError> {
        let mut state = self.lock();
        let call = state.get(attempt.call_id)?;
        if attempt.attempt == 0 || attempt.attempt > call.attempts {
            return Ok(None);
        }
        let current = call.status == CallStatus::InProgress && call.attempts == attempt.attempt;
        state
            .provider_ids
            .insert(provider_call_id.to_owned(), attempt);
        let recorded = state.provider_ids_of.entry(attempt.call_id).or_default();
        if !recorded.iter().any(|id| id == provider_call_id) {
            recorded.push(provider_call_id.to_owned());
        }
        // The history row of that attempt number's latest dial.
        if let Some(dial) = state
            .attempts_of
            .get_mut(&attempt.call_id)
            .and_then(|dials| {
                dials
                    .iter_mut()
                    .rev()
                    .find(|dial| dial.attempt == attempt.attempt)
            })
        {
            dial.provider_call_id = Some(provider_call_id.to_owned());
        }
        if !current {
            return Ok(None);
        }
        let accept = CallEvent::Accept {
            provider_call_id: provider_call_id.to_owned(),
        };
        // No change of status, so no event: `at` is not used.
        let at = call_started(state.get(attempt.call_id)?);
        state.apply(attempt.call_id, accept, at).map(Some)
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        Ok(self.lock().provider_ids.get(provider_call_id).copied())
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let settled = self.logged(|state| {
            let call = state.get(attempt.call_id)?;
            if call.status != CallStatus::InProgress || call.attempts != attempt.attempt {
                return Ok(Settled::Stale(call.clone()));
            }
            let cancel_requested = call.cancel_requested_at.is_some();
            if let Some(dial) = state
                .attempts_of
                .get_mut(&attempt.call_id)
                .and_then(|dials| dials.last_mut())
            {
                *dial = dial.settled(&settlement, cancel_requested);
            }
            let at = settlement.at();
            state
                .apply(attempt.call_id, settlement.into(), at)
                .map(Settled::Applied)
        })?;
        if matches!(settled, Settled::Applied(_)) {
            self.bump();
        }
        Ok(settled)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        let now = clock::truncate_to_micros(now);
        self.logged(|state| {
            let due: Vec<CallId> = state
                .pending_expiry
                .iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, id)| *id)
                .collect();
            for id in &due {
                state.apply(*id, CallEvent::Expire { at: now }, now)?;
            }
            Ok(due)
        })
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

    async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let doomed: Vec<CallId> = state
            .ended
            .iter()
            .take_while(|(at, _)| *at < cutoff)
            .take(limit as usize)
            .map(|(_, id)| *id)
            .collect();
        for id in &doomed {
            state.remove(*id);
        }
        Ok(doomed.len() as u64)
    }

    async fn events_after(&self, after: EventId, limit: u32) -> Result<Vec<Event>, StoreError> {
        let state = self.lock();
        Ok(state
            .events
            .range((Excluded(after), Unbounded))
            .take(limit as usize)
            .map(|(_, event)| event.clone())
            .collect())
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        Ok(EventId(self.lock().last_event))
    }

    fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    async fn claim_deliveries(&self, request: &DeliveryClaim) -> Result<Vec<Delivery>, StoreError> {
        let mut state = self.lock();
        let now = request.now;
        let lease_until = clock::add(now, request.lease);
        let mut claimed = Vec::new();
        while claimed.len() < request.limit as usize {
            let Some(&(due, id)) = state.deliveries_due.first() else {
                break;
            };
            if due > now {
                break;
            }
            let exhausted = state.deliveries[&id].attempts >= request.max_attempts;
            if exhausted {
                state.update_delivery(id, |row| {
                    row.state = CallbackState::Failed;
                    row.last_error = Some(NO_ANSWER_RECORDED.to_owned());
                    row.due = None;
                });
                continue;
            }
            state.update_delivery(id, |row| {
                row.attempts += 1;
                row.due = Some(lease_until);
            });
            let row = &state.deliveries[&id];
            claimed.push(Delivery {
                event: state.events[&id].clone(),
                url: row.url.clone(),
                attempt: row.attempts,
            });
        }
        Ok(claimed)
    }

    async fn record_delivery(
        &self,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let current = state.deliveries.get(&delivery.event_id).is_some_and(|row| {
            row.state == CallbackState::Pending && row.attempts == delivery.attempt
        });
        if current {
            state.update_delivery(delivery.event_id, |row| match outcome {
                DeliveryOutcome::Delivered { .. } => {
                    row.state = CallbackState::Delivered;
                    row.due = None;
                }
                DeliveryOutcome::Retry { error, retry_at } => {
                    row.last_error = Some(error);
                    row.due = Some(retry_at);
                }
                DeliveryOutcome::Failed { error, .. } => {
                    row.state = CallbackState::Failed;
                    row.last_error = Some(error);
                    row.due = None;
                }
            });
        }
        Ok(current)
    }

    async fn next_delivery_at(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let state = self.lock();
        Ok(state
            .deliveries_due
            .range((Excluded((now, EventId(u64::MAX))), Unbounded))
            .next()
            .map(|(at, _)| *at))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// When `call`'s current attempt started (its creation before any).
fn call_started(call: &Call) -> DateTime<Utc> {
    call.started_at.unwrap_or(call.created_at)
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

    /// What a claim must take, by the contract, computed from every call:
    /// due (`PENDING`, due at or before `now`, not expired), oldest first by
    /// (creation time, id), one per number, none to a number in progress,
    /// at most `min(limit, cap - in progress)`.
    fn reference_claim(calls: &[Call], now: DateTime<Utc>, cap: u32, limit: u32) -> Vec<CallId> {
        let busy: BTreeSet<&PhoneNumber> = calls
            .iter()
            .filter(|call| call.status == CallStatus::InProgress)
            .map(|call| &call.payload.to)
            .collect();
        let want = (cap as usize)
            .saturating_sub(busy.len())
            .min(limit as usize);
        let mut due: Vec<&Call> = calls
            .iter()
            .filter(|call| {
                call.status == CallStatus::Pending
                    && call.due_at() <= now
                    && call.expires_at.is_none_or(|at| at > now)
                    && !busy.contains(&call.payload.to)
            })
            .collect();
        due.sort_by_key(|call| (call.created_at, call.id));
        let mut numbers = BTreeSet::new();
        due.into_iter()
            .filter(|call| numbers.insert(&call.payload.to))
            .take(want)
            .map(|call| call.id)
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Op {
        Create {
            number: u32,
            created: i64,
            not_before: Option<i64>,
            expires: Option<i64>,
        },
        Claim {
            now: i64,
            cap: u32,
            limit: u32,
        },
        Settle {
            call: usize,
            how: u8,
            at: i64,
        },
        Retarget {
            call: usize,
            number: u32,
        },
        Expire {
            now: i64,
        },
        Purge {
            cutoff: i64,
            limit: u32,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let secs = 0i64..60;
        prop_oneof![
            4 => (0u32..6, secs.clone(), proptest::option::of(secs.clone()), proptest::option::of(secs.clone()))
                .prop_map(|(number, created, not_before, expires)| Op::Create { number, created, not_before, expires }),
            4 => (secs.clone(), 1u32..6, 1u32..4).prop_map(|(now, cap, limit)| Op::Claim { now, cap, limit }),
            3 => (any::<usize>(), 0u8..3, secs.clone()).prop_map(|(call, how, at)| Op::Settle { call, how, at }),
            1 => (any::<usize>(), 0u32..6).prop_map(|(call, number)| Op::Retarget { call, number }),
            1 => secs.clone().prop_map(|now| Op::Expire { now }),
            1 => (secs, 1u32..4).prop_map(|(cutoff, limit)| Op::Purge { cutoff, limit }),
        ]
    }

    async fn apply(store: &MemoryStore, ids: &mut Vec<CallId>, op: &Op) {
        match *op {
            Op::Create {
                number,
                created,
                not_before,
                expires,
            } => {
                let mut new = new_call(number);
                new.not_before = not_before.map(at);
                new.expires_at = expires.map(at);
                let id = CallId::v7_from_parts(at(created), [ids.len() as u8; 10]);
                store.create(id, &new, at(created)).await.unwrap();
                ids.push(id);
            }
            Op::Claim { now, cap, limit } => {
                let expected = reference_claim(&store.snapshot(), at(now), cap, limit);
                let request = ClaimRequest {
                    now: at(now),
                    max_in_flight: cap,
                    limit,
                    lease: Duration::from_secs(60),
                };
                let claimed: Vec<CallId> = store
                    .claim(&request)
                    .await
                    .unwrap()
                    .iter()
                    .map(|call| call.id)
                    .collect();
                assert_eq!(claimed, expected, "{op:?}");
            }
            Op::Settle {
                call,
                how,
                at: secs,
            } => {
                let Some(call) = store
                    .snapshot()
                    .into_iter()
                    .find(|c| !ids.is_empty() && c.id == ids[call % ids.len()])
                else {
                    return;
                };
                let settlement = match how {
                    0 => Settlement::Completed {
                        at: at(secs),
                        duration_sec: None,
                    },
                    1 => Settlement::Retry {
                        error: "provider 503".into(),
                        at: at(secs),
                        retry_at: at(secs),
                    },
                    _ => Settlement::Capacity {
                        at: at(secs),
                        retry_at: at(secs),
                    },
                };
                store
                    .settle(call.current_attempt(), settlement)
                    .await
                    .unwrap();
            }
            Op::Retarget { call, number } => {
                if ids.is_empty() {
                    return;
                }
                let patch = CallPatch {
                    to: Some(new_call(number).payload.to),
                    ..CallPatch::default()
                };
                let _ = store.update(ids[call % ids.len()], &patch, at(0)).await;
            }
            Op::Expire { now } => {
                store.expire_due(at(now)).await.unwrap();
            }
            Op::Purge { cutoff, limit } => {
                store.purge_ended_before(at(cutoff), limit).await.unwrap();
            }
        }
    }

    proptest::proptest! {
        /// Claims from the due-time and per-number indexes take exactly the
        /// calls a walk over every call would, whatever happened before:
        /// retries, 429s, re-targeted numbers, expiry, purges and claims at
        /// earlier instants than the last one.
        #[test]
        fn claims_take_exactly_what_a_walk_over_every_call_would(
            ops in proptest::collection::vec(op(), 1..80)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let store = MemoryStore::new();
                let mut ids = Vec::new();
                for op in &ops {
                    apply(&store, &mut ids, op).await;
                }
            });
        }
    }
}
