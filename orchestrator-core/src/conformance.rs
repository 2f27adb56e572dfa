//! The backend-agnostic `Store` conformance suite (feature `conformance`).
//!
//! Each behaviour is a plain `pub async fn` taking a fresh, empty store; it
//! panics (via `assert!`) when the store breaks the [`Store`] contract. Every
//! backend runs the same list through [`store_conformance_tests!`], which
//! emits one named test per behaviour. Tests assert error *categories*
//! ([`StoreError`] variants), never message text.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::attempt::{Attempt, AttemptOutcome};
use crate::call::{AttemptRef, Call, CallId, CallPatch, CallStatus, NewCall};
use crate::callback::{
    CallbackState, CallbackStatus, Delivery, DeliveryClaim, DeliveryOutcome, DeliveryRef,
};
use crate::clock;
use crate::event::{Event, EventId, EventType};
use crate::input::{CallbackUrl, IdempotencyKey, Metadata, ScriptId};
use crate::phone::PhoneNumber;
use crate::store::{
    Canceled, ClaimRequest, ListFilter, ListQuery, Settled, Settlement, Store, StoreError,
};

/// Emits one `#[tokio::test]` per conformance behaviour. `$new_store` is an
/// `async fn() -> Arc<dyn Store>` (or a path to one) returning a fresh, empty store.
///
/// ```
/// use std::sync::Arc;
/// use orchestrator_core::{MemoryStore, Store};
///
/// async fn new_store() -> Arc<dyn Store> {
///     Arc::new(MemoryStore::new())
/// }
///
/// orchestrator_core::store_conformance_tests!(new_store);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($new_store:path) => {
        $crate::store_conformance_tests!(@emit $new_store;
            create_then_get_round_trips,
            get_unknown_call_is_not_found,
            idempotency_key_returns_the_first_call,
            update_payload_only_while_pending,
            list_is_newest_first_and_paginated,
            list_filters_by_status,
            counts_cover_every_status,
            claim_sets_attempt_start_and_lease,
            claim_respects_the_global_cap,
            claim_takes_oldest_first,
            claim_skips_busy_numbers_without_consuming_attempts,
            claim_takes_one_call_per_number_per_batch,
            claim_waits_for_not_before_and_back_off,
            claim_never_takes_expired_calls,
            claim_is_exclusive_under_concurrency,
            concurrent_claims_never_exceed_the_cap,
            settle_applies_only_to_the_current_attempt,
            settle_is_idempotent_and_terminal_calls_are_final,
            settle_retry_requeues_with_back_off,
            settle_capacity_gives_the_attempt_back,
            settle_frees_the_slot_and_the_number,
            settle_unknown_call_is_not_found,
            record_dial_maps_provider_ids_to_attempts,
            record_dial_of_an_undialled_attempt_changes_nothing,
            expire_due_expires_only_pending_calls_past_their_deadline,
            stale_attempts_lists_expired_leases_oldest_first,
            next_timer_reports_the_earliest_future_event,
            subscribe_signals_create_and_settle,
            purge_deletes_old_terminal_calls_with_everything_about_them,
            purge_keeps_calls_not_ended_before_the_cutoff,
            purge_takes_at_most_limit_calls_oldest_end_first,
            the_event_log_holds_one_event_per_status_change,
            events_replay_from_any_id_in_order,
            subscribe_events_signals_every_logged_change,
            cancel_ends_a_pending_call_at_once,
            cancel_marks_a_live_call_and_keeps_the_first_request,
            cancel_of_an_ended_call_is_already_canceled_or_a_conflict,
            settling_a_cancel_requested_call_ends_it_canceled_unless_completed,
            attempts_list_every_dial_in_order,
            update_reschedules_a_pending_call,
            list_filters_by_number_script_and_creation_time,
            terminal_events_of_calls_with_a_callback_url_are_delivered,
            delivery_claims_are_exclusive_under_concurrency,
            a_delivery_whose_lease_ran_out_is_claimed_again,
            record_delivery_applies_only_to_the_current_try,
            next_delivery_at_reports_the_earliest_due_delivery,
            purge_deletes_events_and_deliveries,
            retry_of_and_callback_url_round_trip,
        );
    };
    (@emit $new_store:path; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                let store = $new_store().await;
                $crate::conformance::$behaviour(store).await;
            }
        )*
    };
}

/// A fixed instant, `secs` seconds after 2025-07-20T10:00:00Z, in microseconds.
#[must_use]
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0)
        .single()
        .map_or(DateTime::<Utc>::MIN_UTC, |base| {
            base + chrono::TimeDelta::seconds(secs)
        })
}

fn number(n: u32) -> PhoneNumber {
    PhoneNumber::parse(&format!("+1415555{n:04}")).expect("valid test number")
}

fn script(id: &str) -> ScriptId {
    ScriptId::parse(id).expect("valid test script id")
}

fn metadata(value: serde_json::Value) -> Metadata {
    Metadata::new(value).expect("valid test metadata")
}

fn key(key: &str) -> IdempotencyKey {
    IdempotencyKey::parse(key).expect("valid test key")
}

fn new_call(n: u32) -> NewCall {
    let mut new = NewCall::new(number(n), script("welcomeFlow"));
    new.payload.metadata = Some(metadata(serde_json::json!({ "customer": n })));
    new
}

async fn create(store: &dyn Store, n: u32, at: DateTime<Utc>) -> Call {
    store
        .create(CallId::new_v7(at), &new_call(n), at)
        .await
        .expect("create")
        .call
}

const LEASE: Duration = Duration::from_secs(900);

fn claim_at(now: DateTime<Utc>, max_in_flight: u32, limit: u32) -> ClaimRequest {
    ClaimRequest {
        now,
        max_in_flight,
        limit,
        lease: LEASE,
    }
}

async fn claim(store: &dyn Store, now: DateTime<Utc>, max_in_flight: u32, limit: u32) -> Vec<Call> {
    store
        .claim(&claim_at(now, max_in_flight, limit))
        .await
        .expect("claim")
}

async fn settle(store: &dyn Store, attempt: AttemptRef, settlement: Settlement) -> Settled {
    store.settle(attempt, settlement).await.expect("settle")
}

fn completed(at: DateTime<Utc>) -> Settlement {
    Settlement::Completed {
        at,
        duration_sec: Some(42),
    }
}

fn ids(calls: &[Call]) -> Vec<CallId> {
    calls.iter().map(|call| call.id).collect()
}

/// `create` stores a PENDING call with no attempts; `get` returns it unchanged,
/// metadata and microsecond timestamps included.
pub async fn create_then_get_round_trips(store: Arc<dyn Store>) {
    let at = t(0) + chrono::TimeDelta::microseconds(123_456);
    let mut new = new_call(1);
    new.not_before = Some(t(10));
    new.expires_at = Some(t(3600));
    new.payload.metadata = Some(metadata(
        serde_json::json!({"name": "Ada", "tags": [1, 2], "nested": {"x": null}}),
    ));
    let created = store
        .create(CallId::new_v7(at), &new, at)
        .await
        .expect("create");
    assert!(created.created);
    let call = created.call;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, 0);
    assert_eq!(call.created_at, at);
    assert_eq!(call.payload, new.payload);
    assert_eq!(call.not_before, Some(t(10)));
    assert_eq!(call.expires_at, Some(t(3600)));
    assert_eq!(
        (call.started_at, call.ended_at, call.last_error.clone()),
        (None, None, None)
    );
    assert_eq!(store.get(call.id).await.expect("get"), call);
}

