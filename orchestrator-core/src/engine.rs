//! The engine: creates calls, dispatches them to the provider under the cap,
//! settles webhooks, retries with back-off, reclaims stale leases and expires
//! calls that waited too long.
//!
//! Dispatch is event-driven: the dispatcher sleeps until the store signals a
//! change (a call created, a slot freed) or the next timed event is due, then
//! runs one *round* (expire, reclaim, claim). A slow fallback timer covers
//! lost signals. All invariants live in the store; the engine holds no slot
//! accounting of its own, so any number of engines may share one store.

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::call::{AttemptRef, Call, CallId, NewCall, PayloadPatch};
use crate::clock::{self, Clock, SystemClock};
use crate::config::{ConfigError, EngineConfig};
use crate::provider::{
    DialError, DialRequest, Provider, ReportedStatus, WebhookDelivery, WebhookSink,
};
use crate::retry::RetryDecision;
use crate::state::TransitionError;
use crate::store::{
    ClaimRequest, Created, ListQuery, Page, Settled, Settlement, StatusCounts, Store, StoreError,
};
use crate::validate::{validate_new_call, validate_provider_call_id, Invalid};

/// Stale leases settled per round; more are picked up by the next round.
const STALE_BATCH: u32 = 100;

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
    #[error("call {id}: {source}")]
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

/// Builds an [`Orchestrator`].
pub struct OrchestratorBuilder {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    seed: Option<u64>,
}

impl OrchestratorBuilder {
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

    /// The seed of the jitter generator, for replayable runs (default: random).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The engine, not yet running: call [`Orchestrator::start`] to dispatch.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is out of range.
    pub fn build(self) -> Result<Orchestrator, ConfigError> {
        self.config.validate()?;
        let rng = match self.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                store: self.store,
                provider: self.provider,
                clock: self.clock,
                config: self.config,
                rng: Mutex::new(rng),
            }),
        })
    }
}

struct Inner {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    rng: Mutex<ChaCha8Rng>,
}

/// The call orchestrator. Cheap to clone: clones share one engine.
///
/// The API methods (`create_call`, `handle_webhook`, ...) work whether or not
/// the dispatcher runs; [`start`](Orchestrator::start) runs it.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

