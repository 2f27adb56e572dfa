//! The event log and the callback outbox across processes: several
//! `PgStore`s on one database, as several engines share it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::call::{Call, CallId, CallStatus, NewCall};
use orchestrator_core::store::{ClaimRequest, Settled, Settlement};
use orchestrator_core::{
    CallbackState, CallbackUrl, DeliveryClaim, DeliveryOutcome, Event, EventId, EventType,
    Metadata, PhoneNumber, ScriptId, Store, StoreError,
};
use orchestrator_pg::{testing, PgStore};

/// How long something a store does in the background may take before the
/// test fails; it takes milliseconds, the margin is for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

/// A call whose metadata only a byte-exact store keeps as it is.
fn new_call(n: u32) -> NewCall {
    let mut new = NewCall::new(
        PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap(),
        ScriptId::parse("welcomeFlow").unwrap(),
    );
    new.payload.metadata = Some(
        Metadata::new(serde_json::json!({ "customer": n, "big": 1e19, "nul": "a\u{0}b" })).unwrap(),
    );
    new
}

fn with_callback(n: u32) -> NewCall {
    let mut new = new_call(n);
    new.callback_url = Some(CallbackUrl::parse(format!("https://client.example/{n}")).unwrap());
    new
}

/// Two stores on one fresh, migrated database.
async fn two_stores() -> (PgStore, PgStore) {
    let url = testing::fresh_database_url().await;
    let first = PgStore::connect(&url).await.expect("connect");
    first.migrate().await.expect("migrate");
    let second = PgStore::connect(&url).await.expect("connect");
    (first, second)
}

fn claim_at(now: DateTime<Utc>, limit: u32) -> ClaimRequest {
    ClaimRequest {
        now,
        max_in_flight: u32::MAX,
        limit,
        lease: Duration::from_secs(900),
    }
}

fn delivery_claim(now: DateTime<Utc>) -> DeliveryClaim {
    DeliveryClaim {
        now,
        limit: 10,
        lease: Duration::from_secs(30),
        max_attempts: 5,
    }
}