/// `get` of an id never created is `NotFound`.
pub async fn get_unknown_call_is_not_found(store: Arc<dyn Store>) {
    let error = store
        .get(CallId::new_v7(t(0)))
        .await
        .expect_err("unknown id");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

/// A second `create` with the same idempotency key returns the first call and stores nothing.
pub async fn idempotency_key_returns_the_first_call(store: Arc<dyn Store>) {
    let mut first = new_call(1);
    first.idempotency_key = Some(key("order-17"));
    let created = store
        .create(CallId::new_v7(t(0)), &first, t(0))
        .await
        .expect("create");
    let mut second = new_call(2);
    second.idempotency_key = Some(key("order-17"));
    let again = store
        .create(CallId::new_v7(t(1)), &second, t(1))
        .await
        .expect("repeat");
    assert!(created.created);
    assert!(!again.created);
    assert_eq!(again.call, created.call);
    let mut other = new_call(3);
    other.idempotency_key = Some(key("order-18"));
    assert!(
        store
            .create(CallId::new_v7(t(2)), &other, t(2))
            .await
            .expect("other key")
            .created
    );
    assert_eq!(store.counts().await.expect("counts").total(), 2);
}

/// The payload can be patched while PENDING; afterwards it is a `Conflict`.
pub async fn update_payload_only_while_pending(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    let patch = CallPatch {
        script_id: Some(script("reminderFlow")),
        ..CallPatch::default()
    };
    let updated = store.update(call.id, &patch, t(1)).await.expect("patch");
    assert_eq!(updated.payload.script_id, "reminderFlow");
    assert_eq!(updated.payload.to, call.payload.to);
    assert_eq!(updated.payload.metadata, call.payload.metadata);
    let patch = CallPatch {
        to: Some(number(2)),
        metadata: Some(metadata(serde_json::json!({"k": "v"}))),
        ..CallPatch::default()
    };
    let updated = store.update(call.id, &patch, t(1)).await.expect("patch");
    assert_eq!(updated.payload.to, number(2));
    assert_eq!(updated.payload.script_id, "reminderFlow");
    assert_eq!(
        updated.payload.metadata,
        Some(metadata(serde_json::json!({"k": "v"})))
    );
    assert_eq!(store.get(call.id).await.expect("get"), updated);

    claim(&*store, t(1), 10, 10).await;
    let error = store
        .update(call.id, &patch, t(1))
        .await
        .expect_err("in progress");
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    let error = store
        .update(CallId::new_v7(t(0)), &patch, t(1))
        .await
        .expect_err("unknown");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

/// `list` returns newest first, `page_size` at a time, with the total on every page.
pub async fn list_is_newest_first_and_paginated(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(create(&*store, n, t(i64::from(n))).await.id);
    }
    created.reverse();
    let page =
        |page| ListQuery::new(ListFilter::default(), Some(page), Some(2)).expect("valid query");
    let mut seen = Vec::new();
    for number in 1..=3 {
        let listed = store.list(&page(number)).await.expect("list");
        assert_eq!(
            (listed.page, listed.page_size, listed.total),
            (number, 2, 5)
        );
        seen.extend(ids(&listed.items));
    }
    assert_eq!(seen, created);
    let past_end = store.list(&page(9)).await.expect("list");
    assert!(past_end.items.is_empty());
    assert_eq!(past_end.total, 5);
}

/// `list` with a status returns only calls in that status, and counts only them.
pub async fn list_filters_by_status(store: Arc<dyn Store>) {
    for n in 0..4 {
        create(&*store, n, t(i64::from(n))).await;
    }
    let claimed = claim(&*store, t(10), 10, 1).await;
    let in_progress = store
        .list(
            &ListQuery::new(
                ListFilter {
                    status: Some(CallStatus::InProgress),
                    ..ListFilter::default()
                },
                None,
                Some(10),
            )
            .expect("valid query"),
        )
        .await
        .expect("list");
    assert_eq!(ids(&in_progress.items), ids(&claimed));
    assert_eq!(in_progress.total, 1);
    let pending = store
        .list(
            &ListQuery::new(
                ListFilter {
                    status: Some(CallStatus::Pending),
                    ..ListFilter::default()
                },
                None,
                Some(10),
            )
            .expect("valid query"),
        )
        .await
        .expect("list");
    assert_eq!(pending.total, 3);
    assert!(pending
        .items
        .iter()
        .all(|call| call.status == CallStatus::Pending));
    let none = store
        .list(
            &ListQuery::new(
                ListFilter {
                    status: Some(CallStatus::Expired),
                    ..ListFilter::default()
                },
                None,
                Some(10),
            )
            .expect("valid query"),
        )
        .await
        .expect("list");
    assert_eq!((none.items.len(), none.total), (0, 0));
}

/// `counts` has every status, zero-filled, and follows each transition.
pub async fn counts_cover_every_status(store: Arc<dyn Store>) {
    assert_eq!(store.counts().await.expect("counts").total(), 0);
    for n in 0..5 {
        let mut new = new_call(n);
        if n == 4 {
            new.expires_at = Some(t(20));
        }
        let at = t(i64::from(n));
        store
            .create(CallId::new_v7(at), &new, at)
            .await
            .expect("create");
    }
    let claimed = claim(&*store, t(10), 10, 3).await;
    settle(&*store, claimed[0].current_attempt(), completed(t(2))).await;
    settle(
        &*store,
        claimed[1].current_attempt(),
        Settlement::Failed {
            error: "BUSY".into(),
            at: t(2),
            duration_sec: None,
        },
    )
    .await;
    store.expire_due(t(21)).await.expect("expire");
    let counts = store.counts().await.expect("counts");
    let expect = [
        (CallStatus::Pending, 1),
        (CallStatus::InProgress, 1),
        (CallStatus::Completed, 1),
        (CallStatus::Failed, 1),
        (CallStatus::Expired, 1),
    ];
    for (status, count) in expect {
        assert_eq!(counts.get(status), count, "{status}");
    }
}

/// A claimed call is IN_PROGRESS with one more attempt, `startedAt = now` and a lease.
pub async fn claim_sets_attempt_start_and_lease(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    let claimed = claim(&*store, t(5), 30, 30).await;
    assert_eq!(ids(&claimed), [call.id]);
    let claimed = &claimed[0];
    assert_eq!(claimed.status, CallStatus::InProgress);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.started_at, Some(t(5)));
    assert_eq!(claimed.lease_expires_at, Some(clock::add(t(5), LEASE)));
    assert_eq!(&store.get(call.id).await.expect("get"), claimed);
}

/// Claims never push the IN_PROGRESS count above `max_in_flight`, counting
/// calls claimed earlier, and `limit` bounds one batch.
pub async fn claim_respects_the_global_cap(store: Arc<dyn Store>) {
    for n in 0..10 {
        create(&*store, n, t(0)).await;
    }
    assert_eq!(claim(&*store, t(1), 3, 2).await.len(), 2);
    assert_eq!(claim(&*store, t(1), 3, 30).await.len(), 1);
    assert!(claim(&*store, t(1), 3, 30).await.is_empty());
    assert_eq!(
        store
            .counts()
            .await
            .expect("counts")
            .get(CallStatus::InProgress),
        3
    );
    assert_eq!(claim(&*store, t(1), 5, 30).await.len(), 2);
}

/// Eligible calls are claimed oldest first.
pub async fn claim_takes_oldest_first(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for n in 0..6 {
        created.push(create(&*store, n, t(10 - i64::from(n))).await.id);
    }
    created.reverse();
    let first = claim(&*store, t(20), 30, 4).await;
    assert_eq!(ids(&first), created[..4]);
    let rest = claim(&*store, t(20), 30, 4).await;
    assert_eq!(ids(&rest), created[4..]);
}

/// A call whose number is already in progress is skipped (not consumed, not
/// blocking calls to other numbers behind it) and claimed once the number is free.
pub async fn claim_skips_busy_numbers_without_consuming_attempts(store: Arc<dyn Store>) {
    let first = create(&*store, 1, t(0)).await;
    let same_number = create(&*store, 1, t(1)).await;
    let other = create(&*store, 2, t(2)).await;
    let claimed = claim(&*store, t(5), 30, 1).await;
    assert_eq!(ids(&claimed), [first.id]);
    assert_eq!(ids(&claim(&*store, t(5), 30, 30).await), [other.id]);
    let waiting = store.get(same_number.id).await.expect("get");
    assert_eq!((waiting.status, waiting.attempts), (CallStatus::Pending, 0));
    settle(&*store, claimed[0].current_attempt(), completed(t(6))).await;
    assert_eq!(ids(&claim(&*store, t(7), 30, 30).await), [same_number.id]);
}

/// One batch never takes two calls to the same number.
pub async fn claim_takes_one_call_per_number_per_batch(store: Arc<dyn Store>) {
    let a1 = create(&*store, 1, t(0)).await;
    let _a2 = create(&*store, 1, t(1)).await;
    let b1 = create(&*store, 2, t(2)).await;
    let _b2 = create(&*store, 2, t(3)).await;
    let claimed = claim(&*store, t(5), 30, 30).await;
    assert_eq!(ids(&claimed), [a1.id, b1.id]);
}

/// `notBefore` and back-off (`nextAttemptAt`) keep a call out of claims until they pass.
pub async fn claim_waits_for_not_before_and_back_off(store: Arc<dyn Store>) {
    let mut later = new_call(1);
    later.not_before = Some(t(100));
    let later = store
        .create(CallId::new_v7(t(0)), &later, t(0))
        .await
        .expect("create")
        .call;
    let retried = create(&*store, 2, t(0)).await;
    let claimed = claim(&*store, t(1), 30, 30).await;
    assert_eq!(ids(&claimed), [retried.id]);
    settle(
        &*store,
        claimed[0].current_attempt(),
        Settlement::Retry {
            error: "provider 503".into(),
            at: t(2),
            retry_at: t(50),
        },
    )
    .await;
    assert!(claim(&*store, t(49), 30, 30).await.is_empty());
    assert_eq!(ids(&claim(&*store, t(50), 30, 30).await), [retried.id]);
    assert!(claim(&*store, t(99), 30, 30).await.is_empty());
    assert_eq!(ids(&claim(&*store, t(100), 30, 30).await), [later.id]);
}

/// A call at or past its `expiresAt` is never claimed.
pub async fn claim_never_takes_expired_calls(store: Arc<dyn Store>) {
    let mut new = new_call(1);
    new.expires_at = Some(t(10));
    store
        .create(CallId::new_v7(t(0)), &new, t(0))
        .await
        .expect("create");
    assert!(claim(&*store, t(10), 30, 30).await.is_empty());
    assert!(claim(&*store, t(11), 30, 30).await.is_empty());
}

/// Concurrent claimers never receive the same attempt: every call is claimed exactly once.
pub async fn claim_is_exclusive_under_concurrency(store: Arc<dyn Store>) {
    const CALLS: u32 = 60;
    for n in 0..CALLS {
        create(&*store, n, t(0)).await;
    }
    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let store = Arc::clone(&store);
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = claim(&*store, t(1), CALLS, 3).await;
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(ids(&batch));
            }
        });
    }
    let mut all: Vec<CallId> = Vec::new();
    while let Some(mine) = claimers.join_next().await {
        all.extend(mine.expect("claimer"));
    }
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), claimed, "a call was claimed twice");
    assert_eq!(claimed, CALLS as usize);
    for id in all {
        assert_eq!(store.get(id).await.expect("get").attempts, 1);
    }
}

/// Concurrent claimers together never exceed the cap.
pub async fn concurrent_claims_never_exceed_the_cap(store: Arc<dyn Store>) {
    for n in 0..40 {
        create(&*store, n, t(0)).await;
    }
    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        claimers.spawn(async move { claim(&*store, t(1), 5, 30).await.len() });
    }
    let mut total = 0;
    while let Some(claimed) = claimers.join_next().await {
        total += claimed.expect("claimer");
    }
    assert_eq!(total, 5);
    assert_eq!(
        store
            .counts()
            .await
            .expect("counts")
            .get(CallStatus::InProgress),
        5
    );
}

