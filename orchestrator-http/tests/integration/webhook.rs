//! `POST /callbacks/call-status`: settling, idempotency, the query fallback,
//! malformed webhooks and Standard Webhooks signatures.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use orchestrator_core::MemoryStore;
use orchestrator_http::WebhookSecret;
use serde_json::{json, Value};

use crate::support::{request, GatedProvider, TestApp};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A call dialled once by the accepting provider: its id and provider id.
async fn dialled(app: &TestApp, to: &str) -> (String, String) {
    let id = app.create(to).await;
    app.dispatch().await;
    let call = app.get(&format!("/calls/{id}")).await;
    assert_eq!(call.body["status"], "IN_PROGRESS");
    let provider_id = call.body["providerCallId"].as_str().unwrap().to_owned();
    (id, provider_id)
}

#[tokio::test]
async fn completed_webhooks_complete_the_call_and_repeats_change_nothing() {
    let app = TestApp::new();
    let (id, provider_id) = dialled(&app, "+966501234567").await;
    let body = json!({"callId": provider_id, "status": "COMPLETED", "durationSec": 42,
                      "completedAt": "2025-07-20T10:00:42Z"});
    let reply = app.post_json("/callbacks/call-status", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({"outcome": "applied", "callId": id, "status": "COMPLETED"})
    );
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "COMPLETED");
    assert_eq!(call["endedAt"], "2025-07-20T10:00:42Z");
    assert_eq!(call["durationSec"], 42);

    // A repeat, and a late contradicting one, at the other path: 200, nothing changes.
    for status in ["COMPLETED", "FAILED"] {
        let late = json!({"callId": provider_id, "status": status});
        let reply = app.post_json("/api/v1/callbacks/call-status", &late).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["outcome"], "unchanged");
        assert_eq!(reply.body["status"], "COMPLETED");
    }
    assert_eq!(app.get(&format!("/calls/{id}")).await.body, call);
}

#[tokio::test]
async fn failure_outcomes_fail_the_call_with_that_last_error() {
    let app = TestApp::new();
    for (n, status) in ["FAILED", "BUSY", "NO_ANSWER"].into_iter().enumerate() {
        let (id, provider_id) = dialled(&app, &format!("+96650123450{n}")).await;
        let reply = app
            .post_json(
                "/callbacks/call-status",
                &json!({"callId": provider_id, "status": status}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let call = app.get(&format!("/calls/{id}")).await.body;
        assert_eq!(call["status"], "FAILED");
        assert_eq!(call["lastError"], status);
        assert!(call["endedAt"].is_string());
    }
}

#[tokio::test]
async fn unknown_provider_call_ids_are_404() {
    let app = TestApp::new();
    let reply = app
        .post_json(
            "/callbacks/call-status",
            &json!({"callId": "nobody", "status": "COMPLETED"}),
        )
        .await;
    reply.problem(StatusCode::NOT_FOUND);
    // The query may name a call that does not exist either.
    let reply = app
        .post_json(
            "/callbacks/call-status?callId=0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d&attempt=1",
            &json!({"callId": "nobody", "status": "COMPLETED"}),
        )
        .await;
    reply.problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_webhooks_are_400_and_change_nothing() {
    let app = TestApp::new();
    let (id, provider_id) = dialled(&app, "+966501234567").await;
    let cases: Vec<(String, Value, Vec<&str>)> = vec![
        (
            String::new(),
            json!({"callId": provider_id, "status": "RINGING"}),
            vec!["status"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "completed"}),
            vec!["status"],
        ),
        // Dispositions of platform adapters are not part of the generic contract.
        (
            String::new(),
            json!({"callId": provider_id, "status": "VOICEMAIL"}),
            vec!["status"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "ACCOUNT_ERROR"}),
            vec!["status"],
        ),
        (
            String::new(),
            json!({"callId": provider_id}),
            vec!["status"],
        ),
        (
            String::new(),
            json!({"callId": 17, "status": "COMPLETED"}),
            vec!["callId"],
        ),
        (
            String::new(),
            json!({"callId": "", "status": "COMPLETED"}),
            vec!["callId"],
        ),
        (
            String::new(),
            json!({"status": "COMPLETED"}),
            vec!["callId"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "COMPLETED", "durationSec": "42"}),
            vec!["durationSec"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "COMPLETED", "durationSec": -1}),
            vec!["durationSec"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "COMPLETED", "durationSec": 4.5}),
            vec!["durationSec"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "COMPLETED", "completedAt": "yesterday"}),
            vec!["completedAt"],
        ),
        (
            String::new(),
            json!({"callId": provider_id, "status": "COMPLETED", "completedAt": 1_700_000_000}),
            vec!["completedAt"],
        ),
        (
            "?callId=nope&attempt=1".to_owned(),
            json!({"callId": provider_id, "status": "COMPLETED"}),
            vec!["callId"],
        ),
        (
            format!("?callId={id}&attempt=0"),
            json!({"callId": provider_id, "status": "COMPLETED"}),
            vec!["attempt"],
        ),
        (
            format!("?callId={id}&attempt=x"),
            json!({"callId": provider_id, "status": "COMPLETED"}),
            vec!["attempt"],
        ),
        (
            format!("?callId={id}"),
            json!({"callId": provider_id, "status": "COMPLETED"}),
            vec!["attempt"],
        ),
        (
            "?attempt=1".to_owned(),
            json!({"callId": provider_id, "status": "COMPLETED"}),
            vec!["callId"],
        ),
    ];
    for (query, body, fields) in cases {
        let reply = app
            .post_json(&format!("/callbacks/call-status{query}"), &body)
            .await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), fields, "{query} {body}: {}", reply.text);
    }
    for raw in ["", "not json", "[]", "{\"callId\":"] {
        let reply = app
            .send(
                request(Method::POST, "/callbacks/call-status")
                    .body(Body::from(raw))
                    .unwrap(),
            )
            .await;
        reply.problem(StatusCode::BAD_REQUEST);
    }
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "IN_PROGRESS", "nothing changed");
}

