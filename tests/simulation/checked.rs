//! `CheckedStore`: a `Store` that checks invariants around every operation of
//! the `MemoryStore` it wraps, so even a violation that lasts one instant is
//! caught.
//!
//! Two sets of rules:
//! - The [`Store`] contract, which holds whoever calls the store: terminal
//!   calls never change; one call in progress per number; an operation changes
//!   only the calls it was asked to change; `claim` hands out due `PENDING`
//!   calls only, never one attempt twice, never past the request's cap or
//!   limit; `settle` and `record_dial` act if, and only if, the attempt is the
//!   call's current one and `IN_PROGRESS`; `update` succeeds only on
//!   `PENDING` calls whose new schedule is valid and answers `Conflict` or
//!   `Invalid` otherwise; `cancel` answers by the call's status; a call whose
//!   cancel was requested is never `PENDING` again and ends `CANCELED` unless
//!   `COMPLETED`; the event log holds exactly one event per change of
//!   status, of its type, with the call as changed; deliveries change only
//!   calls' `callback`; `expire_due` expires
//!   only `PENDING` calls past their deadline; `purge_ended_before` deletes
//!   only terminal calls that ended before the cutoff, at most its limit,
//!   those that ended first, and no call disappears otherwise.
//! - With [`EngineRules`], the rules of an engine using the store: the
//!   engine's global cap, its attempt limit, back-off delays no shorter than
//!   the retry policy allows, and `PENDING` calls expiring within 2 s of their
//!   deadline (not counting graceful restarts, when no engine runs). Store
//!   outages (see `faulty`) delay what the engine writes:
//!   a back-off then counts from the outage's start at the earliest (the
//!   answer came during it), and an expiry from the outage's end.
//!
//! The conformance suite runs through a [`CheckedStore::strict`] store, which
//! panics at the first violation; the simulation collects violations and
//! reports them with its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator_core::validate::validate_schedule;
use orchestrator_core::{
    async_trait, Attempt, AttemptRef, Call, CallId, CallPatch, CallStatus, Canceled, ClaimRequest,
    Clock, Created, Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef, Event, EventId,
    EventType, ListQuery, MemoryStore, NewCall, Page, PhoneNumber, RetryPolicy, ScriptId, Settled,
    Settlement, StatusCounts, Store, StoreError, TokioClock,
};
use tokio::sync::watch;

use crate::faulty::Outages;

/// The rules of the engine using the store, checked on top of the contract.
#[derive(Clone, Debug)]
pub(crate) struct EngineRules {
    /// The engine's global cap on calls in progress.
    pub cap: u32,
    /// The engine's retry policy: attempt limit and shortest back-off.
    pub retry: RetryPolicy,
    /// The engine's clock, for back-off and expiry deadlines.
    pub clock: TokioClock,
    /// When the store was down.
    pub outages: Outages,
    /// When no engine ran its dispatcher: a graceful restart, which waits
    /// (up to the shutdown grace) for dials and callback sends in flight.
    pub stopped: Outages,
    /// How long after an outage the engine may still be writing what it
    /// could not write during it: its longest store-retry delay plus its
    /// fallback poll, and a second.
    pub outage_slack: Duration,
}

/// What the checker remembers between store operations.
#[derive(Default)]
struct Checker {
    /// Every call as it was after the previous store operation.
    last: BTreeMap<CallId, Call>,
    /// Every attempt handed out by a claim and not given back.
    claimed: BTreeSet<AttemptRef>,
    /// When each call last became PENDING again after an attempt.
    pending_since: BTreeMap<CallId, DateTime<Utc>>,
    /// The newest event checked.
    events_seen: EventId,
    /// Every status each call went through, as the checks saw them.
    statuses: BTreeMap<CallId, Vec<CallStatus>>,
    violations: Vec<String>,
}

/// A [`Store`] over a [`MemoryStore`] that checks the contract (and, with
/// [`EngineRules`], the engine's rules) around every operation.
pub(crate) struct CheckedStore {
    inner: MemoryStore,
    /// Held from an operation's start to the end of its check, so each check
    /// sees exactly the change its operation made, even with concurrent callers.
    gate: Mutex<()>,
    checker: Mutex<Checker>,
    engine: Option<EngineRules>,
    /// Panic at the first violation instead of collecting it.
    strict: bool,
}

