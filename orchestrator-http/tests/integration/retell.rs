//! The Retell adapter against a stand-in server that follows Retell's
//! documented contract, and Retell-shaped, Retell-signed webhooks into the
//! router.
//!
//! Fixtures, with their sources:
//! - the create-phone-call request members and the call object:
//!   `RetellAI/retell-python-sdk:src/retell/types/call_create_phone_call_params.py`
//!   and `src/retell/types/phone_call_response.py`; the answer's example values
//!   (`call_id`, `agent_id`, `telephony_identifier`) from
//!   <https://docs.retellai.com/api-references/create-phone-call>;
//! - the webhook body `{"event", "call"}` and the `call_ended` sample's members
//!   (`start_timestamp`, `end_timestamp`, `disconnection_reason`, `transcript`,
//!   `transcript_object`) from <https://docs.retellai.com/features/webhook-overview>;
//! - error bodies `{"status": "error", "message": ...}` and their messages from
//!   Retell's OpenAPI document (components `PaymentRequired`, `TooManyRequests`);
//! - the signature scheme from `RetellAI/retell-python-sdk:src/retell/lib/webhook_auth.py`,
//!   recomputed here with `hmac` directly rather than through the adapter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use orchestrator_core::{Clock, Engine, EngineConfig, MemoryStore, PhoneNumber};
use orchestrator_http::platforms::retell::{RetellConfig, RetellProvider, RetellWebhookKey};
use orchestrator_http::{router, AppState};
use reqwest::Url;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{request, Reply, TestApp};

const API_KEY: &str = "key_5d0d0d8047bf685c3f0ff980fe62c123";
const FROM_NUMBER: &str = "+14157774444";
const AGENT_ID: &str = "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD";

/// How the stand-in answers `create-phone-call`.
#[derive(Clone)]
enum CreateAnswer {
    /// 201 with a call object, `call_status: registered`.
    Created,
    /// This status, `Retry-After` when given, and `{"status": "error", "message"}`.
    Refused(StatusCode, Option<&'static str>, &'static str),
}

#[derive(Default)]
struct Recorded {
    created: Vec<(HeaderMap, Value)>,
    calls: HashMap<String, Value>,
    stopped: Vec<String>,
    lookups: Vec<String>,
}

/// A stand-in for Retell's API.
#[derive(Clone)]
struct StandIn {
    answer: Arc<Mutex<CreateAnswer>>,
    recorded: Arc<Mutex<Recorded>>,
}

impl StandIn {
    fn answer(&self, answer: CreateAnswer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn created(&self) -> Vec<(HeaderMap, Value)> {
        self.recorded.lock().unwrap().created.clone()
    }

    /// Sets what `get-call` answers for `call_id`.
    fn set_call(&self, call: Value) {
        let id = call["call_id"].as_str().unwrap().to_owned();
        self.recorded.lock().unwrap().calls.insert(id, call);
    }
}

async fn create_phone_call(
    State(stand_in): State<StandIn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut recorded = stand_in.recorded.lock().unwrap();
    recorded.created.push((headers, body.clone()));
    match stand_in.answer.lock().unwrap().clone() {
        CreateAnswer::Created => {
            let call_id = format!("Jabr9TXYYJHfvl6Syypi88rdAHYH{:04}", recorded.created.len());
            let call = json!({
                "call_type": "phone_call",
                "from_number": body["from_number"],
                "to_number": body["to_number"],
                "direction": "outbound",
                "telephony_identifier": {"twilio_call_sid": "CA5d0d0d8047bf685c3f0ff980fe62c123"},
                "call_id": call_id,
                "agent_id": body["override_agent_id"],
                "agent_version": 1,
                "call_status": "registered",
                "metadata": body["metadata"],
                "retell_llm_dynamic_variables": body["retell_llm_dynamic_variables"],
            });
            recorded.calls.insert(call_id, call.clone());
            (StatusCode::CREATED, axum::Json(call)).into_response()
        }
        CreateAnswer::Refused(status, retry_after, message) => {
            let mut response = (
                status,
                axum::Json(json!({"status": "error", "message": message})),
            )
                .into_response();
            if let Some(retry_after) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", retry_after.parse().unwrap());
            }
            response
        }
    }
}

