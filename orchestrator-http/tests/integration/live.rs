//! Over real sockets on 127.0.0.1: `GET /events` as Server-Sent Events
//! (backlog then live, resume by `Last-Event-ID`, filters, keep-alive),
//! signed client callbacks delivered through a receiver that fails its
//! first tries, and the cancel of a live call against the mock provider,
//! which hangs up. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use orchestrator_core::simulated::OutcomeMix;
use orchestrator_core::{
    CallId, CallbackState, CallbackUrl, Engine, EngineConfig, EventFilter, EventId, EventType,
    MemoryStore, NewCall, PhoneNumber, ReportedStatus, RetryPolicy, ScriptId,
};
use orchestrator_http::server::config::{Config, ProviderSettings};
use orchestrator_http::server::mock_provider::{MockProvider, MockProviderConfig};
use orchestrator_http::server::{self as app, serve, ServeOptions};
use orchestrator_http::{AppState, HttpCallbackSender, Limits};
use reqwest::Url;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::support::AcceptingProvider;

/// Longest any one wait may take before the test fails.
const WITHIN: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The API on 127.0.0.1:0 over a memory store, with a short keep-alive;
/// the engine is not started (events come from the API's own changes).
async fn event_server() -> (Engine, String) {
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(AcceptingProvider))
        .build()
        .unwrap();
    let state = AppState::new(engine.clone()).with_limits(Limits {
        event_keep_alive: Duration::from_millis(100),
        ..Limits::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        serve(
            listener,
            state,
            &ServeOptions::default(),
            std::future::pending(),
        )
        .await;
    });
    (engine, base)
}

/// An open event stream, read block by block.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

/// One event as sent: `id:`, `event:` and the `data:` JSON.
#[derive(Debug, PartialEq)]
struct Sent {
    id: u64,
    kind: String,
    data: Value,
}

impl EventStream {
    async fn open(url: &str, last_event_id: Option<u64>) -> Self {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{url}"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next block (up to a blank line), comments included.
    async fn block(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_owned();
                self.buffer.drain(..end + 2);
                return block;
            }
            let chunk = tokio::time::timeout(WITHIN, self.response.chunk())
                .await
                .expect("the stream sends within the bound")
                .expect("the stream reads")
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event, skipping keep-alive comments.
    async fn event(&mut self) -> Sent {
        loop {
            let block = self.block().await;
            if block.lines().all(|line| line.starts_with(':')) {
                continue;
            }
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_else(|| panic!("{name} in {block:?}"))
                    .to_owned()
            };
            return Sent {
                id: field("id: ").parse().unwrap(),
                kind: field("event: "),
                data: serde_json::from_str(&field("data: ")).unwrap(),
            };
        }
    }
}

async fn create(engine: &Engine, to: &str) -> CallId {
    let new = NewCall::new(
        PhoneNumber::parse(to).unwrap(),
        ScriptId::parse("welcomeFlow").unwrap(),
    );
    engine.create_call(new).await.unwrap().call.id
}

#[tokio::test]
async fn events_stream_the_backlog_then_live_ones_and_resume_after_the_last_id() {
    let (engine, base) = event_server().await;
    let a = create(&engine, "+966501234567").await;
    let mut stream = EventStream::open(&format!("{base}/events?after=0"), None).await;
    let first = stream.event().await;
    assert_eq!(first.kind, "call.created");
    assert_eq!(first.data["id"], first.id);
    assert_eq!(first.data["type"], "call.created");
    assert_eq!(first.data["call"]["id"], a.to_string());
    assert!(first.data["occurredAt"].is_string());
    let b = create(&engine, "+966501234568").await;
    engine.cancel_call(b, Some("withdrawn")).await.unwrap();
    let second = stream.event().await;
    let third = stream.event().await;
    assert_eq!(
        (second.kind.as_str(), third.kind.as_str()),
        ("call.created", "call.canceled")
    );
    assert_eq!(third.data["call"]["id"], b.to_string());
    assert_eq!(third.data["call"]["status"], "CANCELED");
    assert!(first.id < second.id && second.id < third.id);

    // A reconnecting client gets exactly what came after its last id, in
    // order, then live events; the header wins over `after`.
    let mut resumed =
        EventStream::open(&format!("{base}/api/v1/events?after=0"), Some(first.id)).await;
    assert_eq!(resumed.event().await, second);
    assert_eq!(resumed.event().await, third);
    let c = create(&engine, "+966501234569").await;
    let live = resumed.event().await;
    assert_eq!(live.data["call"]["id"], c.to_string());
    assert_eq!(live, stream.event().await, "every stream sees it");
}