/// A settlement for an older attempt never settles the current one.
pub async fn settle_applies_only_to_the_current_attempt(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    let first = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    settle(
        &*store,
        first,
        Settlement::Retry {
            error: "provider 503".into(),
            at: t(1),
            retry_at: t(2),
        },
    )
    .await;
    let second = claim(&*store, t(3), 30, 30).await[0].current_attempt();
    assert_eq!(second.attempt, 2);
    let stale = settle(&*store, first, completed(t(4))).await;
    assert!(
        matches!(stale, Settled::Stale(ref c) if c.status == CallStatus::InProgress),
        "{stale:?}"
    );
    let never_dialled = AttemptRef {
        call_id: call.id,
        attempt: 3,
    };
    assert!(matches!(
        settle(&*store, never_dialled, completed(t(4))).await,
        Settled::Stale(_)
    ));
    let applied = settle(&*store, second, completed(t(5))).await;
    assert!(
        matches!(applied, Settled::Applied(ref c) if c.status == CallStatus::Completed),
        "{applied:?}"
    );
}

/// Settling twice changes nothing the second time; terminal calls never change.
pub async fn settle_is_idempotent_and_terminal_calls_are_final(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    let attempt = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    let Settled::Applied(done) = settle(&*store, attempt, completed(t(2))).await else {
        panic!("first settlement must apply");
    };
    assert_eq!(done.status, CallStatus::Completed);
    assert_eq!(done.ended_at, Some(t(2)));
    assert_eq!(done.duration_sec, Some(42));
    let failed = Settlement::Failed {
        error: "BUSY".into(),
        at: t(3),
        duration_sec: None,
    };
    assert_eq!(
        settle(&*store, attempt, failed).await,
        Settled::Stale(done.clone())
    );
    assert_eq!(
        store.expire_due(t(10_000)).await.expect("expire"),
        Vec::<CallId>::new()
    );
    assert!(claim(&*store, t(10_000), 30, 30).await.is_empty());
    let error = store
        .update(call.id, &CallPatch::default(), t(1))
        .await
        .expect_err("terminal");
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    assert_eq!(store.get(call.id).await.expect("get"), done);
}

/// A retry puts the call back to PENDING with its attempt counted, the error
/// recorded and `nextAttemptAt` set.
pub async fn settle_retry_requeues_with_back_off(store: Arc<dyn Store>) {
    create(&*store, 1, t(0)).await;
    let attempt = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    let retry = Settlement::Retry {
        error: "provider 503".into(),
        at: t(1),
        retry_at: t(31),
    };
    let Settled::Applied(call) = settle(&*store, attempt, retry).await else {
        panic!("retry must apply");
    };
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, 1);
    assert_eq!(call.last_error.as_deref(), Some("provider 503"));
    assert_eq!(call.next_attempt_at, Some(t(31)));
    assert_eq!(call.lease_expires_at, None);
    assert_eq!(store.get(call.id).await.expect("get"), call);
}

/// A 429 (capacity) gives the attempt back: PENDING, attempts as before the claim.
pub async fn settle_capacity_gives_the_attempt_back(store: Arc<dyn Store>) {
    create(&*store, 1, t(0)).await;
    let attempt = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    let Settled::Applied(call) = settle(
        &*store,
        attempt,
        Settlement::Capacity {
            at: t(2),
            retry_at: t(6),
        },
    )
    .await
    else {
        panic!("capacity must apply");
    };
    assert_eq!((call.status, call.attempts), (CallStatus::Pending, 0));
    assert_eq!(call.next_attempt_at, Some(t(6)));
    let again = claim(&*store, t(6), 30, 30).await;
    assert_eq!(again[0].attempts, 1);
}

/// Settling frees the slot and the number at once.
pub async fn settle_frees_the_slot_and_the_number(store: Arc<dyn Store>) {
    create(&*store, 1, t(0)).await;
    let queued = create(&*store, 1, t(1)).await;
    create(&*store, 2, t(2)).await;
    let first = claim(&*store, t(3), 1, 30).await;
    assert_eq!(first.len(), 1);
    assert!(claim(&*store, t(3), 1, 30).await.is_empty());
    settle(
        &*store,
        first[0].current_attempt(),
        Settlement::Failed {
            error: "NO_ANSWER".into(),
            at: t(4),
            duration_sec: None,
        },
    )
    .await;
    assert_eq!(ids(&claim(&*store, t(4), 1, 30).await), [queued.id]);
}

