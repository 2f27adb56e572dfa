//! Narrow unit tests of the engine's edge cases: the call record, the provider contract, the webhook and the scheduling rules.
//!
//! Each test drives one [`Engine`] over a fresh [`MemoryStore`], a
//! `mockall` mock of the [`Provider`] and a [`TokioClock`] on tokio's paused
//! clock. The engine is stepped with [`Engine::tick`] and virtual time is
//! moved with `tokio::time::advance`, so nothing sleeps and every test is
//! deterministic. Webhooks go straight to [`Engine::handle_webhook`].
//! The last test runs the real dispatcher ([`Engine::start`]) with the
//! [`SimulatedProvider`] end to end, still on virtual time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mockall::{mock, Sequence};
use orchestrator_core::hooked::{HookedStore, Operation, StoreHook};
use orchestrator_core::{
    async_trait, AttemptRef, Call, CallId, CallStatus, ClaimRequest, Clock, ConfigError, DialError,
    DialRequest, Dialled, Engine, EngineConfig, EngineError, EngineHandle, Invalid, MemoryStore,
    Metadata, NewCall, OutcomeMix, PhoneNumber, Provider, RedialPolicy, ReportedStatus,
    RetryPolicy, ScriptId, Settlement, SimulatedProvider, SimulationConfig, StatusReport, Store,
    StoreError, TokioClock, WebhookDelivery, WebhookOutcome,
};
use serde_json::json;

mock! {
    /// A provider whose answers each test scripts.
    Dialer {}

    #[async_trait]
    impl Provider for Dialer {
        async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError>;
    }
}

/// Every dial request the mock received, in order.
type Dials = Arc<Mutex<Vec<DialRequest>>>;

/// The engine under test and what the test needs to look inside it.
struct Harness {
    engine: Engine,
    store: Arc<MemoryStore>,
    clock: TokioClock,
    dials: Dials,
}

impl Harness {
    /// An engine over `dialer`. The jitter seed is fixed so back-off delays
    /// replay; tests still assert bounds rather than exact delays.
    fn new(config: EngineConfig, dialer: MockDialer, dials: Dials) -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = TokioClock::starting_at(origin());
        let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>, Arc::new(dialer))
            .config(config)
            .clock(Arc::new(clock.clone()))
            .seed(7)
            .build()
            .expect("valid configuration");
        Self {
            engine,
            store,
            clock,
            dials,
        }
    }

    /// An engine whose provider accepts every dial as `p-{callId}:{attempt}`
    /// and never calls back by itself.
    fn accepting(config: EngineConfig) -> Self {
        let dials = Dials::default();
        let mut dialer = MockDialer::new();
        let log = Arc::clone(&dials);
        dialer
            .expect_start_call()
            .returning(move |request| accept(&log, request));
        Self::new(config, dialer, dials)
    }

    /// An engine whose provider answers every dial with `error`.
    fn failing(config: EngineConfig, error: DialError) -> Self {
        let dials = Dials::default();
        let mut dialer = MockDialer::new();
        let log = Arc::clone(&dials);
        dialer.expect_start_call().returning(move |request| {
            log.lock().unwrap().push(request.clone());
            Err(error.clone())
        });
        Self::new(config, dialer, dials)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn create(&self, new: NewCall) -> Call {
        self.engine.create_call(new).await.expect("created").call
    }

    async fn get(&self, id: CallId) -> Call {
        self.engine.get_call(id).await.expect("call exists")
    }

    async fn tick(&self) -> Option<DateTime<Utc>> {
        self.engine.tick().await.expect("round succeeds")
    }

    /// The call ids dialled so far, in dial order.
    fn dialled(&self) -> Vec<CallId> {
        self.dials
            .lock()
            .unwrap()
            .iter()
            .map(|request| request.attempt.call_id)
            .collect()
    }

    fn dial_count(&self) -> usize {
        self.dials.lock().unwrap().len()
    }

    async fn in_progress(&self) -> u64 {
        let counts = self.engine.counts().await.expect("counts");
        counts.get(CallStatus::InProgress)
    }

    /// Delivers the provider's report for `attempt` (as the mock named it),
    /// without the query fallback.
    async fn report(
        &self,
        attempt: AttemptRef,
        status: ReportedStatus,
    ) -> Result<WebhookOutcome, EngineError> {
        self.engine
            .handle_webhook(webhook(&provider_id(attempt), status, None))
            .await
    }

    /// Moves virtual time forward to `at`.
    async fn advance_to(&self, at: DateTime<Utc>) {
        let delta = (at - self.now()).to_std().expect("a future instant");
        tokio::time::advance(delta).await;
    }
}

/// 2025-07-20T10:00:00Z plus `secs` seconds: the virtual clock starts here.
fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

fn origin() -> DateTime<Utc> {
    t(0)
}

fn number(raw: &str) -> PhoneNumber {
    PhoneNumber::parse(raw).expect("valid E.164")
}

fn call_to(raw: &str) -> NewCall {
    NewCall::new(
        number(raw),
        ScriptId::parse("welcomeFlow").expect("valid script id"),
    )
}

/// The provider id the accepting mock gives `attempt`: one per attempt, as a
/// real provider's would be.
fn provider_id(attempt: AttemptRef) -> String {
    format!("p-{attempt}")
}

fn accept(log: &Dials, request: &DialRequest) -> Result<Dialled, DialError> {
    log.lock().unwrap().push(request.clone());
    Ok(Dialled {
        provider_call_id: provider_id(request.attempt),
    })
}

fn webhook(
    provider_call_id: &str,
    status: ReportedStatus,
    query: Option<AttemptRef>,
) -> WebhookDelivery {
    WebhookDelivery {
        report: StatusReport {
            provider_call_id: provider_call_id.to_owned(),
            status,
            duration_sec: Some(42),
            completed_at: Some(t(42)),
            reason: None,
        },
        attempt: query,
    }
}

fn attempt(call_id: CallId, attempt: u32) -> AttemptRef {
    AttemptRef { call_id, attempt }
}

/// Back-off from 1 s up to 10 s with 50 % jitter: wide, so the bounds checks
/// would catch a delay drawn outside them.
fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        Duration::from_secs(1),
        Duration::from_secs(10),
        max_attempts,
        0.5,
    )
    .expect("valid policy")
}

fn config() -> EngineConfig {
    EngineConfig::default().with_retry(quick_retry(3))
}

fn duration_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().expect("to is not before from")
}

/// Asserts the call is back to `PENDING` with a back-off after failed attempt
/// `attempts` that lies within the policy's jitter bounds, counted from `failed_at`.
fn assert_backed_off(call: &Call, attempts: u32, failed_at: DateTime<Utc>, policy: &RetryPolicy) {
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, attempts);
    let next = call.next_attempt_at.expect("a back-off deadline");
    let delay = duration_between(failed_at, next);
    // Delays are stored with microsecond precision, so the lower bound may be
    // missed by less than a microsecond of truncation.
    let floor = policy
        .min_delay(attempts)
        .saturating_sub(Duration::from_micros(1));
    assert!(
        (floor..=policy.nominal_delay(attempts)).contains(&delay),
        "back-off {delay:?} after attempt {attempts} outside [{:?}, {:?}]",
        policy.min_delay(attempts),
        policy.nominal_delay(attempts)
    );
}

