//! A store in a schema of its own: beside a host application's tables and
//! migrations in one database, and beside another store in another schema.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::call::{CallId, CallStatus, NewCall};
use orchestrator_core::store::ClaimRequest;
use orchestrator_core::{PhoneNumber, Store, StoreError};
use orchestrator_pg::{testing, PgStore, PgStoreOptions, SchemaName, MIGRATOR};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

const WAKE_UP_DEADLINE: Duration = Duration::from_secs(5);

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

fn new_call(n: u32) -> NewCall {
    NewCall::new(
        PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap(),
        orchestrator_core::ScriptId::parse("welcomeFlow").unwrap(),
    )
}

fn in_schema(name: &str) -> PgStoreOptions {
    PgStoreOptions {
        schema: SchemaName::new(name).unwrap(),
        ..PgStoreOptions::default()
    }
}

async fn migrated(url: &str, schema: &str) -> PgStore {
    let store = PgStore::connect_with(url, &in_schema(schema))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// A host application's own sqlx migrations: one of them creates a table
/// named like ours.
fn host_migrator() -> Migrator {
    let migration = |version: i64, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed("host"),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )
    };
    Migrator {
        migrations: Cow::Owned(vec![
            migration(
                1,
                "CREATE TABLE calls (id serial PRIMARY KEY, note text NOT NULL)",
            ),
            migration(2, "INSERT INTO calls (note) VALUES ('the host''s own row')"),
        ]),
        ..Migrator::DEFAULT
    }
}

/// A plain pool on `url`, with the server's default search_path, as the
/// host application has.
async fn host_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

async fn versions(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT version FROM {table} ORDER BY version"))
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_store_in_its_own_schema_migrates_beside_a_host_applications_migrations() {
    let url = testing::fresh_database_url().await;
    let host = host_pool(&url).await;
    host_migrator().run(&host).await.expect("the host migrates");

    // Without a schema of its own, the store finds the host's migrations in
    // the one `_sqlx_migrations` and refuses to guess.
    let in_public = PgStore::connect(&url).await.expect("connect");
    let error = in_public.migrate().await.expect_err("foreign migrations");
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    // The failed run released sqlx's migration lock (which the next
    // migration of this database, in any schema, waits for) although the
    // store is still open.
    let store = tokio::time::timeout(Duration::from_secs(30), migrated(&url, "orchestrator"))
        .await
        .expect("the migration lock was released");
    store.migrate().await.expect("migrating again is a no-op");
    let call = store
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap()
        .call;
    assert_eq!(store.get(call.id).await.unwrap(), call);

    let ours: Vec<i64> = MIGRATOR.iter().map(|migration| migration.version).collect();
    assert_eq!(versions(&host, "orchestrator._sqlx_migrations").await, ours);
    assert_eq!(versions(&host, "public._sqlx_migrations").await, [1, 2]);
    host_migrator()
        .run(&host)
        .await
        .expect("the host still migrates: nothing of ours is in its table");
    let host_rows: Vec<String> = sqlx::query_scalar("SELECT note FROM calls")
        .fetch_all(&host)
        .await
        .unwrap();
    assert_eq!(host_rows, ["the host's own row"]);
    let ours: i64 = sqlx::query_scalar("SELECT count(*) FROM orchestrator.calls")
        .fetch_one(&host)
        .await
        .unwrap();
    assert_eq!(ours, 1);
}

#[tokio::test]
async fn migrate_creates_the_schema_once_even_when_stores_race() {
    let url = testing::fresh_database_url().await;
    let stores = [
        PgStore::connect_with(&url, &in_schema("orchestrator"))
            .await
            .unwrap(),
        PgStore::connect_with(&url, &in_schema("orchestrator"))
            .await
            .unwrap(),
    ];
    let (first, second) = tokio::join!(stores[0].migrate(), stores[1].migrate());
    first.expect("first store migrates");
    second.expect("second store migrates");
    assert_eq!(stores[0].schema().as_str(), "orchestrator");
    assert_eq!(stores[0].counts().await.unwrap().total(), 0);
}

#[tokio::test]
async fn two_stores_in_two_schemas_of_one_database_are_independent() {
    let url = testing::fresh_database_url().await;
    let a = migrated(&url, "tenant_a").await;
    let b = migrated(&url, "tenant_b").await;

    // The same three numbers in both schemas.
    for store in [&a, &b] {
        for n in 0..3 {
            store
                .create(CallId::new_v7(t(n)), &new_call(n as u32), t(n))
                .await
                .unwrap();
        }
    }
    let only_in_a = a
        .create(CallId::new_v7(t(5)), &new_call(9), t(5))
        .await
        .unwrap()
        .call;
    assert!(matches!(
        b.get(only_in_a.id).await,
        Err(StoreError::NotFound(id)) if id == only_in_a.id
    ));
    assert_eq!(a.counts().await.unwrap().total(), 4);
    assert_eq!(b.counts().await.unwrap().total(), 3);

    // Each cap counts its own schema's calls, and a number in progress in
    // one schema is free in the other.
    let claim = ClaimRequest {
        now: t(10),
        max_in_flight: 2,
        limit: 10,
        lease: Duration::from_secs(900),
    };
    let claimed_a = a.claim(&claim).await.unwrap();
    let claimed_b = b.claim(&claim).await.unwrap();
    assert_eq!(claimed_a.len(), 2);
    assert_eq!(claimed_b.len(), 2);
    let numbers = |calls: &[orchestrator_core::Call]| {
        calls
            .iter()
            .map(|call| call.payload.to.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(numbers(&claimed_a), numbers(&claimed_b));
    assert!(a.claim(&claim).await.unwrap().is_empty(), "a's cap is full");
    assert!(b.claim(&claim).await.unwrap().is_empty(), "b's cap is full");
    assert_eq!(a.counts().await.unwrap().get(CallStatus::InProgress), 2);
    assert_eq!(b.counts().await.unwrap().get(CallStatus::Pending), 1);
}

#[tokio::test]
async fn each_schema_notifies_its_own_channel_only() {
    let url = testing::fresh_database_url().await;
    let public = PgStore::connect(&url).await.unwrap();
    public.migrate().await.unwrap();
    let a = migrated(&url, "tenant_a").await;
    let b = migrated(&url, "tenant_b").await;

    let mut listener = PgListener::connect(&url).await.unwrap();
    listener
        .listen_all([
            "orchestrator_calls",
            "orchestrator_calls.tenant_a",
            "orchestrator_calls.tenant_b",
        ])
        .await
        .unwrap();
    for (n, store) in [&a, &b, &public].into_iter().enumerate() {
        let at = t(n as i64);
        store
            .create(CallId::new_v7(at), &new_call(n as u32), at)
            .await
            .unwrap();
    }
    // Each store notifies from a task of its own, so the three may arrive
    // in any order; a second channel notified by one create would make a
    // fourth notification or replace one of these.
    let mut channels = Vec::new();
    for _ in 0..3 {
        let notification = tokio::time::timeout(WAKE_UP_DEADLINE, listener.recv())
            .await
            .expect("a notification")
            .unwrap();
        channels.push(notification.channel().to_owned());
    }
    channels.sort();
    assert_eq!(
        channels,
        [
            "orchestrator_calls",
            "orchestrator_calls.tenant_a",
            "orchestrator_calls.tenant_b",
        ]
    );
    let extra = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await;
    assert!(extra.is_err(), "one notification per create: {extra:?}");
}

#[tokio::test]
async fn a_change_in_a_schema_wakes_the_other_stores_of_that_schema() {
    let url = testing::fresh_database_url().await;
    let writer = migrated(&url, "tenant_a").await;
    let reader = PgStore::connect_with(&url, &in_schema("tenant_a"))
        .await
        .unwrap();
    let mut changes = reader.subscribe();
    writer
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap();
    tokio::time::timeout(WAKE_UP_DEADLINE, changes.changed())
        .await
        .expect("the create wakes the other store of the schema")
        .unwrap();
}

#[tokio::test]
async fn a_store_in_public_refuses_a_search_path_that_resolves_elsewhere() {
    let url = testing::fresh_database_url().await;
    let host = host_pool(&url).await;
    sqlx::query("CREATE SCHEMA app")
        .execute(&host)
        .await
        .unwrap();
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&host)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" SET search_path = app, public"
    ))
    .execute(&host)
    .await
    .unwrap();

    let error = PgStore::connect(&url)
        .await
        .expect_err("names would resolve to app, not public");
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    let message = std::error::Error::source(&error).unwrap().to_string();
    assert!(message.contains("\"app\""), "{message}");

    let store = migrated(&url, "app").await;
    assert_eq!(store.schema().as_str(), "app");
}