async fn get_call(State(stand_in): State<StandIn>, Path(id): Path<String>) -> Response {
    let mut recorded = stand_in.recorded.lock().unwrap();
    recorded.lookups.push(id.clone());
    match recorded.calls.get(&id) {
        Some(call) => axum::Json(call.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": "error", "message": "Call not found"})),
        )
            .into_response(),
    }
}

async fn stop_call(State(stand_in): State<StandIn>, Path(id): Path<String>) -> StatusCode {
    stand_in.recorded.lock().unwrap().stopped.push(id);
    StatusCode::NO_CONTENT
}

/// The stand-in on 127.0.0.1:0, under a path prefix; its base URL.
async fn stand_in() -> (StandIn, Url) {
    let stand_in = StandIn {
        answer: Arc::new(Mutex::new(CreateAnswer::Created)),
        recorded: Arc::default(),
    };
    let app = Router::new()
        .route("/retell/v2/create-phone-call", post(create_phone_call))
        .route("/retell/v2/get-call/{id}", get(get_call))
        .route("/retell/v2/stop-call/{id}", post(stop_call))
        .with_state(stand_in.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        stand_in,
        Url::parse(&format!("http://{address}/retell/")).unwrap(),
    )
}

/// A clock the test moves by hand, so a lease can run out without waiting.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap();
        *now += TimeDelta::from_std(by).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        orchestrator_core::clock::truncate_to_micros(*self.0.lock().unwrap())
    }
}

struct RetellApp {
    app: TestApp,
    stand_in: StandIn,
    clock: Arc<ManualClock>,
}

const LEASE: Duration = Duration::from_secs(600);