#[tokio::test]
async fn unknown_members_from_the_provider_are_ignored() {
    let app = TestApp::new();
    let (_, provider_id) = dialled(&app, "+966501234567").await;
    let reply = app
        .post_json(
            "/callbacks/call-status?x=1",
            &json!({"callId": provider_id, "status": "COMPLETED", "recordingUrl": "https://x"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn a_webhook_before_the_providers_answer_settles_through_the_query() {
    let (provider, dials, release) = GatedProvider::new();
    let app = TestApp::with(Arc::new(MemoryStore::new()), Arc::new(provider), None);
    let running = app.engine.start();
    let id = app.create("+966501234567").await;
    // The engine has claimed the call and is waiting for the provider's 202.
    let dial = dials
        .lock()
        .await
        .recv()
        .await
        .expect("the call is dialled");
    assert_eq!(dial.attempt.call_id.to_string(), id);
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "IN_PROGRESS");
    assert_eq!(call["providerCallId"], Value::Null);

    let reply = app
        .post_json(
            &format!("/callbacks/call-status?callId={id}&attempt=1"),
            &json!({"callId": "early-bird", "status": "COMPLETED", "durationSec": 3}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "applied");
    release.notify_waiters();
    running.shutdown().await;
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "COMPLETED");
    assert_eq!(call["providerCallId"], "early-bird");
}

#[tokio::test]
async fn a_webhook_naming_an_attempt_never_dialled_changes_nothing() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let reply = app
        .post_json(
            &format!("/callbacks/call-status?callId={id}&attempt=1"),
            &json!({"callId": "forged", "status": "FAILED"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "ignored");
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "PENDING");
    assert_eq!(call["attempts"], 0);
}

fn signed_request(
    secret: &WebhookSecret,
    id: &str,
    timestamp: i64,
    body: &str,
) -> axum::http::Request<Body> {
    let signed = secret.sign_headers(id, timestamp, body.as_bytes());
    request(Method::POST, "/callbacks/call-status")
        .header("content-type", "application/json")
        .header("webhook-id", signed.id)
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", signed.signature)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn with_a_secret_only_correctly_signed_webhooks_are_accepted() {
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let app = TestApp::signed(&secret);
    let (id, provider_id) = dialled(&app, "+966501234567").await;
    // Formatting is kept as sent: the signature covers the raw bytes.
    let body = format!("{{ \"callId\" : \"{provider_id}\",\n  \"status\": \"COMPLETED\" }}");
    let now = chrono::Utc::now().timestamp();

    let unsigned = app
        .post_json(
            "/callbacks/call-status",
            &serde_json::from_str(&body).unwrap(),
        )
        .await;
    unsigned.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.body["type"], "/problems/invalid-signature");
    assert_eq!(unsigned.fields(), ["webhook-id"]);
    assert!(unsigned.header("www-authenticate").is_some());

    let other: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwIq2Fjk8fQ1Y="
        .parse()
        .unwrap();
    let wrong_key = app.send(signed_request(&other, "msg_1", now, &body)).await;
    wrong_key.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_key.fields(), ["webhook-signature"]);

    let stale = app
        .send(signed_request(&secret, "msg_1", now - 600, &body))
        .await;
    stale.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(stale.fields(), ["webhook-timestamp"]);

    let mut tampered = signed_request(&secret, "msg_1", now, &body);
    *tampered.body_mut() = Body::from(body.replace("COMPLETED", "FAILED"));
    app.send(tampered).await.problem(StatusCode::UNAUTHORIZED);

    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(
        call["status"], "IN_PROGRESS",
        "no refused webhook changed anything"
    );

    let good = app.send(signed_request(&secret, "msg_1", now, &body)).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.text);
    assert_eq!(good.body["status"], "COMPLETED");
}

#[tokio::test]
async fn signatures_are_checked_before_the_body() {
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let app = TestApp::signed(&secret);
    let reply = app
        .send(
            request(Method::POST, "/callbacks/call-status")
                .body(Body::from("garbage"))
                .unwrap(),
        )
        .await;
    reply.problem(StatusCode::UNAUTHORIZED);
    let now = chrono::Utc::now().timestamp();
    let reply = app
        .send(signed_request(&secret, "msg_2", now, "garbage"))
        .await;
    reply.problem(StatusCode::BAD_REQUEST);
}