// ---------------------------------------------------------------- dispatch

#[tokio::test(start_paused = true)]
async fn created_call_is_dialled_with_its_payload_attempt_one_and_idempotency_key() {
    let dials = Dials::default();
    let mut dialer = MockDialer::new();
    let log = Arc::clone(&dials);
    dialer
        .expect_start_call()
        .times(1)
        .returning(move |request| accept(&log, request));
    let h = Harness::new(config(), dialer, dials);
    let mut new = call_to("+966 50 123 4567");
    new.payload.script_id = ScriptId::parse("renewalFlow").unwrap();
    new.payload.metadata = Some(Metadata::new(json!({"customer": 17, "tags": ["vip"]})).unwrap());
    let created = h.create(new).await;
    assert_eq!(created.status, CallStatus::Pending);
    assert_eq!(created.attempts, 0);

    let dialled_at = h.now();
    h.tick().await;

    let request = h.dials.lock().unwrap()[0].clone();
    assert_eq!(request.to, number("+966501234567"));
    assert_eq!(request.script_id, "renewalFlow");
    assert_eq!(
        request.metadata,
        Some(json!({"customer": 17, "tags": ["vip"]}))
    );
    assert_eq!(request.attempt, attempt(created.id, 1));
    assert_eq!(request.idempotency_key(), format!("{}:1", created.id));

    let call = h.get(created.id).await;
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(call.attempts, 1);
    assert_eq!(call.started_at, Some(dialled_at));
    assert_eq!(
        call.provider_call_id,
        Some(provider_id(attempt(created.id, 1)))
    );
}

#[tokio::test(start_paused = true)]
async fn cap_dials_at_most_cap_calls_oldest_first_until_slots_free() {
    let h = Harness::accepting(config().with_max_concurrent_calls(2));
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(h.create(call_to(&format!("+96650123450{n}"))).await.id);
        // Distinct creation instants make "oldest first" observable: calls
        // created in one millisecond are ordered by the random part of the id.
        tokio::time::advance(Duration::from_millis(1)).await;
    }

    h.tick().await;
    assert_eq!(h.dialled(), created[..2]);
    assert_eq!(h.in_progress().await, 2);

    // A full cap dials nothing more, however often the engine runs.
    h.tick().await;
    assert_eq!(h.dial_count(), 2);

    for id in &created[..2] {
        h.report(attempt(*id, 1), ReportedStatus::Completed)
            .await
            .unwrap();
    }
    h.tick().await;
    assert_eq!(h.dialled(), created[..4]);
    assert_eq!(h.in_progress().await, 2);

    for id in &created[2..4] {
        h.report(attempt(*id, 1), ReportedStatus::Completed)
            .await
            .unwrap();
    }
    h.tick().await;
    assert_eq!(h.dialled(), created);
    assert_eq!(h.in_progress().await, 1);
}

#[tokio::test(start_paused = true)]
async fn one_call_per_number_is_in_progress_and_a_busy_number_blocks_no_other() {
    let h = Harness::accepting(config());
    let first = h.create(call_to("+966501234567")).await.id;
    tokio::time::advance(Duration::from_millis(1)).await;
    // The same number written differently: normalisation makes it one number.
    let second = h.create(call_to("+966 50-123 4567")).await.id;
    tokio::time::advance(Duration::from_millis(1)).await;
    let other = h.create(call_to("+14155550100")).await.id;

    h.tick().await;
    assert_eq!(h.dialled(), [first, other]);
    let waiting = h.get(second).await;
    assert_eq!(waiting.status, CallStatus::Pending);
    assert_eq!(waiting.attempts, 0, "waiting for a number costs no attempt");

    h.report(attempt(first, 1), ReportedStatus::Completed)
        .await
        .unwrap();
    h.tick().await;
    assert_eq!(h.dialled(), [first, other, second]);
}

// ------------------------------------------------------ provider answers

#[tokio::test(start_paused = true)]
async fn provider_429_with_retry_after_gives_the_attempt_back_until_retry_after() {
    let dials = Dials::default();
    let mut dialer = MockDialer::new();
    let mut sequence = Sequence::new();
    let log = Arc::clone(&dials);
    dialer
        .expect_start_call()
        .times(1)
        .in_sequence(&mut sequence)
        .returning(move |request| {
            log.lock().unwrap().push(request.clone());
            Err(DialError::AtCapacity {
                retry_after: Some(Duration::from_secs(7)),
            })
        });
    let log = Arc::clone(&dials);
    dialer
        .expect_start_call()
        .times(1)
        .in_sequence(&mut sequence)
        .returning(move |request| accept(&log, request));
    let h = Harness::new(config(), dialer, dials);
    let id = h.create(call_to("+966501234567")).await.id;

    let refused_at = h.now();
    h.tick().await;
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, 0, "a 429 is not an attempt");
    assert_eq!(call.last_error, None);
    let retry_at = refused_at + chrono::TimeDelta::seconds(7);
    assert_eq!(call.next_attempt_at, Some(retry_at));
    assert_eq!(h.in_progress().await, 0, "the slot is released");

    tokio::time::advance(Duration::from_millis(6_999)).await;
    assert_eq!(h.tick().await, Some(retry_at));
    assert_eq!(h.dial_count(), 1, "not re-dialled before Retry-After");

    tokio::time::advance(Duration::from_millis(1)).await;
    h.tick().await;
    let requests = h.dials.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    // The attempt was given back, so the re-dial is the same attempt, same key.
    assert_eq!(requests[1].attempt, attempt(id, 1));
    assert_eq!(requests[1].idempotency_key(), requests[0].idempotency_key());
    assert_eq!(h.get(id).await.attempts, 1);
}

/// `tick` documents that it waits for the dial requests it made and returns
/// when the next timed event is due. A dial refused with 429 schedules its
/// re-dial at `Retry-After`, so that is the next event: an embedder driving the
/// engine with `tick` and sleeping until the returned instant must not sleep
/// through it (here until the 900 s lease of an attempt that no longer exists).
#[tokio::test(start_paused = true)]
async fn tick_returns_the_re_dial_time_scheduled_by_the_dials_it_made() {
    let h = Harness::failing(
        config(),
        DialError::AtCapacity {
            retry_after: Some(Duration::from_secs(7)),
        },
    );
    h.create(call_to("+966501234567")).await;

    let refused_at = h.now();
    let next = h.tick().await;
    assert_eq!(next, Some(refused_at + chrono::TimeDelta::seconds(7)));
}

#[tokio::test(start_paused = true)]
async fn provider_429_without_retry_after_waits_capacity_retry_after() {
    let h = Harness::failing(
        config().with_capacity_retry_after(Duration::from_secs(3)),
        DialError::AtCapacity { retry_after: None },
    );
    let id = h.create(call_to("+966501234567")).await.id;

    let refused_at = h.now();
    h.tick().await;
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, 0);
    assert_eq!(
        call.next_attempt_at,
        Some(refused_at + chrono::TimeDelta::seconds(3))
    );
}

