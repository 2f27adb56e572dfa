//! The engine's call control, event stream and callback delivery, over the
//! memory store, a scripted provider and tokio's paused clock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::{
    async_trait, AttemptOutcome, AttemptRef, Call, CallId, CallStatus, CallbackError,
    CallbackSender, CallbackState, CallbackUrl, Canceled, Delivery, DialError, DialRequest,
    Dialled, Engine, EngineConfig, EngineError, EventFilter, EventId, EventType, HangUpError,
    IdempotencyKey, MemoryStore, NewCall, PhoneNumber, Provider, RedialPolicy, ReportedStatus,
    RetryPolicy, ScriptId, StatusReport, Store, TokioClock, WebhookDelivery,
};
use tokio::sync::Notify;

/// A provider that accepts every dial as `p-{callId}:{attempt}` (after
/// `gate` opens, when one is set) and records hang-ups.
#[derive(Default)]
struct Scripted {
    dials: Mutex<Vec<AttemptRef>>,
    hang_ups: Mutex<Vec<String>>,
    gate: Option<Arc<Notify>>,
}

#[async_trait]
impl Provider for Scripted {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        self.dials.lock().unwrap().push(request.attempt);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        Ok(Dialled {
            provider_call_id: format!("p-{}", request.attempt),
        })
    }

    async fn hang_up(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<(), HangUpError> {
        self.hang_ups
            .lock()
            .unwrap()
            .push(provider_call_id.to_owned());
        Ok(())
    }
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

fn call_to(n: u32) -> NewCall {
    NewCall::new(
        PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap(),
        ScriptId::parse("welcomeFlow").unwrap(),
    )
}

fn engine(provider: Arc<Scripted>, config: EngineConfig) -> (Engine, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>, provider)
        .config(config)
        .clock(Arc::new(TokioClock::starting_at(t(0))))
        .seed(11)
        .build()
        .unwrap();
    (engine, store)
}