/// Runs a `MemoryStore` future to completion in place. Its operations take one
/// mutex and never wait on anything else, so they finish on the first poll;
/// running them in place lets the gate (a plain mutex) be held across them.
fn in_place<T>(operation: impl Future<Output = T>) -> T {
    match pin!(operation).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a MemoryStore operation waited"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A violation panics in strict mode; the state stays usable for reporting.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CheckedStore {
    /// Checks the store contract and panics at the first violation.
    pub(crate) fn strict(inner: MemoryStore) -> Self {
        Self::new(inner, None, true)
    }

    /// Checks the contract and `rules`, collecting violations for [`violations`](Self::violations).
    pub(crate) fn for_engine(inner: MemoryStore, rules: EngineRules) -> Self {
        Self::new(inner, Some(rules), false)
    }

    fn new(inner: MemoryStore, engine: Option<EngineRules>, strict: bool) -> Self {
        Self {
            inner,
            gate: Mutex::new(()),
            checker: Mutex::new(Checker::default()),
            engine,
            strict,
        }
    }

    /// The wrapped store, for reading (a change through it is flagged by the next check).
    pub(crate) fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    /// Checks the invariants now, `what` naming the moment in reports. Nothing
    /// may have changed since the last operation.
    pub(crate) fn check(&self, what: &str) {
        let _gate = lock(&self.gate);
        self.record(what, &BTreeSet::new(), Vec::new());
    }

    /// Every violation seen so far.
    pub(crate) fn violations(&self) -> Vec<String> {
        lock(&self.checker).violations.clone()
    }

    /// Replays the whole event log per call: each call's events must give
    /// exactly the statuses it went through, ending in its status now.
    pub(crate) fn event_log_violations(&self) -> Vec<String> {
        let _gate = lock(&self.gate);
        let events = in_place(self.inner.events_after(EventId(0), u32::MAX)).expect("events");
        let mut replayed: BTreeMap<CallId, Vec<CallStatus>> = BTreeMap::new();
        for event in &events {
            replayed
                .entry(event.call.id)
                .or_default()
                .push(event.call.status);
        }
        let checker = lock(&self.checker);
        let mut violations = Vec::new();
        for call in self.inner.snapshot() {
            let went_through = checker.statuses.get(&call.id);
            let logged = replayed.get(&call.id);
            if logged != went_through || logged.and_then(|log| log.last()) != Some(&call.status) {
                violations.push(format!(
                    "call {} went through {went_through:?}, ends {}, its events say {logged:?}",
                    call.id, call.status
                ));
            }
        }
        violations
    }

    /// Runs `operation` under the gate, then checks: `judge` sees the result
    /// and the calls as they were before, and names the calls the operation
    /// may have changed plus any violation of its own contract.
    fn checked<T>(
        &self,
        what: &str,
        operation: impl Future<Output = T>,
        judge: impl FnOnce(&T, &BTreeMap<CallId, Call>) -> (BTreeSet<CallId>, Vec<String>),
    ) -> T {
        let _gate = lock(&self.gate);
        let result = in_place(operation);
        let before = std::mem::take(&mut lock(&self.checker).last);
        let (touched, violations) = judge(&result, &before);
        lock(&self.checker).last = before;
        self.record(what, &touched, violations);
        result
    }

    /// Compares the store with the state after the previous operation, given
    /// that only `touched` calls may have changed, and records violations.
    fn record(&self, what: &str, touched: &BTreeSet<CallId>, mut violations: Vec<String>) {
        let calls = self.inner.snapshot();
        let mut guard = lock(&self.checker);
        let checker = &mut *guard;
        let in_progress: Vec<&Call> = calls
            .iter()
            .filter(|call| call.status == CallStatus::InProgress)
            .collect();
        let numbers: BTreeSet<&PhoneNumber> =
            in_progress.iter().map(|call| &call.payload.to).collect();
        if numbers.len() != in_progress.len() {
            violations.push("two calls in progress to one number".to_owned());
        }
        let present: BTreeSet<CallId> = calls.iter().map(|call| call.id).collect();
        for id in checker.last.keys() {
            if !present.contains(id) && !touched.contains(id) {
                violations.push(format!("call {id} disappeared"));
            }
        }
        for call in &calls {
            let before = checker.last.get(&call.id);
            if before != Some(call) && !touched.contains(&call.id) {
                violations.push(format!("call {} changed unasked", call.id));
            }
            let Some(before) = before else {
                continue;
            };
            if before.status.is_terminal() && !same_but_callback(before, call) {
                violations.push(format!(
                    "terminal call {} changed: {before:?} -> {call:?}",
                    call.id
                ));
            }
            if before.cancel_requested_at.is_some() {
                let kept = call.cancel_requested_at == before.cancel_requested_at
                    && call.cancel_reason == before.cancel_reason;
                let ends = matches!(
                    call.status,
                    CallStatus::InProgress | CallStatus::Completed | CallStatus::Canceled
                );
                if !kept || !ends {
                    violations.push(format!(
                        "call {} with a cancel request became {call:?}",
                        call.id
                    ));
                }
            }
            // A 429 gives the attempt back: the re-dial reuses its number (and
            // idempotency key), so it may be claimed again.
            let given_back = before.status == CallStatus::InProgress
                && call.status == CallStatus::Pending
                && call.attempts + 1 == before.attempts;
            if given_back {
                checker.claimed.remove(&before.current_attempt());
            }
        }
        self.check_events(checker, &calls, &mut violations);
        if let Some(rules) = &self.engine {
            check_engine_rules(rules, checker, &calls, &mut violations);
        }
        checker.last = calls.into_iter().map(|call| (call.id, call)).collect();
        if violations.is_empty() {
            return;
        }
        let violations = violations
            .into_iter()
            .map(|violation| format!("after {what}: {violation}"));
        if self.strict {
            panic!(
                "store contract broken: {}",
                violations.collect::<Vec<_>>().join("; ")
            );
        }
        checker.violations.extend(violations);
    }

    /// The events written since the last check must be exactly one per
    /// call whose status changed, of the change's type, with the call as
    /// it now is.
    fn check_events(&self, checker: &mut Checker, calls: &[Call], violations: &mut Vec<String>) {
        let events =
            in_place(self.inner.events_after(checker.events_seen, u32::MAX)).expect("events");
        let mut new: BTreeMap<CallId, Vec<&Event>> = BTreeMap::new();
        for event in &events {
            if event.id <= checker.events_seen {
                violations.push(format!(
                    "event {} is not after {}",
                    event.id, checker.events_seen
                ));
            }
            checker.events_seen = event.id;
            new.entry(event.call.id).or_default().push(event);
        }
        for call in calls {
            let from = checker.last.get(&call.id).map(|before| before.status);
            let logged = new.remove(&call.id).unwrap_or_default();
            let expected = EventType::of_change(from, call.status);
            if expected.is_some() {
                checker
                    .statuses
                    .entry(call.id)
                    .or_default()
                    .push(call.status);
            }
            let fits = match (expected, logged.as_slice()) {
                (None, []) => true,
                (Some(kind), [event]) => event.kind == kind && &event.call == call,
                _ => false,
            };
            if !fits {
                violations.push(format!(
                    "call {} went {from:?} -> {}, logged {:?}",
                    call.id,
                    call.status,
                    logged
                        .iter()
                        .map(|event| (event.id, event.kind))
                        .collect::<Vec<_>>()
                ));
            }
        }
        for (id, events) in new {
            violations.push(format!("{} events of unknown call {id}", events.len()));
        }
    }

    /// The calls a delivery operation changed: only their `callback` may
    /// differ (any other change is left for [`record`](Self::record) to report).
    fn callback_changes(&self, before: &BTreeMap<CallId, Call>) -> BTreeSet<CallId> {
        self.inner
            .snapshot()
            .into_iter()
            .filter(|call| {
                before
                    .get(&call.id)
                    .is_some_and(|old| old != call && same_but_callback(old, call))
            })
            .map(|call| call.id)
            .collect()
    }

    fn judge_claim(
        &self,
        request: &ClaimRequest,
        claimed: &[Call],
        before: &BTreeMap<CallId, Call>,
    ) -> Vec<String> {
        let mut violations = Vec::new();
        if claimed.len() > request.limit as usize {
            violations.push(format!(
                "claimed {} calls, limit {}",
                claimed.len(),
                request.limit
            ));
        }
        let in_progress_before = before
            .values()
            .filter(|call| call.status == CallStatus::InProgress)
            .count();
        if !claimed.is_empty()
            && in_progress_before + claimed.len() > request.max_in_flight as usize
        {
            violations.push(format!(
                "claimed {} calls with {in_progress_before} in progress, cap {}",
                claimed.len(),
                request.max_in_flight
            ));
        }
        let mut checker = lock(&self.checker);
        for call in claimed {
            if !checker.claimed.insert(call.current_attempt()) {
                violations.push(format!("attempt {} claimed twice", call.current_attempt()));
            }
            match before.get(&call.id) {
                Some(before) => {
                    if before.status != CallStatus::Pending {
                        violations.push(format!("claimed {} while {}", call.id, before.status));
                    }
                    if before.cancel_requested_at.is_some() {
                        violations.push(format!("claimed {} after its cancel", call.id));
                    }
                    if before.due_at() > request.now {
                        violations.push(format!(
                            "claimed {} at {} before it was due at {}",
                            call.id,
                            request.now,
                            before.due_at()
                        ));
                    }
                    if before.expires_at.is_some_and(|at| at <= request.now) {
                        violations.push(format!("claimed {} after it expired", call.id));
                    }
                }
                None => violations.push(format!("claimed unknown call {}", call.id)),
            }
        }
        violations
    }
}

