//! The backend-agnostic `Store` conformance suite, on PostgreSQL: every
//! behaviour runs against its own fresh, migrated database, once with the
//! store in `public` and once in a schema of its own.

use std::sync::Arc;

use orchestrator_core::Store;
use orchestrator_pg::{testing, PgStore};

async fn new_store() -> Arc<dyn Store> {
    let url = testing::fresh_database_url().await;
    let store = PgStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

orchestrator_core::store_conformance_tests!(new_store);

/// Every query resolves its tables through the schema's `search_path`.
mod in_a_schema_of_its_own {
    use std::sync::Arc;

    use orchestrator_core::Store;
    use orchestrator_pg::{testing, PgStore, PgStoreOptions, SchemaName};

    async fn new_store() -> Arc<dyn Store> {
        let url = testing::fresh_database_url().await;
        let options = PgStoreOptions {
            schema: SchemaName::new("orchestrator").unwrap(),
            ..PgStoreOptions::default()
        };
        let store = PgStore::connect_with(&url, &options)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        Arc::new(store)
    }

    orchestrator_core::store_conformance_tests!(new_store);
}
