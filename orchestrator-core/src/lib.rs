//! # orchestrator-core
//!
//! The heart of the outbound AI voice call orchestrator: clients enqueue calls,
//! the engine dials them through a [`Provider`] under a global cap of concurrent
//! calls with at most one call in flight per phone number, learns outcomes from
//! webhooks, and retries failures with exponential back-off.
//!
//! - [`call`]: the [`Call`] record; [`state`]: its state machine;
//!   [`attempt`]: the history of its dials.
//! - [`event`]: the event log, one [`Event`] per change of status;
//!   [`callback`]: delivering terminal events to clients' callback URLs.
//! - [`input`], [`phone`]: what clients send, as types that hold only valid
//!   values ([`ScriptId`], [`Metadata`], [`IdempotencyKey`], [`PhoneNumber`]);
//!   [`validate`]: the rules between fields.
//! - [`retry`], [`config`]: the policies (back-off, cap, lease, TTL).
//! - [`store`]: the [`Store`] trait; [`memory`]: the in-memory store.
//! - [`provider`]: the [`Provider`] trait; [`simulated`]: a seeded simulated provider.
//! - [`engine`]: the [`Engine`].
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! use std::sync::Arc;
//! use orchestrator_core::{
//!     CallStatus, EngineConfig, MemoryStore, NewCall, Engine, PhoneNumber, ScriptId,
//!     SimulatedProvider, SimulationConfig,
//! };
//!
//! let engine = Engine::builder(
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(SimulatedProvider::new(SimulationConfig::default())),
//! )
//! .config(EngineConfig::default().with_max_concurrent_calls(10))
//! .build()?;
//! let running = engine.start();
//! let created = engine
//!     .create_call(NewCall::new(
//!         PhoneNumber::parse("+966501234567")?,
//!         ScriptId::parse("welcomeFlow")?,
//!     ))
//!     .await?;
//! // The call as it was created, even if the dispatcher has dialled it since.
//! assert_eq!(created.call.status, CallStatus::Pending);
//! running.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

pub mod attempt;
pub mod call;
pub mod callback;
pub mod clock;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
pub mod event;
#[cfg(feature = "conformance")]
pub mod hooked;
pub mod input;
pub mod memory;
pub mod phone;
pub mod provider;
pub mod retry;
pub mod simulated;
pub mod state;
pub mod store;
pub mod validate;

pub use attempt::{Attempt, AttemptOutcome};
pub use call::{AttemptRef, Call, CallId, CallPatch, CallPayload, CallStatus, NewCall};
pub use callback::{
    CallbackError, CallbackSender, CallbackState, CallbackStatus, Delivery, DeliveryClaim,
    DeliveryOutcome, DeliveryRef,
};
pub use clock::{Clock, SystemClock, TokioClock};
pub use config::{ConfigError, EngineConfig, RedialPolicy};
pub use engine::{Engine, EngineBuilder, EngineError, EngineHandle, EventStream, WebhookOutcome};
pub use event::{Event, EventFilter, EventId, EventType};
pub use input::{CallbackUrl, IdempotencyKey, Metadata, ScriptId};
pub use memory::MemoryStore;
pub use phone::PhoneNumber;
pub use provider::{
    DialError, DialRequest, Dialled, HangUpError, Provider, ReportedStatus, StatusReport,
    WebhookDelivery, WebhookSink,
};
pub use retry::{RetryDecision, RetryPolicy, RetryPolicyError};
pub use simulated::{Faults, OutcomeMix, SimulatedProvider, SimulationConfig, StartedCall};
pub use state::TransitionError;
pub use store::{
    Canceled, ClaimRequest, Created, ListFilter, ListQuery, Page, Settled, Settlement,
    StatusCounts, Store, StoreError,
};
pub use validate::Invalid;

/// The attribute that implements [`Store`] and [`Provider`] need
/// (`#[orchestrator_core::async_trait]`), re-exported so implementors need no
/// dependency of their own.
pub use async_trait::async_trait;