/// Settling an attempt of an unknown call is `NotFound`.
pub async fn settle_unknown_call_is_not_found(store: Arc<dyn Store>) {
    let attempt = AttemptRef {
        call_id: CallId::new_v7(t(0)),
        attempt: 1,
    };
    let error = store
        .settle(attempt, completed(t(1)))
        .await
        .expect_err("unknown");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

/// Provider ids map to their attempt, also after a newer attempt started;
/// only the current attempt's id becomes the call's `providerCallId`.
pub async fn record_dial_maps_provider_ids_to_attempts(store: Arc<dyn Store>) {
    create(&*store, 1, t(0)).await;
    let first = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    assert!(store
        .record_dial(first, "prov-1")
        .await
        .expect("record")
        .is_some());
    assert_eq!(
        store
            .get(first.call_id)
            .await
            .expect("get")
            .provider_call_id
            .as_deref(),
        Some("prov-1")
    );
    settle(
        &*store,
        first,
        Settlement::Retry {
            error: "webhook timeout".into(),
            at: t(1),
            retry_at: t(2),
        },
    )
    .await;
    let second = claim(&*store, t(2), 30, 30).await[0].current_attempt();
    assert!(store
        .record_dial(second, "prov-2")
        .await
        .expect("record")
        .is_some());
    assert_eq!(
        store.find_attempt("prov-1").await.expect("find"),
        Some(first)
    );
    assert_eq!(
        store.find_attempt("prov-2").await.expect("find"),
        Some(second)
    );
    assert_eq!(store.find_attempt("prov-3").await.expect("find"), None);
    assert!(store
        .record_dial(first, "prov-1b")
        .await
        .expect("old attempt")
        .is_none());
    assert_eq!(
        store
            .get(first.call_id)
            .await
            .expect("get")
            .provider_call_id
            .as_deref(),
        Some("prov-2")
    );
}

/// Recording a provider id for an attempt never dialled changes nothing.
pub async fn record_dial_of_an_undialled_attempt_changes_nothing(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    let attempt = AttemptRef {
        call_id: call.id,
        attempt: 1,
    };
    assert!(store
        .record_dial(attempt, "prov-x")
        .await
        .expect("record")
        .is_none());
    assert_eq!(store.find_attempt("prov-x").await.expect("find"), None);
    assert_eq!(store.get(call.id).await.expect("get"), call);
    let unknown = AttemptRef {
        call_id: CallId::new_v7(t(0)),
        attempt: 1,
    };
    let error = store
        .record_dial(unknown, "prov-y")
        .await
        .expect_err("unknown call");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

/// `expire_due` expires exactly the PENDING calls whose `expiresAt <= now`.
pub async fn expire_due_expires_only_pending_calls_past_their_deadline(store: Arc<dyn Store>) {
    let with_deadline = |n: u32, secs: i64| {
        let mut new = new_call(n);
        new.expires_at = Some(t(secs));
        new
    };
    let due = store
        .create(CallId::new_v7(t(0)), &with_deadline(1, 10), t(0))
        .await
        .expect("create")
        .call;
    let later = store
        .create(CallId::new_v7(t(0)), &with_deadline(2, 20), t(0))
        .await
        .expect("create")
        .call;
    let dialled = store
        .create(CallId::new_v7(t(0)), &with_deadline(3, 10), t(0))
        .await
        .expect("create")
        .call;
    // Dial all three, then give the first two their attempt back (a 429):
    // only the third stays in progress.
    let claimed = claim(&*store, t(0), 30, 30).await;
    assert_eq!(claimed.len(), 3);
    for call in &claimed {
        if call.id != dialled.id {
            settle(
                &*store,
                call.current_attempt(),
                Settlement::Capacity {
                    at: t(0),
                    retry_at: t(1),
                },
            )
            .await;
        }
    }
    let expired = store.expire_due(t(10)).await.expect("expire");
    assert_eq!(expired, [due.id]);
    let due = store.get(due.id).await.expect("get");
    assert_eq!(
        (due.status, due.ended_at),
        (CallStatus::Expired, Some(t(10)))
    );
    assert_eq!(
        store.get(later.id).await.expect("get").status,
        CallStatus::Pending
    );
    assert_eq!(
        store.get(dialled.id).await.expect("get").status,
        CallStatus::InProgress
    );
    assert_eq!(
        store.expire_due(t(10)).await.expect("expire"),
        Vec::<CallId>::new()
    );
    assert_eq!(store.expire_due(t(25)).await.expect("expire"), [later.id]);
}

/// `stale_attempts` lists IN_PROGRESS attempts whose lease has run out, oldest lease first.
pub async fn stale_attempts_lists_expired_leases_oldest_first(store: Arc<dyn Store>) {
    create(&*store, 1, t(0)).await;
    create(&*store, 2, t(0)).await;
    let early = claim(&*store, t(0), 30, 1).await[0].current_attempt();
    let late = claim(&*store, t(100), 30, 1).await[0].current_attempt();
    let lease = LEASE.as_secs() as i64;
    assert!(store
        .stale_attempts(t(lease - 1), 10)
        .await
        .expect("stale")
        .is_empty());
    assert_eq!(
        store.stale_attempts(t(lease), 10).await.expect("stale"),
        [early]
    );
    assert_eq!(
        store
            .stale_attempts(t(lease + 100), 10)
            .await
            .expect("stale"),
        [early, late]
    );
    assert_eq!(
        store
            .stale_attempts(t(lease + 100), 1)
            .await
            .expect("stale"),
        [early]
    );
    settle(&*store, early, completed(t(lease + 100))).await;
    assert_eq!(
        store
            .stale_attempts(t(lease + 100), 10)
            .await
            .expect("stale"),
        [late]
    );
}

/// `next_timer` is the earliest future due time, expiry or lease end.
pub async fn next_timer_reports_the_earliest_future_event(store: Arc<dyn Store>) {
    assert_eq!(store.next_timer(t(0)).await.expect("timer"), None);
    let mut scheduled = new_call(1);
    scheduled.not_before = Some(t(300));
    scheduled.expires_at = Some(t(400));
    store
        .create(CallId::new_v7(t(0)), &scheduled, t(0))
        .await
        .expect("create");
    assert_eq!(store.next_timer(t(0)).await.expect("timer"), Some(t(300)));
    assert_eq!(store.next_timer(t(300)).await.expect("timer"), Some(t(400)));
    create(&*store, 2, t(0)).await;
    claim(&*store, t(10), 30, 30).await;
    let lease_end = clock::add(t(10), LEASE);
    assert_eq!(store.next_timer(t(10)).await.expect("timer"), Some(t(300)));
    assert_eq!(
        store.next_timer(t(400)).await.expect("timer"),
        Some(lease_end)
    );
    assert_eq!(store.next_timer(lease_end).await.expect("timer"), None);
}

async fn expect_signal(changes: &mut tokio::sync::watch::Receiver<u64>, what: &str) {
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap_or_else(|_| panic!("no change signalled within 5 s after {what}"))
        .expect("store dropped its signal");
    changes.borrow_and_update();
}

/// Subscribers are woken after a create and after an applied settlement.
pub async fn subscribe_signals_create_and_settle(store: Arc<dyn Store>) {
    let mut changes = store.subscribe();
    changes.borrow_and_update();
    create(&*store, 1, t(0)).await;
    expect_signal(&mut changes, "create").await;
    let attempt = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    // Drain anything the claim may have signalled; only the settlement matters next.
    changes.borrow_and_update();
    settle(&*store, attempt, completed(t(2))).await;
    expect_signal(&mut changes, "settle").await;
}

/// Creates call `n` at `created`, dials it at `created` (recording provider
/// id `prov-{n}`) and settles it with `settlement`; returns the call as settled.
async fn ended_call(
    store: &dyn Store,
    n: u32,
    created: DateTime<Utc>,
    settlement: Settlement,
) -> Call {
    let mut new = new_call(n);
    new.idempotency_key = Some(key(&format!("key-{n}")));
    let call = store
        .create(CallId::new_v7(created), &new, created)
        .await
        .expect("create")
        .call;
    let claimed = claim(store, created, 1_000, 1_000).await;
    let attempt = claimed
        .iter()
        .find(|claimed| claimed.id == call.id)
        .expect("the new call is claimed")
        .current_attempt();
    assert!(store
        .record_dial(attempt, &format!("prov-{n}"))
        .await
        .expect("record")
        .is_some());
    let Settled::Applied(call) = settle(store, attempt, settlement).await else {
        panic!("the settlement applies");
    };
    call
}

fn failed(at: DateTime<Utc>) -> Settlement {
    Settlement::Failed {
        error: "BUSY".into(),
        at,
        duration_sec: None,
    }
}

/// Retention deletes terminal calls (completed, failed, expired) whose
/// `endedAt` is before the cutoff: `get` is `NotFound`, counts and lists
/// drop them, their provider ids are unknown, and their idempotency keys
/// create new calls.
pub async fn purge_deletes_old_terminal_calls_with_everything_about_them(store: Arc<dyn Store>) {
    let completed_call = ended_call(&*store, 1, t(0), completed(t(10))).await;
    let failed_call = ended_call(&*store, 2, t(1), failed(t(20))).await;
    let mut expiring = new_call(3);
    expiring.expires_at = Some(t(30));
    let expired_call = store
        .create(CallId::new_v7(t(2)), &expiring, t(2))
        .await
        .expect("create")
        .call;
    assert_eq!(
        store.expire_due(t(30)).await.expect("expire"),
        [expired_call.id]
    );
    let kept = ended_call(&*store, 4, t(3), completed(t(100))).await;

    assert_eq!(
        store.purge_ended_before(t(100), 100).await.expect("purge"),
        3
    );
    for gone in [&completed_call, &failed_call, &expired_call] {
        let error = store.get(gone.id).await.expect_err("purged");
        assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
    }
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (
            counts.get(CallStatus::Completed),
            counts.get(CallStatus::Failed),
            counts.get(CallStatus::Expired),
            counts.total()
        ),
        (1, 0, 0, 1)
    );
    let listed = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!((ids(&listed.items), listed.total), (vec![kept.id], 1));
    for provider_call_id in ["prov-1", "prov-2"] {
        assert_eq!(
            store.find_attempt(provider_call_id).await.expect("find"),
            None,
            "{provider_call_id}"
        );
    }
    assert_eq!(
        store.find_attempt("prov-4").await.expect("find"),
        Some(kept.current_attempt())
    );
    let mut again = new_call(1);
    again.idempotency_key = Some(key("key-1"));
    let recreated = store
        .create(CallId::new_v7(t(200)), &again, t(200))
        .await
        .expect("create");
    assert!(recreated.created, "a purged call's key is free again");
    assert_ne!(recreated.call.id, completed_call.id);
}

/// Retention never deletes a call that is `PENDING` or `IN_PROGRESS`,
/// however old, nor one that ended at or after the cutoff.
pub async fn purge_keeps_calls_not_ended_before_the_cutoff(store: Arc<dyn Store>) {
    let at_cutoff = ended_call(&*store, 1, t(0), completed(t(50))).await;
    let in_progress = create(&*store, 2, t(0)).await;
    claim(&*store, t(0), 1_000, 1_000).await;
    let pending = create(&*store, 3, t(0)).await;
    let before = [
        store.get(at_cutoff.id).await.expect("get"),
        store.get(in_progress.id).await.expect("get"),
        store.get(pending.id).await.expect("get"),
    ];
    assert_eq!(before[1].status, CallStatus::InProgress);

    assert_eq!(
        store.purge_ended_before(t(50), 100).await.expect("purge"),
        0
    );
    for call in &before {
        assert_eq!(&store.get(call.id).await.expect("kept"), call);
    }
    assert_eq!(store.counts().await.expect("counts").total(), 3);
    assert_eq!(
        store.find_attempt("prov-1").await.expect("find"),
        Some(at_cutoff.current_attempt())
    );
}

/// One purge deletes at most `limit` calls, those that ended first; repeated
/// purges take the rest.
pub async fn purge_takes_at_most_limit_calls_oldest_end_first(store: Arc<dyn Store>) {
    let late = ended_call(&*store, 1, t(0), completed(t(30))).await;
    let early = ended_call(&*store, 2, t(1), completed(t(10))).await;
    let middle = ended_call(&*store, 3, t(2), failed(t(20))).await;

    assert_eq!(store.purge_ended_before(t(100), 2).await.expect("purge"), 2);
    for gone in [&early, &middle] {
        let error = store.get(gone.id).await.expect_err("purged");
        assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
    }
    assert_eq!(store.get(late.id).await.expect("kept"), late);
    assert_eq!(store.purge_ended_before(t(100), 2).await.expect("purge"), 1);
    assert_eq!(store.purge_ended_before(t(100), 2).await.expect("purge"), 0);
    assert_eq!(store.counts().await.expect("counts").total(), 0);
}

// ------------------------------------------------------------- event log

/// How long a behaviour waits for something a store does in the background
/// (a shared store may make events readable a few milliseconds after the
/// change commits).
const PATIENCE: Duration = Duration::from_secs(5);

/// Every event after `after`, once at least `at_least` of them are
/// readable: waits on [`Store::subscribe_events`] for stores that make
/// events readable after the change commits. Ends scenarios with a change
/// that must log (a sentinel), so events that must not exist would be
/// readable by then too: ids follow commit order.
async fn read_log(store: &dyn Store, after: EventId, at_least: usize) -> Vec<Event> {
    let mut signal = store.subscribe_events();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        signal.borrow_and_update();
        let mut events: Vec<Event> = Vec::new();
        loop {
            let cursor = events.last().map_or(after, |event| event.id);
            let page = store.events_after(cursor, 100).await.expect("events");
            let done = page.len() < 100;
            events.extend(page);
            if done {
                break;
            }
        }
        if events.len() >= at_least {
            return events;
        }
        if tokio::time::timeout_at(deadline, signal.changed())
            .await
            .is_err()
        {
            panic!(
                "{} events readable after {after} within {PATIENCE:?}, expected at least {at_least}",
                events.len()
            );
        }
    }
}

/// The id of the last of the `count` events a behaviour has caused so far,
/// once all are readable (there must be no more).
async fn log_end(store: &dyn Store, count: usize) -> EventId {
    let log = read_log(store, EventId(0), count).await;
    assert_eq!(log.len(), count, "events so far: {log:?}");
    log.last().map_or(EventId(0), |event| event.id)
}

/// The event a change must log: its type and the call just after it.
fn expected(kind: EventType, call: &Call, at: DateTime<Utc>) -> (EventType, Call, DateTime<Utc>) {
    (kind, call.clone(), at)
}

fn settled_call(settled: Settled) -> Call {
    match settled {
        Settled::Applied(call) => call,
        Settled::Stale(call) => panic!("the settlement must apply to {}", call.id),
    }
}

fn with_callback(n: u32) -> NewCall {
    let mut new = new_call(n);
    new.callback_url =
        Some(CallbackUrl::parse(format!("https://client.example/hooks/{n}")).expect("valid URL"));
    new
}

