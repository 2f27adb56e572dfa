//! The store conformance suite, run through [`CheckedStore`] in strict mode:
//! every behaviour of the suite must hold, and every operation it makes must
//! keep the store contract as the checker states it (a violation panics).
//! This holds the memory store, and the checker the simulation relies on, to
//! the contract every backend keeps.

use std::sync::Arc;

use orchestrator_core::{MemoryStore, Store};

use crate::checked::CheckedStore;

async fn new_store() -> Arc<dyn Store> {
    Arc::new(CheckedStore::strict(MemoryStore::new()))
}

orchestrator_core::store_conformance_tests!(new_store);