/// Every readable event after `after`, in pages.
async fn replay(store: &dyn Store, after: EventId) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    loop {
        let cursor = events.last().map_or(after, |event| event.id);
        let page = store.events_after(cursor, 100).await.unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// Rows of the log not numbered yet.
async fn unsequenced(store: &PgStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_events WHERE id IS NULL")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// One writer's share of the work: creates its calls, then claims, settles
/// and cancels until every one of them has ended.
async fn write(store: Arc<PgStore>, writer: u32, calls: u32) {
    let mut mine = BTreeSet::new();
    for n in 0..calls {
        let number = writer * 1000 + n;
        let new = if n % 3 == 0 {
            with_callback(number)
        } else {
            new_call(number)
        };
        let at = t(i64::from(n));
        let id = CallId::new_v7(at);
        store.create(id, &new, at).await.unwrap();
        mine.insert(id);
    }
    let mut round = 0i64;
    while !mine.is_empty() {
        round += 1;
        let now = t(1000 + round);
        // Calls of every writer: engines settle whatever they claimed.
        for call in store.claim(&claim_at(now, 20)).await.unwrap() {
            let roll = (call.id.0.as_u128() as u64 ^ round as u64) % 5;
            let settlement = match roll {
                0 if call.attempts < 3 => Settlement::Retry {
                    error: "provider 503".into(),
                    at: now,
                    retry_at: now,
                },
                1 => Settlement::Capacity {
                    at: now,
                    retry_at: now,
                },
                2 => {
                    store.cancel(call.id, "changed my mind", now).await.unwrap();
                    Settlement::Failed {
                        error: "hung up".into(),
                        at: now,
                        duration_sec: None,
                    }
                }
                3 => Settlement::Failed {
                    error: "BUSY".into(),
                    at: now,
                    duration_sec: None,
                },
                _ => Settlement::Completed {
                    at: now,
                    duration_sec: Some(1),
                },
            };
            store
                .settle(call.current_attempt(), settlement)
                .await
                .unwrap();
        }
        let mut ended = Vec::new();
        for id in &mine {
            if store.get(*id).await.unwrap().status.is_terminal() {
                ended.push(*id);
            } else if round % 7 == 0 {
                // Another writer may end it first.
                match store.cancel(*id, "tidy up", now).await {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(error) => panic!("cancel {id}: {error:?}"),
                }
            }
        }
        for id in ended {
            mine.remove(&id);
        }
        tokio::task::yield_now().await;
    }
}

/// Many writers on two stores change calls concurrently while a reader
/// follows the log by id. Afterwards the log replayed from 0 is gapless,
/// holds every event exactly once, and each call's events are its history
/// in order (created first, statuses following the state machine, the last
/// one the call as it is now); and the reader, which only ever asked for
/// ids after the last one it saw, saw exactly that log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_ids_follow_commit_order_under_concurrent_writers() {
    let (first, second) = two_stores().await;
    let stores = [Arc::new(first), Arc::new(second)];
    let stop = Arc::new(tokio::sync::Notify::new());
    let follower = tokio::spawn({
        let store = Arc::clone(&stores[1]);
        let stop = Arc::clone(&stop);
        async move {
            let mut seen: Vec<Event> = Vec::new();
            let mut signal = store.subscribe_events();
            let mut stopping = false;
            loop {
                let cursor = seen.last().map_or(EventId(0), |event| event.id);
                let page = store.events_after(cursor, 50).await.unwrap();
                let empty = page.is_empty();
                seen.extend(page);
                if empty && stopping {
                    return seen;
                }
                if empty {
                    tokio::select! {
                        biased;
                        _ = signal.changed() => {}
                        () = stop.notified() => stopping = true,
                    }
                }
            }
        }
    });
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..6u32 {
        writers.spawn(write(
            Arc::clone(&stores[writer as usize % 2]),
            writer + 1,
            25,
        ));
    }
    writers.join_all().await;
    // Each store's own writes are numbered once it answers a read.
    for store in &stores {
        store.last_event_id().await.unwrap();
    }
    assert_eq!(unsequenced(&stores[0]).await, 0);
    stop.notify_one();
    let followed = tokio::time::timeout(DEADLINE, follower)
        .await
        .expect("the follower catches up")
        .unwrap();

    let log = replay(&*stores[0], EventId(0)).await;
    let ids: Vec<u64> = log.iter().map(|event| event.id.0).collect();
    assert_eq!(ids, (1..=log.len() as u64).collect::<Vec<_>>(), "gapless");
    assert_eq!(
        stores[0].last_event_id().await.unwrap(),
        EventId(log.len() as u64)
    );
    assert_eq!(
        followed.iter().map(|event| event.id).collect::<Vec<_>>(),
        log.iter().map(|event| event.id).collect::<Vec<_>>(),
        "a reader resuming after the last id it saw missed nothing"
    );
    assert_eq!(followed, log);

    let mut by_call: BTreeMap<CallId, Vec<&Event>> = BTreeMap::new();
    for event in &log {
        by_call.entry(event.call.id).or_default().push(event);
    }
    assert_eq!(by_call.len(), 150);
    for (id, events) in by_call {
        assert_eq!(events[0].kind, EventType::Created, "{id}");
        for pair in events.windows(2) {
            let (before, after) = (&pair[0].call, &pair[1].call);
            assert_eq!(
                Some(pair[1].kind),
                EventType::of_change(Some(before.status), after.status),
                "{id}: {:?} then {:?}",
                before.status,
                after.status
            );
            assert!(!before.status.is_terminal(), "{id}: a change after the end");
        }
        let last = events.last().unwrap();
        let now: Call = stores[0].get(id).await.unwrap();
        assert!(now.status.is_terminal());
        let mut logged = last.call.clone();
        // The log keeps the call as it was at its change; only the
        // delivery's progress may have moved since.
        logged.callback.clone_from(&now.callback);
        assert_eq!(logged, now, "{id}: the last event is the call as it is");
    }
}

/// An event committed through one store becomes readable through another:
/// the other store's `subscribe_events` signals it, and `events_after`
/// returns it.
#[tokio::test]
async fn an_event_committed_by_one_store_reaches_another_stores_readers() {
    let (writer, reader) = two_stores().await;
    let mut signal = reader.subscribe_events();
    let after = reader.last_event_id().await.unwrap();
    let created = writer
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap()
        .call;
    let event = tokio::time::timeout(DEADLINE, async {
        loop {
            signal.changed().await.unwrap();
            if let Some(event) = reader.events_after(after, 10).await.unwrap().pop() {
                return event;
            }
        }
    })
    .await
    .expect("the other store is told and reads the event");
    assert_eq!(event.kind, EventType::Created);
    assert_eq!(event.call, created);
    assert_eq!(event.occurred_at, t(0));
    assert_eq!(reader.last_event_id().await.unwrap(), event.id);
}

/// Events written by a process that died before numbering them (here:
/// inserted by hand, as its statement would have) are numbered by any
/// other store within its fallback pass, and its readers are told.
#[tokio::test]
async fn events_left_unsequenced_by_a_dead_process_are_numbered_by_another() {
    let (writer, survivor) = two_stores().await;
    let call = writer
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap()
        .call;
    let first = writer.last_event_id().await.unwrap();
    drop(writer);
    let mut signal = survivor.subscribe_events();
    sqlx::query(
        "INSERT INTO call_events (call_id, type, occurred_at, call) \
         SELECT id, 'call.expired', $2, call_event_json(calls) FROM calls WHERE id = $1",
    )
    .bind(call.id.0)
    .bind(t(5))
    .execute(survivor.pool())
    .await
    .unwrap();
    let events = tokio::time::timeout(DEADLINE, async {
        loop {
            signal.changed().await.unwrap();
            let events = survivor.events_after(first, 10).await.unwrap();
            if !events.is_empty() {
                return events;
            }
        }
    })
    .await
    .expect("the fallback pass numbers the event");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, EventId(first.0 + 1));
    assert_eq!(events[0].occurred_at, t(5));
}

