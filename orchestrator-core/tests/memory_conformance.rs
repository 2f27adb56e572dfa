//! The `Store` conformance suite on `MemoryStore`.

use std::sync::Arc;

use orchestrator_core::{MemoryStore, Store};

async fn new_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

orchestrator_core::store_conformance_tests!(new_store);
