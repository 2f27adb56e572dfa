//! The `Store` trait: where calls live, and the atomic operations the engine needs.
//!
//! A store is the single source of truth for the scheduling invariants:
//! the global cap and the one-call-per-number rule are enforced by [`Store::claim`],
//! not by engine memory, so several engines (processes) may share one store.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::attempt::Attempt;
use crate::call::{AttemptRef, Call, CallId, CallPatch, CallStatus, NewCall};
use crate::callback::{Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef};
use crate::event::{Event, EventId};
use crate::input::ScriptId;
use crate::phone::PhoneNumber;
use crate::state::{CallEvent, TransitionError};
use crate::validate::Invalid;

/// The error categories callers branch on. Each backend maps its own errors
/// into these in one place; messages are for humans, not for matching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No call has this id.
    #[error("call {0} not found")]
    NotFound(CallId),
    /// The change is not allowed in the call's current status (e.g. updating a
    /// call that is no longer `PENDING`).
    #[error("call {id} refused the change")]
    Conflict {
        /// The call.
        id: CallId,
        /// The refused transition.
        source: TransitionError,
    },
    /// The change, merged with the call as it is, breaks a rule between
    /// fields (e.g. a new `notBefore` after the call's `expiresAt`).
    #[error("the change is invalid")]
    Invalid(#[source] Invalid),
    /// The backend cannot be reached right now (connection refused, pool
    /// timed out). Retrying later may succeed. The cause is the source, not
    /// part of the message.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other backend failure. The cause is the source, not part of the
    /// message.
    #[error("store failure")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The result of [`Store::create`].
#[derive(Clone, Debug, PartialEq)]
pub struct Created {
    /// The call: the new one, or the first one created with the same idempotency key.
    pub call: Call,
    /// `false` when the idempotency key was seen before and `call` is the first call.
    pub created: bool,
}

/// One page of [`Store::list`]. Pages count from 1.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The calls on this page, newest first.
    pub items: Vec<Call>,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size asked for.
    pub page_size: u32,
    /// Calls matching the filter, on all pages.
    pub total: u64,
}

/// Which calls [`Store::list`] returns: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only calls in this status.
    pub status: Option<CallStatus>,
    /// Only calls to this number (compared canonical, so any accepted
    /// spelling of it matches).
    pub to: Option<PhoneNumber>,
    /// Only calls running this script.
    pub script_id: Option<ScriptId>,
    /// Only calls created at or after this instant (inclusive).
    pub created_from: Option<DateTime<Utc>>,
    /// Only calls created before this instant (exclusive).
    pub created_to: Option<DateTime<Utc>>,
}

impl ListFilter {
    /// Whether `call` passes the filter.
    #[must_use]
    pub fn matches(&self, call: &Call) -> bool {
        self.status.is_none_or(|status| call.status == status)
            && self.to.as_ref().is_none_or(|to| call.payload.to == *to)
            && self
                .script_id
                .as_ref()
                .is_none_or(|script| call.payload.script_id == *script)
            && self.created_from.is_none_or(|from| call.created_at >= from)
            && self.created_to.is_none_or(|to| call.created_at < to)
    }
}

/// Which page of calls [`Store::list`] returns: valid by construction
/// (page from 1, page size 1 to [`ListQuery::MAX_PAGE_SIZE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    filter: ListFilter,
    page: u32,
    page_size: u32,
}

impl ListQuery {
    /// Largest page size.
    pub const MAX_PAGE_SIZE: u32 = 100;
    /// Page size when none is given.
    pub const DEFAULT_PAGE_SIZE: u32 = 20;