/// Ends a call with a callback URL through `store` and returns it once its
/// terminal event is numbered.
async fn ended_with_callback(store: &PgStore) -> Call {
    let call = store
        .create(CallId::new_v7(t(0)), &with_callback(1), t(0))
        .await
        .unwrap()
        .call;
    let claimed = store.claim(&claim_at(t(1), 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, call.id);
    let completed = Settlement::Completed {
        at: t(2),
        duration_sec: None,
    };
    let Settled::Applied(ended) = store
        .settle(claimed[0].current_attempt(), completed)
        .await
        .unwrap()
    else {
        panic!("the settlement applies");
    };
    store.last_event_id().await.unwrap();
    ended
}

/// Two stores claiming at the same instant, many times over: the one
/// delivery goes to exactly one claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_claimed_by_two_stores_at_once_goes_to_one() {
    let (first, second) = two_stores().await;
    let ended = ended_with_callback(&first).await;
    let stores = [Arc::new(first), Arc::new(second)];
    let mut claims = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = Arc::clone(&stores[i % 2]);
        claims.spawn(async move { store.claim_deliveries(&delivery_claim(t(3))).await.unwrap() });
    }
    let claimed: Vec<_> = claims.join_all().await.into_iter().flatten().collect();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].event.call, ended);
    assert_eq!(claimed[0].attempt, 1);
}

