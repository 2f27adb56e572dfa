//! End to end over real sockets: the orchestrator (as the binary runs it)
//! with `PROVIDER_BASE_URL` pointing at the mock provider, both on
//! 127.0.0.1:0, webhooks signed on both sides. Calls are created with
//! reqwest and polled (real time, bounded) until they settle through real
//! webhooks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orchestrator_core::simulated::OutcomeMix;
use orchestrator_core::{EngineConfig, ReportedStatus};
use orchestrator_http::server::config::{Config, ProviderSettings};
use orchestrator_http::server::mock_provider::{MockProvider, MockProviderConfig};
use orchestrator_http::server::{self as app, Running};
use orchestrator_http::WebhookSecret;
use reqwest::Url;
use serde_json::{json, Value};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const DEADLINE: Duration = Duration::from_secs(20);

/// The mock provider on 127.0.0.1:0: COMPLETED or BUSY, 50 ms calls, signed webhooks.
async fn mock_provider() -> (MockProvider, Url) {
    let mock = MockProvider::new(MockProviderConfig {
        call_duration: Duration::from_millis(50),
        outcomes: OutcomeMix::zero()
            .with_weight(ReportedStatus::Completed, 3)
            .with_weight(ReportedStatus::Busy, 1),
        webhook_secret: Some(SECRET.parse().unwrap()),
        api_key: Some("sk-e2e".parse().unwrap()),
        seed: 11,
        ..MockProviderConfig::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let serving = mock.clone();
    tokio::spawn(async move {
        orchestrator_http::server::mock_provider::serve(listener, &serving, std::future::pending())
            .await
    });
    (mock, url)
}

/// The orchestrator on 127.0.0.1:0 over `database_url` (memory when `None`).
pub(crate) async fn orchestrator(provider_url: Url, database_url: Option<String>) -> Running {
    let database_url = database_url.map(|url| url.parse().expect("a PostgreSQL URL"));
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let config = Config {
        database_url,
        bind_host: "127.0.0.1".to_owned(),
        port: 0,
        engine: EngineConfig::default().with_max_concurrent_calls(4),
        provider: Some(ProviderSettings {
            base_url: provider_url,
            api_key: Some("sk-e2e".parse().unwrap()),
            timeout: Duration::from_secs(5),
        }),
        webhook_secret: Some(secret),
        ..Config::default()
    };
    app::start(config).await.expect("the orchestrator starts")
}

/// Creates calls over HTTP and waits until every one is terminal; returns
/// the final calls.
pub(crate) async fn run_calls_to_completion(base: &str, numbers: &[&str]) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for (n, to) in numbers.iter().enumerate() {
        let response = client
            .post(format!("{base}/calls"))
            .header("Idempotency-Key", format!("e2e-{n}"))
            .json(&json!({"to": to, "scriptId": "welcomeFlow", "metadata": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let call: Value = response.json().await.unwrap();
        assert_eq!(call["status"], "PENDING");
        ids.push(call["id"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    let mut finished = Vec::new();
    for id in &ids {
        loop {
            let call: Value = client
                .get(format!("{base}/api/v1/calls/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if matches!(
                call["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "EXPIRED")
            ) {
                finished.push(call);
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "call {id} still {}",
                call["status"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    finished
}

/// Checks the settled calls: each COMPLETED, or FAILED as BUSY, after one dial.
pub(crate) fn assert_settled_by_webhooks(calls: &[Value]) -> BTreeMap<String, usize> {
    let mut statuses = BTreeMap::new();
    for call in calls {
        assert_eq!(call["attempts"], 1, "{call}");
        assert!(call["endedAt"].is_string(), "{call}");
        assert!(
            call["providerCallId"]
                .as_str()
                .unwrap()
                .starts_with("mock-"),
            "{call}"
        );
        match call["status"].as_str().unwrap() {
            "COMPLETED" => assert_eq!(call["lastError"], Value::Null, "{call}"),
            "FAILED" => assert_eq!(call["lastError"], "BUSY", "{call}"),
            other => panic!("unexpected status {other}: {call}"),
        }
        *statuses
            .entry(call["status"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    statuses
}

pub(crate) const NUMBERS: [&str; 8] = [
    "+966501234501",
    "+966501234502",
    "+966501234503",
    "+966501234501", // the same number twice: dialled one after the other
    "+14155550100",
    "+14155550101",
    "+447911123456",
    "+447911123457",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_through_real_signed_webhooks_on_the_memory_store() {
    let (mock, provider_url) = mock_provider().await;
    let running = orchestrator(provider_url, None).await;
    let base = format!("http://{}", running.local_addr());

    let calls = run_calls_to_completion(&base, &NUMBERS).await;
    let statuses = assert_settled_by_webhooks(&calls);
    assert!(statuses.contains_key("COMPLETED"), "{statuses:?}");

    let dials = mock.received();
    assert_eq!(dials.len(), NUMBERS.len(), "one dial per call");
    for dial in &dials {
        assert_eq!(dial.authorization.as_deref(), Some("Bearer sk-e2e"));
        assert!(dial.idempotency_key.as_deref().unwrap().ends_with(":1"));
        let webhook = dial.body["webhookUrl"].as_str().unwrap();
        assert!(
            webhook.starts_with(&format!("{base}/callbacks/call-status?callId=")),
            "{webhook}"
        );
    }
    // The mock counts a delivery when it reads our 200, a moment after the
    // call settled here.
    let started = Instant::now();
    while mock.webhooks_delivered() < NUMBERS.len() as u64 {
        assert!(
            started.elapsed() < DEADLINE,
            "webhooks delivered: {}",
            mock.webhooks_delivered()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.webhooks_delivered(), NUMBERS.len() as u64);
    // The timeline: one entry per accepted dial, each webhook sent after its
    // dial arrived (by at least the 50 ms call), dials in arrival order.
    let timeline = mock.timeline();
    assert_eq!(timeline.len(), NUMBERS.len());
    for timing in &timeline {
        let sent = timing.webhook_sent.expect("every webhook was sent");
        assert!(sent.duration_since(timing.arrived) >= Duration::from_millis(50));
    }
    assert!(timeline.windows(2).all(|w| w[0].arrived <= w[1].arrived));

    let counts: Value = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["PENDING"], 0);
    assert_eq!(counts["IN_PROGRESS"], 0);
    assert_eq!(
        counts["COMPLETED"].as_u64().unwrap() + counts["FAILED"].as_u64().unwrap(),
        NUMBERS.len() as u64
    );
    running.shutdown().await.expect("graceful shutdown");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_through_real_signed_webhooks_on_postgres() {
    let database_url = orchestrator_pg::testing::fresh_database_url().await;
    let (mock, provider_url) = mock_provider().await;
    let running = orchestrator(provider_url, Some(database_url)).await;
    let base = format!("http://{}", running.local_addr());
    let calls = run_calls_to_completion(&base, &NUMBERS).await;
    assert_settled_by_webhooks(&calls);
    assert_eq!(mock.received().len(), NUMBERS.len());
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    running.shutdown().await.expect("graceful shutdown");
}