/// Whether `attempt` is the current attempt of a call in progress.
fn is_current(before: &BTreeMap<CallId, Call>, attempt: AttemptRef) -> bool {
    before.get(&attempt.call_id).is_some_and(|call| {
        call.status == CallStatus::InProgress && call.attempts == attempt.attempt
    })
}

fn check_engine_rules(
    rules: &EngineRules,
    checker: &mut Checker,
    calls: &[Call],
    violations: &mut Vec<String>,
) {
    let now = rules.clock.now();
    let slack = chrono::TimeDelta::from_std(rules.outage_slack).expect("a short slack");
    // A settlement landing now may carry an answer from as early as this.
    let answered_since = rules
        .outages
        .effects_since(now, slack)
        .map_or(now, |start| start.min(now));
    let in_progress = calls
        .iter()
        .filter(|call| call.status == CallStatus::InProgress)
        .count();
    if in_progress > rules.cap as usize {
        violations.push(format!(
            "{in_progress} calls in progress, cap {}",
            rules.cap
        ));
    }
    for call in calls {
        if call.attempts > rules.retry.max_attempts() {
            violations.push(format!(
                "call {} has {} attempts, max {}",
                call.id,
                call.attempts,
                rules.retry.max_attempts()
            ));
        }
        if let Some(before) = checker.last.get(&call.id) {
            // A re-enqueue after a failed attempt must respect the back-off.
            let retried = before.status == CallStatus::InProgress
                && call.status == CallStatus::Pending
                && call.attempts == before.attempts;
            if retried {
                let earliest = answered_since + rules.retry.min_delay(call.attempts);
                let earliest = earliest - chrono::TimeDelta::milliseconds(1);
                if call.next_attempt_at.is_none_or(|at| at < earliest) {
                    violations.push(format!(
                        "call {} re-enqueued at {:?}, before its back-off {earliest}",
                        call.id, call.next_attempt_at
                    ));
                }
            }
            if call.status == CallStatus::Pending && before.status != CallStatus::Pending {
                checker.pending_since.insert(call.id, now);
            }
        }
        // A PENDING call past its deadline expires promptly, counted from when
        // it became PENDING (a retry may land past it).
        let pending_since = checker.pending_since.get(&call.id).copied();
        let deadline = call
            .expires_at
            .map(|at| pending_since.map_or(at, |since| at.max(since)))
            .map(|at| {
                let stopped = rules.stopped.down_after(at, now);
                (at, rules.outages.down_after(at, now).max(stopped))
            })
            .map(|(at, back)| match back {
                // The expiry could not be written before the store was back
                // and an engine ran again.
                Some(back) => at.max(back + slack),
                None => at,
            });
        if call.status == CallStatus::Pending
            && deadline.is_some_and(|at| at + chrono::TimeDelta::seconds(2) < now)
        {
            violations.push(format!(
                "call {} still PENDING 2 s past its expiresAt",
                call.id
            ));
        }
    }
}

