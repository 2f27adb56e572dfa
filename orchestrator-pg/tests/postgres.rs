//! Behaviours only the PostgreSQL store has: migrations, durability, the
//! database-enforced per-number rule, cross-process wake-ups, exact counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::call::{CallId, CallStatus, NewCall};
use orchestrator_core::store::{ClaimRequest, Settlement, StatusCounts};
use orchestrator_core::{IdempotencyKey, Metadata, PhoneNumber, ScriptId, Store, StoreError};
use orchestrator_pg::{testing, PgStore, LISTENER_APPLICATION_NAME, MIGRATOR};
use sqlx::error::ErrorKind;

/// How long a wake-up may take before the test fails; they arrive in
/// milliseconds, the margin is for a loaded CI machine.
const WAKE_UP_DEADLINE: Duration = Duration::from_secs(5);

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

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

async fn migrated_store() -> (String, PgStore) {
    let url = testing::fresh_database_url().await;
    let store = PgStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    (url, store)
}

fn claim_at(secs: i64, max_in_flight: u32) -> ClaimRequest {
    ClaimRequest {
        now: t(secs),
        max_in_flight,
        limit: 30,
        lease: Duration::from_secs(900),
    }
}

/// Counts by scanning `calls`, to check the trigger-maintained counters.
async fn counted(store: &PgStore) -> StatusCounts {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM calls GROUP BY status")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let mut counts = StatusCounts::default();
    for (status, n) in rows {
        counts.set(status.parse().unwrap(), n as u64);
    }
    counts
}

#[tokio::test]
async fn migrations_apply_twice_idempotently() {
    let (url, store) = migrated_store().await;
    store.migrate().await.expect("second migrate is a no-op");
    let again = PgStore::connect(&url).await.expect("connect");
    again
        .migrate()
        .await
        .expect("a second process migrates too");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
}

#[tokio::test]
async fn a_call_survives_reconnect() {
    let (url, store) = migrated_store().await;
    let created = store
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap()
        .call;
    store.pool().close().await;
    drop(store);

    let reopened = PgStore::connect(&url).await.expect("reconnect");
    assert_eq!(reopened.get(created.id).await.unwrap(), created);
    let claimed = reopened.claim(&claim_at(1, 5)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, created.id);
}

#[tokio::test]
async fn metadata_round_trips_byte_for_byte() {
    let (_, store) = migrated_store().await;
    let new = new_call(7);
    let call = store
        .create(CallId::new_v7(t(0)), &new, t(0))
        .await
        .unwrap()
        .call;
    assert_eq!(call.payload.metadata, new.payload.metadata);
    assert_eq!(store.get(call.id).await.unwrap().payload, new.payload);
}

#[tokio::test]
async fn the_database_rejects_a_second_in_progress_call_for_one_number() {
    let (_, store) = migrated_store().await;
    let first = store
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap()
        .call;
    let second = store
        .create(CallId::new_v7(t(1)), &new_call(1), t(1))
        .await
        .unwrap()
        .call;
    let in_progress = "UPDATE calls SET status = 'IN_PROGRESS', attempts = 1, \
                       lease_expires_at = $2 WHERE id = $1";
    sqlx::query(in_progress)
        .bind(first.id.0)
        .bind(t(900))
        .execute(store.pool())
        .await
        .expect("the first call of the number may be in progress");
    let error = sqlx::query(in_progress)
        .bind(second.id.0)
        .bind(t(900))
        .execute(store.pool())
        .await
        .expect_err("a second call of the number may not");
    let db = error.as_database_error().expect("a database error");
    assert_eq!(db.kind(), ErrorKind::UniqueViolation);
    assert_eq!(db.constraint(), Some("calls_one_in_progress_per_number"));
}

