//! The engine: creates calls, dispatches them to the provider under the cap,
//! settles webhooks, retries with back-off, reclaims stale leases and expires
//! calls that waited too long.
//!
//! - This module: the [`Engine`] API, its builder and its errors.
//! - `dispatch`: the dispatch loop, its rounds, the dial tasks and the
//!   shutdown drain.
//! - `intake`: settling webhooks, from HTTP or from an in-process provider.
//! - `decide`: pure functions deciding what a dial's answer or a webhook's
//!   report settles an attempt to.
//! - `persist`: retrying the store writes that record a provider's answer
//!   through a store outage.
//! - `retention`: deleting calls that ended long ago.
//! - `control`: cancel (with the provider's hang-up) and retry.
//! - `pause`: pausing dialling after an account error.
//! - `events`: reading the event log as a live stream.
//! - `deliver`: the worker that delivers terminal events to callback URLs.
//!
//! Dispatch is event-driven: the dispatcher sleeps until the store signals a
//! change (a call created, a slot freed) or the next timed event is due, then
//! runs one *round* (expire, reclaim, claim). A slow fallback timer covers
//! lost signals. All invariants live in the store; the engine holds no slot
//! accounting of its own, so any number of engines may share one store.

mod control;
mod decide;
mod deliver;
mod dispatch;
mod events;
mod intake;
mod pause;
mod persist;
mod retention;

pub use control::MAX_CANCEL_REASON_CHARS;
pub use events::EventStream;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::attempt::Attempt;
use crate::call::{Call, CallId, CallPatch, NewCall};
use crate::callback::CallbackSender;
use crate::clock::{self, Clock, SystemClock};
use crate::config::{ConfigError, EngineConfig};
use crate::provider::{Provider, WebhookDelivery, WebhookSink};
use crate::retry::RetryPolicy;
use crate::state::TransitionError;
use crate::store::{Created, ListQuery, Page, StatusCounts, Store, StoreError};
use crate::validate::{validate_new_call, Invalid};

/// What an engine operation can fail with; HTTP maps each to a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The input is invalid; names the field at fault.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such call, or no call known by this provider call id.
    #[error("{0}")]
    NotFound(String),
    /// The change is not allowed in the call's status (e.g. PATCH after dialling).
    #[error("call {id} refused the change")]
    Conflict {
        /// The call.
        id: CallId,
        /// The refused transition; `source.from` is the call's status.
        source: TransitionError,
    },
    /// The store failed or cannot be reached.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => EngineError::NotFound(format!("call {id} not found")),
            StoreError::Conflict { id, source } => EngineError::Conflict { id, source },
            StoreError::Invalid(invalid) => EngineError::Invalid(invalid),
            other => EngineError::Store(other),
        }
    }
}

/// What a webhook did.
#[derive(Clone, Debug, PartialEq)]
pub enum WebhookOutcome {
    /// It settled the call's current attempt; the call as it now is.
    Applied(Call),
    /// A repeated or late webhook (an older attempt, or one settled already):
    /// nothing changed. The call as it is.
    Unchanged(Call),
    /// It named an attempt of the call that was never dialled: nothing changed.
    Ignored(Call),
}

impl WebhookOutcome {
    /// The call the webhook concerned.
    #[must_use]
    pub fn call(&self) -> &Call {
        match self {
            WebhookOutcome::Applied(call)
            | WebhookOutcome::Unchanged(call)
            | WebhookOutcome::Ignored(call) => call,
        }
    }

