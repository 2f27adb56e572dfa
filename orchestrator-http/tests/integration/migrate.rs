//! `orchestrator migrate` as the binary runs it: `--create-database` on a
//! server where the database does not exist yet, and `DATABASE_SCHEMA`
//! putting the store in a schema of its own.

use orchestrator_core::{Store as _, StoreError};
use orchestrator_http::server::config::{Config, MigrateArgs};
use orchestrator_http::server::{self, AppError};
use orchestrator_pg::{PgStore, PgStoreOptions, SchemaName};
use reqwest::Url;

/// A URL on the test server naming a database that does not exist.
async fn missing_database_url() -> String {
    let existing = orchestrator_pg::testing::fresh_database_url().await;
    let mut url = Url::parse(&existing).unwrap();
    let name = format!("{}_created", url.path().trim_start_matches('/'));
    url.set_path(&name);
    url.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_the_store_in_its_schema() {
    let url = missing_database_url().await;
    let schema = SchemaName::new("orchestrator").unwrap();
    let config = Config {
        database_url: Some(url.parse().unwrap()),
        database_schema: Some(schema.clone()),
        ..Config::default()
    };

    // Without --create-database, a missing database is an error naming the server.
    match server::migrate(&config, MigrateArgs::default()).await {
        Err(AppError::Store { .. }) => {}
        other => panic!("expected AppError::Store, got {other:?}"),
    }

    let create = MigrateArgs {
        create_database: true,
    };
    server::migrate(&config, create)
        .await
        .expect("creates and migrates");
    // Again: the database and the migrations are there, nothing to do.
    server::migrate(&config, create).await.expect("idempotent");

    let in_schema = PgStore::connect_with(
        &url,
        &PgStoreOptions {
            schema,
            ..PgStoreOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(in_schema.counts().await.unwrap().total(), 0);
    // Nothing was created in `public`.
    let in_public = PgStore::connect(&url).await.unwrap();
    assert!(
        matches!(in_public.counts().await, Err(StoreError::Backend(_))),
        "the store's tables are in its own schema only"
    );
}