/// A try whose store died between the send and the record: once its lease
/// ran out, another store claims the delivery again, as the next try of the
/// same event (same `webhook-id`); the dead try's late answer records
/// nothing.
#[tokio::test]
async fn a_crashed_try_is_claimed_again_with_one_more_attempt() {
    let (first, second) = two_stores().await;
    ended_with_callback(&first).await;
    let first_try = first.claim_deliveries(&delivery_claim(t(3))).await.unwrap();
    assert_eq!(first_try.len(), 1);
    drop(first);

    let lease_end = t(3 + 30);
    assert_eq!(
        second.next_delivery_at(t(3)).await.unwrap(),
        Some(lease_end)
    );
    assert!(
        second
            .claim_deliveries(&delivery_claim(t(4)))
            .await
            .unwrap()
            .is_empty(),
        "held by the first try's lease"
    );
    let second_try = second
        .claim_deliveries(&delivery_claim(lease_end))
        .await
        .unwrap();
    assert_eq!(second_try.len(), 1);
    assert_eq!(second_try[0].event, first_try[0].event);
    assert_eq!(second_try[0].attempt, 2);

    let late = DeliveryOutcome::Delivered { at: t(40) };
    assert!(!second
        .record_delivery(first_try[0].reference(), late.clone())
        .await
        .unwrap());
    assert!(second
        .record_delivery(second_try[0].reference(), late)
        .await
        .unwrap());
    let call = second.get(second_try[0].event.call.id).await.unwrap();
    let callback = call.callback.expect("a callback URL applies");
    assert_eq!(
        (callback.state, callback.attempts),
        (CallbackState::Delivered, 2)
    );
}

/// Every way a call with a callback URL ends adds its delivery, and no
/// other change does: the terminal statuses the SQL names are the state
/// machine's.
#[tokio::test]
async fn every_terminal_status_and_only_those_add_a_delivery() {
    let (store, _) = two_stores().await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let mut new = with_callback(n);
        if n == 2 {
            new.expires_at = Some(t(50));
        }
        let at = t(i64::from(n));
        ids.push(
            store
                .create(CallId::new_v7(at), &new, at)
                .await
                .unwrap()
                .call
                .id,
        );
    }
    // 0 completes, 1 fails, 2 expires, 3 is canceled while pending, 4 is
    // canceled while live and then fails, 5 is retried and stays pending.
    store.cancel(ids[3], "no", t(10)).await.unwrap();
    assert_eq!(store.expire_due(t(50)).await.unwrap(), [ids[2]]);
    let claimed = store.claim(&claim_at(t(60), 10)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let attempt = |n: usize| {
        claimed
            .iter()
            .find(|call| call.id == ids[n])
            .unwrap()
            .current_attempt()
    };
    store.cancel(ids[4], "no", t(61)).await.unwrap();
    let settlements = [
        (
            0,
            Settlement::Completed {
                at: t(62),
                duration_sec: None,
            },
        ),
        (
            1,
            Settlement::Failed {
                error: "BUSY".into(),
                at: t(62),
                duration_sec: None,
            },
        ),
        (
            4,
            Settlement::Failed {
                error: "hung up".into(),
                at: t(62),
                duration_sec: None,
            },
        ),
        (
            5,
            Settlement::Retry {
                error: "provider 503".into(),
                at: t(62),
                retry_at: t(90),
            },
        ),
    ];
    for (n, settlement) in settlements {
        store.settle(attempt(n), settlement).await.unwrap();
    }
    let statuses: Vec<CallStatus> = {
        let mut statuses = Vec::new();
        for id in &ids {
            statuses.push(store.get(*id).await.unwrap().status);
        }
        statuses
    };
    use CallStatus::{Canceled, Completed, Expired, Failed, Pending};
    assert_eq!(
        statuses,
        [Completed, Failed, Expired, Canceled, Canceled, Pending]
    );
    let with_delivery: BTreeSet<CallId> =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT call_id FROM call_deliveries")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(CallId)
            .collect();
    let terminal: BTreeSet<CallId> = ids
        .iter()
        .zip(&statuses)
        .filter(|(_, status)| status.is_terminal())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(with_delivery, terminal);
}