#[tokio::test]
async fn events_can_be_filtered_by_type_and_call() {
    let (engine, base) = event_server().await;
    let a = create(&engine, "+966501234567").await;
    let b = create(&engine, "+966501234568").await;
    engine.cancel_call(b, None).await.unwrap();
    let mut canceled =
        EventStream::open(&format!("{base}/events?after=0&type=call.canceled"), None).await;
    let mut of_a = EventStream::open(&format!("{base}/events?after=0&callId={a}"), None).await;
    let mut both = EventStream::open(
        &format!("{base}/events?after=0&type=call.expired,call.canceled&callId={a}"),
        None,
    )
    .await;
    let first = canceled.event().await;
    assert_eq!(
        (first.kind.as_str(), first.data["call"]["id"].as_str()),
        ("call.canceled", Some(b.to_string().as_str()))
    );
    let created = of_a.event().await;
    assert_eq!(
        (created.kind.as_str(), created.data["call"]["id"].as_str()),
        ("call.created", Some(a.to_string().as_str()))
    );
    // Events that do not pass a filter are skipped, not sent late.
    create(&engine, "+966501234569").await;
    engine.cancel_call(a, None).await.unwrap();
    for stream in [&mut canceled, &mut of_a, &mut both] {
        let next = stream.event().await;
        assert_eq!(next.kind, "call.canceled");
        assert_eq!(next.data["call"]["id"], a.to_string());
    }
}

#[tokio::test]
async fn idle_event_streams_get_keep_alive_comments() {
    let (_engine, base) = event_server().await;
    let mut stream = EventStream::open(&format!("{base}/events"), None).await;
    let block = stream.block().await;
    assert!(block.starts_with(':'), "a comment: {block:?}");
}