/// Each applied change of status logs exactly one event, of the type
/// [`Event::of_change`] gives, carrying the call just after the change and
/// the change's time; a refused change, a stale settlement, an update, a
/// recorded dial and a cancel request on a live call log nothing.
pub async fn the_event_log_holds_one_event_per_status_change(store: Arc<dyn Store>) {
    let before = EventId(0);
    let mut expect = Vec::new();
    let a = create(&*store, 1, t(0)).await;
    expect.push(expected(EventType::Created, &a, t(0)));
    let mut scheduled = new_call(2);
    scheduled.not_before = Some(t(40));
    scheduled.expires_at = Some(t(50));
    let b = store
        .create(CallId::new_v7(t(1)), &scheduled, t(1))
        .await
        .expect("create")
        .call;
    expect.push(expected(EventType::Created, &b, t(1)));
    let c = create(&*store, 3, t(2)).await;
    expect.push(expected(EventType::Created, &c, t(2)));

    let dialled = claim(&*store, t(3), 30, 1).await;
    assert_eq!(ids(&dialled), [a.id]);
    expect.push(expected(EventType::Dialled, &dialled[0], t(3)));
    let attempt = dialled[0].current_attempt();
    store.record_dial(attempt, "prov-a1").await.expect("record");
    let retry = Settlement::Retry {
        error: "provider 503".into(),
        at: t(4),
        retry_at: t(5),
    };
    let requeued = settled_call(settle(&*store, attempt, retry.clone()).await);
    expect.push(expected(EventType::RetryScheduled, &requeued, t(4)));
    assert!(matches!(
        settle(&*store, attempt, retry).await,
        Settled::Stale(_)
    ));

    let patch = CallPatch {
        script_id: Some(script("reminderFlow")),
        ..CallPatch::default()
    };
    store.update(c.id, &patch, t(5)).await.expect("update");
    let Canceled::Canceled(canceled) = store
        .cancel(c.id, "do not call", t(5))
        .await
        .expect("cancel")
    else {
        panic!("a pending call is canceled at once");
    };
    expect.push(expected(EventType::Canceled, &canceled, t(5)));
    assert!(matches!(
        store.cancel(c.id, "again", t(6)).await.expect("cancel"),
        Canceled::AlreadyCanceled(_)
    ));

    let dialled = claim(&*store, t(6), 30, 1).await;
    assert_eq!(ids(&dialled), [a.id]);
    expect.push(expected(EventType::Dialled, &dialled[0], t(6)));
    let attempt = dialled[0].current_attempt();
    assert!(matches!(
        store
            .cancel(a.id, "changed my mind", t(7))
            .await
            .expect("cancel"),
        Canceled::Requested(_)
    ));
    let ended = settled_call(settle(&*store, attempt, completed(t(8))).await);
    assert_eq!(
        ended.status,
        CallStatus::Completed,
        "a completed call stays completed"
    );
    expect.push(expected(EventType::Completed, &ended, t(8)));
    assert!(matches!(
        settle(&*store, attempt, completed(t(9))).await,
        Settled::Stale(_)
    ));
    let refused = store.update(a.id, &patch, t(9)).await.expect_err("ended");
    assert!(
        matches!(refused, StoreError::Conflict { .. }),
        "{refused:?}"
    );
    let refused = store
        .cancel(a.id, "too late", t(9))
        .await
        .expect_err("ended");
    assert!(
        matches!(refused, StoreError::Conflict { .. }),
        "{refused:?}"
    );

    let d = create(&*store, 4, t(9)).await;
    expect.push(expected(EventType::Created, &d, t(9)));
    let dialled = claim(&*store, t(10), 30, 1).await;
    assert_eq!(ids(&dialled), [d.id]);
    expect.push(expected(EventType::Dialled, &dialled[0], t(10)));
    let ended = settled_call(settle(&*store, dialled[0].current_attempt(), failed(t(11))).await);
    expect.push(expected(EventType::Failed, &ended, t(11)));

    let e = create(&*store, 5, t(12)).await;
    expect.push(expected(EventType::Created, &e, t(12)));
    let dialled = claim(&*store, t(13), 30, 1).await;
    assert_eq!(ids(&dialled), [e.id]);
    expect.push(expected(EventType::Dialled, &dialled[0], t(13)));
    let capacity = Settlement::Capacity {
        at: t(14),
        retry_at: t(15),
    };
    let requeued = settled_call(settle(&*store, dialled[0].current_attempt(), capacity).await);
    expect.push(expected(EventType::RetryScheduled, &requeued, t(14)));

    assert_eq!(store.expire_due(t(50)).await.expect("expire"), [b.id]);
    let expired = store.get(b.id).await.expect("get");
    expect.push(expected(EventType::Expired, &expired, t(50)));
    // The sentinel: once its event is readable, so is every earlier one.
    let sentinel = create(&*store, 6, t(51)).await;
    expect.push(expected(EventType::Created, &sentinel, t(51)));

    let log = read_log(&*store, before, expect.len()).await;
    let logged: Vec<(EventType, Call, DateTime<Utc>)> = log
        .iter()
        .map(|event| (event.kind, event.call.clone(), event.occurred_at))
        .collect();
    assert_eq!(logged, expect);
}

/// Event ids strictly increase; `events_after` from any id replays every
/// later event in order (bounded by `limit`), `last_event_id` is the newest,
/// and each call's events come in the order its changes happened.
pub async fn events_replay_from_any_id_in_order(store: Arc<dyn Store>) {
    assert!(store
        .events_after(EventId(0), 100)
        .await
        .expect("events")
        .is_empty());
    assert_eq!(store.last_event_id().await.expect("last id"), EventId(0));
    let mut calls = Vec::new();
    for n in 0..4 {
        calls.push(create(&*store, n, t(i64::from(n))).await);
    }
    let claimed = claim(&*store, t(10), 30, 30).await;
    assert_eq!(claimed.len(), 4);
    for (n, call) in claimed.iter().enumerate() {
        let settlement = if n % 2 == 0 {
            completed(t(11))
        } else {
            failed(t(12))
        };
        settle(&*store, call.current_attempt(), settlement).await;
    }
    let all = read_log(&*store, EventId(0), 12).await;
    assert_eq!(all.len(), 12);
    assert!(
        all.windows(2).all(|pair| pair[0].id < pair[1].id),
        "ids strictly increase: {:?}",
        all.iter().map(|event| event.id).collect::<Vec<_>>()
    );
    assert!(all[0].id > EventId(0));
    assert_eq!(store.last_event_id().await.expect("last id"), all[11].id);
    for (i, event) in all.iter().enumerate() {
        let rest = store.events_after(event.id, 100).await.expect("events");
        assert_eq!(rest, all[i + 1..], "after {}", event.id);
        let two = store.events_after(event.id, 2).await.expect("events");
        assert_eq!(
            two,
            all[i + 1..all.len().min(i + 3)],
            "two after {}",
            event.id
        );
    }
    for (n, call) in calls.iter().enumerate() {
        let kinds: Vec<EventType> = all
            .iter()
            .filter(|event| event.call.id == call.id)
            .map(|event| event.kind)
            .collect();
        let end = if n % 2 == 0 {
            EventType::Completed
        } else {
            EventType::Failed
        };
        assert_eq!(
            kinds,
            [EventType::Created, EventType::Dialled, end],
            "call {n}"
        );
    }
}

/// Waits for the event signal after a change, then for its event to be
/// readable past `cursor`, and moves `cursor` past it.
async fn expect_event_signal(
    store: &dyn Store,
    signal: &mut tokio::sync::watch::Receiver<u64>,
    cursor: &mut EventId,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        tokio::time::timeout_at(deadline, signal.changed())
            .await
            .unwrap_or_else(|_| panic!("no event signalled within {PATIENCE:?} after {what}"))
            .expect("store dropped its event signal");
        signal.borrow_and_update();
        let new = store.events_after(*cursor, 100).await.expect("events");
        if let Some(last) = new.last() {
            *cursor = last.id;
            return;
        }
    }
}

/// Event readers are woken after each change that logs: create, claim,
/// settle, expire and cancel.
pub async fn subscribe_events_signals_every_logged_change(store: Arc<dyn Store>) {
    let mut signal = store.subscribe_events();
    signal.borrow_and_update();
    let mut cursor = store.last_event_id().await.expect("last id");
    let call = create(&*store, 1, t(0)).await;
    expect_event_signal(&*store, &mut signal, &mut cursor, "create").await;
    let attempt = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    expect_event_signal(&*store, &mut signal, &mut cursor, "claim").await;
    settle(&*store, attempt, completed(t(2))).await;
    expect_event_signal(&*store, &mut signal, &mut cursor, "settle").await;
    let mut expiring = new_call(2);
    expiring.expires_at = Some(t(20));
    let expiring = store
        .create(CallId::new_v7(t(3)), &expiring, t(3))
        .await
        .expect("create")
        .call;
    expect_event_signal(&*store, &mut signal, &mut cursor, "create").await;
    assert_eq!(
        store.expire_due(t(20)).await.expect("expire"),
        [expiring.id]
    );
    expect_event_signal(&*store, &mut signal, &mut cursor, "expire").await;
    let canceled = create(&*store, 3, t(21)).await;
    expect_event_signal(&*store, &mut signal, &mut cursor, "create").await;
    store
        .cancel(canceled.id, "no", t(22))
        .await
        .expect("cancel");
    expect_event_signal(&*store, &mut signal, &mut cursor, "cancel").await;
    assert_ne!(call.id, canceled.id);
}

// ---------------------------------------------------------------- cancel

fn reason(call: &Call) -> (CallStatus, Option<&str>) {
    (call.status, call.last_error.as_deref())
}

