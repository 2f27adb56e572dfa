//! Platform outcomes in the engine: reconciling a lost webhook from the
//! provider's status, and pausing dialling after an account error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::{
    async_trait, AttemptRef, CallLookup, CallStatus, DialError, DialRequest, Dialled, Engine,
    EngineConfig, LookupError, MemoryStore, NewCall, PhoneNumber, Provider, ReportedStatus,
    ScriptId, StatusReport, Store, TokioClock, WebhookDelivery,
};

/// How the stand-in answers dials and status lookups.
#[derive(Clone, Copy)]
enum Lookup {
    Ended(ReportedStatus),
    Live,
    Unsupported,
}

struct Platform {
    dials: Mutex<Vec<AttemptRef>>,
    lookups: Mutex<Vec<String>>,
    lookup: Lookup,
    account_error_on_dial: bool,
}

impl Platform {
    fn new(lookup: Lookup) -> Self {
        Self {
            dials: Mutex::new(Vec::new()),
            lookups: Mutex::new(Vec::new()),
            lookup,
            account_error_on_dial: false,
        }
    }

    fn dials(&self) -> usize {
        self.dials.lock().unwrap().len()
    }
}

#[async_trait]
impl Provider for Platform {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        self.dials.lock().unwrap().push(request.attempt);
        if self.account_error_on_dial {
            return Err(DialError::Account {
                reason: "call.start.error-subscription-insufficient-credits".into(),
            });
        }
        Ok(Dialled {
            provider_call_id: format!("p-{}", request.attempt),
        })
    }

    async fn call_status(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<CallLookup, LookupError> {
        self.lookups
            .lock()
            .unwrap()
            .push(provider_call_id.to_owned());
        match self.lookup {
            Lookup::Ended(status) => Ok(CallLookup::Ended(StatusReport {
                provider_call_id: provider_call_id.to_owned(),
                status,
                duration_sec: Some(30),
                completed_at: None,
                reason: Some("customer-ended-call".into()),
            })),
            Lookup::Live => Ok(CallLookup::Live),
            Lookup::Unsupported => Err(LookupError::Unsupported),
        }
    }
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

fn call_to(n: u32) -> NewCall {
    NewCall::new(
        PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap(),
        ScriptId::parse("agent-1").unwrap(),
    )
}

fn engine(platform: Arc<Platform>) -> Engine {
    Engine::builder(Arc::new(MemoryStore::new()) as Arc<dyn Store>, platform)
        .config(
            EngineConfig::default()
                .with_lease(Duration::from_secs(60))
                .with_account_error_pause(Duration::from_secs(300)),
        )
        .clock(Arc::new(TokioClock::starting_at(t(0))))
        .seed(3)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_lost_webhook_is_reconciled_from_the_providers_status_without_a_second_dial() {
    let platform = Arc::new(Platform::new(Lookup::Ended(ReportedStatus::Completed)));
    let engine = engine(Arc::clone(&platform));
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    engine.tick().await.unwrap();
    // No webhook ever comes; the lease runs out.
    tokio::time::advance(Duration::from_secs(61)).await;
    engine.tick().await.unwrap();
    let call = engine.get_call(call.id).await.unwrap();
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.duration_sec, Some(30));
    assert_eq!(platform.dials(), 1);
    assert_eq!(
        *platform.lookups.lock().unwrap(),
        [format!("p-{}", call.current_attempt())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_the_provider_still_reports_live_or_cannot_look_up_is_a_webhook_timeout() {
    for lookup in [Lookup::Live, Lookup::Unsupported] {
        let platform = Arc::new(Platform::new(lookup));
        let engine = engine(Arc::clone(&platform));
        let call = engine.create_call(call_to(1)).await.unwrap().call;
        engine.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        engine.tick().await.unwrap();
        let call = engine.get_call(call.id).await.unwrap();
        assert_eq!(call.status, CallStatus::Pending, "retried with back-off");
        assert_eq!(call.last_error.as_deref(), Some("webhook timeout"));
    }
}

#[tokio::test(start_paused = true)]
async fn an_account_error_fails_the_call_and_pauses_dialling_until_resumed() {
    let mut platform = Platform::new(Lookup::Unsupported);
    platform.account_error_on_dial = true;
    let platform = Arc::new(platform);
    let engine = engine(Arc::clone(&platform));
    let first = engine.create_call(call_to(1)).await.unwrap().call;
    engine.tick().await.unwrap();
    let first = engine.get_call(first.id).await.unwrap();
    assert_eq!(first.status, CallStatus::Failed);
    assert_eq!(
        first.last_error.as_deref(),
        Some("call.start.error-subscription-insufficient-credits")
    );
    assert_eq!(engine.dialling_paused_until(), Some(t(300)));
    // The queue is not burnt through while paused.
    let waiting = engine.create_call(call_to(2)).await.unwrap().call;
    engine.tick().await.unwrap();
    assert_eq!(platform.dials(), 1);
    assert_eq!(
        engine.get_call(waiting.id).await.unwrap().status,
        CallStatus::Pending
    );
    engine.resume_dialling();
    assert_eq!(engine.dialling_paused_until(), None);
    engine.tick().await.unwrap();
    assert_eq!(platform.dials(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_account_error_webhook_pauses_dialling_and_the_pause_ends_by_itself() {
    let platform = Arc::new(Platform::new(Lookup::Unsupported));
    let engine = engine(Arc::clone(&platform));
    let call = engine.create_call(call_to(1)).await.unwrap().call;
    engine.tick().await.unwrap();
    engine
        .handle_webhook(WebhookDelivery {
            report: StatusReport {
                provider_call_id: format!("p-{}:1", call.id),
                status: ReportedStatus::AccountError,
                duration_sec: None,
                completed_at: None,
                reason: Some("call.start.error-subscription-frozen".into()),
            },
            attempt: None,
        })
        .await
        .unwrap();
    let ended = engine.get_call(call.id).await.unwrap();
    assert_eq!(ended.status, CallStatus::Failed);
    assert_eq!(
        ended.last_error.as_deref(),
        Some("call.start.error-subscription-frozen")
    );
    assert!(engine.dialling_paused_until().is_some());
    engine.create_call(call_to(2)).await.unwrap();
    engine.tick().await.unwrap();
    assert_eq!(platform.dials(), 1);
    tokio::time::advance(Duration::from_secs(301)).await;
    engine.tick().await.unwrap();
    assert_eq!(platform.dials(), 2);
}