/// The calls a purge at `cutoff` with `limit` may delete, given that it
/// reported `count` and deleted `purged`: violations of its contract.
fn judge_purge(
    cutoff: DateTime<Utc>,
    limit: u32,
    count: u64,
    purged: &[&Call],
    before: &BTreeMap<CallId, Call>,
) -> (BTreeSet<CallId>, Vec<String>) {
    let eligible =
        |call: &Call| call.status.is_terminal() && call.ended_at.is_some_and(|at| at < cutoff);
    let mut violations = Vec::new();
    if count != purged.len() as u64 || count > u64::from(limit) {
        violations.push(format!(
            "purge reported {count} calls, deleted {}, limit {limit}",
            purged.len()
        ));
    }
    for call in purged.iter().filter(|call| !eligible(call)) {
        violations.push(format!(
            "purged {} ({}, ended {:?}), cutoff {cutoff}",
            call.id, call.status, call.ended_at
        ));
    }
    let last_purged = purged.iter().filter_map(|call| call.ended_at).max();
    let ids: BTreeSet<CallId> = purged.iter().map(|call| call.id).collect();
    for call in before.values() {
        let skipped = eligible(call)
            && !ids.contains(&call.id)
            && (purged.len() < limit as usize || call.ended_at < last_purged);
        if skipped {
            violations.push(format!(
                "purge kept {}, which ended at {:?}, before the calls it deleted or with room left",
                call.id, call.ended_at
            ));
        }
    }
    (ids, violations)
}

