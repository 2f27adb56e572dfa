//! API keys: with keys configured, every client operation requires one as a
//! bearer token; the probes and the signed provider webhook do not.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use orchestrator_http::routes::{operations, Access};
use orchestrator_http::{ApiKeys, WebhookSecret};
use serde_json::json;

use crate::support::{json_request, request, Log, Reply, TestApp};

const KEY: &str = "crm-key-8c1f0e4d2b7a";
const OTHER_KEY: &str = "prometheus-key-5e9d3c";
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn app() -> TestApp {
    let keys: ApiKeys = format!("{KEY},{OTHER_KEY}").parse().unwrap();
    let secret: WebhookSecret = SECRET.parse().unwrap();
    TestApp::with_api_keys(keys, &secret)
}

/// A request for `method path`, with a body where the operation takes one.
fn operation_request(method: &Method, path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut request = match *method {
        Method::POST if path.ends_with("/cancel") => {
            json_request(Method::POST, path, &json!({"reason": "test"}))
        }
        Method::POST if path.ends_with("/retry") => {
            request(Method::POST, path).body(Body::empty()).unwrap()
        }
        Method::POST => json_request(
            Method::POST,
            path,
            &json!({"to": "+966501234567", "scriptId": "welcomeFlow"}),
        ),
        Method::PATCH => json_request(Method::PATCH, path, &json!({"scriptId": "otherFlow"})),
        _ => request(method.clone(), path).body(Body::empty()).unwrap(),
    };
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, value.parse().unwrap());
    }
    request
}

/// Every operation that requires a key, under both bases, with `{id}`
/// filled with an existing call.
async fn client_operations(app: &TestApp) -> Vec<(Method, String)> {
    let created = app
        .send(operation_request(
            &Method::POST,
            "/calls",
            Some(&format!("Bearer {KEY}")),
        ))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let mut found = Vec::new();
    for operation in operations() {
        if operation.access() != Access::ApiKey {
            continue;
        }
        for base in ["", "/api/v1"] {
            let path = format!("{base}{}", operation.path().replace("{id}", &id));
            found.push((operation.method(), path));
        }
    }
    assert_eq!(found.len(), 20, "{found:?}");
    found
}

fn assert_refused(reply: &Reply, challenge: &str, what: &str) {
    let problem = reply.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(problem["type"], "/problems/unauthenticated", "{what}");
    assert_eq!(reply.fields(), ["Authorization"], "{what}");
    assert_eq!(reply.header("www-authenticate"), Some(challenge), "{what}");
}

#[tokio::test]
async fn every_client_operation_without_a_valid_key_is_401_with_a_bearer_challenge() {
    let app = app();
    let missing = "Bearer realm=\"orchestrator\"";
    let invalid = "Bearer realm=\"orchestrator\", error=\"invalid_token\"";
    for (method, path) in client_operations(&app).await {
        let cases = [
            (None, missing),
            (Some("Basic Y3JtOnNlY3JldA=="), missing),
            (Some("Bearer"), missing),
            (Some("Bearer crm-key-8c1f0e4d2b7b"), invalid),
            (Some(&*format!("Bearer {KEY}x")), invalid),
            (Some(&*format!("Bearer {}", &KEY[..KEY.len() - 1])), invalid),
        ];
        for (authorization, challenge) in cases {
            let reply = app
                .send(operation_request(&method, &path, authorization))
                .await;
            assert_refused(
                &reply,
                challenge,
                &format!("{method} {path} {authorization:?}"),
            );
        }
    }
    let calls = app.engine.counts().await.unwrap();
    assert_eq!(calls.total(), 1, "no refused request created a call");
}

#[tokio::test]
async fn every_client_operation_works_with_any_of_the_keys() {
    let app = app();
    for (method, path) in client_operations(&app).await {
        for key in [KEY, OTHER_KEY] {
            for scheme in ["Bearer", "bearer"] {
                let authorization = format!("{scheme} {key}");
                let reply = app
                    .send(operation_request(&method, &path, Some(&authorization)))
                    .await;
                // Each create is a new call to the same number: allowed while
                // PENDING. The call is canceled before it is retried, and each
                // retry is a new call.
                let creates = path.ends_with("/calls") || path.ends_with("/retry");
                let expected = match (&method, creates) {
                    (&Method::POST, true) => StatusCode::CREATED,
                    _ => StatusCode::OK,
                };
                assert_eq!(reply.status, expected, "{method} {path}: {}", reply.text);
            }
        }
    }
}

#[tokio::test]
async fn probes_and_signed_webhooks_need_no_key() {
    let app = app();
    for base in ["", "/api/v1"] {
        for probe in ["/health", "/ready"] {
            let reply = app.get(&format!("{base}{probe}")).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{base}{probe}: {}",
                reply.text
            );
        }
    }
    // A call dialled, then settled by a signed webhook that carries no key.
    let created = app
        .send(operation_request(
            &Method::POST,
            "/calls",
            Some(&format!("Bearer {KEY}")),
        ))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.dispatch().await;
    let call = app.engine.get_call(id.parse().unwrap()).await.unwrap();
    let provider_id = call.provider_call_id.clone().expect("dialled");
    let body = json!({"callId": provider_id, "status": "COMPLETED"}).to_string();
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let signed = secret.sign_headers("msg_1", chrono::Utc::now().timestamp(), body.as_bytes());
    let webhook = request(Method::POST, "/callbacks/call-status")
        .header("content-type", "application/json")
        .header("webhook-id", signed.id)
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", signed.signature)
        .body(Body::from(body))
        .unwrap();
    let reply = app.send(webhook).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "COMPLETED");
    // An unsigned webhook is still refused for its signature, not for a key.
    let unsigned = app
        .post_json(
            "/callbacks/call-status",
            &json!({"callId": "prov-x", "status": "COMPLETED"}),
        )
        .await;
    unsigned.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.body["type"], "/problems/invalid-signature");
}

#[tokio::test]
async fn a_scraper_sends_the_key_for_prometheus_text() {
    let app = app();
    let scrape = |authorization: Option<String>| {
        let mut builder = request(Method::GET, "/metrics").header(header::ACCEPT, "text/plain");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Body::empty()).unwrap()
    };
    let refused = app.send(scrape(None)).await;
    refused.problem(StatusCode::UNAUTHORIZED);
    let scraped = app.send(scrape(Some(format!("Bearer {OTHER_KEY}")))).await;
    assert_eq!(scraped.status, StatusCode::OK);
    assert!(
        scraped.text.contains("orchestrator_store_up 1\n"),
        "{}",
        scraped.text
    );
}

#[tokio::test]
async fn keys_are_not_logged() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // A callsite first reached by another test while this subscriber was
    // being installed may have cached "no interest"; ask every one again.
    tracing::callsite::rebuild_interest_cache();
    let app = app();
    let _ = client_operations(&app).await;
    let wrong = app
        .send(operation_request(
            &Method::GET,
            "/calls",
            Some("Bearer wrong-key-presented-123"),
        ))
        .await;
    wrong.problem(StatusCode::UNAUTHORIZED);
    assert!(
        !wrong.text.contains("wrong-key"),
        "not echoed: {}",
        wrong.text
    );
    // What the log captured (the request spans hold method, path and ids
    // only, so no header can reach it) shows no key, presented or configured.
    let text = log.text();
    for secret in [KEY, OTHER_KEY, "wrong-key-presented-123"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
    assert!(!format!("{:?}", ApiKeys::from_lines(KEY).unwrap()).contains(KEY));
}