#[tokio::test]
async fn notify_from_one_store_wakes_another_stores_subscriber() {
    let (url, writer) = migrated_store().await;
    let reader = PgStore::connect(&url).await.expect("second store");
    let mut changes = reader.subscribe();

    let started = Instant::now();
    let call = writer
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap()
        .call;
    tokio::time::timeout(WAKE_UP_DEADLINE, changes.changed())
        .await
        .expect("create wakes the other store")
        .unwrap();
    println!("create -> other store's wake-up: {:?}", started.elapsed());

    let claimed = writer.claim(&claim_at(1, 5)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, call.id);
    changes.mark_unchanged();
    let started = Instant::now();
    writer
        .settle(
            claimed[0].current_attempt(),
            Settlement::Completed {
                at: t(2),
                duration_sec: Some(1),
            },
        )
        .await
        .unwrap();
    tokio::time::timeout(WAKE_UP_DEADLINE, changes.changed())
        .await
        .expect("settle wakes the other store")
        .unwrap();
    println!("settle -> other store's wake-up: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_lost_listener_connection_is_re_established_and_signalled() {
    let (url, writer) = migrated_store().await;
    let reader = PgStore::connect(&url).await.expect("second store");
    let mut changes = reader.subscribe();

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(writer.pool())
    .await
    .unwrap();
    assert_eq!(terminated, vec![true, true], "one listener per store");

    // Nothing changed, but a notification might have been lost while the
    // connection was down: the reader is told so once it is back.
    tokio::time::timeout(WAKE_UP_DEADLINE, changes.changed())
        .await
        .expect("the reconnect is signalled")
        .unwrap();
    changes.mark_unchanged();
    writer
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap();
    tokio::time::timeout(WAKE_UP_DEADLINE, changes.changed())
        .await
        .expect("notifications flow again after the reconnect")
        .unwrap();
}

#[tokio::test]
async fn concurrent_creates_with_one_idempotency_key_store_one_call() {
    let (url, first) = migrated_store().await;
    let second = PgStore::connect(&url).await.expect("second store");
    let stores = [Arc::new(first), Arc::new(second)];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u32 {
        let store = Arc::clone(&stores[(i % 2) as usize]);
        tasks.spawn(async move {
            let mut new = new_call(i);
            new.idempotency_key = Some(IdempotencyKey::parse("order-42").unwrap());
            let now = t(i64::from(i));
            store.create(CallId::new_v7(now), &new, now).await.unwrap()
        });
    }
    let results = tasks.join_all().await;
    assert_eq!(results.iter().filter(|created| created.created).count(), 1);
    let first_call = &results.iter().find(|created| created.created).unwrap().call;
    assert!(results
        .iter()
        .all(|created| created.call.id == first_call.id));
    assert_eq!(stores[0].counts().await.unwrap().total(), 1);
}

#[tokio::test]
async fn counts_stay_exact_through_compaction() {
    let (_, store) = migrated_store().await;
    for n in 0..20 {
        store
            .create(CallId::new_v7(t(n)), &new_call(n as u32 % 7), t(n))
            .await
            .unwrap();
    }
    let claimed = store.claim(&claim_at(100, 5)).await.unwrap();
    assert_eq!(claimed.len(), 5);
    for (i, call) in claimed.iter().enumerate() {
        let settlement = match i % 3 {
            0 => Settlement::Completed {
                at: t(101),
                duration_sec: None,
            },
            1 => Settlement::Failed {
                error: "BUSY".into(),
                at: t(101),
                duration_sec: None,
            },
            _ => Settlement::Retry {
                error: "provider 503".into(),
                at: t(101),
                retry_at: t(130),
            },
        };
        store
            .settle(call.current_attempt(), settlement)
            .await
            .unwrap();
    }
    store.expire_due(t(100)).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), counted(&store).await);

    sqlx::query("SELECT compact_call_status_counts()")
        .execute(store.pool())
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM call_status_counts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        rows <= 5,
        "compaction leaves one row per status, found {rows}"
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(counts, counted(&store).await);
    assert_eq!(counts.get(CallStatus::Pending), 15 + 1);
    assert_eq!(counts.get(CallStatus::Completed), 2);
    assert_eq!(counts.get(CallStatus::Failed), 2);
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on the loopback: nothing listens there.
    let error = PgStore::connect("postgres://nobody@127.0.0.1:1/nothing")
        .await
        .expect_err("nothing to connect to");
    assert!(
        matches!(error, orchestrator_core::StoreError::Unavailable(_)),
        "{error:?}"
    );
}

/// Every message in `error`'s chain of sources, outermost first.
fn messages(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut messages = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        messages.push(error.to_string());
        next = error.source();
    }
    messages
}