/// A `PENDING` call is canceled at once: `CANCELED`, ended now, the reason
/// as `lastError`, and never claimed.
pub async fn cancel_ends_a_pending_call_at_once(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    let Canceled::Canceled(canceled) = store
        .cancel(call.id, "do not call", t(5))
        .await
        .expect("cancel")
    else {
        panic!("a pending call is canceled at once");
    };
    assert_eq!(
        reason(&canceled),
        (CallStatus::Canceled, Some("do not call"))
    );
    assert_eq!(canceled.ended_at, Some(t(5)));
    assert_eq!(canceled.attempts, 0);
    assert_eq!(store.get(call.id).await.expect("get"), canceled);
    assert!(claim(&*store, t(6), 30, 30).await.is_empty());
    assert_eq!(store.next_timer(t(6)).await.expect("timer"), None);
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.get(CallStatus::Canceled), 1);
    assert_eq!(counts.get(CallStatus::Pending), 0);
}

/// Canceling an `IN_PROGRESS` call records the request (status unchanged,
/// no event); a second request keeps the first one's time and reason.
pub async fn cancel_marks_a_live_call_and_keeps_the_first_request(store: Arc<dyn Store>) {
    create(&*store, 1, t(0)).await;
    let claimed = claim(&*store, t(1), 30, 30).await.remove(0);
    let before = log_end(&*store, 2).await;
    let Canceled::Requested(marked) = store
        .cancel(claimed.id, "first", t(2))
        .await
        .expect("cancel")
    else {
        panic!("a live call is marked");
    };
    assert_eq!(marked.status, CallStatus::InProgress);
    assert_eq!(marked.attempts, 1);
    assert_eq!(marked.cancel_requested_at, Some(t(2)));
    assert_eq!(marked.cancel_reason.as_deref(), Some("first"));
    assert_eq!(marked.ended_at, None);
    let again = store
        .cancel(claimed.id, "second", t(3))
        .await
        .expect("cancel");
    assert!(matches!(again, Canceled::Requested(_)), "{again:?}");
    assert_eq!(again.call(), &marked);
    assert_eq!(store.get(claimed.id).await.expect("get"), marked);
    let sentinel = create(&*store, 2, t(4)).await;
    let log = read_log(&*store, before, 1).await;
    assert_eq!(
        log.iter().map(|event| event.call.id).collect::<Vec<_>>(),
        [sentinel.id],
        "a cancel request logs nothing"
    );
}

