//! The Vapi adapter against a stand-in server that follows Vapi's documented
//! contract, on loopback, with the memory store: the create-call request,
//! signed webhooks, reconciliation from `GET /call/{id}`, hang-up through
//! the live-control URL, and the classification of refusals.
//!
//! Fixtures name their source: Vapi's API reference
//! (`VapiAI/docs:fern/apis/api/openapi.json`) and guides
//! (`VapiAI/docs:fern/calls/*.mdx`, `fern/server-url/events.mdx`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use orchestrator_core::{Clock, Engine, EngineConfig, MemoryStore};
use orchestrator_http::platforms::vapi::webhook::{
    VapiSecret, VapiWebhookAuth, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use orchestrator_http::platforms::vapi::{VapiConfig, VapiProvider};
use orchestrator_http::{router, AppState};
use reqwest::Url;
use serde_json::{json, Value};

use crate::support::{request, TestApp};

const API_KEY: &str = "vapi-private-key-for-tests";
const PHONE_NUMBER_ID: &str = "42b4b25d-031e-4786-857f-63b346c9580f";
const ASSISTANT_ID: &str = "5b0a4a08-133c-4146-9315-0984f8c6be80";
const SECRET: &str = "vapi-webhook-secret-for-tests";

/// How the stand-in answers `POST /call`.
#[derive(Clone)]
enum Create {
    /// 201 with a queued call, as in `fern/calls/call-concurrency.mdx`.
    Queued,
    /// This status and JSON body.
    Refuse(StatusCode, Value),
}

#[derive(Default)]
struct Recorded {
    creates: Vec<(HeaderMap, Value)>,
    /// Vapi's call id → the call object `GET /call/{id}` answers.
    calls: HashMap<String, Value>,
    end_calls: Vec<String>,
}

#[derive(Clone)]
struct StandIn {
    base: Url,
    create: Create,
    recorded: Arc<Mutex<Recorded>>,
}

impl StandIn {
    async fn start(create: Create) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let stand_in = Self {
            base,
            create,
            recorded: Arc::default(),
        };
        let app = Router::new()
            .route("/call", post(create_call))
            .route("/call/{id}", get(get_call))
            .route("/control/{id}", post(control))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        stand_in
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap()
    }

    /// Vapi's id of the only call created.
    fn only_call_id(&self) -> String {
        let recorded = self.recorded();
        assert_eq!(recorded.calls.len(), 1);
        recorded.calls.keys().next().unwrap().clone()
    }

    /// Marks a call ended, as `GET /call/{id}` will then show it.
    fn end(&self, id: &str, ended_reason: &str) {
        let mut recorded = self.recorded();
        let call = recorded.calls.get_mut(id).unwrap();
        call["status"] = json!("ended");
        call["endedReason"] = json!(ended_reason);
        call["startedAt"] = json!("2025-07-20T10:00:00.000Z");
        call["endedAt"] = json!("2025-07-20T10:00:42.000Z");
    }
}

async fn create_call(State(stand_in): State<StandIn>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut recorded = stand_in.recorded();
    recorded.creates.push((headers, body.clone()));
    match &stand_in.create {
        Create::Refuse(status, answer) => (*status, Json(answer.clone())).into_response(),
        Create::Queued => {
            let id = uuid::Uuid::new_v4().to_string();
            // The Call object of a 201 (`fern/calls/call-features.mdx`,
            // "Sample Response"; `subscriptionLimits` from
            // `fern/calls/call-concurrency.mdx`), echoing what was sent.
            let call = json!({
                "id": id,
                "orgId": "eb166faa-7145-46ef-8044-589b47ae3b56",
                "type": "outboundPhoneCall",
                "createdAt": "2025-07-20T10:00:00.000Z",
                "updatedAt": "2025-07-20T10:00:00.000Z",
                "status": "queued",
                "assistantId": body["assistantId"],
                "phoneNumberId": body["phoneNumberId"],
                "customer": body["customer"],
                "name": body["name"],
                "assistantOverrides": body["assistantOverrides"],
                "monitor": {
                    "listenUrl": format!("ws://{}/{id}/listen", stand_in.base.authority()),
                    "controlUrl": format!("{}control/{id}", stand_in.base),
                },
            });
            recorded.calls.insert(id, call.clone());
            let mut answer = call;
            answer["subscriptionLimits"] = json!({
                "concurrencyBlocked": false,
                "concurrencyLimit": 10,
                "remainingConcurrentCalls": 9,
            });
            (StatusCode::CREATED, Json(answer)).into_response()
        }
    }
}