#[tokio::test]
async fn from_pool_lives_in_the_pools_schema() {
    let url = testing::fresh_database_url().await;
    migrated(&url, "tenant_a").await;
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([("search_path", "tenant_a")]);
    let pool = PgPoolOptions::new().connect_with(options).await.unwrap();
    let store = PgStore::from_pool(pool).await.unwrap();
    assert_eq!(store.schema().as_str(), "tenant_a");
    store
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap();
    assert_eq!(store.counts().await.unwrap().total(), 1);
}

#[tokio::test]
async fn a_role_without_rights_on_the_database_migrates_into_a_schema_made_for_it() {
    let url = testing::fresh_database_url().await;
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let role = format!("{database}_app");
    let admin = host_pool(&url).await;
    for statement in [
        format!("CREATE ROLE \"{role}\" LOGIN"),
        format!("CREATE SCHEMA orchestrator AUTHORIZATION \"{role}\""),
    ] {
        sqlx::query(&statement).execute(&admin).await.unwrap();
    }
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);

    let store = migrated(&as_role, "orchestrator").await;
    store
        .create(CallId::new_v7(t(0)), &new_call(1), t(0))
        .await
        .unwrap();

    // A schema that does not exist needs the right to create it.
    let elsewhere = PgStore::connect_with(&as_role, &in_schema("elsewhere"))
        .await
        .unwrap();
    let error = elsewhere
        .migrate()
        .await
        .expect_err("may not create schemas");
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    sqlx::query(&format!(
        "GRANT CREATE ON DATABASE \"{database}\" TO \"{role}\""
    ))
    .execute(&admin)
    .await
    .unwrap();
    elsewhere.migrate().await.expect("the schema is created");
    assert_eq!(elsewhere.counts().await.unwrap().total(), 0);
}