    /// Calls passing `filter`, page `page` of `page_size` calls. Pages count
    /// from 1 (default 1); a page holds 1 to [`ListQuery::MAX_PAGE_SIZE`]
    /// calls (default [`ListQuery::DEFAULT_PAGE_SIZE`]).
    ///
    /// # Errors
    /// One [`Invalid`] per field at fault, naming `page`, `pageSize` or
    /// `createdTo` (not after `createdFrom`).
    pub fn new(
        filter: ListFilter,
        page: Option<u32>,
        page_size: Option<u32>,
    ) -> Result<Self, Vec<Invalid>> {
        let page = page.unwrap_or(1);
        let page_size = page_size.unwrap_or(Self::DEFAULT_PAGE_SIZE);
        let mut errors = Vec::new();
        if page == 0 {
            errors.push(Invalid::new("page", "must be at least 1, not 0"));
        }
        if !(1..=Self::MAX_PAGE_SIZE).contains(&page_size) {
            errors.push(Invalid::new(
                "pageSize",
                format!("must be from 1 to {}, not {page_size}", Self::MAX_PAGE_SIZE),
            ));
        }
        if let (Some(from), Some(to)) = (filter.created_from, filter.created_to) {
            if to <= from {
                errors.push(Invalid::new("createdTo", "must be after createdFrom"));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                filter,
                page,
                page_size,
            })
        } else {
            Err(errors)
        }
    }

    /// The first page of calls in `status` (all calls when `None`).
    #[must_use]
    pub fn by_status(status: Option<CallStatus>) -> Self {
        Self {
            filter: ListFilter {
                status,
                ..ListFilter::default()
            },
            ..Self::default()
        }
    }

    /// Which calls.
    #[must_use]
    pub fn filter(&self) -> &ListFilter {
        &self.filter
    }

    /// Only calls in this status; `None` for all.
    #[must_use]
    pub fn status(&self) -> Option<CallStatus> {
        self.filter.status
    }

    /// Page number, from 1.
    #[must_use]
    pub fn page(&self) -> u32 {
        self.page
    }

    /// Calls per page, 1 to [`ListQuery::MAX_PAGE_SIZE`].
    #[must_use]
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Rows to skip before this page.
    #[must_use]
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.page_size)
    }
}

impl Default for ListQuery {
    /// All calls, first page, [`ListQuery::DEFAULT_PAGE_SIZE`] calls.
    fn default() -> Self {
        Self {
            filter: ListFilter::default(),
            page: 1,
            page_size: Self::DEFAULT_PAGE_SIZE,
        }
    }
}

/// Calls per status. Serialises as `{"PENDING":n,"IN_PROGRESS":n,...}` with all six keys,
/// and prints (`{:?}`) as `StatusCounts { PENDING: n, IN_PROGRESS: n, ... }`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    counts: [u64; 6],
}

impl StatusCounts {
    /// The count for `status`.
    #[must_use]
    pub fn get(&self, status: CallStatus) -> u64 {
        self.counts[status.index()]
    }

    /// Sets the count for `status`.
    pub fn set(&mut self, status: CallStatus, count: u64) {
        self.counts[status.index()] = count;
    }

    /// All calls.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl fmt::Debug for StatusCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts = f.debug_struct("StatusCounts");
        for status in CallStatus::ALL {
            counts.field(status.as_str(), &self.get(status));
        }
        counts.finish()
    }
}

impl Serialize for StatusCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, u64> = CallStatus::ALL
            .into_iter()
            .map(|status| (status.as_str(), self.get(status)))
            .collect();
        map.serialize(serializer)
    }
}

/// The limits of one [`Store::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The current time: calls due at or before it are eligible.
    pub now: DateTime<Utc>,
    /// The global cap: `IN_PROGRESS` calls in the whole store never exceed it.
    pub max_in_flight: u32,
    /// Claim at most this many calls now.
    pub limit: u32,
    /// Each claimed attempt's lease: without a webhook it is stale at `now + lease`.
    pub lease: Duration,
}

/// A change to an `IN_PROGRESS` attempt, for [`Store::settle`].
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// The provider reported the call completed.
    Completed {
        /// When it ended.
        at: DateTime<Utc>,
        /// Reported duration in seconds.
        duration_sec: Option<u32>,
    },
    /// The call fails for good.
    Failed {
        /// Why, e.g. `"BUSY"`.
        error: String,
        /// When it ended.
        at: DateTime<Utc>,
        /// Reported duration in seconds.
        duration_sec: Option<u32>,
    },
    /// A retryable failure: back to `PENDING`, not before `retry_at`.
    Retry {
        /// Why.
        error: String,
        /// When the attempt failed.
        at: DateTime<Utc>,
        /// Back-off deadline.
        retry_at: DateTime<Utc>,
    },
    /// The provider was at capacity (429): back to `PENDING` and the attempt is
    /// given back, so the same `(callId, attempt)` becomes current again at the
    /// next claim (and the re-dial reuses its idempotency key).
    Capacity {
        /// When the provider answered.
        at: DateTime<Utc>,
        /// `Retry-After` deadline.
        retry_at: DateTime<Utc>,
    },
}

impl Settlement {
    /// When the attempt ended or the answer came.
    #[must_use]
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Settlement::Completed { at, .. }
            | Settlement::Failed { at, .. }
            | Settlement::Retry { at, .. }
            | Settlement::Capacity { at, .. } => *at,
        }
    }
}