/// Canceling a `CANCELED` call changes nothing; a `COMPLETED`, `FAILED` or
/// `EXPIRED` call refuses (`Conflict`); an unknown id is `NotFound`.
pub async fn cancel_of_an_ended_call_is_already_canceled_or_a_conflict(store: Arc<dyn Store>) {
    let canceled = create(&*store, 1, t(0)).await;
    let canceled = store
        .cancel(canceled.id, "no", t(1))
        .await
        .expect("cancel")
        .call()
        .clone();
    let again = store
        .cancel(canceled.id, "still no", t(2))
        .await
        .expect("cancel");
    assert_eq!(again, Canceled::AlreadyCanceled(canceled.clone()));
    assert_eq!(store.get(canceled.id).await.expect("get"), canceled);

    let completed_call = ended_call(&*store, 2, t(3), completed(t(4))).await;
    let failed_call = ended_call(&*store, 3, t(5), failed(t(6))).await;
    let mut expiring = new_call(4);
    expiring.expires_at = Some(t(10));
    let expired = store
        .create(CallId::new_v7(t(7)), &expiring, t(7))
        .await
        .expect("create")
        .call;
    store.expire_due(t(10)).await.expect("expire");
    for ended in [&completed_call, &failed_call, &expired] {
        let ended = store.get(ended.id).await.expect("get");
        let error = store
            .cancel(ended.id, "no", t(11))
            .await
            .expect_err("ended");
        assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
        assert_eq!(store.get(ended.id).await.expect("get"), ended);
    }
    let error = store
        .cancel(CallId::new_v7(t(0)), "no", t(11))
        .await
        .expect_err("unknown");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

/// A call whose cancel was requested while live ends `CANCELED` with the
/// request's reason however its attempt ends (a failure, a retryable
/// failure, a 429), unless the provider reports it completed; it is never
/// claimable again, and its dial ends `CANCELED` in the attempt history.
pub async fn settling_a_cancel_requested_call_ends_it_canceled_unless_completed(
    store: Arc<dyn Store>,
) {
    let settlements = [
        (
            completed(t(10)),
            CallStatus::Completed,
            EventType::Completed,
        ),
        (failed(t(10)), CallStatus::Canceled, EventType::Canceled),
        (
            Settlement::Retry {
                error: "provider 503".into(),
                at: t(10),
                retry_at: t(11),
            },
            CallStatus::Canceled,
            EventType::Canceled,
        ),
        (
            Settlement::Capacity {
                at: t(10),
                retry_at: t(11),
            },
            CallStatus::Canceled,
            EventType::Canceled,
        ),
    ];
    for (n, (settlement, status, kind)) in settlements.into_iter().enumerate() {
        let n = u32::try_from(n).expect("few cases");
        let call = create(&*store, n, t(0)).await;
        let claimed = claim(&*store, t(1), 30, 30).await;
        assert_eq!(ids(&claimed), [call.id]);
        let attempt = claimed[0].current_attempt();
        store
            .cancel(call.id, "withdrawn", t(2))
            .await
            .expect("cancel");
        // Created and dialled for each call so far, and ended for each before.
        let before = log_end(&*store, 3 * n as usize + 2).await;
        let ended = settled_call(settle(&*store, attempt, settlement.clone()).await);
        assert_eq!(ended.status, status, "{settlement:?}");
        assert_eq!(ended.ended_at, Some(t(10)), "{settlement:?}");
        assert_eq!(ended.lease_expires_at, None, "{settlement:?}");
        if status == CallStatus::Canceled {
            assert_eq!(
                ended.last_error.as_deref(),
                Some("withdrawn"),
                "{settlement:?}"
            );
        }
        let log = read_log(&*store, before, 1).await;
        assert_eq!(log.len(), 1, "{settlement:?}");
        assert_eq!(
            (log[0].kind, &log[0].call),
            (kind, &ended),
            "{settlement:?}"
        );
        let dials = store.attempts(call.id).await.expect("attempts");
        let outcome = if status == CallStatus::Completed {
            AttemptOutcome::Completed
        } else {
            AttemptOutcome::Canceled
        };
        assert_eq!(
            dials.iter().map(|dial| dial.outcome).collect::<Vec<_>>(),
            [outcome],
            "{settlement:?}"
        );
        assert!(
            claim(&*store, t(1_000), 30, 30).await.is_empty(),
            "{settlement:?}"
        );
        assert_eq!(store.get(call.id).await.expect("get"), ended);
    }
}

// -------------------------------------------------------------- attempts

/// The attempt history lists every dial in dial order: `IN_PROGRESS` while
/// live, then its outcome; a 429 is a `CAPACITY` row whose number the next
/// dial reuses; a retryable failure is `RETRY` with its `retryAt`; provider
/// ids land on their dial. An unknown call is `NotFound`.
pub async fn attempts_list_every_dial_in_order(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    assert!(store.attempts(call.id).await.expect("attempts").is_empty());
    let first = claim(&*store, t(1), 30, 30).await[0].current_attempt();
    assert_eq!(
        store.attempts(call.id).await.expect("attempts"),
        [Attempt::started(1, t(1))]
    );
    settle(
        &*store,
        first,
        Settlement::Capacity {
            at: t(2),
            retry_at: t(3),
        },
    )
    .await;
    let again = claim(&*store, t(3), 30, 30).await[0].current_attempt();
    assert_eq!(again, first, "a 429 gives the attempt number back");
    store.record_dial(again, "prov-1").await.expect("record");
    settle(
        &*store,
        again,
        Settlement::Retry {
            error: "webhook timeout".into(),
            at: t(4),
            retry_at: t(5),
        },
    )
    .await;
    let second = claim(&*store, t(5), 30, 30).await[0].current_attempt();
    store.record_dial(second, "prov-2").await.expect("record");
    let live = store.attempts(call.id).await.expect("attempts");
    assert_eq!(live.len(), 3);
    assert_eq!(
        (
            live[2].attempt,
            live[2].outcome,
            live[2].provider_call_id.as_deref()
        ),
        (2, AttemptOutcome::InProgress, Some("prov-2"))
    );
    settle(
        &*store,
        second,
        Settlement::Failed {
            error: "NO_ANSWER".into(),
            at: t(6),
            duration_sec: None,
        },
    )
    .await;
    let dials = store.attempts(call.id).await.expect("attempts");
    let expected = [
        Attempt {
            attempt: 1,
            dialled_at: t(1),
            provider_call_id: None,
            outcome: AttemptOutcome::Capacity,
            error: None,
            ended_at: None,
            retry_at: Some(t(3)),
        },
        Attempt {
            attempt: 1,
            dialled_at: t(3),
            provider_call_id: Some("prov-1".into()),
            outcome: AttemptOutcome::Retry,
            error: Some("webhook timeout".into()),
            ended_at: None,
            retry_at: Some(t(5)),
        },
        Attempt {
            attempt: 2,
            dialled_at: t(5),
            provider_call_id: Some("prov-2".into()),
            outcome: AttemptOutcome::Failed,
            error: Some("NO_ANSWER".into()),
            ended_at: Some(t(6)),
            retry_at: None,
        },
    ];
    assert_eq!(dials, expected);

    let done = ended_call(&*store, 7, t(7), completed(t(9))).await;
    let dials = store.attempts(done.id).await.expect("attempts");
    assert_eq!(
        dials
            .iter()
            .map(|dial| (
                dial.outcome,
                dial.ended_at,
                dial.provider_call_id.as_deref()
            ))
            .collect::<Vec<_>>(),
        [(AttemptOutcome::Completed, Some(t(9)), Some("prov-7"))]
    );
    let error = store
        .attempts(CallId::new_v7(t(0)))
        .await
        .expect_err("unknown");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

// ---------------------------------------------------------------- update

#[allow(clippy::option_option)] // absent, null and a value, as in `CallPatch`
fn reschedule(
    not_before: Option<Option<DateTime<Utc>>>,
    expires_at: Option<Option<DateTime<Utc>>>,
) -> CallPatch {
    CallPatch {
        not_before,
        expires_at,
        ..CallPatch::default()
    }
}

fn invalid_field(error: StoreError) -> &'static str {
    match error {
        StoreError::Invalid(invalid) => invalid.field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// `update` moves a `PENDING` call's schedule: an earlier `notBefore`
/// makes it claimable, `null` clears a field, the schedule rule is checked
/// against the call as stored (`Invalid`), nothing is logged, and a call no
/// longer `PENDING` refuses (`Conflict`).
pub async fn update_reschedules_a_pending_call(store: Arc<dyn Store>) {
    let mut later = new_call(1);
    later.not_before = Some(t(100));
    later.expires_at = Some(t(200));
    let call = store
        .create(CallId::new_v7(t(0)), &later, t(0))
        .await
        .expect("create")
        .call;
    let before = log_end(&*store, 1).await;
    assert!(claim(&*store, t(10), 30, 30).await.is_empty());

    let moved = store
        .update(call.id, &reschedule(Some(Some(t(5))), None), t(10))
        .await
        .expect("earlier notBefore");
    assert_eq!(
        (moved.not_before, moved.expires_at),
        (Some(t(5)), Some(t(200)))
    );
    assert_eq!(moved.status, CallStatus::Pending);
    assert_eq!(store.get(call.id).await.expect("get"), moved);
    assert_eq!(store.next_timer(t(0)).await.expect("timer"), Some(t(5)));

    let error = store
        .update(call.id, &reschedule(None, Some(Some(t(10)))), t(10))
        .await
        .expect_err("expiresAt not in the future");
    assert_eq!(invalid_field(error), "expiresAt");
    let error = store
        .update(call.id, &reschedule(None, Some(Some(t(3)))), t(1))
        .await
        .expect_err("expiresAt before notBefore");
    assert_eq!(invalid_field(error), "expiresAt");
    let error = store
        .update(call.id, &reschedule(Some(Some(t(300))), None), t(10))
        .await
        .expect_err("notBefore after expiresAt");
    assert_eq!(invalid_field(error), "notBefore");
    assert_eq!(
        store.get(call.id).await.expect("get"),
        moved,
        "refused patches change nothing"
    );

    let cleared = store
        .update(call.id, &reschedule(Some(None), Some(None)), t(10))
        .await
        .expect("clear");
    assert_eq!((cleared.not_before, cleared.expires_at), (None, None));
    assert_eq!(store.next_timer(t(0)).await.expect("timer"), None);
    let claimed = claim(&*store, t(10), 30, 30).await;
    assert_eq!(ids(&claimed), [call.id]);

    let error = store
        .update(call.id, &reschedule(Some(Some(t(50))), None), t(10))
        .await
        .expect_err("in progress");
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    let sentinel = create(&*store, 2, t(11)).await;
    let log = read_log(&*store, before, 2).await;
    assert_eq!(
        log.iter()
            .map(|event| (event.kind, event.call.id))
            .collect::<Vec<_>>(),
        [
            (EventType::Dialled, call.id),
            (EventType::Created, sentinel.id)
        ],
        "updates log nothing"
    );
}

// ----------------------------------------------------------------- lists

async fn listed(store: &dyn Store, filter: ListFilter) -> (Vec<CallId>, u64) {
    let page = store
        .list(&ListQuery::new(filter, None, Some(100)).expect("valid query"))
        .await
        .expect("list");
    (ids(&page.items), page.total)
}

/// `list` filters by number, script and creation time (from inclusive, to
/// exclusive), combined with each other and with the status; `total`
/// counts the matches.
pub async fn list_filters_by_number_script_and_creation_time(store: Arc<dyn Store>) {
    let mut calls = Vec::new();
    for (n, (number_n, script_id)) in [(1, "a"), (2, "a"), (1, "b"), (2, "b"), (1, "a")]
        .into_iter()
        .enumerate()
    {
        let new = NewCall::new(number(number_n), script(script_id));
        let at = t(10 * i64::try_from(n).expect("few"));
        calls.push(
            store
                .create(CallId::new_v7(at), &new, at)
                .await
                .expect("create")
                .call
                .id,
        );
    }
    // Oldest first: calls[0] (number 1) and calls[1] (number 2) are dialled.
    assert_eq!(
        ids(&claim(&*store, t(100), 30, 30).await),
        [calls[0], calls[1]]
    );
    let newest_first = |picked: &[usize]| -> (Vec<CallId>, u64) {
        let mut ids: Vec<CallId> = picked.iter().rev().map(|&i| calls[i]).collect();
        ids.dedup();
        let total = ids.len() as u64;
        (ids, total)
    };

    let by_number = ListFilter {
        to: Some(number(1)),
        ..ListFilter::default()
    };
    assert_eq!(
        listed(&*store, by_number.clone()).await,
        newest_first(&[0, 2, 4])
    );
    let by_script = ListFilter {
        script_id: Some(script("b")),
        ..ListFilter::default()
    };
    assert_eq!(listed(&*store, by_script).await, newest_first(&[2, 3]));
    let window = ListFilter {
        created_from: Some(t(10)),
        created_to: Some(t(40)),
        ..ListFilter::default()
    };
    assert_eq!(
        listed(&*store, window.clone()).await,
        newest_first(&[1, 2, 3])
    );
    let pending_in_window = ListFilter {
        status: Some(CallStatus::Pending),
        ..window.clone()
    };
    assert_eq!(
        listed(&*store, pending_in_window).await,
        newest_first(&[2, 3])
    );
    let live_to_number = ListFilter {
        status: Some(CallStatus::InProgress),
        ..by_number.clone()
    };
    assert_eq!(listed(&*store, live_to_number).await, newest_first(&[0]));
    let everything = ListFilter {
        to: Some(number(1)),
        script_id: Some(script("a")),
        created_from: Some(t(40)),
        created_to: Some(t(41)),
        status: Some(CallStatus::Pending),
    };
    assert_eq!(listed(&*store, everything).await, newest_first(&[4]));
    let nobody = ListFilter {
        to: Some(number(9)),
        ..ListFilter::default()
    };
    assert_eq!(listed(&*store, nobody).await, (Vec::new(), 0));
    let paged = store
        .list(&ListQuery::new(by_number, Some(2), Some(2)).expect("valid query"))
        .await
        .expect("list");
    assert_eq!((ids(&paged.items), paged.total), (vec![calls[0]], 3));
}

// ------------------------------------------------------------- callbacks

const DELIVERY_LEASE: Duration = Duration::from_secs(30);

fn delivery_claim(now: DateTime<Utc>, limit: u32, max_attempts: u32) -> DeliveryClaim {
    DeliveryClaim {
        now,
        limit,
        lease: DELIVERY_LEASE,
        max_attempts,
    }
}

async fn claim_deliveries(store: &dyn Store, now: DateTime<Utc>, limit: u32) -> Vec<Delivery> {
    store
        .claim_deliveries(&delivery_claim(now, limit, 10))
        .await
        .expect("claim deliveries")
}

/// Creates call `n` with a callback URL at `at` and ends it `CANCELED` at
/// once; returns it as ended.
async fn canceled_with_callback(store: &dyn Store, n: u32, at: DateTime<Utc>) -> Call {
    let call = store
        .create(CallId::new_v7(at), &with_callback(n), at)
        .await
        .expect("create")
        .call;
    store
        .cancel(call.id, "canceled", at)
        .await
        .expect("cancel")
        .call()
        .clone()
}

fn callback(call: &Call) -> Option<(CallbackState, u32, Option<&str>)> {
    call.callback
        .as_ref()
        .map(|status| (status.state, status.attempts, status.last_error.as_deref()))
}

/// The terminal event of a call with a callback URL adds a `PENDING`
/// delivery of that event to that URL; calls without a URL and events
/// that are not terminal add none. Claiming it is its first try.
pub async fn terminal_events_of_calls_with_a_callback_url_are_delivered(store: Arc<dyn Store>) {
    let created = store
        .create(CallId::new_v7(t(0)), &with_callback(1), t(0))
        .await
        .expect("create")
        .call;
    assert_eq!(callback(&created), Some((CallbackState::Pending, 0, None)));
    create(&*store, 2, t(0)).await;
    let claimed = claim(&*store, t(1), 30, 30).await;
    assert_eq!(claimed.len(), 2);
    for call in &claimed {
        let retry = Settlement::Retry {
            error: "provider 503".into(),
            at: t(2),
            retry_at: t(3),
        };
        settled_call(settle(&*store, call.current_attempt(), retry).await);
    }
    assert!(
        claim_deliveries(&*store, t(100), 10).await.is_empty(),
        "no delivery for events that are not terminal"
    );
    let claimed = claim(&*store, t(3), 30, 30).await;
    let mut ended = Vec::new();
    for call in &claimed {
        ended.push(settled_call(
            settle(&*store, call.current_attempt(), completed(t(4))).await,
        ));
    }
    let with_url = ended
        .iter()
        .find(|call| call.id == created.id)
        .expect("the call with a URL ended");
    assert_eq!(ended.len(), 2);
    assert!(store
        .next_delivery_at(t(0))
        .await
        .expect("next delivery")
        .is_some());

    let log = read_log(&*store, EventId(0), 10).await;
    let terminal = log
        .iter()
        .find(|event| event.call.id == created.id && event.kind == EventType::Completed)
        .expect("the terminal event is logged");
    let deliveries = claim_deliveries(&*store, t(4), 10).await;
    assert_eq!(
        deliveries.len(),
        1,
        "only the call with a URL has a delivery"
    );
    let delivery = &deliveries[0];
    assert_eq!(&delivery.event, terminal);
    assert_eq!(&delivery.event.call, with_url);
    assert_eq!(Some(&delivery.url), created.callback_url.as_ref());
    assert_eq!(delivery.attempt, 1);
    let now = store.get(created.id).await.expect("get");
    assert_eq!(callback(&now), Some((CallbackState::Pending, 1, None)));
    let other = ended
        .iter()
        .find(|call| call.id != created.id)
        .expect("other");
    assert_eq!(store.get(other.id).await.expect("get").callback, None);
}

/// Concurrent claimers never hold one delivery at once: every delivery is
/// claimed exactly once.
pub async fn delivery_claims_are_exclusive_under_concurrency(store: Arc<dyn Store>) {
    let mut expected = Vec::new();
    for n in 0..24 {
        let call = canceled_with_callback(&*store, n, t(0)).await;
        expected.push(call.id);
    }
    let claimers: Vec<_> = (0..6)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = claim_deliveries(&*store, t(1), 3).await;
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|delivery| delivery.event.call.id));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.expect("claimer"));
    }
    claimed.sort();
    expected.sort();
    assert_eq!(claimed, expected, "each delivery claimed exactly once");
}