/// Whether `a` and `b` differ at most in their `callback`.
fn same_but_callback(a: &Call, b: &Call) -> bool {
    let mut a = a.clone();
    a.callback.clone_from(&b.callback);
    a == *b
}

fn only(id: CallId) -> BTreeSet<CallId> {
    BTreeSet::from([id])
}

#[async_trait]
impl Store for CheckedStore {
    async fn create(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, StoreError> {
        self.checked(
            "create",
            self.inner.create(id, new, now),
            |result, _| match result {
                Ok(created) if created.created => {
                    let mut violations = Vec::new();
                    let stored = self.inner.snapshot();
                    let as_stored = stored.iter().find(|call| call.id == created.call.id);
                    if as_stored != Some(&created.call) {
                        violations.push("create returned another call than it stored".into());
                    }
                    if created.call.status != CallStatus::Pending || created.call.attempts != 0 {
                        violations.push(format!("created {:?}", created.call));
                    }
                    (only(created.call.id), violations)
                }
                _ => (BTreeSet::new(), Vec::new()),
            },
        )
    }

    async fn get(&self, id: CallId) -> Result<Call, StoreError> {
        self.inner.get(id).await
    }

    async fn update(
        &self,
        id: CallId,
        patch: &CallPatch,
        now: DateTime<Utc>,
    ) -> Result<Call, StoreError> {
        let operation = self.inner.update(id, patch, now);
        self.checked("update", operation, |result, before| {
            let fits = match (before.get(&id), result) {
                (Some(call), Ok(updated)) if call.status == CallStatus::Pending => {
                    let next = patch.apply_to(call);
                    validate_schedule(&next, patch, now).is_ok() && *updated == next
                }
                (Some(call), Err(StoreError::Invalid(_))) if call.status == CallStatus::Pending => {
                    validate_schedule(&patch.apply_to(call), patch, now).is_err()
                }
                (Some(call), Err(StoreError::Conflict { .. })) => {
                    call.status != CallStatus::Pending
                }
                (None, Err(StoreError::NotFound(_))) => true,
                _ => false,
            };
            let violations = if fits {
                Vec::new()
            } else {
                vec![format!("update of {id} answered {result:?}")]
            };
            (only(id), violations)
        })
    }

    async fn cancel(
        &self,
        id: CallId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled, StoreError> {
        let operation = self.inner.cancel(id, reason, now);
        self.checked("cancel", operation, |result, before| {
            let stored = self.inner.snapshot().into_iter().find(|call| call.id == id);
            let fits = match (before.get(&id), result) {
                (Some(call), Ok(Canceled::Canceled(after))) => {
                    call.status == CallStatus::Pending
                        && after.status == CallStatus::Canceled
                        && after.ended_at.is_some()
                }
                (Some(call), Ok(Canceled::Requested(after))) => {
                    call.status == CallStatus::InProgress
                        && after.status == CallStatus::InProgress
                        && after.cancel_requested_at.is_some()
                        && (call.cancel_requested_at.is_none()
                            || call.cancel_requested_at == after.cancel_requested_at)
                }
                (Some(call), Ok(Canceled::AlreadyCanceled(after))) => {
                    call.status == CallStatus::Canceled && after == call
                }
                (Some(call), Err(StoreError::Conflict { .. })) => matches!(
                    call.status,
                    CallStatus::Completed | CallStatus::Failed | CallStatus::Expired
                ),
                (None, Err(StoreError::NotFound(_))) => true,
                _ => false,
            };
            let returned_as_stored = match result {
                Ok(canceled) => Some(canceled.call()) == stored.as_ref(),
                Err(_) => true,
            };
            let violations = if fits && returned_as_stored {
                Vec::new()
            } else {
                vec![format!("cancel of {id} answered {result:?}")]
            };
            (only(id), violations)
        })
    }

    async fn attempts(&self, id: CallId) -> Result<Vec<Attempt>, StoreError> {
        self.inner.attempts(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.inner.list(query).await
    }

    async fn counts(&self) -> Result<StatusCounts, StoreError> {
        self.inner.counts().await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError> {
        self.checked("claim", self.inner.claim(request), |result, before| {
            let Ok(claimed) = result else {
                return (BTreeSet::new(), Vec::new());
            };
            let touched = claimed.iter().map(|call| call.id).collect();
            (touched, self.judge_claim(request, claimed, before))
        })
    }

    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<Option<Call>, StoreError> {
        let operation = self.inner.record_dial(attempt, provider_call_id);
        self.checked("record_dial", operation, |result, before| {
            let mut violations = Vec::new();
            if let Ok(recorded) = result {
                let stored = self
                    .inner
                    .snapshot()
                    .into_iter()
                    .find(|call| call.id == attempt.call_id);
                let fits = match recorded {
                    Some(call) => is_current(before, attempt) && Some(call) == stored.as_ref(),
                    None => !is_current(before, attempt),
                };
                if !fits {
                    violations.push(format!(
                        "record_dial of attempt {attempt} answered {recorded:?}"
                    ));
                }
            }
            (only(attempt.call_id), violations)
        })
    }

    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError> {
        self.inner.find_attempt(provider_call_id).await
    }

    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let completed = matches!(settlement, Settlement::Completed { .. });
        let operation = self.inner.settle(attempt, settlement);
        self.checked("settle", operation, |result, before| {
            let mut violations = Vec::new();
            let cancel_requested = before
                .get(&attempt.call_id)
                .is_some_and(|call| call.cancel_requested_at.is_some());
            if let (Ok(Settled::Applied(call)), true) = (result, cancel_requested) {
                let expected = if completed {
                    CallStatus::Completed
                } else {
                    CallStatus::Canceled
                };
                if call.status != expected {
                    violations.push(format!(
                        "settle of cancel-requested attempt {attempt} ended it {}",
                        call.status
                    ));
                }
            }
            if let Ok(settled) = result {
                let applied = matches!(settled, Settled::Applied(_));
                if applied != is_current(before, attempt) {
                    let state = before
                        .get(&attempt.call_id)
                        .map(|call| format!("{} at attempt {}", call.status, call.attempts));
                    violations.push(format!(
                        "settle of attempt {attempt} answered {} on a call that was {state:?}",
                        if applied { "Applied" } else { "Stale" }
                    ));
                }
            }
            (only(attempt.call_id), violations)
        })
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError> {
        self.checked(
            "expire_due",
            self.inner.expire_due(now),
            |result, before| {
                let Ok(expired) = result else {
                    return (BTreeSet::new(), Vec::new());
                };
                let violations = expired
                    .iter()
                    .filter(|id| {
                        !before.get(id).is_some_and(|call| {
                            call.status == CallStatus::Pending
                                && call.expires_at.is_some_and(|at| at <= now)
                        })
                    })
                    .map(|id| format!("expired {id}, which was not PENDING past its deadline"))
                    .collect();
                (expired.iter().copied().collect(), violations)
            },
        )
    }

    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError> {
        self.inner.stale_attempts(now, limit).await
    }

    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_timer(now).await
    }

    async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let operation = self.inner.purge_ended_before(cutoff, limit);
        self.checked("purge_ended_before", operation, |result, before| {
            let Ok(count) = result else {
                return (BTreeSet::new(), Vec::new());
            };
            let present: BTreeSet<CallId> =
                self.inner.snapshot().iter().map(|call| call.id).collect();
            let purged: Vec<&Call> = before
                .values()
                .filter(|call| !present.contains(&call.id))
                .collect();
            judge_purge(cutoff, limit, *count, &purged, before)
        })
    }

    async fn events_after(&self, after: EventId, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(after, limit).await
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        self.inner.last_event_id().await
    }

    fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.inner.subscribe_events()
    }

    async fn claim_deliveries(&self, request: &DeliveryClaim) -> Result<Vec<Delivery>, StoreError> {
        let operation = self.inner.claim_deliveries(request);
        self.checked("claim_deliveries", operation, |result, before| {
            let mut violations = Vec::new();
            for delivery in result.iter().flatten() {
                let call = before.get(&delivery.event.call.id);
                let fits = delivery.event.kind.is_terminal()
                    && call.is_some_and(|call| {
                        call.status.is_terminal()
                            && call.callback_url.as_ref() == Some(&delivery.url)
                    })
                    && delivery.attempt <= request.max_attempts;
                if !fits {
                    violations.push(format!(
                        "claimed delivery of event {} ({}) try {}",
                        delivery.event.id, delivery.event.kind, delivery.attempt
                    ));
                }
            }
            (self.callback_changes(before), violations)
        })
    }

    async fn record_delivery(
        &self,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        let operation = self.inner.record_delivery(delivery, outcome);
        self.checked("record_delivery", operation, |_, before| {
            (self.callback_changes(before), Vec::new())
        })
    }

    async fn next_delivery_at(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_delivery_at(now).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
    }

    fn collecting() -> CheckedStore {
        CheckedStore::for_engine(
            MemoryStore::new(),
            EngineRules {
                cap: 1,
                retry: RetryPolicy::default(),
                clock: TokioClock::starting_at(at(0)),
                outages: Outages::default(),
                stopped: Outages::default(),
                outage_slack: Duration::ZERO,
            },
        )
    }

    fn request(now: DateTime<Utc>, max_in_flight: u32) -> ClaimRequest {
        ClaimRequest {
            now,
            max_in_flight,
            limit: 10,
            lease: Duration::from_secs(60),
        }
    }

    async fn create(store: &dyn Store, n: u32) -> Call {
        let to = PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap();
        let new = NewCall::new(
            to,
            ScriptId::parse("welcomeFlow").expect("a valid script id"),
        );
        store
            .create(CallId::new_v7(at(0)), &new, at(0))
            .await
            .unwrap()
            .call
    }

    /// The checker is not vacuous: a change made behind its back is reported.
    #[tokio::test]
    async fn a_change_made_around_the_checker_is_reported() {
        let store = collecting();
        create(&store, 1).await;
        assert_eq!(store.violations(), Vec::<String>::new());

        store.inner().claim(&request(at(0), 1)).await.unwrap();
        store.check("a step");
        let violations = store.violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("changed unasked"), "{violations:?}");
    }

