//! The backend-agnostic `Store` conformance suite, on PostgreSQL: every
//! behaviour runs against its own fresh, migrated database.

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
