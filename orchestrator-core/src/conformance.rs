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

use crate::call::{AttemptRef, Call, CallId, CallStatus, NewCall, PayloadPatch};
use crate::clock;
use crate::phone::PhoneNumber;
use crate::store::{ClaimRequest, ListQuery, Settled, Settlement, Store, StoreError};

/// Emits one `#[tokio::test]` per conformance behaviour. `$new_store` is an
/// `async fn() -> Arc<dyn Store>` (or a path to one) returning a fresh, empty store.
///
/// ```ignore
/// async fn new_store() -> Arc<dyn Store> { Arc::new(MemoryStore::new()) }
/// orchestrator_core::store_conformance_tests!(new_store);
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($new_store:path) => {
        $crate::store_conformance_tests!(@emit $new_store;
            create_then_get_round_trips,
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

fn new_call(n: u32) -> NewCall {
    let mut new = NewCall::new(number(n), "welcomeFlow");
    new.payload.metadata = Some(serde_json::json!({ "customer": n }));
    new
}

async fn create(store: &dyn Store, n: u32, at: DateTime<Utc>) -> Call {
    store
        .create(CallId::new_v7(at), &new_call(n), at)
        .await
        .expect("create")
        .call
}

/// `create` stores a PENDING call with no attempts; `get` returns it unchanged.
pub async fn create_then_get_round_trips(store: Arc<dyn Store>) {
    let call = create(&*store, 1, t(0)).await;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, 0);
    assert_eq!(call.created_at, t(0));
    assert_eq!(store.get(call.id).await.expect("get"), call);
}