/// The router and engine (not started: tests call `dispatch`) over the
/// memory store, dialling through Retell's stand-in, with Retell's
/// webhooks verified with [`API_KEY`].
async fn retell_app() -> RetellApp {
    let (stand_in, base_url) = stand_in().await;
    let provider = RetellProvider::new(&RetellConfig {
        base_url,
        api_key: API_KEY.parse().unwrap(),
        from_number: PhoneNumber::parse(FROM_NUMBER).unwrap(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(provider))
        .config(EngineConfig::default().with_lease(LEASE))
        .clock(Arc::clone(&clock) as Arc<dyn Clock>)
        .seed(7)
        .build()
        .unwrap();
    let state = AppState::new(engine.clone())
        .with_retell_webhook_key(Some(RetellWebhookKey::new(API_KEY.parse().unwrap())));
    RetellApp {
        app: TestApp {
            router: router(state),
            engine,
        },
        stand_in,
        clock,
    }
}

/// `v=<ms>,d=<hex HMAC-SHA256(API key, body ‖ ms)>`, computed here from the
/// scheme of Retell's SDK, independently of the adapter's own signing.
fn sign(key: &str, body: &[u8], ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    mac.update(ms.to_string().as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v={ms},d={hex}")
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl RetellApp {
    /// Creates a call through our API, dials it, and returns our id and Retell's.
    async fn dialled_call(&self, metadata: Value) -> (String, String) {
        let reply = self
            .app
            .post_json(
                "/calls",
                &json!({"to": "+1 (213) 777-4445", "scriptId": AGENT_ID, "metadata": metadata}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        self.app.dispatch().await;
        let call = self.app.get(&format!("/calls/{id}")).await.body;
        assert_eq!(call["status"], "IN_PROGRESS", "{call}");
        (id, call["providerCallId"].as_str().unwrap().to_owned())
    }

    /// POSTs `body` to `/callbacks/retell` with `signature`.
    async fn deliver_signed(&self, body: &Value, signature: Option<String>) -> Reply {
        let bytes = body.to_string();
        let mut builder =
            request(Method::POST, "/callbacks/retell").header("content-type", "application/json");
        if let Some(signature) = signature {
            builder = builder.header("x-retell-signature", signature);
        }
        self.app
            .send(builder.body(Body::from(bytes)).unwrap())
            .await
    }

    /// POSTs `body`, signed now with the right key.
    async fn deliver(&self, body: &Value) -> Reply {
        let signature = sign(API_KEY, body.to_string().as_bytes(), now_ms());
        self.deliver_signed(body, Some(signature)).await
    }

    async fn call(&self, id: &str) -> Value {
        self.app.get(&format!("/calls/{id}")).await.body
    }
}

/// A `call_ended`/`call_analyzed` call object for Retell's `call_id`, in the
/// shape of the docs' sample payload, ending with `reason`.
fn ended_call(call_id: &str, our_id: &str, attempt: u32, reason: &str) -> Value {
    json!({
        "call_type": "phone_call",
        "from_number": FROM_NUMBER,
        "to_number": "+12137774445",
        "direction": "outbound",
        "call_id": call_id,
        "agent_id": AGENT_ID,
        "call_status": "ended",
        "metadata": {"callId": our_id, "attempt": attempt},
        "start_timestamp": 1_714_608_475_945_i64,
        "end_timestamp": 1_714_608_491_736_i64,
        "duration_ms": 15_791,
        "disconnection_reason": reason,
        "transcript": "Agent: hi how are you doing?\nUser: Doing pretty well. How are you?\n",
        "transcript_object": [
            {"role": "agent", "content": "hi how are you doing?", "words": [{"word": "hi", "start": 0.7, "end": 1.3}]}
        ],
    })
}

#[tokio::test]
async fn a_call_goes_out_in_retells_request_shape() {
    let retell = retell_app().await;
    let (id, retell_id) = retell
        .dialled_call(json!({"name": "Sara", "visits": 3, "vip": true}))
        .await;
    assert_eq!(retell_id, "Jabr9TXYYJHfvl6Syypi88rdAHYH0001");
    let created = retell.stand_in.created();
    assert_eq!(created.len(), 1);
    let (headers, body) = &created[0];
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(
        body,
        &json!({
            "from_number": FROM_NUMBER,
            "to_number": "+12137774445",
            "override_agent_id": AGENT_ID,
            "retell_llm_dynamic_variables": {"name": "Sara", "visits": "3", "vip": "true"},
            "metadata": {"callId": id, "attempt": 1},
        })
    );
}

#[tokio::test]
async fn signed_webhooks_settle_the_call_and_events_that_do_not_end_it_are_ignored() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let mut started = ended_call(&retell_id, &id, 1, "user_hangup");
    started["call_status"] = json!("ongoing");
    for event in ["call_started", "transcript_updated", "transfer_started"] {
        let reply = retell
            .deliver(&json!({"event": event, "call": started}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body, json!({"outcome": "ignored", "event": event}));
    }
    assert_eq!(retell.call(&id).await["status"], "IN_PROGRESS");

    let ended =
        json!({"event": "call_ended", "call": ended_call(&retell_id, &id, 1, "user_hangup")});
    let reply = retell.deliver(&ended).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "applied");
    let call = retell.call(&id).await;
    assert_eq!(call["status"], "COMPLETED");
    assert_eq!(call["durationSec"], 16);
    assert_eq!(call["endedAt"], "2024-05-02T00:08:11.736Z");

    // `call_analyzed` carries the same call again: harmless.
    let mut analyzed = ended_call(&retell_id, &id, 1, "user_hangup");
    analyzed["call_analysis"] = json!({"call_summary": "Said hello.", "call_successful": true});
    let reply = retell
        .deliver(&json!({"event": "call_analyzed", "call": analyzed}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "unchanged");
}

#[tokio::test]
async fn call_analyzed_settles_when_call_ended_was_lost() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let reply = retell
        .deliver(
            &json!({"event": "call_analyzed", "call": ended_call(&retell_id, &id, 1, "dial_busy")}),
        )
        .await;
    assert_eq!(reply.body["outcome"], "applied", "{}", reply.text);
    let call = retell.call(&id).await;
    assert_eq!(call["status"], "FAILED");
    assert_eq!(call["lastError"], "dial_busy");
}

#[tokio::test]
async fn a_forged_a_stale_or_a_missing_signature_is_401() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let body =
        json!({"event": "call_ended", "call": ended_call(&retell_id, &id, 1, "user_hangup")});
    let bytes = body.to_string();
    let six_minutes_ago = now_ms() - 6 * 60 * 1000;
    for signature in [
        Some(sign("key_someone_else", bytes.as_bytes(), now_ms())),
        Some(sign(API_KEY, bytes.as_bytes(), six_minutes_ago)),
        Some(sign(API_KEY, bytes.as_bytes(), now_ms() + 6 * 60 * 1000)),
        Some(sign(API_KEY, b"{\"event\":\"call_started\"}", now_ms())),
        Some("v=1,d=zz".to_owned()),
        None,
    ] {
        let reply = retell.deliver_signed(&body, signature.clone()).await;
        reply.problem(StatusCode::UNAUTHORIZED);
        assert_eq!(reply.fields(), ["x-retell-signature"], "{signature:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("RetellSignature realm=\"retell\"")
        );
    }
    assert_eq!(retell.call(&id).await["status"], "IN_PROGRESS");
}

#[tokio::test]
async fn without_a_retell_key_retell_webhooks_are_refused() {
    let app = TestApp::new();
    let body = json!({"event": "call_ended", "call": {"call_id": "x"}}).to_string();
    let reply = app
        .send(
            request(Method::POST, "/api/v1/callbacks/retell")
                .header(
                    "x-retell-signature",
                    sign(API_KEY, body.as_bytes(), now_ms()),
                )
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    reply.problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_webhooks_are_400_naming_the_field_and_unknown_calls_404() {
    let retell = retell_app().await;
    for (body, field) in [
        (json!({"call": {"call_id": "x"}}), "event"),
        (json!({"event": "call_ended"}), "call"),
        (
            json!({"event": "call_ended", "call": {"call_status": "ended"}}),
            "call.call_id",
        ),
        (
            json!({"event": "call_ended", "call": {"call_id": "x", "duration_ms": "long"}}),
            "call.duration_ms",
        ),
        (
            json!({"event": "call_ended", "call": {"call_id": "x", "metadata": {"callId": "nope", "attempt": 1}}}),
            "call.metadata.callId",
        ),
    ] {
        let reply = retell.deliver(&body).await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), [field], "{body}");
    }
    let unknown = json!({"event": "call_ended", "call": {"call_id": "not-ours", "disconnection_reason": "user_hangup"}});
    retell
        .deliver(&unknown)
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_webhook_body_may_be_larger_than_the_apis_limit_up_to_one_mib() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let mut call = ended_call(&retell_id, &id, 1, "agent_hangup");
    call["transcript"] = json!("Agent: hello. ".repeat(20_000));
    let reply = retell
        .deliver(&json!({"event": "call_ended", "call": call}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let mut huge = ended_call(&retell_id, &id, 1, "agent_hangup");
    huge["transcript"] = json!("x".repeat(1024 * 1024));
    retell
        .deliver(&json!({"event": "call_ended", "call": huge}))
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_echoed_metadata_finds_the_attempt_when_retells_id_is_not_recorded() {
    let retell = retell_app().await;
    let (id, _) = retell.dialled_call(json!({})).await;
    // A webhook naming a Retell id we never recorded, but our metadata.
    let body = json!({"event": "call_ended", "call": ended_call("retell-id-we-never-saw", &id, 1, "dial_no_answer")});
    let reply = retell.deliver(&body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(retell.call(&id).await["status"], "FAILED");
}

#[tokio::test]
async fn a_lost_call_ended_is_reconciled_from_get_call_without_a_second_dial() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    retell
        .stand_in
        .set_call(ended_call(&retell_id, &id, 1, "voicemail_reached"));
    retell.clock.advance(LEASE + Duration::from_secs(1));
    retell.app.dispatch().await;
    let call = retell.call(&id).await;
    assert_eq!(call["status"], "FAILED", "{call}");
    assert_eq!(call["lastError"], "voicemail_reached");
    assert_eq!(call["attempts"], 1);
    assert_eq!(retell.stand_in.created().len(), 1, "no second dial");
    assert_eq!(
        retell.stand_in.recorded.lock().unwrap().lookups,
        [retell_id]
    );
}

#[tokio::test]
async fn a_call_still_live_at_retell_when_the_lease_runs_out_is_a_webhook_timeout() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let mut ongoing = ended_call(&retell_id, &id, 1, "user_hangup");
    ongoing["call_status"] = json!("ongoing");
    retell.stand_in.set_call(ongoing);
    retell.clock.advance(LEASE + Duration::from_secs(1));
    retell.app.dispatch().await;
    let call = retell.call(&id).await;
    assert_eq!(call["status"], "PENDING", "{call}");
    assert_eq!(call["lastError"], "webhook timeout");
}

#[tokio::test]
async fn cancel_stops_the_call_at_retell_and_its_manual_stop_ends_it_canceled() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let reply = retell
        .app
        .post_json(&format!("/calls/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(
        retell.stand_in.recorded.lock().unwrap().stopped,
        std::slice::from_ref(&retell_id)
    );
    let body =
        json!({"event": "call_ended", "call": ended_call(&retell_id, &id, 1, "manual_stopped")});
    let reply = retell.deliver(&body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(retell.call(&id).await["status"], "CANCELED");
}

#[tokio::test]
async fn a_concurrency_answer_re_enqueues_without_consuming_an_attempt() {
    let retell = retell_app().await;
    retell.stand_in.answer(CreateAnswer::Refused(
        StatusCode::TOO_MANY_REQUESTS,
        Some("30"),
        "Account rate limited, please throttle your requests.",
    ));
    let id = retell.app.create("+12137774445").await;
    retell.app.dispatch().await;
    let call = retell.call(&id).await;
    assert_eq!(call["status"], "PENDING", "{call}");
    assert_eq!(call["attempts"], 0);
    assert!(retell.app.engine.dialling_paused_until().is_none());
}

#[tokio::test]
async fn a_capacity_disconnection_re_enqueues_without_consuming_an_attempt() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let mut call = ended_call(&retell_id, &id, 1, "concurrency_limit_reached");
    call["call_status"] = json!("error");
    let reply = retell
        .deliver(&json!({"event": "call_ended", "call": call}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let call = retell.call(&id).await;
    assert_eq!(call["status"], "PENDING", "{call}");
    assert_eq!(call["attempts"], 0);
}

#[tokio::test]
async fn an_account_error_fails_the_call_and_pauses_dialling() {
    let retell = retell_app().await;
    retell.stand_in.answer(CreateAnswer::Refused(
        StatusCode::PAYMENT_REQUIRED,
        None,
        "Trial has ended, please add payment method.",
    ));
    let id = retell.app.create("+12137774445").await;
    let waiting = retell.app.create("+12137774446").await;
    retell.app.dispatch().await;
    let call = retell.call(&id).await;
    let other = retell.call(&waiting).await;
    // Both were claimed in one round; each fails with Retell's own reason.
    for call in [&call, &other] {
        assert_eq!(call["status"], "FAILED", "{call}");
        assert_eq!(
            call["lastError"],
            "retell 402: Trial has ended, please add payment method."
        );
    }
    assert!(retell.app.engine.dialling_paused_until().is_some());
    // A call created now waits: nothing is dialled while paused.
    let later = retell.app.create("+12137774447").await;
    retell.app.dispatch().await;
    assert_eq!(retell.call(&later).await["status"], "PENDING");
    assert_eq!(retell.stand_in.created().len(), 2);
}

#[tokio::test]
async fn a_no_valid_payment_disconnection_fails_the_call_and_pauses_dialling() {
    let retell = retell_app().await;
    let (id, retell_id) = retell.dialled_call(json!({})).await;
    let mut call = ended_call(&retell_id, &id, 1, "no_valid_payment");
    call["call_status"] = json!("error");
    retell
        .deliver(&json!({"event": "call_ended", "call": call}))
        .await;
    assert_eq!(retell.call(&id).await["status"], "FAILED");
    assert!(retell.app.engine.dialling_paused_until().is_some());
}
