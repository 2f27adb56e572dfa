//! Call control, live events and callbacks as a new user tries them: the
//! server as the binary runs it, the mock provider, a callback receiver and
//! an SSE client, all over real sockets, once on the memory store and once
//! on PostgreSQL.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use orchestrator_core::simulated::OutcomeMix;
use orchestrator_core::{CallbackUrl, EngineConfig, ReportedStatus, RetryPolicy};
use orchestrator_http::egress::Targets;
use orchestrator_http::server::config::{Config, ProviderSettings};
use orchestrator_http::server::mock_provider::{MockProvider, MockProviderConfig};
use orchestrator_http::server::{self as app, Running};
use reqwest::Url;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WITHIN: Duration = Duration::from_secs(20);

/// Every callback the receiver got: (webhook-id, body).
type Received = Arc<Mutex<Vec<(String, Value)>>>;

async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    received.lock().unwrap().push((id, body));
    StatusCode::NO_CONTENT
}

async fn start_receiver(received: Received) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(received);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn start_mock() -> (MockProvider, Url) {
    let mock = MockProvider::new(MockProviderConfig {
        call_duration: Duration::from_millis(300),
        outcomes: OutcomeMix::zero().with_weight(ReportedStatus::Completed, 1),
        webhook_secret: Some(SECRET.parse().unwrap()),
        ..MockProviderConfig::default()
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let serving = mock.clone();
    tokio::spawn(async move {
        orchestrator_http::server::mock_provider::serve(listener, &serving, std::future::pending())
            .await
    });
    (mock, url)
}

async fn start_server(
    database_url: Option<String>,
    provider: Url,
    receiver: SocketAddr,
) -> Running {
    let callback = CallbackUrl::parse(format!("http://{receiver}/hooks")).unwrap();
    let fast_retries = RetryPolicy::new(
        Duration::from_millis(100),
        Duration::from_millis(200),
        5,
        0.5,
    )
    .unwrap();
    app::start(Config {
        database_url: database_url.map(|url| url.parse().unwrap()),
        bind_host: "127.0.0.1".to_owned(),
        port: 0,
        engine: EngineConfig::default()
            .with_default_callback_url(Some(callback))
            .with_callback_retry(fast_retries),
        provider: Some(ProviderSettings {
            base_url: provider,
            api_key: None,
            timeout: Duration::from_secs(5),
        }),
        webhook_secret: Some(SECRET.parse().unwrap()),
        callback_secret: Some(SECRET.parse().unwrap()),
        callback_targets: Targets::Any,
        ..Config::default()
    })
    .await
    .expect("the server starts")
}

/// Reads Server-Sent Events from `url` (with `Last-Event-ID` when given)
/// until `count` events arrived; returns their (id, type, call id).
async fn read_events(
    url: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> Vec<(u64, String, String)> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut response = response;
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + WITHIN;
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk())
            .await
            .expect("events in time")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_owned)
            };
            if let (Some(id), Some(kind), Some(data)) =
                (field("id:"), field("event:"), field("data:"))
            {
                let data: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(data["type"], kind.as_str());
                events.push((
                    id.parse().unwrap(),
                    kind,
                    data["call"]["id"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    events
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(url).json(&body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let (_, call) = self.get(&format!("/calls/{id}")).await;
            if done(&call) {
                return call;
            }
            assert!(Instant::now() < deadline, "call {id} stuck: {call}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn tour(database_url: Option<String>) {
    let received = Received::default();
    let receiver = start_receiver(Arc::clone(&received)).await;
    let (mock, provider) = start_mock().await;
    let running = start_server(database_url, provider, receiver).await;
    let client = Client {
        base: format!("http://{}", running.local_addr()),
        http: reqwest::Client::new(),
    };
    let events_url = format!("{}/events?after=0", client.base);
    let watcher = tokio::spawn({
        let url = events_url.clone();
        async move { read_events(&url, None, 8).await }
    });

    // A call scheduled for later: reschedule it, cancel it, cancel again, retry it.
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let (status, scheduled) = client
        .post(
            "/calls",
            json!({"to": "+966501234567", "scriptId": "welcomeFlow", "notBefore": later}),
        )
        .await;
    assert_eq!(status, 201, "{scheduled}");
    let scheduled_id = scheduled["id"].as_str().unwrap().to_owned();
    let (status, patched) = client
        .send(
            client
                .http
                .patch(format!("{}/calls/{scheduled_id}", client.base))
                .json(&json!({"expiresAt": (chrono::Utc::now() + chrono::TimeDelta::hours(2)).to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (status, canceled) = client
        .post(
            &format!("/calls/{scheduled_id}/cancel"),
            json!({"reason": "do not call"}),
        )
        .await;
    assert_eq!(
        (status, &canceled["status"]),
        (StatusCode::OK, &json!("CANCELED"))
    );
    assert_eq!(canceled["lastError"], "do not call");
    let (status, _) = client
        .post(&format!("/calls/{scheduled_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "canceling again is idempotent");
    let (status, retry) = client
        .post(&format!("/calls/{scheduled_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 201, "{retry}");
    assert_eq!(retry["retryOf"], scheduled_id.as_str());

    // A live call, canceled: 202, the provider hangs up, it ends CANCELED.
    let (_, live) = client
        .post(
            "/calls",
            json!({"to": "+966501234568", "scriptId": "welcomeFlow"}),
        )
        .await;
    let live_id = live["id"].as_str().unwrap().to_owned();
    client
        .wait_for(&live_id, |call| call["status"] == "IN_PROGRESS")
        .await;
    let (status, _) = client
        .post(&format!("/calls/{live_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 202);
    let ended = client
        .wait_for(&live_id, |call| call["status"] != "IN_PROGRESS")
        .await;
    assert_eq!(ended["status"], "CANCELED", "{ended}");
    assert_eq!(mock.hang_ups().len(), 1);
    let (status, attempts) = client.get(&format!("/calls/{live_id}/attempts")).await;
    assert_eq!(status, 200);
    assert_eq!(attempts["items"][0]["outcome"], "CANCELED", "{attempts}");

    // The retry is dialled and completes; a completed call cannot be canceled.
    let retry_id = retry["id"].as_str().unwrap().to_owned();
    client
        .wait_for(&retry_id, |call| call["status"] == "COMPLETED")
        .await;
    let (status, problem) = client
        .post(&format!("/calls/{retry_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{problem}");

    // Filters: by number (any spelling) and status.
    let (_, page) = client
        .get("/calls?to=%2B966%2050%20123%204567&status=CANCELED")
        .await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["id"], scheduled_id.as_str());

    // The event stream saw every change, in order; a client resuming after
    // an id gets exactly the later ones.
    let events = tokio::time::timeout(WITHIN, watcher)
        .await
        .expect("events in time")
        .unwrap();
    let of = |call: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|(_, _, id)| id == call)
            .map(|(_, kind, _)| kind.as_str())
            .collect()
    };
    assert_eq!(
        of(&scheduled_id),
        ["call.created", "call.canceled"],
        "{events:?}"
    );
    assert_eq!(
        of(&live_id),
        ["call.created", "call.dialled", "call.canceled"],
        "{events:?}"
    );
    assert_eq!(
        of(&retry_id),
        ["call.created", "call.dialled", "call.completed"],
        "{events:?}"
    );
    assert!(events.windows(2).all(|pair| pair[0].0 < pair[1].0));
    let resumed = read_events(&events_url, Some(&events[3].0.to_string()), 4).await;
    assert_eq!(resumed, events[4..8]);

    // Callbacks: each terminal event once, under its event id, and the call shows it.
    let delivered = client
        .wait_for(&live_id, |call| call["callback"]["state"] == "DELIVERED")
        .await;
    assert_eq!(delivered["callback"]["attempts"], 1);
    let received = received.lock().unwrap().clone();
    let terminal: Vec<(&str, &str)> = received
        .iter()
        .map(|(_, body)| {
            (
                body["type"].as_str().unwrap(),
                body["data"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(terminal.contains(&("call.canceled", scheduled_id.as_str())));
    assert!(terminal.contains(&("call.canceled", live_id.as_str())));
    for (id, body) in &received {
        let event = events
            .iter()
            .find(|(_, kind, call)| kind == &body["type"] && call == &body["data"]["id"]);
        if let Some((event_id, _, _)) = event {
            assert_eq!(id, &event_id.to_string(), "webhook-id is the event id");
        }
    }
    running.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tour_of_call_control_events_and_callbacks_on_the_memory_store() {
    tour(None).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tour_of_call_control_events_and_callbacks_on_postgres() {
    tour(Some(orchestrator_pg::testing::fresh_database_url().await)).await;
}