async fn get_call(State(stand_in): State<StandIn>, Path(id): Path<String>) -> Response {
    match stand_in.recorded().calls.get(&id) {
        Some(call) => Json(call.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Not Found", "statusCode": 404})),
        )
            .into_response(),
    }
}

/// `POST {monitor.controlUrl}` with `{"type": "end-call"}`
/// (`fern/calls/call-features.mdx`, "End Call").
async fn control(
    State(stand_in): State<StandIn>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    assert_eq!(body, json!({"type": "end-call"}));
    stand_in.recorded().end_calls.push(id);
    StatusCode::OK
}

/// A clock the test moves by hand.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += TimeDelta::from_std(by).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        orchestrator_core::clock::truncate_to_micros(*self.0.lock().unwrap())
    }
}

/// The orchestrator with Vapi as its provider (pointed at `stand_in`),
/// HMAC-authenticated Vapi webhooks, a lease of 60 s on `clock`.
fn app(stand_in: &StandIn, clock: Arc<ManualClock>) -> TestApp {
    let provider = VapiProvider::new(&VapiConfig {
        base_url: stand_in.base.clone(),
        api_key: API_KEY.parse().unwrap(),
        phone_number_id: PHONE_NUMBER_ID.to_owned(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(provider))
        .config(EngineConfig::default().with_lease(Duration::from_secs(60)))
        .clock(clock)
        .seed(7)
        .build()
        .unwrap();
    let state = AppState::new(engine.clone())
        .with_vapi_webhook(VapiWebhookAuth::Hmac(SECRET.parse().unwrap()));
    TestApp {
        router: router(state),
        engine,
    }
}

async fn setup(create: Create) -> (StandIn, TestApp, Arc<ManualClock>) {
    let stand_in = StandIn::start(create).await;
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let app = app(&stand_in, Arc::clone(&clock));
    (stand_in, app, clock)
}

/// Creates a call through our API and runs one dispatch round.
async fn create_and_dial(app: &TestApp) -> String {
    let reply = app
        .post_json(
            "/calls",
            &json!({"to": "+14155550100", "scriptId": ASSISTANT_ID, "metadata": {"name": "Sara"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    app.dispatch().await;
    id
}

/// Posts `message` to `/callbacks/vapi`, signed as Vapi's HMAC credential
/// signs by default, at `timestamp` (Unix seconds), or with `signature`.
async fn post_message(
    app: &TestApp,
    message: &Value,
    timestamp: i64,
    signature: Option<&str>,
) -> crate::support::Reply {
    let body = json!({"message": message}).to_string();
    let secret: VapiSecret = SECRET.parse().unwrap();
    let timestamp = timestamp.to_string();
    let signature =
        signature.map_or_else(|| secret.sign(&timestamp, body.as_bytes()), str::to_owned);
    app.send(
        request(Method::POST, "/callbacks/vapi")
            .header(header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

async fn signed(app: &TestApp, message: &Value) -> crate::support::Reply {
    post_message(app, message, Utc::now().timestamp(), None).await
}

/// A `status-update` (schema `ServerMessageStatusUpdate`; example in
/// `fern/server-url/events.mdx`, "Status Updates").
fn status_update(call: &Value, status: &str, ended_reason: Option<&str>) -> Value {
    let mut message = json!({"type": "status-update", "status": status, "call": call, "timestamp": 1_752_999_000_000_i64});
    if let Some(reason) = ended_reason {
        message["endedReason"] = json!(reason);
    }
    message
}

/// An `end-of-call-report` (schema `ServerMessageEndOfCallReport`;
/// example in `fern/server-url/events.mdx`, "End of Call Report").
fn end_of_call_report(call: &Value, ended_reason: &str) -> Value {
    json!({
        "type": "end-of-call-report",
        "endedReason": ended_reason,
        "call": call,
        "startedAt": "2025-07-20T10:00:00.000Z",
        "endedAt": "2025-07-20T10:00:42.000Z",
        "artifact": {
            "transcript": "AI: How can I help? User: What's the weather? ...",
            "messages": [
                {"role": "assistant", "message": "How can I help?"},
                {"role": "user", "message": "What's the weather?"},
            ],
        },
        "analysis": {"summary": "The caller asked about the weather."},
    })
}

fn vapi_call(stand_in: &StandIn) -> Value {
    let id = stand_in.only_call_id();
    stand_in.recorded().calls[&id].clone()
}

#[tokio::test]
async fn a_call_goes_out_in_vapis_request_shape_and_its_signed_webhooks_settle_it() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let (headers, body) = stand_in.recorded().creates[0].clone();
    assert_eq!(
        headers["authorization"].to_str().unwrap(),
        format!("Bearer {API_KEY}")
    );
    // CreateCallDTO (API reference; `fern/calls/call-outbound.mdx`).
    assert_eq!(
        body,
        json!({
            "assistantId": ASSISTANT_ID,
            "phoneNumberId": PHONE_NUMBER_ID,
            "customer": {"number": "+14155550100"},
            "name": id,
            "assistantOverrides": {
                "variableValues": {"name": "Sara"},
                "metadata": {"orchestratorCallId": id, "orchestratorAttempt": 1},
            },
        })
    );
    let call = vapi_call(&stand_in);
    let vapi_id = call["id"].as_str().unwrap();
    let ours = app.get(&format!("/calls/{id}")).await;
    assert_eq!(ours.body["status"], "IN_PROGRESS");
    assert_eq!(ours.body["providerCallId"], vapi_id);

    for message in [
        status_update(&call, "ringing", None),
        status_update(&call, "in-progress", None),
        json!({"type": "speech-update", "status": "started", "role": "assistant", "turn": 2}),
        json!({"type": "transcript", "role": "user", "transcriptType": "partial", "transcript": "I'd like"}),
        json!({"type": "conversation-update", "messages": []}),
    ] {
        let reply = signed(&app, &message).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["outcome"], "ignored");
    }
    assert_eq!(
        app.get(&format!("/calls/{id}")).await.body["status"],
        "IN_PROGRESS"
    );

    let reply = signed(&app, &end_of_call_report(&call, "customer-ended-call")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "applied");
    let ours = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(ours["status"], "COMPLETED");
    assert_eq!(ours["durationSec"], 42);
    assert_eq!(ours["endedAt"], "2025-07-20T10:00:42Z");

    // The other terminal message, after the first, changes nothing.
    let reply = signed(
        &app,
        &status_update(&call, "ended", Some("customer-ended-call")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(reply.body["outcome"], "applied");
}

#[tokio::test]
async fn a_status_update_that_ends_the_call_settles_it_by_the_outcome_table() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let call = vapi_call(&stand_in);
    let reply = signed(
        &app,
        &status_update(&call, "ended", Some("twilio-reported-customer-misdialed")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let ours = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(ours["status"], "FAILED");
    assert_eq!(ours["lastError"], "twilio-reported-customer-misdialed");
    assert_eq!(ours["attempts"], 1);
}

#[tokio::test]
async fn a_webhook_is_matched_by_the_echoed_metadata_when_vapis_id_is_unknown() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let mut call = vapi_call(&stand_in);
    // As if it had beaten Vapi's 201: our store does not know this id yet.
    call["id"] = json!("019a9046-121e-766d-bd1f-84f3ccc309c1");
    let reply = signed(&app, &end_of_call_report(&call, "customer-busy")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["callId"], id.as_str());
}

#[tokio::test]
async fn forged_stale_and_missing_signatures_are_refused_with_401() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let message = end_of_call_report(&vapi_call(&stand_in), "customer-ended-call");
    let now = Utc::now().timestamp();
    let forged = post_message(&app, &message, now, Some(&"ab".repeat(32))).await;
    let problem = forged.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(problem["errors"][0]["field"], SIGNATURE_HEADER);
    assert!(forged.header("www-authenticate").is_some());
    let stale = post_message(&app, &message, now - 301, None).await;
    assert_eq!(
        stale.problem(StatusCode::UNAUTHORIZED)["errors"][0]["field"],
        TIMESTAMP_HEADER
    );
    let future = post_message(&app, &message, now + 301, None).await;
    future.problem(StatusCode::UNAUTHORIZED);
    let unsigned = app
        .post_json("/callbacks/vapi", &json!({"message": message}))
        .await;
    unsigned.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get(&format!("/calls/{id}")).await.body["status"],
        "IN_PROGRESS"
    );
}

#[tokio::test]
async fn malformed_terminal_messages_are_400_naming_the_field_and_unknown_calls_404() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    create_and_dial(&app).await;
    let call = vapi_call(&stand_in);
    let mut no_id = call.clone();
    no_id.as_object_mut().unwrap().remove("id");
    let reply = signed(&app, &end_of_call_report(&no_id, "customer-ended-call")).await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST)["errors"][0]["field"],
        "message.call.id"
    );
    let reply = signed(
        &app,
        &json!({"type": "end-of-call-report", "call": {"id": 7}}),
    )
    .await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST)["errors"][0]["field"],
        "message.call.id"
    );
    let reply = signed(
        &app,
        &json!({"type": "end-of-call-report", "call": {"id": "x"}}),
    )
    .await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST)["errors"][0]["field"],
        "message.endedReason"
    );
    let reply = signed(&app, &json!({"status": "ended"})).await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST)["errors"][0]["field"],
        "message.type"
    );
    let unknown = json!({"id": "0f0f0f0f-0000-4000-8000-000000000000", "status": "ended"});
    let reply = signed(&app, &end_of_call_report(&unknown, "customer-ended-call")).await;
    reply.problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_lost_end_of_call_report_is_reconciled_from_get_call_without_a_second_dial() {
    let (stand_in, app, clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let vapi_id = stand_in.only_call_id();
    // Still live when the lease runs out: a webhook timeout would re-dial.
    // Ended at Vapi, its report lost (Vapi does not retry webhooks by default).
    stand_in.end(&vapi_id, "customer-ended-call");
    clock.advance(Duration::from_secs(61));
    app.dispatch().await;
    let ours = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(ours["status"], "COMPLETED", "{ours}");
    assert_eq!(ours["attempts"], 1);
    assert_eq!(stand_in.recorded().creates.len(), 1);
}

#[tokio::test]
async fn cancel_hangs_up_through_the_control_url_and_vapis_report_cancels() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let vapi_id = stand_in.only_call_id();
    let reply = app
        .post_json(
            &format!("/calls/{id}/cancel"),
            &json!({"reason": "opted out"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(stand_in.recorded().end_calls, [vapi_id]);
    let reply = signed(
        &app,
        &end_of_call_report(&vapi_call(&stand_in), "manually-canceled"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        app.get(&format!("/calls/{id}")).await.body["status"],
        "CANCELED"
    );
}

#[tokio::test]
async fn a_concurrency_limit_answer_requeues_without_using_an_attempt() {
    // Vapi's 400 bodies are `{"message", "error", "statusCode"}`.
    let (_stand_in, app, _clock) = setup(Create::Refuse(
        StatusCode::BAD_REQUEST,
        json!({"message": "Over Concurrency Limit", "error": "Bad Request", "statusCode": 400}),
    ))
    .await;
    let id = create_and_dial(&app).await;
    let ours = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(ours["status"], "PENDING", "{ours}");
    assert_eq!(ours["attempts"], 0);
    assert!(app.engine.dialling_paused_until().is_none());
}

#[tokio::test]
async fn an_account_error_fails_the_call_and_pauses_dialling() {
    let (_stand_in, app, _clock) = setup(Create::Refuse(
        StatusCode::BAD_REQUEST,
        json!({"message": "Couldn't Get Assistant. `assistantId` 5b0a4a08 Does Not Exist.", "error": "Bad Request", "statusCode": 400}),
    ))
    .await;
    let id = create_and_dial(&app).await;
    let ours = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(ours["status"], "FAILED", "{ours}");
    assert!(ours["lastError"]
        .as_str()
        .unwrap()
        .starts_with("vapi 400: Couldn't Get Assistant"));
    assert!(app.engine.dialling_paused_until().is_some());
}

#[tokio::test]
async fn an_insufficient_credits_ending_fails_the_call_and_pauses_dialling() {
    let (stand_in, app, _clock) = setup(Create::Queued).await;
    let id = create_and_dial(&app).await;
    let call = vapi_call(&stand_in);
    let reason = "call.start.error-subscription-insufficient-credits";
    let reply = signed(&app, &status_update(&call, "ended", Some(reason))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let ours = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(ours["status"], "FAILED");
    assert_eq!(ours["lastError"], reason);
    assert!(app.engine.dialling_paused_until().is_some());
}

#[tokio::test]
async fn the_vapi_route_is_404_while_vapi_is_not_the_provider() {
    let app = TestApp::new();
    let reply = app
        .post_json(
            "/callbacks/vapi",
            &json!({"message": {"type": "status-update"}}),
        )
        .await;
    reply.problem(StatusCode::NOT_FOUND);
}