#[tokio::test(start_paused = true)]
async fn retryable_error_backs_off_within_jitter_bounds_then_fails_after_max_attempts() {
    let policy = quick_retry(3);
    let h = Harness::failing(
        config().with_retry(policy.clone()),
        DialError::Retryable {
            reason: "provider 503".into(),
        },
    );
    let id = h.create(call_to("+966501234567")).await.id;

    for attempts in 1..=2 {
        let failed_at = h.now();
        h.tick().await;
        assert_eq!(h.dial_count(), attempts as usize);
        let call = h.get(id).await;
        assert_backed_off(&call, attempts, failed_at, &policy);
        assert_eq!(call.last_error.as_deref(), Some("provider 503"));
        assert_eq!(h.in_progress().await, 0, "back-off holds no slot");

        // Just before the back-off runs out nothing is dialled.
        let due = call.next_attempt_at.unwrap();
        h.advance_to(due - chrono::TimeDelta::milliseconds(1)).await;
        h.tick().await;
        assert_eq!(h.dial_count(), attempts as usize);
        h.advance_to(due).await;
    }

    let failed_at = h.now();
    h.tick().await;
    assert_eq!(h.dial_count(), 3);
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.attempts, 3);
    assert_eq!(call.last_error.as_deref(), Some("provider 503"));
    assert_eq!(call.ended_at, Some(failed_at));

    tokio::time::advance(Duration::from_secs(3_600)).await;
    h.tick().await;
    assert_eq!(h.dial_count(), 3, "a FAILED call is never dialled again");
}

#[tokio::test(start_paused = true)]
async fn permanent_error_fails_the_call_at_once() {
    let dials = Dials::default();
    let mut dialer = MockDialer::new();
    let log = Arc::clone(&dials);
    dialer
        .expect_start_call()
        .times(1)
        .returning(move |request| {
            log.lock().unwrap().push(request.clone());
            Err(DialError::Permanent {
                reason: "provider 422: invalid number".into(),
            })
        });
    let h = Harness::new(config(), dialer, dials);
    let id = h.create(call_to("+966501234567")).await.id;

    let failed_at = h.now();
    h.tick().await;
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.attempts, 1);
    assert_eq!(
        call.last_error.as_deref(),
        Some("provider 422: invalid number")
    );
    assert_eq!(call.ended_at, Some(failed_at));
    assert_eq!(call.next_attempt_at, None);

    tokio::time::advance(Duration::from_secs(3_600)).await;
    h.tick().await;
    assert_eq!(h.dial_count(), 1);
}

// ------------------------------------------------------------- schedule

#[tokio::test(start_paused = true)]
async fn not_before_is_respected_and_is_the_next_timer() {
    let h = Harness::accepting(config());
    let not_before = h.now() + chrono::TimeDelta::seconds(10);
    let mut new = call_to("+966501234567");
    new.not_before = Some(not_before);
    let id = h.create(new).await.id;

    assert_eq!(h.tick().await, Some(not_before));
    assert_eq!(h.dial_count(), 0);

    h.advance_to(not_before - chrono::TimeDelta::milliseconds(1))
        .await;
    h.tick().await;
    assert_eq!(h.dial_count(), 0);

    h.advance_to(not_before).await;
    h.tick().await;
    assert_eq!(h.dialled(), [id]);
    assert_eq!(h.get(id).await.started_at, Some(not_before));
}

#[tokio::test(start_paused = true)]
async fn call_expiring_while_the_cap_is_full_expires_on_the_next_tick_and_is_never_dialled() {
    let h = Harness::accepting(config().with_max_concurrent_calls(1));
    let holder = h.create(call_to("+14155550100")).await.id;
    h.tick().await;
    assert_eq!(h.dialled(), [holder]);

    let expires_at = h.now() + chrono::TimeDelta::seconds(5);
    let mut new = call_to("+966501234567");
    new.expires_at = Some(expires_at);
    let waiting = h.create(new).await.id;

    // The cap is full, yet the engine must wake at the deadline: it is the
    // next timed event, earlier than the holder's lease.
    assert_eq!(h.tick().await, Some(expires_at));
    assert_eq!(h.get(waiting).await.status, CallStatus::Pending);

    h.advance_to(expires_at).await;
    h.tick().await;
    let call = h.get(waiting).await;
    assert_eq!(call.status, CallStatus::Expired);
    assert_eq!(call.attempts, 0);
    assert_eq!(call.ended_at, Some(expires_at));

    // Freeing the slot does not resurrect it.
    h.report(attempt(holder, 1), ReportedStatus::Completed)
        .await
        .unwrap();
    h.tick().await;
    assert_eq!(h.dialled(), [holder]);
    assert_eq!(h.get(waiting).await.status, CallStatus::Expired);
}

#[tokio::test(start_paused = true)]
async fn pending_ttl_sets_expires_at_at_create_from_now_or_not_before() {
    let ttl = chrono::TimeDelta::seconds(60);
    let h = Harness::accepting(config().with_pending_ttl(Some(Duration::from_secs(60))));
    let now = h.now();

    let plain = h.create(call_to("+966501234567")).await;
    assert_eq!(plain.expires_at, Some(now + ttl));

    // A scheduled call's TTL runs from when it may first be dialled.
    let not_before = now + chrono::TimeDelta::seconds(30);
    let mut scheduled = call_to("+966501234568");
    scheduled.not_before = Some(not_before);
    assert_eq!(h.create(scheduled).await.expires_at, Some(not_before + ttl));

    // An explicit deadline wins over the default.
    let explicit_at = now + chrono::TimeDelta::seconds(10);
    let mut explicit = call_to("+966501234569");
    explicit.expires_at = Some(explicit_at);
    assert_eq!(h.create(explicit).await.expires_at, Some(explicit_at));
}

#[tokio::test(start_paused = true)]
async fn stale_lease_is_a_webhook_timeout_retry_then_failed() {
    let policy = quick_retry(2);
    let h = Harness::accepting(
        config()
            .with_retry(policy.clone())
            .with_lease(Duration::from_secs(60)),
    );
    let id = h.create(call_to("+966501234567")).await.id;
    h.tick().await;
    let lease_end = h.get(id).await.lease_expires_at.expect("a lease");
    assert_eq!(lease_end, h.now() + chrono::TimeDelta::seconds(60));

    h.advance_to(lease_end - chrono::TimeDelta::milliseconds(1))
        .await;
    h.tick().await;
    assert_eq!(h.get(id).await.status, CallStatus::InProgress);

    h.advance_to(lease_end).await;
    h.tick().await;
    let call = h.get(id).await;
    assert_eq!(call.last_error.as_deref(), Some("webhook timeout"));
    assert_backed_off(&call, 1, lease_end, &policy);
    assert_eq!(h.in_progress().await, 0, "the stale slot is released");

    h.advance_to(call.next_attempt_at.unwrap()).await;
    h.tick().await;
    assert_eq!(h.dial_count(), 2);
    let lease_end = h.get(id).await.lease_expires_at.expect("a second lease");

    h.advance_to(lease_end).await;
    h.tick().await;
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.attempts, 2);
    assert_eq!(call.last_error.as_deref(), Some("webhook timeout"));
    assert_eq!(call.ended_at, Some(lease_end));
    assert_eq!(h.in_progress().await, 0);
}