/// The error as an operator sees it (`{:#}`: each message of the chain,
/// joined by colons) contains its root cause exactly once, and no message
/// repeats the message of its source.
fn assert_each_cause_printed_once(error: orchestrator_core::StoreError) -> String {
    let messages = messages(&error);
    for pair in messages.windows(2) {
        assert!(
            !pair[0].contains(&pair[1]),
            "{:?} repeats its source {:?}",
            pair[0],
            pair[1]
        );
    }
    let printed = format!("{:#}", anyhow::Error::from(error));
    let root = messages.last().expect("an error has a message");
    assert_eq!(printed.matches(root.as_str()).count(), 1, "{printed}");
    printed
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_its_cause_printed_once() {
    let error = PgStore::connect("postgres://nobody:hunter2@127.0.0.1:1/nothing")
        .await
        .expect_err("nothing to connect to");
    assert!(
        matches!(error, orchestrator_core::StoreError::Unavailable(_)),
        "{error:?}"
    );
    let printed = assert_each_cause_printed_once(error);
    assert!(
        printed.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[tokio::test]
async fn a_missing_database_is_named_with_its_cause_printed_once() {
    let url = testing::fresh_database_url().await;
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let missing = format!("{base}_missing?{query}");
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let target = format!("{}:{}", options.get_host(), options.get_port());

    let error = PgStore::connect(&missing)
        .await
        .expect_err("the database does not exist");
    // A missing database is not a transient failure: retrying will not help.
    assert!(
        matches!(error, orchestrator_core::StoreError::Backend(_)),
        "{error:?}"
    );
    let printed = assert_each_cause_printed_once(error);
    assert!(
        printed.contains(&format!("cannot connect to PostgreSQL at {target}")),
        "{printed}"
    );
    assert!(printed.contains("_missing"), "{printed}");
}

#[tokio::test]
async fn claim_looks_past_a_backlog_of_one_number() {
    let (_, store) = migrated_store().await;
    // 50 calls to number 1 first, then one each to numbers 2 to 4: the claim
    // has to page past the backlog (its pages are a few rows) to fill up.
    for i in 0..50 {
        store
            .create(CallId::new_v7(t(i)), &new_call(1), t(i))
            .await
            .unwrap();
    }
    for n in 2..=4 {
        let at = t(100 + i64::from(n));
        store
            .create(CallId::new_v7(at), &new_call(n), at)
            .await
            .unwrap();
    }
    let mut request = claim_at(200, 10);
    request.limit = 4;
    let claimed = store.claim(&request).await.unwrap();
    let numbers: Vec<&str> = claimed.iter().map(|c| c.payload.to.as_str()).collect();
    assert_eq!(
        numbers,
        [
            "+14155550001",
            "+14155550002",
            "+14155550003",
            "+14155550004"
        ]
    );
    assert_eq!(claimed[0].created_at, t(0), "the oldest call of the number");

    // With every number busy, the backlog is skipped and nothing consumed.
    assert!(store.claim(&request).await.unwrap().is_empty());
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.get(CallStatus::InProgress), 4);
    assert_eq!(counts.get(CallStatus::Pending), 49);
    let untouched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM calls WHERE status = 'PENDING' AND attempts = 0")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(untouched, 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_due_from_many_stores_at_once_expires_each_call_once() {
    let (url, first) = migrated_store().await;
    sqlx::query(
        "INSERT INTO calls (id, to_number, script_id, status, attempts, created_at, expires_at) \
         SELECT gen_random_uuid(), '+1415555' || lpad(i::text, 4, '0'), 's', 'PENDING', 0, $1, $2 \
         FROM generate_series(1, 2000) AS i",
    )
    .bind(t(0))
    .bind(t(10))
    .execute(first.pool())
    .await
    .unwrap();
    let mut stores = vec![Arc::new(first)];
    for _ in 0..3 {
        stores.push(Arc::new(PgStore::connect(&url).await.unwrap()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for store in &stores {
        for _ in 0..2 {
            let store = Arc::clone(store);
            tasks.spawn(async move { store.expire_due(t(20)).await.unwrap() });
        }
    }
    let mut expired: Vec<CallId> = tasks.join_all().await.into_iter().flatten().collect();
    // Rows another store held were skipped, and that store expired them.
    let total = expired.len();
    expired.sort();
    expired.dedup();
    assert_eq!(total, expired.len(), "a call was expired twice");
    assert_eq!(expired.len(), 2000);
    let counts = stores[0].counts().await.unwrap();
    assert_eq!(counts.get(CallStatus::Expired), 2000);
    assert_eq!(counts.get(CallStatus::Pending), 0);
}

/// Calls in every status, at known instants:
/// - ended: 5 EXPIRED at t(25), 1 COMPLETED at t(30), 2 FAILED at t(40),
///   7 COMPLETED at t(200);
/// - live: 3 PENDING after a failed attempt, 4 IN_PROGRESS, 6 PENDING never
///   dialled.
///
/// Calls 1 to 4 and 7 were dialled and have provider ids `p-<n>`.
async fn calls_in_every_status(store: &PgStore) -> Vec<CallId> {
    let mut ids = Vec::new();
    for n in 1..=7u32 {
        let at = t(i64::from(n));
        let mut new = new_call(n);
        if n == 5 || n == 6 {
            new.not_before = Some(t(1000));
        }
        if n == 5 {
            new.expires_at = Some(t(20));
        }
        ids.push(
            store
                .create(CallId::new_v7(at), &new, at)
                .await
                .unwrap()
                .call
                .id,
        );
    }
    let claimed = store.claim(&claim_at(10, 10)).await.unwrap();
    assert_eq!(claimed.len(), 5);
    for call in &claimed {
        let number = call.payload.to.as_str();
        let provider_id = format!(
            "p-{}",
            number
                .trim_start_matches("+1415555")
                .trim_start_matches('0')
        );
        assert!(store
            .record_dial(call.current_attempt(), &provider_id)
            .await
            .unwrap()
            .is_some());
    }
    let attempt = |n: usize| claimed[n].current_attempt();
    let settlements = [
        (
            0,
            Settlement::Completed {
                at: t(30),
                duration_sec: Some(20),
            },
        ),
        (
            1,
            Settlement::Failed {
                error: "BUSY".into(),
                at: t(40),
                duration_sec: None,
            },
        ),
        (
            2,
            Settlement::Retry {
                error: "provider 503".into(),
                at: t(40),
                retry_at: t(60),
            },
        ),
        (
            4,
            Settlement::Completed {
                at: t(200),
                duration_sec: Some(5),
            },
        ),
    ];
    for (n, settlement) in settlements {
        store.settle(attempt(n), settlement).await.unwrap();
    }
    assert_eq!(store.expire_due(t(25)).await.unwrap(), [ids[4]]);
    ids
}

async fn rows_about(store: &PgStore, table: &str, ids: &[CallId]) -> i64 {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE call_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn purge_deletes_ended_calls_oldest_first_with_everything_stored_about_them() {
    let (_, store) = migrated_store().await;
    let ids = calls_in_every_status(&store).await;
    let (purged, kept) = ([ids[0], ids[1], ids[4]], [ids[2], ids[3], ids[5], ids[6]]);
    let mut before = Vec::new();
    for id in kept {
        before.push(store.get(id).await.unwrap());
    }

    // Small batches, oldest end first: 5 (t25) and 1 (t30), then 2 (t40);
    // 7 ended after the cutoff and the rest have not ended.
    assert_eq!(store.purge_ended_before(t(100), 2).await.unwrap(), 2);
    assert!(matches!(store.get(ids[1]).await, Ok(call) if call.status == CallStatus::Failed));
    assert_eq!(store.purge_ended_before(t(100), 2).await.unwrap(), 1);
    assert_eq!(store.purge_ended_before(t(100), 2).await.unwrap(), 0);

    for id in purged {
        assert!(matches!(store.get(id).await, Err(StoreError::NotFound(gone)) if gone == id));
    }
    for call in before {
        assert_eq!(store.get(call.id).await.unwrap(), call, "untouched");
    }
    assert_eq!(rows_about(&store, "call_attempts", &purged).await, 0);
    assert_eq!(rows_about(&store, "provider_calls", &purged).await, 0);
    assert_eq!(rows_about(&store, "call_attempts", &kept).await, 3);

    // A late webhook naming a purged call's provider id finds nothing, as
    // for any unknown id; the live calls' ids still resolve.
    assert_eq!(store.find_attempt("p-1").await.unwrap(), None);
    assert_eq!(store.find_attempt("p-2").await.unwrap(), None);
    assert!(store.find_attempt("p-3").await.unwrap().is_some());
    assert!(store.find_attempt("p-4").await.unwrap().is_some());

    let counts = store.counts().await.unwrap();
    assert_eq!(counts, counted(&store).await);
    assert_eq!(counts.get(CallStatus::Pending), 2);
    assert_eq!(counts.get(CallStatus::InProgress), 1);
    assert_eq!(counts.get(CallStatus::Completed), 1);
    assert_eq!(counts.get(CallStatus::Failed), 0);
    assert_eq!(counts.get(CallStatus::Expired), 0);
    sqlx::query("SELECT compact_call_status_counts(1869771365, 2)")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.counts().await.unwrap(), counts);
}

#[tokio::test]
async fn purge_skips_calls_another_transaction_holds_instead_of_waiting() {
    let (_, store) = migrated_store().await;
    let ids = calls_in_every_status(&store).await;
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
        .bind(ids[0].0)
        .execute(&mut *holder)
        .await
        .unwrap();

    let purged = tokio::time::timeout(
        Duration::from_secs(10),
        store.purge_ended_before(t(100), 10),
    )
    .await
    .expect("purge does not wait for a held row")
    .unwrap();
    assert_eq!(purged, 2, "calls 2 and 5; call 1 is held");
    holder.rollback().await.unwrap();
    assert_eq!(store.purge_ended_before(t(100), 10).await.unwrap(), 1);
    assert_eq!(store.counts().await.unwrap(), counted(&store).await);
}

/// `url` naming database `name` (percent-encoded) instead of its own.
fn on_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}?{query}")
}

#[tokio::test]
async fn create_database_if_missing_creates_it_once_and_the_store_migrates_there() {
    let url = testing::fresh_database_url().await;
    let name = format!("{}_new \"db\"", url.rsplit_once('/').unwrap().1);
    // The name needs quoting: a space and double quotes.
    let new_url = on_database(&url, &name.replace(' ', "%20").replace('"', "%22"));

    assert!(PgStore::create_database_if_missing(&new_url).await.unwrap());
    assert!(
        !PgStore::create_database_if_missing(&new_url).await.unwrap(),
        "exists now"
    );
    let store = PgStore::connect(&new_url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(database, name);
}

#[tokio::test]
async fn create_database_if_missing_reports_a_role_that_may_not_create_one() {
    let url = testing::fresh_database_url().await;
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let role = format!("{database}_nocreatedb");
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE ROLE \"{role}\" LOGIN NOCREATEDB"))
        .execute(&admin)
        .await
        .unwrap();
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(as_role, url, "the test URL names user postgres");

    assert!(
        !PgStore::create_database_if_missing(&as_role).await.unwrap(),
        "an existing database needs no right"
    );
    let missing = on_database(&as_role, &format!("{database}_missing"));
    let error = PgStore::create_database_if_missing(&missing)
        .await
        .expect_err("the role may not create databases");
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    let printed = format!("{:#}", anyhow::Error::from(error));
    assert!(printed.contains("permission denied"), "{printed}");
}

#[tokio::test]
async fn a_fresh_role_with_createdb_creates_and_migrates_its_database() {
    // The documented first start: a login role with CREATEDB, then
    // `migrate --create-database` on a URL naming a database not made yet.
    let url = testing::fresh_database_url().await;
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let role = format!("{database}_orchestrator");
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'p@ss:w/rd' CREATEDB"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let as_role = on_database(
        &url.replacen("postgres@", &format!("{role}:p%40ss%3Aw%2Frd@"), 1),
        &format!("{database}_own"),
    );

    assert!(PgStore::create_database_if_missing(&as_role).await.unwrap());
    let store = PgStore::connect(&as_role).await.expect("connect");
    store
        .migrate()
        .await
        .expect("the owner may create tables in public");
    store
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap();
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(owner, role);
}