    /// A label for logs and metrics: `applied`, `unchanged` or `ignored`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            WebhookOutcome::Applied(_) => "applied",
            WebhookOutcome::Unchanged(_) => "unchanged",
            WebhookOutcome::Ignored(_) => "ignored",
        }
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    seed: Option<u64>,
    callbacks: Option<Arc<dyn CallbackSender>>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// The engine's configuration (default: [`EngineConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock (default: [`SystemClock`]).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Delivers terminal events to the calls' callback URLs through `sender`
    /// (default: none; deliveries then wait in the store's outbox).
    #[must_use]
    pub fn callbacks(mut self, sender: Arc<dyn CallbackSender>) -> Self {
        self.callbacks = Some(sender);
        self
    }

    /// The seed of the jitter generator, for replayable runs (default: random).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The engine, not yet running: call [`Engine::start`] to dispatch.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is out of range.
    pub fn build(self) -> Result<Engine, ConfigError> {
        self.config.validate()?;
        // Half of each delay at most is cut at random, so engines that lost
        // the store together do not come back in step. No attempt limit:
        // the attempt's lease ends the tries.
        let store_retry = RetryPolicy::new(
            self.config.store_retry_base,
            self.config.store_retry_max,
            u32::MAX,
            0.5,
        )
        .map_err(|_| ConfigError {
            field: "store_retry_base",
            problem: "must be positive and at most store_retry_max",
        })?;
        let rng = match self.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                store: self.store,
                provider: self.provider,
                clock: self.clock,
                config: self.config,
                rng: Mutex::new(rng),
                store_retry,
                pending_retries: watch::Sender::new(0),
                callbacks: self.callbacks,
                paused_until: watch::Sender::new(None),
                reconciling: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }
}

/// What every part of the engine shares.
struct Inner {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// The one source of randomness (call ids, jitter), seeded for replays.
    rng: Mutex<ChaCha8Rng>,
    /// The back-off between tries of a store write that failed.
    store_retry: RetryPolicy,
    /// How many store writes are being retried; a graceful shutdown waits
    /// for it to reach 0.
    pending_retries: watch::Sender<usize>,
    /// Where terminal events go, when callbacks are on.
    callbacks: Option<Arc<dyn CallbackSender>>,
    /// Until when claiming is paused after an account error (see `pause`);
    /// the dispatcher wakes when it changes.
    paused_until: watch::Sender<Option<DateTime<Utc>>>,
    /// Attempts whose lease ran out and that a task is settling now.
    reconciling: Mutex<std::collections::HashSet<crate::call::AttemptRef>>,
}

impl Inner {
    /// Runs `draw` with the engine's random generator.
    fn with_rng<T>(&self, draw: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        // The generator has no invariant a panic could break.
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        draw(&mut rng)
    }
}