/// A try holds its delivery for the lease: nobody claims it meanwhile, and
/// once the lease runs out without an answer it is claimed again as the
/// next try, whose answer alone is recorded. A delivery whose last allowed
/// try ran out without an answer is `FAILED`.
pub async fn a_delivery_whose_lease_ran_out_is_claimed_again(store: Arc<dyn Store>) {
    let call = canceled_with_callback(&*store, 1, t(0)).await;
    let lease = i64::try_from(DELIVERY_LEASE.as_secs()).expect("short lease");
    let first = claim_deliveries(&*store, t(1), 10).await;
    assert_eq!(first.len(), 1);
    assert!(claim_deliveries(&*store, t(1 + lease - 1), 10)
        .await
        .is_empty());
    assert_eq!(
        store.next_delivery_at(t(1)).await.expect("next"),
        Some(t(1 + lease)),
        "due again when the lease runs out"
    );
    let second = claim_deliveries(&*store, t(1 + lease), 10).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    assert_eq!(
        second[0].event, first[0].event,
        "the same event, so the same webhook-id"
    );
    assert!(
        !store
            .record_delivery(
                first[0].reference(),
                DeliveryOutcome::Delivered { at: t(2) }
            )
            .await
            .expect("record"),
        "the first try lost its lease"
    );
    assert_eq!(
        callback(&store.get(call.id).await.expect("get")),
        Some((CallbackState::Pending, 2, None))
    );

    // Two tries allowed: the second try's lease runs out, and the delivery fails.
    let exhausted = store
        .claim_deliveries(&delivery_claim(t(1 + 2 * lease), 10, 2))
        .await
        .expect("claim");
    assert!(exhausted.is_empty());
    let failed = store.get(call.id).await.expect("get");
    assert_eq!(
        callback(&failed),
        Some((CallbackState::Failed, 2, Some("no answer recorded")))
    );
    assert_eq!(store.next_delivery_at(t(0)).await.expect("next"), None);
    assert!(!store
        .record_delivery(
            second[0].reference(),
            DeliveryOutcome::Delivered { at: t(2) }
        )
        .await
        .expect("record"));
}

/// `record_delivery` records the current try's answer only: a retry is due
/// again at its `retry_at` with its error on the call; a delivered or
/// failed delivery is final; any other try (earlier, later, unknown, or
/// after the delivery ended) records nothing.
pub async fn record_delivery_applies_only_to_the_current_try(store: Arc<dyn Store>) {
    let retried = canceled_with_callback(&*store, 1, t(0)).await;
    let failing = canceled_with_callback(&*store, 2, t(0)).await;
    let tries = claim_deliveries(&*store, t(1), 10).await;
    assert_eq!(tries.len(), 2);
    let try_of = |id: CallId, tries: &[Delivery]| -> Delivery {
        tries
            .iter()
            .find(|delivery| delivery.event.call.id == id)
            .expect("claimed")
            .clone()
    };
    let first = try_of(retried.id, &tries);
    let unknown_try = DeliveryRef {
        event_id: first.event.id,
        attempt: 2,
    };
    assert!(!store
        .record_delivery(unknown_try, DeliveryOutcome::Delivered { at: t(2) })
        .await
        .expect("record"));
    let retry = DeliveryOutcome::Retry {
        error: "receiver 500".into(),
        retry_at: t(60),
    };
    assert!(store
        .record_delivery(first.reference(), retry)
        .await
        .expect("record"));
    assert_eq!(
        callback(&store.get(retried.id).await.expect("get")),
        Some((CallbackState::Pending, 1, Some("receiver 500")))
    );
    let doomed = try_of(failing.id, &tries);
    assert!(store
        .record_delivery(
            doomed.reference(),
            DeliveryOutcome::Failed {
                error: "receiver 410".into(),
                at: t(2),
            }
        )
        .await
        .expect("record"));
    assert_eq!(
        callback(&store.get(failing.id).await.expect("get")),
        Some((CallbackState::Failed, 1, Some("receiver 410")))
    );
    assert_eq!(
        store.next_delivery_at(t(2)).await.expect("next"),
        Some(t(60))
    );
    assert!(claim_deliveries(&*store, t(59), 10).await.is_empty());
    let second = claim_deliveries(&*store, t(60), 10).await;
    assert_eq!(second.len(), 1, "the failed delivery is not retried");
    assert_eq!(
        (second[0].event.call.id, second[0].attempt),
        (retried.id, 2)
    );
    assert!(store
        .record_delivery(
            second[0].reference(),
            DeliveryOutcome::Delivered { at: t(61) }
        )
        .await
        .expect("record"));
    let delivered = store.get(retried.id).await.expect("get");
    let status = delivered.callback.expect("a callback status");
    assert_eq!(
        (status.state, status.attempts),
        (CallbackState::Delivered, 2)
    );
    assert!(!store
        .record_delivery(
            second[0].reference(),
            DeliveryOutcome::Delivered { at: t(62) }
        )
        .await
        .expect("record"));
    assert!(claim_deliveries(&*store, t(10_000), 10).await.is_empty());
    assert_eq!(store.next_delivery_at(t(0)).await.expect("next"), None);
}

/// `next_delivery_at` is the earliest due time strictly after `now` of a
/// `PENDING` delivery (a retry or a lease's end); `None` when none.
pub async fn next_delivery_at_reports_the_earliest_due_delivery(store: Arc<dyn Store>) {
    assert_eq!(store.next_delivery_at(t(0)).await.expect("next"), None);
    canceled_with_callback(&*store, 1, t(10)).await;
    assert_eq!(
        store.next_delivery_at(t(0)).await.expect("next"),
        Some(t(10))
    );
    assert_eq!(
        store.next_delivery_at(t(10)).await.expect("next"),
        None,
        "strictly after now"
    );
    canceled_with_callback(&*store, 2, t(20)).await;
    let tries = claim_deliveries(&*store, t(10), 1).await;
    assert_eq!(tries.len(), 1);
    assert_eq!(
        store.next_delivery_at(t(10)).await.expect("next"),
        Some(t(20))
    );
    let lease_end = clock::add(t(10), DELIVERY_LEASE);
    assert_eq!(
        store.next_delivery_at(t(20)).await.expect("next"),
        Some(lease_end)
    );
    store
        .record_delivery(
            tries[0].reference(),
            DeliveryOutcome::Retry {
                error: "timed out".into(),
                retry_at: t(15),
            },
        )
        .await
        .expect("record");
    assert_eq!(
        store.next_delivery_at(t(10)).await.expect("next"),
        Some(t(15))
    );
}

/// Retention deletes a call's events and its delivery with it; other
/// calls' events stay.
pub async fn purge_deletes_events_and_deliveries(store: Arc<dyn Store>) {
    let doomed = canceled_with_callback(&*store, 1, t(0)).await;
    let kept = canceled_with_callback(&*store, 2, t(100)).await;
    read_log(&*store, EventId(0), 4).await;
    assert_eq!(store.purge_ended_before(t(50), 10).await.expect("purge"), 1);
    let log = read_log(&*store, EventId(0), 2).await;
    assert!(
        log.iter().all(|event| event.call.id == kept.id),
        "the purged call's events are gone"
    );
    assert_eq!(log.len(), 2);
    let deliveries = claim_deliveries(&*store, t(1_000), 10).await;
    assert_eq!(
        deliveries
            .iter()
            .map(|delivery| delivery.event.call.id)
            .collect::<Vec<_>>(),
        [kept.id]
    );
    assert_ne!(doomed.id, kept.id);
}

/// `retryOf` and `callbackUrl` round-trip; `callback` shows a `PENDING`
/// delivery with no tries exactly when there is a URL.
pub async fn retry_of_and_callback_url_round_trip(store: Arc<dyn Store>) {
    let original = create(&*store, 1, t(0)).await;
    assert_eq!(
        (original.retry_of, original.callback_url.clone()),
        (None, None)
    );
    assert_eq!(original.callback, None);
    let mut retry = with_callback(1);
    retry.retry_of = Some(original.id);
    let call = store
        .create(CallId::new_v7(t(1)), &retry, t(1))
        .await
        .expect("create")
        .call;
    assert_eq!(call.retry_of, Some(original.id));
    assert_eq!(call.callback_url, retry.callback_url);
    assert_eq!(call.callback, Some(CallbackStatus::default()));
    assert_eq!(store.get(call.id).await.expect("get"), call);
    assert_eq!(store.get(original.id).await.expect("get"), original);
}