impl From<Settlement> for CallEvent {
    fn from(settlement: Settlement) -> Self {
        match settlement {
            Settlement::Completed { at, duration_sec } => CallEvent::Complete { at, duration_sec },
            Settlement::Failed {
                error,
                at,
                duration_sec,
            } => CallEvent::Fail {
                error,
                at,
                duration_sec,
            },
            Settlement::Retry {
                error,
                at,
                retry_at,
            } => CallEvent::Retry {
                error,
                at,
                retry_at,
            },
            Settlement::Capacity { at, retry_at } => CallEvent::Capacity { at, retry_at },
        }
    }
}

/// The result of [`Store::settle`].
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    /// The attempt was current and `IN_PROGRESS`; the call now reads so.
    Applied(Call),
    /// Nothing changed: the attempt is not the current one, or it was settled
    /// already. The call as it is.
    Stale(Call),
}

/// The result of [`Store::cancel`].
#[derive(Clone, Debug, PartialEq)]
pub enum Canceled {
    /// The call was `PENDING` and is now `CANCELED`.
    Canceled(Call),
    /// The call is `IN_PROGRESS`: the request is recorded (`cancelRequestedAt`),
    /// it will never be re-dialled, and its attempt's settlement ends it.
    Requested(Call),
    /// The call was `CANCELED` already: nothing changed.
    AlreadyCanceled(Call),
}

impl Canceled {
    /// The call as it now is.
    #[must_use]
    pub fn call(&self) -> &Call {
        match self {
            Canceled::Canceled(call)
            | Canceled::Requested(call)
            | Canceled::AlreadyCanceled(call) => call,
        }
    }
}