async fn report(engine: &Engine, attempt: AttemptRef, status: ReportedStatus) {
    engine
        .handle_webhook(WebhookDelivery {
            report: StatusReport {
                provider_call_id: format!("p-{attempt}"),
                status,
                duration_sec: None,
                completed_at: None,
                reason: None,
            },
            attempt: None,
        })
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn canceling_a_pending_call_ends_it_at_once_and_it_is_never_dialled() {
    let provider = Arc::new(Scripted::default());
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    let Canceled::Canceled(canceled) = engine
        .cancel_call(call.id, Some("do not call"))
        .await
        .unwrap()
    else {
        panic!("a pending call is canceled at once");
    };
    assert_eq!(canceled.status, CallStatus::Canceled);
    assert_eq!(canceled.last_error.as_deref(), Some("do not call"));
    assert_eq!(canceled.ended_at, Some(t(0)));
    // Idempotent, and nothing is dialled.
    assert!(matches!(
        engine.cancel_call(call.id, None).await.unwrap(),
        Canceled::AlreadyCanceled(_)
    ));
    engine.tick().await.unwrap();
    assert!(provider.dials.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_blank_reason_or_an_unknown_call_is_refused() {
    let (engine, _) = engine(Arc::new(Scripted::default()), EngineConfig::default());
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    let Err(EngineError::Invalid(invalid)) = engine.cancel_call(call.id, Some(" ")).await else {
        panic!("a blank reason is invalid");
    };
    assert_eq!(invalid.field, "reason");
    assert!(matches!(
        engine.cancel_call(CallId::new_v7(t(0)), None).await,
        Err(EngineError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn canceling_a_live_call_hangs_up_and_it_ends_canceled_never_redialled() {
    let provider = Arc::new(Scripted::default());
    let redial_busy = RedialPolicy::default().with_busy(true);
    let (engine, _) = engine(
        Arc::clone(&provider),
        EngineConfig::default().with_redial(redial_busy),
    );
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    engine.tick().await.unwrap();
    let Canceled::Requested(requested) = engine.cancel_call(call.id, None).await.unwrap() else {
        panic!("a live call is marked");
    };
    assert_eq!(requested.status, CallStatus::InProgress);
    assert_eq!(requested.cancel_requested_at, Some(t(0)));
    assert_eq!(
        *provider.hang_ups.lock().unwrap(),
        [format!("p-{}", requested.current_attempt())]
    );
    // BUSY would be re-dialled with this policy; a canceled call is not.
    report(&engine, requested.current_attempt(), ReportedStatus::Busy).await;
    let ended = engine.get_call(call.id).await.unwrap();
    assert_eq!(ended.status, CallStatus::Canceled);
    assert_eq!(ended.last_error.as_deref(), Some("canceled"));
    tokio::time::advance(Duration::from_secs(3600)).await;
    engine.tick().await.unwrap();
    assert_eq!(provider.dials.lock().unwrap().len(), 1);
    let attempts = engine.attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Canceled);
}

#[tokio::test(start_paused = true)]
async fn a_canceled_live_call_the_provider_completes_ends_completed() {
    let provider = Arc::new(Scripted::default());
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    engine.tick().await.unwrap();
    engine.cancel_call(call.id, None).await.unwrap();
    report(
        &engine,
        call.current_attempt_after_claim(),
        ReportedStatus::Completed,
    )
    .await;
    assert_eq!(
        engine.get_call(call.id).await.unwrap().status,
        CallStatus::Completed
    );
}

trait AfterClaim {
    fn current_attempt_after_claim(&self) -> AttemptRef;
}

impl AfterClaim for Call {
    /// The first attempt of a call just created and claimed once.
    fn current_attempt_after_claim(&self) -> AttemptRef {
        AttemptRef {
            call_id: self.id,
            attempt: 1,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancel_while_the_dial_is_in_flight_hangs_up_once_the_provider_names_the_call() {
    let gate = Arc::new(Notify::new());
    let provider = Arc::new(Scripted {
        gate: Some(Arc::clone(&gate)),
        ..Scripted::default()
    });
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    let round = tokio::spawn({
        let engine = engine.clone();
        async move { engine.tick().await.unwrap() }
    });
    while provider.dials.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    // The provider has not answered: there is no id to hang up yet.
    engine.cancel_call(call.id, None).await.unwrap();
    assert!(provider.hang_ups.lock().unwrap().is_empty());
    gate.notify_one();
    round.await.unwrap();
    assert_eq!(
        *provider.hang_ups.lock().unwrap(),
        [format!("p-{}", call.current_attempt_after_claim())]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_makes_a_new_call_from_a_finished_one_and_only_from_one() {
    let provider = Arc::new(Scripted::default());
    let mut new = call_to(1);
    new.callback_url = Some(CallbackUrl::parse("https://example.com/hook").unwrap());
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let call = engine.create_call(new).await.unwrap().call;
    let Err(EngineError::Conflict { source, .. }) = engine.retry_call(call.id, None).await else {
        panic!("a pending call cannot be retried");
    };
    assert_eq!(source.from, CallStatus::Pending);
    engine.cancel_call(call.id, None).await.unwrap();
    let key = IdempotencyKey::parse("retry-1").unwrap();
    let retry = engine.retry_call(call.id, Some(key.clone())).await.unwrap();
    assert!(retry.created);
    assert_eq!(retry.call.retry_of, Some(call.id));
    assert_eq!(retry.call.status, CallStatus::Pending);
    assert_eq!(retry.call.payload, call.payload);
    assert_eq!(retry.call.callback_url, call.callback_url);
    let again = engine.retry_call(call.id, Some(key)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.call.id, retry.call.id);
    assert_eq!(
        engine.get_call(call.id).await.unwrap().status,
        CallStatus::Canceled
    );
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_replays_the_backlog_then_follows_live_changes() {
    let provider = Arc::new(Scripted::default());
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let first = engine.create_call(call_to(1)).await.unwrap().call;
    let mut from_start = engine.events(Some(EventId(0)), EventFilter::default());
    let mut only_new = engine.events(None, EventFilter::default());
    let backlog = from_start.next().await.unwrap().unwrap();
    assert_eq!(
        (backlog.id, backlog.kind, backlog.call.id),
        (EventId(1), EventType::Created, first.id)
    );
    engine.tick().await.unwrap();
    let dialled = from_start.next().await.unwrap().unwrap();
    assert_eq!(dialled.kind, EventType::Dialled);
    assert_eq!(dialled.call.status, CallStatus::InProgress);
    // A stream opened without an id starts after the events already written.
    assert_eq!(only_new.next().await.unwrap().unwrap().id, dialled.id);
    report(
        &engine,
        dialled.call.current_attempt(),
        ReportedStatus::Completed,
    )
    .await;
    let completed = from_start.next().await.unwrap().unwrap();
    assert_eq!(completed.kind, EventType::Completed);
    assert!(completed.id > dialled.id);
}

#[tokio::test(start_paused = true)]
async fn event_filters_select_types_and_calls() {
    let provider = Arc::new(Scripted::default());
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let one = engine.create_call(call_to(1)).await.unwrap().call;
    let two = engine.create_call(call_to(2)).await.unwrap().call;
    engine.cancel_call(one.id, None).await.unwrap();
    engine.cancel_call(two.id, None).await.unwrap();
    let filter = EventFilter {
        types: BTreeSet::from([EventType::Canceled]),
        call_id: Some(two.id),
    };
    let mut stream = engine.events(Some(EventId(0)), filter);
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!((event.kind, event.call.id), (EventType::Canceled, two.id));
    let none_yet = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(none_yet.is_err(), "only one event matches");
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_terminal_state_returns_when_the_call_ends() {
    let provider = Arc::new(Scripted::default());
    let (engine, _) = engine(Arc::clone(&provider), EngineConfig::default());
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move { engine.wait_for_terminal(call.id).await }
    });
    engine.tick().await.unwrap();
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    report(
        &engine,
        call.current_attempt_after_claim(),
        ReportedStatus::Failed,
    )
    .await;
    let ended = waiter.await.unwrap().unwrap();
    assert_eq!(ended.status, CallStatus::Failed);
}

/// A receiver that answers 500 to its first `failures` tries, then 2xx,
/// and records every try's event id (the `webhook-id`).
struct Receiver {
    failures: u32,
    tries: AtomicU32,
    seen: Mutex<Vec<(EventId, u32, EventType)>>,
}

#[async_trait]
impl CallbackSender for Receiver {
    async fn send(&self, delivery: &Delivery) -> Result<(), CallbackError> {
        let try_number = self.tries.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen
            .lock()
            .unwrap()
            .push((delivery.event.id, delivery.attempt, delivery.event.kind));
        if try_number <= self.failures {
            return Err(CallbackError::new("receiver 500"));
        }
        Ok(())
    }
}

fn callbacks_config(tries: u32) -> EngineConfig {
    EngineConfig::default()
        .with_default_callback_url(Some(
            CallbackUrl::parse("https://example.com/hook").unwrap(),
        ))
        .with_callback_retry(
            RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(8), tries, 0.5).unwrap(),
        )
}

fn with_receiver(config: EngineConfig, receiver: Arc<Receiver>) -> Engine {
    let store = Arc::new(MemoryStore::new());
    Engine::builder(store, Arc::new(Scripted::default()))
        .config(config)
        .clock(Arc::new(TokioClock::starting_at(t(0))))
        .callbacks(receiver)
        .seed(5)
        .build()
        .unwrap()
}

async fn wait_for_callback(engine: &Engine, id: CallId, state: CallbackState) -> Call {
    for _ in 0..10_000 {
        let call = engine.get_call(id).await.unwrap();
        if call.callback.as_ref().is_some_and(|cb| cb.state == state) {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("callback of {id} never reached {state:?}");
}

#[tokio::test(start_paused = true)]
async fn a_terminal_event_is_delivered_after_failed_tries_with_one_event_id() {
    let receiver = Arc::new(Receiver {
        failures: 3,
        tries: AtomicU32::new(0),
        seen: Mutex::new(Vec::new()),
    });
    let engine = with_receiver(callbacks_config(10), Arc::clone(&receiver));
    let running = engine.start();
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    assert_eq!(
        call.callback.as_ref().map(|cb| (cb.state, cb.attempts)),
        Some((CallbackState::Pending, 0))
    );
    engine
        .cancel_call(call.id, Some("opted out"))
        .await
        .unwrap();
    let delivered = wait_for_callback(&engine, call.id, CallbackState::Delivered).await;
    let callback = delivered.callback.unwrap();
    assert_eq!(callback.attempts, 4);
    assert_eq!(callback.last_error.as_deref(), Some("receiver 500"));
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen
        .iter()
        .all(|(id, _, kind)| *id == seen[0].0 && *kind == EventType::Canceled));
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_delivery_fails_for_good_after_its_last_try() {
    let receiver = Arc::new(Receiver {
        failures: u32::MAX,
        tries: AtomicU32::new(0),
        seen: Mutex::new(Vec::new()),
    });
    let engine = with_receiver(callbacks_config(3), Arc::clone(&receiver));
    let running = engine.start();
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    engine.cancel_call(call.id, None).await.unwrap();
    let failed = wait_for_callback(&engine, call.id, CallbackState::Failed).await;
    assert_eq!(failed.callback.unwrap().attempts, 3);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(receiver.tries.load(Ordering::SeqCst), 3);
    running.shutdown().await;
}

/// A receiver that never answers.
struct Hanging;

#[async_trait]
impl CallbackSender for Hanging {
    async fn send(&self, _delivery: &Delivery) -> Result<(), CallbackError> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_receiver_never_delays_dialling() {
    let provider = Arc::new(Scripted::default());
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(store, Arc::clone(&provider) as Arc<dyn Provider>)
        .config(callbacks_config(10).with_callback_concurrency(1))
        .clock(Arc::new(TokioClock::starting_at(t(0))))
        .callbacks(Arc::new(Hanging))
        .build()
        .unwrap();
    let running = engine.start();
    let first = engine.create_call(call_to(1)).await.unwrap().call;
    engine.cancel_call(first.id, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 2..=4 {
        engine.create_call(call_to(n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(provider.dials.lock().unwrap().len(), 3);
    running.abort();
}
