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

use crate::call::{AttemptRef, Call, CallId, CallPatch, CallStatus, NewCall};
use crate::clock;
use crate::input::{IdempotencyKey, Metadata, ScriptId};
use crate::phone::PhoneNumber;
use crate::store::{ClaimRequest, ListFilter, ListQuery, Settled, Settlement, Store, StoreError};

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