/// A store of calls.
///
/// # Contract
/// Every method is atomic and safe to call concurrently from many engines
/// sharing the store. Timestamps are passed in by the caller (the engine's
/// clock); a store never reads its own clock for call data.
///
/// - [`claim`](Store::claim) is the only way to `IN_PROGRESS`, and it never
///   lets the `IN_PROGRESS` count exceed `max_in_flight`, never puts two calls
///   to one number in progress, and never hands one attempt to two claimers.
/// - Transitions follow [`crate::state::transition`]; terminal calls never change.
/// - **Event log.** Every change of a call's status appends exactly one
///   [`Event`] ([`Event::of_change`]) in the same atomic step as the change:
///   none for a change refused or not applied, none for a change that keeps
///   the status. Event ids increase in the order the changes committed, so
///   [`events_after`](Store::events_after) from any id replays every later
///   event in that order. A terminal event of a call with a `callbackUrl`
///   adds, in the same step, a [`Delivery`] to the outbox.
/// - **Attempt history.** Each claim starts an [`Attempt`]; its settlement
///   ends it (see [`Attempt::settled`]).
/// - After `create` and after any `settle` that was applied, the store bumps
///   the counter returned by [`subscribe`](Store::subscribe), in this process
///   and (for shared backends) in every process sharing the store.
///
/// Implement it under `#[orchestrator_core::async_trait]` (re-exported, so no
/// dependency of your own is needed), and run the conformance suite
/// (`store_conformance_tests!`, feature `conformance`) against your store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new `PENDING` call with `attempts = 0` and id `id`, or, when
    /// `new.idempotency_key` was used before, returns the first call with that
    /// key unchanged (`created: false`).
    async fn create(
        &self,
        id: CallId,
        new: &NewCall,
        now: DateTime<Utc>,
    ) -> Result<Created, StoreError>;

    /// The call with this id. Errors: [`StoreError::NotFound`].
    async fn get(&self, id: CallId) -> Result<Call, StoreError>;

    /// Applies `patch` to a `PENDING` call and returns the call, after
    /// checking the schedule rule at `now`
    /// ([`crate::validate::validate_schedule`]) against the call as it is
    /// under the store's lock. Writes no event (the status stays).
    /// Errors: [`StoreError::NotFound`]; [`StoreError::Conflict`] when the call
    /// is not `PENDING`; [`StoreError::Invalid`] when the schedule rule fails.
    async fn update(
        &self,
        id: CallId,
        patch: &CallPatch,
        now: DateTime<Utc>,
    ) -> Result<Call, StoreError>;

    /// Cancels call `id` at `now` with `reason` ([`CallEvent::Cancel`]):
    /// a `PENDING` call ends `CANCELED` (one `call.canceled` event; a
    /// delivery when it has a `callbackUrl`), an `IN_PROGRESS` call is marked
    /// (no event), a `CANCELED` call is left as it is.
    /// Errors: [`StoreError::NotFound`]; [`StoreError::Conflict`] for
    /// another terminal status.
    async fn cancel(
        &self,
        id: CallId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled, StoreError>;

    /// Every dial of call `id`, in dial order. Errors: [`StoreError::NotFound`].
    async fn attempts(&self, id: CallId) -> Result<Vec<Attempt>, StoreError>;

    /// One page of calls, newest first (by creation time, then id), passing
    /// the query's [`ListFilter`]. A page past the end is empty; `total` is
    /// still right.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Calls per status.
    async fn counts(&self) -> Result<StatusCounts, StoreError>;

    /// Atomically claims up to `min(limit, max_in_flight - in_flight)` due calls
    /// and returns them `IN_PROGRESS`, each with one more attempt,
    /// `startedAt = now` and a lease until `now + lease`.
    ///
    /// Due means `PENDING`, `notBefore` and `nextAttemptAt` absent or `<= now`,
    /// and `expiresAt` absent or `> now`. Calls are taken oldest first
    /// (creation time, then id); a due call whose number already has a call in
    /// progress (or earlier in this batch) is skipped, not consumed.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Call>, StoreError>;

    /// Records that the provider accepted `attempt` and named it
    /// `provider_call_id`, so its webhook can find it. Sets the call's
    /// `providerCallId` only while that attempt is current and `IN_PROGRESS`,
    /// and then returns the call (whose `cancelRequestedAt` tells the caller
    /// to hang up); `None` otherwise. Errors: [`StoreError::NotFound`].
    async fn record_dial(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
    ) -> Result<Option<Call>, StoreError>;

    /// [`record_dial`](Self::record_dial) then [`settle`](Self::settle), for
    /// a webhook that names its attempt and may arrive before the dial's
    /// answer was recorded: the call's `providerCallId` is set before the
    /// settlement applies, so its terminal event carries it. Answers as
    /// `settle`; a settlement of an attempt not made yet is
    /// [`Settled::Stale`] and records nothing. A store may do both in one
    /// write (PostgreSQL does: one transaction instead of two). Errors:
    /// [`StoreError::NotFound`].
    async fn settle_reported(
        &self,
        attempt: AttemptRef,
        provider_call_id: &str,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        self.record_dial(attempt, provider_call_id).await?;
        self.settle(attempt, settlement).await
    }

    /// The attempt the provider named `provider_call_id`, if any was recorded.
    async fn find_attempt(&self, provider_call_id: &str) -> Result<Option<AttemptRef>, StoreError>;

    /// Settles `attempt` if, and only if, it is the call's current attempt and
    /// the call is `IN_PROGRESS`; otherwise changes nothing and answers
    /// [`Settled::Stale`]. Frees the attempt's slot when applied.
    /// Errors: [`StoreError::NotFound`].
    async fn settle(
        &self,
        attempt: AttemptRef,
        settlement: Settlement,
    ) -> Result<Settled, StoreError>;

    /// Expires the `PENDING` calls whose `expiresAt <= now` and returns their ids.
    /// A shared store may skip a call another transaction holds at that
    /// instant (e.g. a concurrent PATCH); the next round expires it.
    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<CallId>, StoreError>;

    /// Up to `limit` `IN_PROGRESS` attempts whose lease ran out (`<= now`),
    /// oldest lease first. The caller settles them (e.g. as "webhook timeout").
    async fn stale_attempts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptRef>, StoreError>;

    /// The earliest instant strictly after `now` at which a timed event is due:
    /// a `PENDING` call's `notBefore` or `nextAttemptAt` passes, a `PENDING`
    /// call expires, or an `IN_PROGRESS` lease runs out. `None` when none is
    /// scheduled.
    async fn next_timer(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Retention: deletes up to `limit` calls in a terminal status
    /// ([`CallStatus::is_terminal`]) whose `endedAt` is before `cutoff`,
    /// oldest end first, with everything stored about them (their
    /// idempotency key, provider call ids and attempt history), and returns
    /// how many it deleted. A call's events and delivery go with it. Afterwards [`get`](Store::get) of a deleted call
    /// is [`StoreError::NotFound`], [`counts`](Store::counts) and
    /// [`list`](Store::list) no longer include it, its idempotency key
    /// creates a new call, and [`find_attempt`](Store::find_attempt) of its
    /// provider ids finds nothing. Calls that are not terminal are never
    /// deleted. Call it again while it returns `limit` to purge a backlog in
    /// small batches.
    async fn purge_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Up to `limit` events with ids greater than `after`, in id order
    /// (`EventId(0)`: from the first event still retained).
    async fn events_after(&self, after: EventId, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// The id of the newest event readable through
    /// [`events_after`](Store::events_after); `EventId(0)` when none is.
    async fn last_event_id(&self) -> Result<EventId, StoreError>;

    /// A counter bumped whenever new events become readable through
    /// [`events_after`](Store::events_after), in this process and (for
    /// shared backends) in every process sharing the store. Readers wait on
    /// it instead of polling.
    fn subscribe_events(&self) -> watch::Receiver<u64>;

    /// Claims up to `request.limit` due deliveries, earliest due first, for
    /// one try each: `PENDING`, due (`retry_at` absent or `<= now`) and not
    /// held by a live lease. Each is returned with its try number raised by
    /// one and held until `now + lease`; no two claimers hold one delivery
    /// at once. A delivery whose last allowed try
    /// (`request.max_attempts`) lost its lease without an answer is marked
    /// `FAILED` ("no answer recorded") instead of being claimed.
    async fn claim_deliveries(&self, request: &DeliveryClaim) -> Result<Vec<Delivery>, StoreError>;

    /// Records how try `delivery` went, if it is still the delivery's
    /// current try and the delivery is `PENDING`; returns whether it did (a
    /// try whose lease ran out and was taken over records nothing). The
    /// call's `callback` shows the result.
    async fn record_delivery(
        &self,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError>;

    /// The earliest instant strictly after `now` at which a `PENDING`
    /// delivery becomes due (its `retry_at` or its lease's end); `None` when
    /// none is scheduled.
    async fn next_delivery_at(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Checks that the store can be reached (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// A counter bumped after every change that may make a call claimable or
    /// free a slot (see the contract). Engines wait on it instead of polling.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(result: Result<ListQuery, Vec<Invalid>>) -> Vec<&'static str> {
        result
            .expect_err("invalid")
            .into_iter()
            .map(|invalid| invalid.field)
            .collect()
    }

    #[test]
    fn list_queries_default_to_the_first_page_of_twenty() {
        let query = ListQuery::new(ListFilter::default(), None, None).expect("defaults");
        assert_eq!(query, ListQuery::default());
        assert_eq!(
            (query.page(), query.page_size(), query.offset()),
            (1, 20, 0)
        );
        let query = ListQuery::new(
            ListQuery::by_status(Some(CallStatus::Failed))
                .filter()
                .clone(),
            Some(3),
            Some(100),
        )
        .expect("valid");
        assert_eq!(query.status(), Some(CallStatus::Failed));
        assert_eq!(query.offset(), 200);
    }

    #[test]
    fn list_queries_name_every_field_out_of_range() {
        assert_eq!(
            fields(ListQuery::new(ListFilter::default(), Some(0), None)),
            ["page"]
        );
        assert_eq!(
            fields(ListQuery::new(ListFilter::default(), None, Some(0))),
            ["pageSize"]
        );
        assert_eq!(
            fields(ListQuery::new(ListFilter::default(), None, Some(101))),
            ["pageSize"]
        );
        assert_eq!(
            fields(ListQuery::new(
                ListFilter::default(),
                Some(0),
                Some(u32::MAX)
            )),
            ["page", "pageSize"]
        );
    }

    #[test]
    fn the_last_page_offset_does_not_overflow() {
        let query =
            ListQuery::new(ListFilter::default(), Some(u32::MAX), Some(100)).expect("valid");
        assert_eq!(query.offset(), u64::from(u32::MAX - 1) * 100);
    }

    fn counts(values: [u64; 6]) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for (status, value) in CallStatus::ALL.into_iter().zip(values) {
            counts.set(status, value);
        }
        counts
    }

    #[test]
    fn status_counts_keep_one_count_per_status_and_sum_them() {
        let counts = counts([1, 2, 3, 4, 5, 6]);
        let read: Vec<u64> = CallStatus::ALL.map(|status| counts.get(status)).to_vec();
        assert_eq!(read, [1, 2, 3, 4, 5, 6]);
        assert_eq!(counts.total(), 21);
        assert_eq!(StatusCounts::default().total(), 0);
    }

    #[test]
    fn status_counts_print_and_serialise_with_every_status_by_name() {
        let counts = counts([1, 0, 7, 2, 0, 3]);
        assert_eq!(
            format!("{counts:?}"),
            "StatusCounts { PENDING: 1, IN_PROGRESS: 0, COMPLETED: 7, FAILED: 2, EXPIRED: 0, CANCELED: 3 }"
        );
        assert_eq!(
            serde_json::to_value(counts).unwrap(),
            serde_json::json!({
                "PENDING": 1, "IN_PROGRESS": 0, "COMPLETED": 7, "FAILED": 2, "EXPIRED": 0,
                "CANCELED": 3
            })
        );
    }
}