#[tokio::test]
async fn bad_event_stream_requests_name_the_parameter() {
    let (_engine, base) = event_server().await;
    let client = reqwest::Client::new();
    for (query, last_event_id, field) in [
        ("type=call.done", None, "type"),
        ("callId=42", None, "callId"),
        ("after=-1", None, "after"),
        ("since=1", None, "since"),
        ("", Some("latest"), "Last-Event-ID"),
    ] {
        let mut request = client.get(format!("{base}/events?{query}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
}

/// What the callback receiver saw of one try.
#[derive(Clone, Debug)]
struct Try {
    webhook_id: String,
    verified: bool,
    body: Value,
}

/// A receiver that answers 500 to its first `failures` tries, then 200.
#[derive(Clone, Default)]
struct Receiver {
    tries: Arc<Mutex<Vec<Try>>>,
    failures: usize,
}

/// The Standard Webhooks check, written here from the specification rather
/// than with the server's own code: HMAC-SHA256 keyed with the secret's
/// decoded bytes over `{id}.{timestamp}.{body}`, base64, prefixed `v1,`.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|at| (chrono::Utc::now().timestamp() - at).abs() <= 300);
    let key = BASE64
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    fresh && signatures.split(' ').any(|signature| signature == expected)
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut tries = receiver.tries.lock().unwrap();
    tries.push(Try {
        webhook_id: headers["webhook-id"].to_str().unwrap().to_owned(),
        verified: verify(&headers, &body),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    if tries.len() <= receiver.failures {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

async fn start_receiver(receiver: Receiver) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hooks/calls", axum::routing::post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test]
async fn a_callback_refused_three_times_is_delivered_on_the_fourth_try_with_one_webhook_id() {
    let receiver = Receiver {
        failures: 3,
        ..Receiver::default()
    };
    let address = start_receiver(receiver.clone()).await;
    let sender =
        HttpCallbackSender::new(Duration::from_secs(5), Some(SECRET.parse().unwrap())).unwrap();
    let config = EngineConfig::default().with_callback_retry(
        RetryPolicy::new(
            Duration::from_millis(10),
            Duration::from_millis(40),
            10,
            0.0,
        )
        .unwrap(),
    );
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(AcceptingProvider))
        .config(config)
        .callbacks(Arc::new(sender))
        .build()
        .unwrap();
    let running = engine.start();
    let mut new = NewCall::new(
        PhoneNumber::parse("+966501234567").unwrap(),
        ScriptId::parse("welcomeFlow").unwrap(),
    );
    new.callback_url = Some(CallbackUrl::parse(format!("http://{address}/hooks/calls")).unwrap());
    // Not due for a year: it is canceled, never dialled.
    new.not_before = Some(chrono::Utc::now() + chrono::Duration::days(365));
    let id = engine.create_call(new).await.unwrap().call.id;
    engine.cancel_call(id, Some("withdrawn")).await.unwrap();
    let mut log = engine.events(
        Some(EventId(0)),
        EventFilter {
            types: [EventType::Canceled].into(),
            call_id: Some(id),
        },
    );
    let event = tokio::time::timeout(WITHIN, log.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let deadline = Instant::now() + WITHIN;
    let call = loop {
        let call = engine.get_call(id).await.unwrap();
        let callback = call.callback.clone().expect("a callback URL applies");
        if callback.state != CallbackState::Pending {
            break call;
        }
        assert!(Instant::now() < deadline, "not delivered in time: {call:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.shutdown().await;

    let callback = call.callback.unwrap();
    assert_eq!(callback.state, CallbackState::Delivered, "{callback:?}");
    assert_eq!(callback.attempts, 4);
    let tries = receiver.tries.lock().unwrap().clone();
    assert_eq!(tries.len(), 4, "{tries:?}");
    for attempt in &tries {
        assert!(attempt.verified, "signed: {attempt:?}");
        assert_eq!(attempt.webhook_id, event.id.to_string(), "one webhook-id");
        assert_eq!(attempt.body["type"], "call.canceled");
        assert_eq!(attempt.body["data"]["id"], id.to_string());
        assert_eq!(attempt.body["data"]["status"], "CANCELED");
        assert_eq!(attempt.body["data"]["lastError"], "withdrawn");
        assert_eq!(
            attempt.body["timestamp"],
            serde_json::to_value(event.occurred_at).unwrap()
        );
    }
}

#[tokio::test]
async fn canceling_a_live_call_hangs_it_up_at_the_provider_and_it_ends_canceled() {
    let mock = MockProvider::new(MockProviderConfig {
        // Long enough that only the hang-up can end it within the test.
        call_duration: Duration::from_secs(600),
        outcomes: OutcomeMix::zero().with_weight(ReportedStatus::Completed, 1),
        webhook_secret: Some(SECRET.parse().unwrap()),
        api_key: Some("sk-e2e".parse().unwrap()),
        ..MockProviderConfig::default()
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let serving = mock.clone();
    tokio::spawn(async move {
        orchestrator_http::server::mock_provider::serve(listener, &serving, std::future::pending())
            .await
    });
    let running = app::start(Config {
        bind_host: "127.0.0.1".to_owned(),
        port: 0,
        provider: Some(ProviderSettings {
            base_url: provider_url,
            api_key: Some("sk-e2e".parse().unwrap()),
            timeout: Duration::from_secs(5),
        }),
        webhook_secret: Some(SECRET.parse().unwrap()),
        ..Config::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/calls"))
        .json(&json!({"to": "+966501234567", "scriptId": "welcomeFlow"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id: CallId = created["id"].as_str().unwrap().parse().unwrap();
    let engine = running.engine().clone();
    let mut dialled = engine.events(
        Some(EventId(0)),
        EventFilter {
            types: [EventType::Dialled].into(),
            call_id: Some(id),
        },
    );
    tokio::time::timeout(WITHIN, dialled.next())
        .await
        .expect("dialled in time")
        .unwrap()
        .unwrap();

    let response = client
        .post(format!("{base}/calls/{id}/cancel"))
        .json(&json!({"reason": "the callee asked not to be called"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let call = tokio::time::timeout(WITHIN, engine.wait_for_terminal(id))
        .await
        .expect("ended in time")
        .unwrap();
    assert_eq!(call.status.as_str(), "CANCELED");
    assert_eq!(
        call.last_error.as_deref(),
        Some("the callee asked not to be called")
    );
    assert_eq!(call.attempts, 1);
    let provider_call_id = call.provider_call_id.clone().unwrap();
    assert!(
        mock.hang_ups().contains(&provider_call_id),
        "{:?}",
        mock.hang_ups()
    );
    let dials = mock
        .received()
        .iter()
        .filter(|dial| {
            dial.idempotency_key
                .as_deref()
                .is_some_and(|key| key.starts_with(&id.to_string()))
        })
        .count();
    assert_eq!(dials, 1, "never re-dialled");
    let attempts: Value = client
        .get(format!("{base}/calls/{id}/attempts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(attempts["items"][0]["outcome"], "CANCELED", "{attempts}");
    assert_eq!(attempts["items"].as_array().unwrap().len(), 1);
    running.shutdown().await.unwrap();
}