impl Orchestrator {
    /// A builder over `store` and `provider`.
    #[must_use]
    pub fn builder(store: Arc<dyn Store>, provider: Arc<dyn Provider>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            store,
            provider,
            clock: Arc::new(SystemClock),
            config: EngineConfig::default(),
            seed: None,
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
    /// With a repeated idempotency key, returns the first call (`created: false`).
    /// Applies the configured pending TTL when `expires_at` is absent.
    ///
    /// # Errors
    /// [`EngineError::Invalid`] naming the field; [`EngineError::Store`].
    pub async fn create_call(&self, mut new: NewCall) -> Result<Created, EngineError> {
        let now = self.inner.clock.now();
        if new.expires_at.is_none() {
            new.expires_at = self
                .inner
                .config
                .pending_ttl
                .map(|ttl| clock::add(new.not_before.map_or(now, |at| at.max(now)), ttl));
        }
        validate_new_call(&new, now)?;
        let random = {
            let mut rng = self
                .inner
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            rng.random()
        };
        let created = self
            .inner
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

    /// Updates a `PENDING` call's payload.
    ///
    /// # Errors
    /// [`EngineError::NotFound`];
    /// [`EngineError::Conflict`] when the call is not `PENDING`; [`EngineError::Store`].
    pub async fn update_call(&self, id: CallId, patch: &PayloadPatch) -> Result<Call, EngineError> {
        Ok(self.inner.store.update_payload(id, patch).await?)
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

    /// Settles a provider webhook (SPEC section 4).
    ///
    /// The attempt is found by the provider call id, or else by the
    /// `callId`/`attempt` we put in the webhook URL (so a webhook that beats
    /// the provider's 202 still settles). `COMPLETED` completes the call;
    /// `FAILED`, `BUSY` and `NO_ANSWER` fail it with that `lastError`, unless
    /// the redial policy re-dials `BUSY`/`NO_ANSWER` with back-off. Idempotent:
    /// a repeated or late webhook changes nothing.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] when neither the provider id nor the query
    /// names a known call; [`EngineError::Store`].
    pub async fn handle_webhook(
        &self,
        delivery: WebhookDelivery,
    ) -> Result<WebhookOutcome, EngineError> {
        let outcome = self.settle_webhook(delivery).await;
        let label = match &outcome {
            Ok(outcome) => outcome.label(),
            Err(EngineError::NotFound(_)) => "unknown",
            Err(_) => "error",
        };
        metrics::counter!("orchestrator_webhooks_total", "outcome" => label).increment(1);
        outcome
    }

    async fn settle_webhook(
        &self,
        delivery: WebhookDelivery,
    ) -> Result<WebhookOutcome, EngineError> {
        let inner = &self.inner;
        let report = delivery.report;
        validate_provider_call_id(&report.provider_call_id)?;
        let attempt = match inner.store.find_attempt(&report.provider_call_id).await? {
            Some(attempt) => attempt,
            None => {
                let Some(hint) = delivery.attempt else {
                    return Err(EngineError::NotFound(format!(
                        "no call with provider call id {:?}",
                        report.provider_call_id
                    )));
                };
                let call = inner.store.get(hint.call_id).await?;
                if hint.attempt > call.attempts {
                    return Ok(WebhookOutcome::Ignored(call));
                }
                inner
                    .store
                    .record_dial(hint, &report.provider_call_id)
                    .await?;
                hint
            }
        };
        let now = inner.clock.now();
        let at = report.completed_at.map_or(now, clock::truncate_to_micros);
        let settlement = match report.status {
            ReportedStatus::Completed => Settlement::Completed {
                at,
                duration_sec: report.duration_sec,
            },
            status if inner.config.redial.redials(status) => {
                match inner.after_failure(attempt, status.as_str().to_owned(), now) {
                    Settlement::Failed { error, .. } => Settlement::Failed {
                        error,
                        at,
                        duration_sec: report.duration_sec,
                    },
                    retry => retry,
                }
            }
            status => Settlement::Failed {
                error: status.as_str().to_owned(),
                at,
                duration_sec: report.duration_sec,
            },
        };
        let span = info_span!("webhook", call_id = %attempt.call_id, attempt = attempt.attempt);
        let retry = matches!(settlement, Settlement::Retry { .. });
        let settled = inner
            .store
            .settle(attempt, settlement)
            .instrument(span.clone())
            .await?;
        let _entered = span.enter();
        Ok(match settled {
            Settled::Applied(call) => {
                if retry {
                    metrics::counter!("orchestrator_retries_total").increment(1);
                }
                info!(status = %call.status, "attempt settled by webhook");
                WebhookOutcome::Applied(call)
            }
            Settled::Stale(call) => {
                debug!("webhook for a settled or older attempt; nothing changed");
                WebhookOutcome::Unchanged(call)
            }
        })
    }

    /// Runs one dispatch round now and waits for the dial requests it made:
    /// expires due calls, settles stale leases, claims up to the cap and dials.
    /// Returns when the next timed event is due. For tests and for embedders
    /// that drive the engine themselves instead of calling [`start`](Self::start).
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn tick(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        let mut dials = JoinSet::new();
        self.inner.round(&mut dials).await?;
        while let Some(joined) = dials.join_next().await {
            if let Err(error) = joined {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        // The dials may have scheduled re-dials (429, back-off): ask again.
        Ok(self.inner.store.next_timer(self.inner.clock.now()).await?)
    }

    /// Starts the dispatcher and, for in-process providers, the webhook intake.
    /// Must be called inside a tokio runtime.
    #[must_use = "dropping the handle does not stop the engine; call shutdown()"]
    pub fn start(&self) -> EngineHandle {
        let (shutdown, stop) = watch::channel(false);
        let (sink, mut webhooks) = mpsc::channel(self.inner.config.webhook_queue);
        self.inner.provider.bind_webhooks(WebhookSink(sink));
        let engine = self.clone();
        let intake = tokio::spawn(async move {
            while let Some(delivery) = webhooks.recv().await {
                if let Err(error) = engine.handle_webhook(delivery).await {
                    warn!(%error, "in-process webhook not settled");
                }
            }
        });
        let dispatcher = tokio::spawn(Arc::clone(&self.inner).dispatch(stop));
        EngineHandle {
            shutdown,
            dispatcher,
            intake,
        }
    }
}

/// A running engine. Stop it with [`shutdown`](EngineHandle::shutdown).
pub struct EngineHandle {
    shutdown: watch::Sender<bool>,
    dispatcher: JoinHandle<()>,
    intake: JoinHandle<()>,
}

impl EngineHandle {
    /// Graceful stop: claims nothing more, waits (up to the configured grace)
    /// for dial requests in flight and records their results. Calls already
    /// dialled stay `IN_PROGRESS`; their webhooks settle them in any engine
    /// sharing the store, or their lease runs out.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.dispatcher.await;
        self.intake.abort();
    }

    /// Stops at once, as a crash would: dial requests in flight are dropped.
    /// The store stays consistent; stranded attempts are reclaimed when their lease runs out.
    pub fn abort(self) {
        self.dispatcher.abort();
        self.intake.abort();
    }
}

impl Inner {
    async fn dispatch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        let mut dials = JoinSet::new();
        loop {
            changes.mark_unchanged();
            let now = self.clock.now();
            let next = match self.round(&mut dials).await {
                Ok(next) => next,
                Err(error) => {
                    warn!(%error, "dispatch round failed; retrying after the fallback delay");
                    None
                }
            };
            let wait = next
                .map_or(self.config.fallback_poll, |at| clock::until(now, at))
                .min(self.config.fallback_poll);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(_) = dials.join_next(), if !dials.is_empty() => {}
                _ = changes.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let grace = self.config.shutdown_grace;
        let drain = async { while dials.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                in_flight = dials.len(),
                "shutdown grace ran out; abandoning dial requests"
            );
        }
    }

    /// One round; spawns a dial task per claimed call into `dials`.
    async fn round(
        self: &Arc<Self>,
        dials: &mut JoinSet<()>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let expired = self.store.expire_due(now).await?;
        if !expired.is_empty() {
            metrics::counter!("orchestrator_calls_expired_total").increment(expired.len() as u64);
            info!(
                count = expired.len(),
                "calls expired before they could be dialled"
            );
        }
        for attempt in self.store.stale_attempts(now, STALE_BATCH).await? {
            metrics::counter!("orchestrator_stale_leases_total").increment(1);
            let settlement = self.after_failure(attempt, "webhook timeout".to_owned(), now);
            self.settle_logged(attempt, settlement).await;
        }
        let request = ClaimRequest {
            now,
            max_in_flight: self.config.max_concurrent_calls,
            limit: self.config.claim_batch,
            lease: self.config.lease,
        };
        loop {
            let claimed = self.store.claim(&request).await?;
            let full_batch = claimed.len() == request.limit as usize;
            for call in claimed {
                let latency = clock::until(call.due_at(), now);
                metrics::histogram!("orchestrator_dispatch_latency_seconds")
                    .record(latency.as_secs_f64());
                let span = info_span!("dial", call_id = %call.id, attempt = call.attempts);
                dials.spawn(Arc::clone(self).dial(call).instrument(span));
            }
            if !full_batch {
                break;
            }
        }
        self.store.next_timer(now).await
    }

    async fn dial(self: Arc<Self>, call: Call) {
        let request = DialRequest::for_call(&call);
        let attempt = request.attempt;
        let result = self.provider.start_call(&request).await;
        let now = self.clock.now();
        let result =
            result.and_then(
                |dialled| match validate_provider_call_id(&dialled.provider_call_id) {
                    Ok(()) => Ok(dialled),
                    Err(invalid) => Err(DialError::Retryable {
                        reason: format!("provider answered with an invalid {invalid}"),
                    }),
                },
            );
        let (label, settlement) = match result {
            Ok(dialled) => {
                metrics::counter!("orchestrator_dials_total", "outcome" => "accepted").increment(1);
                debug!(provider_call_id = %dialled.provider_call_id, "provider accepted the dial");
                if let Err(error) = self
                    .store
                    .record_dial(attempt, &dialled.provider_call_id)
                    .await
                {
                    warn!(%error, "could not record the provider call id; the webhook's query still names the attempt");
                }
                return;
            }
            Err(DialError::Retryable { reason }) => {
                ("retryable", self.after_failure(attempt, reason, now))
            }
            Err(DialError::AtCapacity { retry_after }) => (
                "capacity",
                Settlement::Capacity {
                    retry_at: clock::add(
                        now,
                        retry_after.unwrap_or(self.config.capacity_retry_after),
                    ),
                },
            ),
            Err(DialError::Permanent { reason }) => (
                "permanent",
                Settlement::Failed {
                    error: reason,
                    at: now,
                    duration_sec: None,
                },
            ),
        };
        metrics::counter!("orchestrator_dials_total", "outcome" => label).increment(1);
        self.settle_logged(attempt, settlement).await;
    }

    /// The settlement for a failed attempt: retry with back-off, or fail for good.
    fn after_failure(&self, attempt: AttemptRef, error: String, now: DateTime<Utc>) -> Settlement {
        let decision = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            self.config.retry.decide(attempt.attempt, &mut *rng)
        };
        match decision {
            RetryDecision::RetryAfter(delay) => Settlement::Retry {
                error,
                retry_at: clock::add(now, delay),
            },
            RetryDecision::GiveUp => Settlement::Failed {
                error,
                at: now,
                duration_sec: None,
            },
        }
    }

    async fn settle_logged(&self, attempt: AttemptRef, settlement: Settlement) {
        let retry = matches!(settlement, Settlement::Retry { .. });
        match self.store.settle(attempt, settlement).await {
            Ok(Settled::Applied(call)) => {
                if retry {
                    metrics::counter!("orchestrator_retries_total").increment(1);
                }
                info!(call_id = %call.id, attempt = attempt.attempt, status = %call.status, last_error = ?call.last_error, "attempt settled");
            }
            Ok(Settled::Stale(_)) => {
                debug!(call_id = %attempt.call_id, "attempt already settled elsewhere");
            }
            Err(error) => {
                warn!(call_id = %attempt.call_id, %error, "could not settle the attempt; its lease will reclaim it");
            }
        }
    }
}