    /// A claim past the engine's cap breaks its rule, even though the
    /// request itself allowed it.
    #[tokio::test]
    async fn a_claim_past_the_engines_cap_is_reported() {
        let store = collecting();
        create(&store, 1).await;
        create(&store, 2).await;
        store.claim(&request(at(0), 2)).await.unwrap();
        let violations = store.violations();
        assert!(
            violations
                .iter()
                .any(|v| v.contains("2 calls in progress, cap 1")),
            "{violations:?}"
        );
    }

    /// A retry scheduled sooner than the policy's back-off is reported.
    #[tokio::test(start_paused = true)]
    async fn a_retry_sooner_than_the_back_off_is_reported() {
        let store = collecting();
        let call = create(&store, 1).await;
        store.claim(&request(at(0), 1)).await.unwrap();
        let retry = Settlement::Retry {
            error: "provider 503".into(),
            at: at(0),
            retry_at: at(1),
        };
        store
            .settle(
                AttemptRef {
                    call_id: call.id,
                    attempt: 1,
                },
                retry,
            )
            .await
            .unwrap();
        let violations = store.violations();
        assert!(
            violations.iter().any(|v| v.contains("before its back-off")),
            "{violations:?}"
        );
    }

    /// In strict mode a violation panics at once, naming the operation.
    #[tokio::test]
    #[should_panic(expected = "after claim: 2 calls in progress, cap 1")]
    async fn strict_mode_panics_at_the_first_violation() {
        let store = CheckedStore::new(
            MemoryStore::new(),
            Some(EngineRules {
                cap: 1,
                retry: RetryPolicy::default(),
                clock: TokioClock::starting_at(at(0)),
                outages: Outages::default(),
                stopped: Outages::default(),
                outage_slack: Duration::ZERO,
            }),
            true,
        );
        create(&store, 1).await;
        create(&store, 2).await;
        let _ = store.claim(&request(at(0), 2)).await;
    }
}