// -------------------------------------------------------------- webhooks

#[tokio::test(start_paused = true)]
async fn completed_webhook_completes_with_ended_at_completed_at_and_duration() {
    let h = Harness::accepting(config());
    let id = h.create(call_to("+966501234567")).await.id;
    h.tick().await;

    let outcome = h
        .report(attempt(id, 1), ReportedStatus::Completed)
        .await
        .unwrap();
    let WebhookOutcome::Applied(call) = outcome else {
        panic!("expected Applied, got {outcome:?}");
    };
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.ended_at, Some(t(42)));
    assert_eq!(call.duration_sec, Some(42));
    assert_eq!(call.last_error, None);
    assert_eq!(call.lease_expires_at, None);
    assert_eq!(h.get(id).await, call);
    assert_eq!(h.in_progress().await, 0, "the slot is released");
}

#[tokio::test(start_paused = true)]
async fn failed_busy_and_no_answer_webhooks_fail_with_that_status_as_last_error() {
    let h = Harness::accepting(config());
    let cases = [
        ("+966501234561", ReportedStatus::Failed, "FAILED"),
        ("+966501234562", ReportedStatus::Busy, "BUSY"),
        ("+966501234563", ReportedStatus::NoAnswer, "NO_ANSWER"),
    ];
    let mut ids = Vec::new();
    for (to, _, _) in cases {
        ids.push(h.create(call_to(to)).await.id);
    }
    h.tick().await;
    assert_eq!(h.in_progress().await, 3);

    for (id, (_, status, error)) in ids.into_iter().zip(cases) {
        let outcome = h.report(attempt(id, 1), status).await.unwrap();
        assert!(matches!(outcome, WebhookOutcome::Applied(_)), "{outcome:?}");
        let call = h.get(id).await;
        assert_eq!(call.status, CallStatus::Failed, "{error}");
        assert_eq!(call.last_error.as_deref(), Some(error));
        assert_eq!(call.ended_at, Some(t(42)));
        assert_eq!(call.attempts, 1);
    }
    assert_eq!(h.in_progress().await, 0);
}

#[tokio::test(start_paused = true)]
async fn redial_policy_redials_busy_with_back_off_as_the_next_attempt() {
    let policy = quick_retry(3);
    let h = Harness::accepting(
        config()
            .with_retry(policy.clone())
            .with_redial(RedialPolicy::default().with_busy(true)),
    );
    let id = h.create(call_to("+966501234567")).await.id;
    h.tick().await;

    let reported_at = h.now();
    let outcome = h
        .report(attempt(id, 1), ReportedStatus::Busy)
        .await
        .unwrap();
    assert!(matches!(outcome, WebhookOutcome::Applied(_)), "{outcome:?}");
    let call = h.get(id).await;
    assert_eq!(call.last_error.as_deref(), Some("BUSY"));
    assert_eq!(call.ended_at, None);
    assert_backed_off(&call, 1, reported_at, &policy);

    h.advance_to(call.next_attempt_at.unwrap()).await;
    h.tick().await;
    let requests = h.dials.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].attempt, attempt(id, 2));
    assert_eq!(requests[1].idempotency_key(), format!("{id}:2"));

    // NO_ANSWER is not in this policy: it still fails the call at once.
    h.report(attempt(id, 2), ReportedStatus::NoAnswer)
        .await
        .unwrap();
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.last_error.as_deref(), Some("NO_ANSWER"));
}

/// A webhook that fails the call sets `endedAt = completedAt`.
/// When the redial policy is out of attempts the BUSY webhook does fail the
/// call, so the rule applies there too, with the reported duration.
#[tokio::test(start_paused = true)]
async fn redial_policy_out_of_attempts_fails_with_the_webhooks_completed_at_and_duration() {
    let h = Harness::accepting(
        config()
            .with_retry(quick_retry(1))
            .with_redial(RedialPolicy::default().with_busy(true).with_no_answer(true)),
    );
    let id = h.create(call_to("+966501234567")).await.id;
    h.tick().await;

    h.report(attempt(id, 1), ReportedStatus::Busy)
        .await
        .unwrap();
    let call = h.get(id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.last_error.as_deref(), Some("BUSY"));
    assert_eq!(call.ended_at, Some(t(42)), "endedAt = completedAt");
    assert_eq!(call.duration_sec, Some(42));
}

#[tokio::test(start_paused = true)]
async fn repeated_webhook_is_unchanged_and_changes_nothing() {
    let h = Harness::accepting(config());
    let id = h.create(call_to("+966501234567")).await.id;
    h.tick().await;
    let WebhookOutcome::Applied(settled) = h
        .report(attempt(id, 1), ReportedStatus::Completed)
        .await
        .unwrap()
    else {
        panic!("the first webhook applies");
    };

    tokio::time::advance(Duration::from_secs(5)).await;
    // A repeat, even one claiming another outcome, finds the call terminal.
    for status in [ReportedStatus::Completed, ReportedStatus::Failed] {
        let outcome = h.report(attempt(id, 1), status).await.unwrap();
        assert_eq!(outcome, WebhookOutcome::Unchanged(settled.clone()));
    }
    assert_eq!(h.get(id).await, settled);
}

#[tokio::test(start_paused = true)]
async fn older_attempts_webhook_never_settles_the_newer_attempt() {
    let h = Harness::accepting(config().with_lease(Duration::from_secs(60)));
    let id = h.create(call_to("+966501234567")).await.id;
    h.tick().await;
    // Attempt 1 never calls back in time: its lease runs out and it is re-dialled.
    tokio::time::advance(Duration::from_secs(60)).await;
    h.tick().await;
    h.advance_to(h.get(id).await.next_attempt_at.unwrap()).await;
    h.tick().await;
    let current = h.get(id).await;
    assert_eq!(current.status, CallStatus::InProgress);
    assert_eq!(current.attempts, 2);

    // Attempt 1's webhook, found by its provider id...
    let outcome = h
        .report(attempt(id, 1), ReportedStatus::Completed)
        .await
        .unwrap();
    assert_eq!(outcome, WebhookOutcome::Unchanged(current.clone()));
    // ...or only by the query we put in its webhook URL.
    let late = webhook("p-unrecorded", ReportedStatus::Busy, Some(attempt(id, 1)));
    let outcome = h.engine.handle_webhook(late).await.unwrap();
    assert_eq!(outcome, WebhookOutcome::Unchanged(current.clone()));
    assert_eq!(h.get(id).await, current);

    let outcome = h
        .report(attempt(id, 2), ReportedStatus::Completed)
        .await
        .unwrap();
    assert_eq!(outcome.call().status, CallStatus::Completed);
    assert!(matches!(outcome, WebhookOutcome::Applied(_)));
}