/// The call orchestrator. Cheap to clone: clones share one engine.
///
/// The API methods (`create_call`, `handle_webhook`, ...) work whether or not
/// the dispatcher runs; [`start`](Engine::start) runs it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A builder over `store` and `provider`.
    #[must_use]
    pub fn builder(store: Arc<dyn Store>, provider: Arc<dyn Provider>) -> EngineBuilder {
        EngineBuilder {
            store,
            provider,
            clock: Arc::new(SystemClock),
            config: EngineConfig::default(),
            seed: None,
            callbacks: None,
        }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store, for read-only use by embedding applications.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Validates and stores a new `PENDING` call. Never waits for the provider.
    /// Applies the configured pending TTL when `expires_at` is absent, and
    /// the default callback URL when `callback_url` is.
    ///
    /// Returns the call as it was stored: `PENDING` with no attempts, even if
    /// a running dispatcher dials it at once. With a repeated idempotency key,
    /// returns the first call as it is now (`created: false`).
    ///
    /// # Errors
    /// [`EngineError::Invalid`] naming the field; [`EngineError::Store`].
    pub async fn create_call(&self, mut new: NewCall) -> Result<Created, EngineError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        if new.expires_at.is_none() {
            new.expires_at = inner
                .config
                .pending_ttl
                .map(|ttl| clock::add(new.not_before.map_or(now, |at| at.max(now)), ttl));
        }
        if new.callback_url.is_none() {
            new.callback_url
                .clone_from(&inner.config.default_callback_url);
        }
        validate_new_call(&new, now)?;
        let random = inner.with_rng(|rng| rng.random());
        let created = inner
            .store
            .create(CallId::v7_from_parts(now, random), &new, now)
            .await?;
        if created.created {
            metrics::counter!("orchestrator_calls_created_total").increment(1);
            debug!(call_id = %created.call.id, "call created");
        }
        Ok(created)
    }

    /// One call.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Store`].
    pub async fn get_call(&self, id: CallId) -> Result<Call, EngineError> {
        Ok(self.inner.store.get(id).await?)
    }

    /// Updates a `PENDING` call's payload and schedule (`notBefore`,
    /// `expiresAt`; the rules at creation apply to the result).
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Invalid`] naming
    /// `expiresAt` or `notBefore`; [`EngineError::Conflict`] when the call is
    /// not `PENDING`; [`EngineError::Store`].
    pub async fn update_call(&self, id: CallId, patch: &CallPatch) -> Result<Call, EngineError> {
        let now = self.inner.clock.now();
        Ok(self.inner.store.update(id, patch, now).await?)
    }

    /// Every dial of a call, in dial order.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Store`].
    pub async fn attempts(&self, id: CallId) -> Result<Vec<Attempt>, EngineError> {
        Ok(self.inner.store.attempts(id).await?)
    }

    /// One page of calls, newest first.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn list_calls(&self, query: &ListQuery) -> Result<Page, EngineError> {
        Ok(self.inner.store.list(query).await?)
    }

    /// Calls per status.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn counts(&self) -> Result<StatusCounts, EngineError> {
        Ok(self.inner.store.counts().await?)
    }

    /// Whether the store can be reached.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn ready(&self) -> Result<(), EngineError> {
        Ok(self.inner.store.ping().await?)
    }

    /// Settles a provider webhook.
    ///
    /// The attempt is found by the provider call id, or else by the
    /// `callId`/`attempt` we put in the webhook URL (so a webhook that beats
    /// the provider's 202 still settles). `COMPLETED` completes the call;
    /// `FAILED`, `BUSY` and `NO_ANSWER` fail it with that `lastError`, unless
    /// the redial policy re-dials `BUSY`/`NO_ANSWER` with back-off. Idempotent:
    /// a repeated or late webhook changes nothing.
    ///
    /// # Errors
    /// [`EngineError::Invalid`] for a provider call id that is empty, too long
    /// or holds control characters; [`EngineError::NotFound`] when neither the
    /// provider id nor the query names a known call; [`EngineError::Store`].
    pub async fn handle_webhook(
        &self,
        delivery: WebhookDelivery,
    ) -> Result<WebhookOutcome, EngineError> {
        self.inner.handle_webhook(delivery).await
    }

    /// Runs one dispatch round now and waits for the dial requests it made:
    /// expires due calls, settles stale leases, claims up to the cap and dials.
    /// Returns when the next timed event is due. For tests and for embedders
    /// that drive the engine themselves instead of calling [`start`](Self::start).
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn tick(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        Ok(self.inner.tick().await?)
    }

    /// Starts the dispatcher and, for in-process providers, the webhook intake.
    /// Must be called inside a tokio runtime.
    #[must_use = "dropping the handle does not stop the engine; call shutdown()"]
    pub fn start(&self) -> EngineHandle {
        let (shutdown, stop) = watch::channel(false);
        let (sink, webhooks) = mpsc::channel(self.inner.config.webhook_queue);
        self.inner.provider.bind_webhooks(WebhookSink(sink));
        let delivery = self
            .inner
            .callbacks
            .clone()
            .map(|sender| tokio::spawn(Arc::clone(&self.inner).deliver(sender, stop.clone())));
        EngineHandle {
            shutdown,
            intake: tokio::spawn(Arc::clone(&self.inner).intake(webhooks)),
            dispatcher: tokio::spawn(Arc::clone(&self.inner).dispatch(stop)),
            delivery,
        }
    }
}

/// A running engine. Stop it with [`shutdown`](EngineHandle::shutdown).
#[derive(Debug)]
pub struct EngineHandle {
    shutdown: watch::Sender<bool>,
    dispatcher: JoinHandle<()>,
    intake: JoinHandle<()>,
    delivery: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Graceful stop: claims nothing more, waits (up to the configured grace)
    /// for dial requests in flight and records their results. Calls already
    /// dialled stay `IN_PROGRESS`; their webhooks settle them in any engine
    /// sharing the store, or their lease runs out.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.dispatcher.await;
        if let Some(delivery) = self.delivery {
            let _ = delivery.await;
        }
        self.intake.abort();
    }

    /// Stops at once, as a crash would: dial requests in flight are dropped.
    /// The store stays consistent; stranded attempts are reclaimed when their lease runs out.
    pub fn abort(self) {
        self.dispatcher.abort();
        self.intake.abort();
        if let Some(delivery) = self.delivery {
            delivery.abort();
        }
    }
}