#[tokio::test(start_paused = true)]
async fn webhook_arriving_before_the_dial_was_recorded_settles_through_the_query() {
    let h = Harness::accepting(config());
    let id = h.create(call_to("+966501234567")).await.id;
    // Claim through the store, as the dispatcher does, and stop there: the
    // attempt is IN_PROGRESS but the provider's 202 (and so its call id) is
    // not recorded yet. A mock cannot hold its answer back while the test
    // delivers a webhook, so this is the exact state the race leaves behind.
    let claimed = h
        .store
        .claim(&ClaimRequest {
            now: h.now(),
            max_in_flight: 30,
            limit: 1,
            lease: Duration::from_secs(900),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].provider_call_id, None);

    let early = webhook("p-early", ReportedStatus::Completed, Some(attempt(id, 1)));
    let outcome = h.engine.handle_webhook(early.clone()).await.unwrap();
    assert!(matches!(outcome, WebhookOutcome::Applied(_)), "{outcome:?}");
    let settled = h.get(id).await;
    assert_eq!(settled.status, CallStatus::Completed);
    assert_eq!(settled.ended_at, Some(t(42)));

    // The 202 lands afterwards and changes nothing.
    let recorded = h.store.record_dial(attempt(id, 1), "p-early").await;
    assert!(recorded.unwrap().is_none());
    assert_eq!(h.get(id).await, settled);

    // The fallback recorded the provider id, so a repeat without the query
    // is recognised instead of being answered 404.
    let repeat = WebhookDelivery {
        attempt: None,
        ..early
    };
    let outcome = h.engine.handle_webhook(repeat).await.unwrap();
    assert_eq!(outcome, WebhookOutcome::Unchanged(settled));
    assert_eq!(h.dial_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn unknown_provider_call_id_without_query_is_not_found() {
    let h = Harness::accepting(config());
    let result = h
        .engine
        .handle_webhook(webhook("p-nobody", ReportedStatus::Completed, None))
        .await;
    assert!(
        matches!(result, Err(EngineError::NotFound(_))),
        "{result:?}"
    );

    // A query naming a call that does not exist is just as unknown.
    let stranger = attempt(CallId::new_v7(origin()), 1);
    let result = h
        .engine
        .handle_webhook(webhook(
            "p-nobody",
            ReportedStatus::Completed,
            Some(stranger),
        ))
        .await;
    assert!(
        matches!(result, Err(EngineError::NotFound(_))),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn provider_call_id_with_control_characters_is_invalid_and_changes_nothing() {
    let h = Harness::accepting(config());
    let pending = h.create(call_to("+966501234567")).await;
    h.engine.tick().await.expect("tick");
    let result = h
        .engine
        .handle_webhook(webhook(
            "p-\u{0}",
            ReportedStatus::Completed,
            Some(attempt(pending.id, 1)),
        ))
        .await;
    assert!(
        matches!(result, Err(EngineError::Invalid(ref invalid)) if invalid.field == "callId"),
        "{result:?}"
    );
    let call = h.engine.get_call(pending.id).await.expect("get");
    assert_eq!(call.status, CallStatus::InProgress);
}

#[tokio::test(start_paused = true)]
async fn query_naming_an_attempt_never_dialled_is_ignored_and_changes_nothing() {
    let h = Harness::accepting(config());
    let pending = h.create(call_to("+966501234567")).await;
    let outcome = h
        .engine
        .handle_webhook(webhook(
            "p-forged",
            ReportedStatus::Completed,
            Some(attempt(pending.id, 1)),
        ))
        .await
        .unwrap();
    assert_eq!(outcome, WebhookOutcome::Ignored(pending.clone()));
    assert_eq!(h.get(pending.id).await, pending);
    // The made-up provider id was not recorded against the call.
    let result = h
        .engine
        .handle_webhook(webhook("p-forged", ReportedStatus::Completed, None))
        .await;
    assert!(
        matches!(result, Err(EngineError::NotFound(_))),
        "{result:?}"
    );

    // The same holds for an attempt beyond the one in progress.
    h.tick().await;
    let dialled = h.get(pending.id).await;
    let outcome = h
        .engine
        .handle_webhook(webhook(
            "p-future",
            ReportedStatus::Failed,
            Some(attempt(pending.id, 2)),
        ))
        .await
        .unwrap();
    assert_eq!(outcome, WebhookOutcome::Ignored(dialled.clone()));
    assert_eq!(h.get(pending.id).await, dialled);
}

// ------------------------------------------------------------ validation

fn invalid_field<T: std::fmt::Debug>(result: Result<T, EngineError>) -> &'static str {
    match result {
        Err(EngineError::Invalid(Invalid { field, .. })) => field,
        other => panic!("expected EngineError::Invalid, got {other:?}"),
    }
}

/// Each field is valid by its type; the engine checks the rule between them.
#[tokio::test(start_paused = true)]
async fn schedules_expiring_too_soon_are_refused_naming_the_field_and_nothing_is_stored() {
    let h = Harness::accepting(config());
    let now = h.now();

    let mut past = call_to("+966501234567");
    past.expires_at = Some(now);
    assert_eq!(invalid_field(h.engine.create_call(past).await), "expiresAt");

    let mut before_not_before = call_to("+966501234567");
    before_not_before.not_before = Some(now + chrono::TimeDelta::seconds(20));
    before_not_before.expires_at = Some(now + chrono::TimeDelta::seconds(10));
    assert_eq!(
        invalid_field(h.engine.create_call(before_not_before).await),
        "expiresAt"
    );

    let counts = h.engine.counts().await.unwrap();
    assert_eq!(counts.total(), 0);
}

#[test]
fn engine_config_with_zero_cap_is_refused() {
    let config = EngineConfig::default().with_max_concurrent_calls(0);
    let error = config.validate().unwrap_err();
    assert_eq!(
        error,
        ConfigError {
            field: "max_concurrent_calls",
            problem: "must be at least 1",
        }
    );
    let built = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(MockDialer::new()))
        .config(config)
        .build();
    assert_eq!(built.err().map(|e| e.field), Some("max_concurrent_calls"));
}

// ------------------------------------------------------------- the API

#[test]
fn webhook_outcomes_name_themselves_and_the_call() {
    let new = call_to("+966501234567");
    let call = Call::new(CallId::new_v7(origin()), &new, origin());
    let outcomes = [
        (WebhookOutcome::Applied(call.clone()), "applied"),
        (WebhookOutcome::Unchanged(call.clone()), "unchanged"),
        (WebhookOutcome::Ignored(call.clone()), "ignored"),
    ];
    for (outcome, label) in outcomes {
        assert_eq!(outcome.label(), label);
        assert_eq!(outcome.call(), &call);
    }
}

#[test]
fn the_engine_shows_its_configuration() {
    let config = config().with_max_concurrent_calls(7);
    let builder = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(MockDialer::new()))
        .config(config.clone())
        .seed(5);
    let printed = format!("{builder:?}");
    assert!(
        printed.starts_with("EngineBuilder { config: EngineConfig { max_concurrent_calls: 7,"),
        "{printed}"
    );
    assert!(printed.contains("seed: Some(5)"), "{printed}");

    let engine = builder.build().expect("valid configuration");
    assert_eq!(engine.config(), &config);
    let printed = format!("{engine:?}");
    assert!(
        printed.starts_with("Engine { config: EngineConfig { max_concurrent_calls: 7,"),
        "{printed}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_round_claims_batch_after_batch_until_the_cap_is_full() {
    let h = Harness::accepting(config().with_claim_batch(2).with_max_concurrent_calls(5));
    let mut created = Vec::new();
    for n in 0..6 {
        created.push(h.create(call_to(&format!("+96650123450{n}"))).await.id);
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    h.tick().await;
    assert_eq!(h.dialled(), created[..5]);
}

// ---------------------------------------------------------- store outage

/// The fault of an [`OutageStore`]: while down, every operation fails with
/// [`StoreError::Unavailable`], as a database that cannot be reached does.
/// Its writes of provider answers (`settle`, `record_dial`) can also be made
/// to fail a number of times, then recover; it counts the tries.
#[derive(Default)]
struct Outage {
    down: AtomicBool,
    failing_settles: AtomicU64,
    failing_records: AtomicU64,
    settle_tries: AtomicU64,
    record_tries: AtomicU64,
}

/// A [`MemoryStore`] that can be taken down (see [`Outage`]).
type OutageStore = HookedStore<Outage>;

fn outage_store() -> OutageStore {
    HookedStore::new(Arc::new(MemoryStore::new()), Outage::default())
}

impl Outage {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` settles fail as unavailable (`u64::MAX`: all of them).
    fn fail_settles(&self, n: u64) {
        self.failing_settles.store(n, Ordering::SeqCst);
    }

    /// The next `n` recorded dials fail as unavailable.
    fn fail_records(&self, n: u64) {
        self.failing_records.store(n, Ordering::SeqCst);
    }

    fn settle_tries(&self) -> u64 {
        self.settle_tries.load(Ordering::SeqCst)
    }

    fn record_tries(&self) -> u64 {
        self.record_tries.load(Ordering::SeqCst)
    }

    /// Counts a try of a write and fails it while `failing` is positive.
    fn write(tries: &AtomicU64, failing: &AtomicU64) -> Result<(), StoreError> {
        tries.fetch_add(1, Ordering::SeqCst);
        let failed = failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                (left > 0).then(|| if left == u64::MAX { left } else { left - 1 })
            })
            .is_ok();
        if failed {
            return Err(StoreError::Unavailable("pool timed out".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl StoreHook for Outage {
    async fn before(&self, operation: Operation<'_>) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        match operation {
            Operation::Settle(..) => Self::write(&self.settle_tries, &self.failing_settles),
            Operation::RecordDial(..) => Self::write(&self.record_tries, &self.failing_records),
            _ => Ok(()),
        }
    }
}

fn unavailable<T: std::fmt::Debug>(result: &Result<T, EngineError>) -> bool {
    matches!(result, Err(EngineError::Store(StoreError::Unavailable(_))))
}

/// An engine over an [`OutageStore`] whose provider accepts every dial.
fn over_outage_store(config: EngineConfig) -> (Engine, Arc<OutageStore>, Dials) {
    let dials = Dials::default();
    let log = Arc::clone(&dials);
    let (engine, store) = over_outage_store_answering(config, move |request| accept(&log, request));
    (engine, store, dials)
}

/// An engine over an [`OutageStore`] whose provider answers every dial with `answer`.
fn over_outage_store_answering(
    config: EngineConfig,
    answer: impl Fn(&DialRequest) -> Result<Dialled, DialError> + Send + 'static,
) -> (Engine, Arc<OutageStore>) {
    let store = Arc::new(outage_store());
    let mut dialer = MockDialer::new();
    dialer.expect_start_call().returning(answer);
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>, Arc::new(dialer))
        .config(config)
        .clock(Arc::new(TokioClock::starting_at(origin())))
        .seed(9)
        .build()
        .expect("valid configuration");
    (engine, store)
}

fn provider_503(_: &DialRequest) -> Result<Dialled, DialError> {
    Err(DialError::Retryable {
        reason: "provider 503".into(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_fails_each_operation_as_a_store_error_until_it_ends() {
    let (engine, store, dials) = over_outage_store(config());
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;

    store.hook().set_down(true);
    assert!(unavailable(&engine.ready().await));
    assert!(unavailable(
        &engine.create_call(call_to("+966501234568")).await
    ));
    assert!(unavailable(&engine.get_call(id).await));
    assert!(unavailable(&engine.counts().await));
    assert!(unavailable(&engine.tick().await));
    assert!(dials.lock().unwrap().is_empty());

    store.hook().set_down(false);
    engine.ready().await.expect("the store is back");
    engine.tick().await.expect("a round");
    assert_eq!(dials.lock().unwrap().len(), 1);
    assert_eq!(
        engine.get_call(id).await.unwrap().status,
        CallStatus::InProgress
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_dispatcher_retries_after_a_store_outage_without_a_signal() {
    let poll = Duration::from_secs(2);
    let (engine, store, dials) = over_outage_store(config().with_fallback_poll(poll));
    engine.create_call(call_to("+966501234567")).await.unwrap();
    store.hook().set_down(true);
    let running = engine.start();
    settle_tasks().await;

    // The outage ends without any change the store would signal: only the
    // fallback poll brings the dispatcher back.
    store.hook().set_down(false);
    tokio::time::advance(poll - Duration::from_millis(1)).await;
    settle_tasks().await;
    assert!(dials.lock().unwrap().is_empty(), "dialled before the poll");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle_tasks().await;
    assert_eq!(dials.lock().unwrap().len(), 1);
    running.shutdown().await;
}

// ------------------------------------------- recording through an outage

/// The shortest and longest time `failures` failed tries of a store write
/// wait in all, with the default store-retry back-off (100 ms doubling to
/// 5 s, up to half cut at random).
fn store_retry_waits(failures: u32) -> (Duration, Duration) {
    let nominal: Duration = (1..=failures)
        .map(|n| {
            Duration::from_millis(100)
                .saturating_mul(1 << (n - 1).min(16))
                .min(Duration::from_secs(5))
        })
        .sum();
    (nominal / 2, nominal)
}

#[tokio::test(start_paused = true)]
async fn a_dial_answer_the_store_could_not_record_is_retried_until_it_lands_and_frees_the_slot() {
    let (engine, store) =
        over_outage_store_answering(config().with_max_concurrent_calls(1), provider_503);
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    store.hook().fail_settles(3);

    let started = tokio::time::Instant::now();
    engine.tick().await.expect("a round");
    let waited = started.elapsed();

    assert_eq!(
        store.hook().settle_tries(),
        4,
        "three failures, then the write"
    );
    let (shortest, longest) = store_retry_waits(3);
    assert!(
        (shortest..=longest).contains(&waited),
        "waited {waited:?}, back-off bounds [{shortest:?}, {longest:?}]"
    );
    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.last_error.as_deref(), Some("provider 503"));
    // The re-dial is scheduled from when the provider answered, not from
    // when the store took the answer.
    assert_backed_off(&call, 1, origin(), &quick_retry(3));
    let counts = engine.counts().await.unwrap();
    assert_eq!(counts.get(CallStatus::InProgress), 0, "the slot is free");
}

#[tokio::test(start_paused = true)]
async fn an_accepted_dials_provider_id_is_recorded_once_the_store_is_back() {
    let (engine, store, _dials) = over_outage_store(config());
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    store.hook().fail_records(2);

    engine.tick().await.expect("a round");

    assert_eq!(store.hook().record_tries(), 3);
    let call = engine.get_call(id).await.unwrap();
    let recorded = attempt(id, 1);
    assert_eq!(call.provider_call_id, Some(provider_id(recorded)));
    // A webhook naming only the provider id now finds the attempt.
    let outcome = engine
        .handle_webhook(webhook(
            &provider_id(recorded),
            ReportedStatus::Completed,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(outcome.call().status, CallStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn store_write_retries_stop_when_the_attempts_lease_runs_out_and_the_lease_settles_it() {
    let lease = Duration::from_secs(60);
    let (engine, store) = over_outage_store_answering(config().with_lease(lease), provider_503);
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    store.hook().fail_settles(u64::MAX);

    let started = tokio::time::Instant::now();
    engine.tick().await.expect("a round");

    assert_eq!(started.elapsed(), lease, "tries end when the lease does");
    // Delays are capped at 5 s, so a minute holds at least 12 of them, and
    // at most as many as the shortest possible delays fit.
    let tries = store.hook().settle_tries();
    assert!((13..=40).contains(&tries), "{tries} tries in {lease:?}");
    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.status, CallStatus::InProgress);

    store.hook().fail_settles(0);
    engine.tick().await.expect("a round");
    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.last_error.as_deref(), Some("webhook timeout"));
    assert_eq!(
        engine.counts().await.unwrap().get(CallStatus::InProgress),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_room_for_retries_a_failed_write_is_left_to_the_lease() {
    let (engine, store) =
        over_outage_store_answering(config().with_max_pending_store_retries(0), provider_503);
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    store.hook().fail_settles(1);

    let started = tokio::time::Instant::now();
    engine.tick().await.expect("a round");

    assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited");
    assert_eq!(store.hook().settle_tries(), 1);
    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.status, CallStatus::InProgress);
}

#[tokio::test(start_paused = true)]
async fn a_write_the_store_refuses_for_good_is_not_retried() {
    let (engine, store) = over_outage_store_answering(config(), provider_503);
    let call = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call;
    engine.tick().await.expect("a round");
    let tries = store.hook().settle_tries();
    // Settling a call that is not there is an answer (not found), not an
    // outage: a webhook for it fails once and changes nothing.
    let unknown = attempt(CallId::new_v7(t(0)), 1);
    let outcome = engine
        .handle_webhook(webhook(
            "p-unknown",
            ReportedStatus::Completed,
            Some(unknown),
        ))
        .await;
    assert!(
        matches!(outcome, Err(EngineError::NotFound(_))),
        "{outcome:?}"
    );
    assert_eq!(store.hook().settle_tries(), tries);
    assert_eq!(
        engine.get_call(call.id).await.unwrap().status,
        CallStatus::Pending
    );
}

/// A started engine over an [`OutageStore`] and a simulated provider that
/// answers a dial in 1 s and calls back 1 s later, with `COMPLETED`.
fn started_over_outage_store() -> (Engine, Arc<OutageStore>, EngineHandle) {
    let store = Arc::new(outage_store());
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_dial_latency(Duration::from_secs(1)..=Duration::from_secs(1))
            .with_call_duration(Duration::from_secs(1)..=Duration::from_secs(1))
            .with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>, Arc::new(provider))
        .config(config())
        .clock(Arc::new(TokioClock::starting_at(origin())))
        .seed(4)
        .build()
        .expect("valid configuration");
    let running = engine.start();
    (engine, store, running)
}

#[tokio::test(start_paused = true)]
async fn an_in_process_webhook_the_store_could_not_take_is_retried_until_it_settles() {
    let (engine, store, running) = started_over_outage_store();
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    store.hook().fail_settles(4);
    // Dialled at once, answered at 1 s, the webhook at 2 s; then back-off.
    run_for(Duration::from_secs(2), MS_10).await;
    assert_eq!(
        store.hook().settle_tries(),
        2,
        "the webhook, and its first retry"
    );
    assert_eq!(
        engine.get_call(id).await.unwrap().status,
        CallStatus::InProgress
    );
    // The retry task's first try follows the intake's at once: three
    // back-off delays remain before the fifth try.
    let (_, longest) = store_retry_waits(3);
    run_for(longest, MS_10).await;

    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.status, CallStatus::Completed, "{call:?}");
    assert_eq!(store.hook().settle_tries(), 5);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_store_writes_being_retried() {
    let (engine, store, running) = started_over_outage_store();
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    store.hook().fail_settles(4);
    run_for(Duration::from_secs(2), MS_10).await;
    assert_eq!(
        store.hook().settle_tries(),
        2,
        "the webhook's settle failed"
    );

    running.shutdown().await;

    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.status, CallStatus::Completed, "{call:?}");
}

// --------------------------------------------------------------- retention

/// Stores `n` calls that completed at the current instant, as provider
/// `p-{callId}:1`, each to its own number.
async fn completed_calls(h: &Harness, n: u32) -> Vec<CallId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(h.create(call_to(&format!("+1415555{i:04}"))).await.id);
    }
    let claimed = h
        .store
        .claim(&ClaimRequest {
            now: h.now(),
            max_in_flight: u32::MAX,
            limit: n,
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    for call in claimed {
        let attempt = call.current_attempt();
        h.store
            .record_dial(attempt, &provider_id(attempt))
            .await
            .unwrap();
        let completed = Settlement::Completed {
            at: h.now(),
            duration_sec: None,
        };
        h.store.settle(attempt, completed).await.unwrap();
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn retention_deletes_calls_ended_longer_ago_in_batches_every_few_seconds() {
    let h = Harness::accepting(config().with_retention(Some(Duration::from_secs(60))));
    let ids = completed_calls(&h, 1_200).await;
    let running = h.engine.start();

    // Passes run every 5 s; the pass at 60 s still keeps calls that ended
    // exactly 60 s before.
    run_for(Duration::from_secs(64), SECOND).await;
    assert_eq!(h.engine.counts().await.unwrap().total(), 1_200);
    // The pass at 65 s deletes all 1,200, batch after batch.
    run_for(Duration::from_secs(1), SECOND).await;
    assert_eq!(h.engine.counts().await.unwrap().total(), 0);
    for id in [ids[0], ids[1_199]] {
        let error = h.engine.get_call(id).await.expect_err("purged");
        assert!(matches!(error, EngineError::NotFound(_)), "{error:?}");
    }
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_late_webhook_for_a_purged_call_is_unknown() {
    let h = Harness::accepting(config().with_retention(Some(Duration::from_secs(60))));
    let id = completed_calls(&h, 1).await[0];
    let running = h.engine.start();
    run_for(Duration::from_secs(65), SECOND).await;
    running.shutdown().await;

    let first = attempt(id, 1);
    for query in [None, Some(first)] {
        let outcome = h
            .engine
            .handle_webhook(webhook(
                &provider_id(first),
                ReportedStatus::Completed,
                query,
            ))
            .await;
        assert!(
            matches!(outcome, Err(EngineError::NotFound(_))),
            "query {query:?}: {outcome:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_retention_every_call_is_kept() {
    let h = Harness::accepting(config());
    completed_calls(&h, 3).await;
    let running = h.engine.start();
    run_for(Duration::from_secs(3_600), SECOND).await;
    running.shutdown().await;
    assert_eq!(h.engine.counts().await.unwrap().total(), 3);
}

// ------------------------------------------------------------- lifecycle

const MS_10: Duration = Duration::from_millis(10);
const SECOND: Duration = Duration::from_secs(1);

/// Lets tasks run, then moves virtual time forward `duration` in `step`s,
/// letting tasks run after each. A task's sleep ends at the first step at or
/// after its deadline, so `step` bounds how late a timer may be observed.
async fn run_for(duration: Duration, step: Duration) {
    settle_tasks().await;
    let mut left = duration;
    while !left.is_zero() {
        let now = step.min(left);
        tokio::time::advance(now).await;
        settle_tasks().await;
        left -= now;
    }
}

/// Lets every task that can run at this virtual instant run.
async fn settle_tasks() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A started engine over a simulated provider that takes exactly 1 s to
/// answer a dial and whose calls last 100 s, so a dial is in flight for a
/// known second.
fn slow_dialling_engine() -> (Engine, SimulatedProvider) {
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_dial_latency(Duration::from_secs(1)..=Duration::from_secs(1))
            .with_call_duration(Duration::from_secs(100)..=Duration::from_secs(100))
            .with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(provider.clone()))
        .config(config())
        .clock(Arc::new(TokioClock::starting_at(origin())))
        .seed(2)
        .build()
        .expect("valid configuration");
    (engine, provider)
}

#[tokio::test(start_paused = true)]
async fn shutdown_records_the_dials_in_flight_then_dials_nothing_more() {
    let (engine, provider) = slow_dialling_engine();
    let running = engine.start();
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    settle_tasks().await;
    assert_eq!(provider.requests(), 1, "the dial is in flight");

    running.shutdown().await;
    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(
        call.provider_call_id.as_deref(),
        Some(provider.started_calls()[0].provider_call_id.as_str()),
        "the answer that arrived during the drain was recorded"
    );

    let later = engine
        .create_call(call_to("+966501234568"))
        .await
        .unwrap()
        .call
        .id;
    tokio::time::advance(Duration::from_secs(10)).await;
    settle_tasks().await;
    assert_eq!(
        engine.get_call(later).await.unwrap().status,
        CallStatus::Pending
    );
    assert_eq!(provider.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn abort_drops_the_dials_in_flight_and_dials_nothing_more() {
    let (engine, provider) = slow_dialling_engine();
    let running = engine.start();
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;
    settle_tasks().await;
    assert_eq!(provider.requests(), 1, "the dial is in flight");

    running.abort();
    let later = engine
        .create_call(call_to("+966501234568"))
        .await
        .unwrap()
        .call
        .id;
    tokio::time::advance(Duration::from_secs(10)).await;
    settle_tasks().await;
    // As after a crash: the attempt stays in progress until its lease runs out.
    let call = engine.get_call(id).await.unwrap();
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(call.provider_call_id, None);
    assert!(provider.started_calls().is_empty());
    assert_eq!(
        engine.get_call(later).await.unwrap().status,
        CallStatus::Pending
    );
    assert_eq!(provider.requests(), 1);
}

// --------------------------------------------------------------- metrics

/// A `metrics` recorder that keeps every counter, keyed by name and labels.
#[derive(Default)]
struct CountingRecorder {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl CountingRecorder {
    fn key(name: &str, labels: &[(&str, &str)]) -> String {
        format!("{name}{labels:?}")
    }

    /// The counter's value; 0 when it was never registered.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counters = self.counters.lock().unwrap();
        counters
            .get(&Self::key(name, labels))
            .map_or(0, |counter| counter.load(Ordering::SeqCst))
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<(&str, &str)> = key
            .labels()
            .map(|label| (label.key(), label.value()))
            .collect();
        let mut counters = self.counters.lock().unwrap();
        let counter = counters.entry(Self::key(key.name(), &labels)).or_default();
        metrics::Counter::from_arc(Arc::clone(counter))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Operators watch the engine through its counters: calls created and
/// expired, dials by outcome, leases run out, retries, webhooks by outcome.
#[test]
fn the_engine_counts_what_it_does() {
    let recorder = CountingRecorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let h = Harness::accepting(
                config()
                    .with_max_concurrent_calls(1)
                    .with_lease(Duration::from_secs(60)),
            );
            let holder = h.create(call_to("+14155550100")).await.id;
            h.tick().await;
            let mut waiting = call_to("+966501234567");
            waiting.expires_at = Some(h.now() + chrono::TimeDelta::seconds(5));
            h.create(waiting).await;
            tokio::time::advance(Duration::from_secs(5)).await;
            h.tick().await;
            h.advance_to(t(60)).await;
            h.tick().await;
            assert_eq!(
                h.get(holder).await.last_error.as_deref(),
                Some("webhook timeout")
            );
            let unknown = h
                .engine
                .handle_webhook(webhook("p-nobody", ReportedStatus::Completed, None))
                .await;
            assert!(
                matches!(unknown, Err(EngineError::NotFound(_))),
                "{unknown:?}"
            );
        });
    });
    let count = |name: &str, labels: &[(&str, &str)]| recorder.count(name, labels);
    assert_eq!(count("orchestrator_calls_created_total", &[]), 2);
    assert_eq!(
        count("orchestrator_dials_total", &[("outcome", "accepted")]),
        1
    );
    assert_eq!(count("orchestrator_calls_expired_total", &[]), 1);
    assert_eq!(count("orchestrator_stale_leases_total", &[]), 1);
    assert_eq!(count("orchestrator_retries_total", &[]), 1);
    assert_eq!(
        count("orchestrator_webhooks_total", &[("outcome", "unknown")]),
        1
    );
}

// ------------------------------------------------------------ end to end

#[tokio::test(start_paused = true)]
async fn started_engine_with_the_simulated_provider_completes_a_call() {
    // Only COMPLETED outcomes, so the test states one behaviour whatever the
    // seed draws; everything else is the simulator's default.
    let provider = SimulatedProvider::new(
        SimulationConfig::default().with_outcomes(OutcomeMix::only(ReportedStatus::Completed)),
    );
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(provider.clone()))
        .clock(Arc::new(TokioClock::starting_at(origin())))
        .seed(1)
        .build()
        .unwrap();
    let running = engine.start();
    let id = engine
        .create_call(call_to("+966501234567"))
        .await
        .unwrap()
        .call
        .id;

    // Simulated calls last at most 5 s; 30 s of virtual time is ample.
    let mut call = engine.get_call(id).await.unwrap();
    for _ in 0..300 {
        if call.status.is_terminal() {
            break;
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        // Let the dispatcher, the provider's call-back and the webhook intake
        // each take their turn after the clock moved.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        call = engine.get_call(id).await.unwrap();
    }
    running.shutdown().await;

    assert_eq!(call.status, CallStatus::Completed, "{call:?}");
    assert_eq!(call.attempts, 1);
    assert!(call.provider_call_id.is_some());
    assert!(call.ended_at.is_some());
    assert!(matches!(call.duration_sec, Some(1..=5)), "{call:?}");
    assert_eq!(provider.started_calls().len(), 1);
}
