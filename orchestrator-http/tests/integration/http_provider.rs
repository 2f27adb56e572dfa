//! `HttpProvider` against a local stub server: what it sends, and how it
//! classifies each kind of answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use orchestrator_core::{AttemptRef, CallId, DialError, DialRequest, PhoneNumber, Provider};
use orchestrator_http::provider::{ApiKey, BadApiKey, HttpProviderError};
use orchestrator_http::{HttpProvider, HttpProviderConfig};
use reqwest::Url;
use serde_json::{json, Value};

/// What the stub answers.
#[derive(Clone)]
enum Answer {
    Status(
        StatusCode,
        &'static [(&'static str, &'static str)],
        &'static str,
    ),
    Hang,
}

#[derive(Clone)]
struct Stub {
    answer: Answer,
    received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

async fn stub_handler(State(stub): State<Stub>, headers: HeaderMap, body: Bytes) -> Response {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    stub.received.lock().unwrap().push((headers, json));
    match stub.answer {
        Answer::Status(status, headers, body) => {
            let mut response = (status, body.to_owned()).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(*name, value.parse().unwrap());
            }
            response
        }
        // Never answers within the provider's timeout; the test ends first.
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// A stub provider on 127.0.0.1:0 answering `answer`; its base URL and log.
async fn stub(answer: Answer) -> (Url, Arc<Mutex<Vec<(HeaderMap, Value)>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/prefix/api/v1/calls", post(stub_handler))
        .with_state(Stub {
            answer,
            received: Arc::clone(&received),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        Url::parse(&format!("http://{address}/prefix/")).unwrap(),
        received,
    )
}

fn provider(base_url: Url, api_key: Option<&str>, timeout: Duration) -> HttpProvider {
    HttpProvider::new(&HttpProviderConfig {
        base_url,
        api_key: api_key.map(|key| key.parse().unwrap()),
        timeout,
        public_base_url: Url::parse("https://orchestrator.example/").unwrap(),
    })
    .unwrap()
}

fn dial_request() -> DialRequest {
    DialRequest {
        attempt: AttemptRef {
            call_id: "0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d"
                .parse::<CallId>()
                .unwrap(),
            attempt: 2,
        },
        to: PhoneNumber::parse("+966501234567").unwrap(),
        script_id: "welcomeFlow".to_owned(),
        metadata: Some(json!({"name": "Sara"})),
    }
}

async fn dial(answer: Answer) -> Result<String, DialError> {
    let (base, _) = stub(answer).await;
    provider(base, None, Duration::from_secs(5))
        .start_call(&dial_request())
        .await
        .map(|dialled| dialled.provider_call_id)
}

#[tokio::test]
async fn a_202_is_dialled_and_the_request_follows_the_contract() {
    let (base, received) = stub(Answer::Status(
        StatusCode::ACCEPTED,
        &[("content-type", "application/json")],
        r#"{"callId":"prov-77","extra":true}"#,
    ))
    .await;
    let dialled = provider(base, Some("sk-test"), Duration::from_secs(5))
        .start_call(&dial_request())
        .await
        .unwrap();
    assert_eq!(dialled.provider_call_id, "prov-77");
    let received = received.lock().unwrap();
    let (headers, body) = &received[0];
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("authorization"), Some("Bearer sk-test"));
    assert_eq!(
        header("idempotency-key"),
        Some("0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d:2")
    );
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(
        body,
        &json!({
            "to": "+966501234567",
            "scriptId": "welcomeFlow",
            "metadata": {"name": "Sara"},
            "webhookUrl": "https://orchestrator.example/callbacks/call-status?callId=0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d&attempt=2",
        })
    );
}

#[tokio::test]
async fn without_a_key_or_metadata_neither_is_sent() {
    let (base, received) = stub(Answer::Status(StatusCode::OK, &[], r#"{"callId":"p"}"#)).await;
    let request = DialRequest {
        metadata: None,
        ..dial_request()
    };
    provider(base, None, Duration::from_secs(5))
        .start_call(&request)
        .await
        .unwrap();
    let received = received.lock().unwrap();
    let (headers, body) = &received[0];
    assert!(headers.get("authorization").is_none());
    assert!(body.get("metadata").is_none(), "{body}");
}

#[tokio::test]
async fn a_2xx_without_a_usable_call_id_is_retryable() {
    for body in ["", "{}", r#"{"callId":""}"#, r#"{"callId":7}"#, "not json"] {
        let error = dial(Answer::Status(StatusCode::ACCEPTED, &[], body))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            DialError::Retryable {
                reason: "provider 202: no callId in the response".to_owned()
            },
            "{body:?}"
        );
    }
}

#[tokio::test]
async fn server_errors_are_retryable_and_name_the_status() {
    for (status, reason) in [
        (StatusCode::SERVICE_UNAVAILABLE, "provider 503"),
        (StatusCode::INTERNAL_SERVER_ERROR, "provider 500"),
        (StatusCode::FOUND, "provider 302"),
    ] {
        let error = dial(Answer::Status(
            status,
            &[("location", "/elsewhere")],
            "oops",
        ))
        .await
        .unwrap_err();
        assert_eq!(
            error,
            DialError::Retryable {
                reason: reason.to_owned()
            }
        );
    }
}

#[tokio::test]
async fn a_429_is_at_capacity_with_its_retry_after() {
    let seconds = dial(Answer::Status(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "7")],
        "",
    ))
    .await;
    assert_eq!(
        seconds,
        Err(DialError::AtCapacity {
            retry_after: Some(Duration::from_secs(7))
        })
    );
    // An HTTP-date in the past means "now".
    let date = dial(Answer::Status(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
        "",
    ))
    .await;
    assert_eq!(
        date,
        Err(DialError::AtCapacity {
            retry_after: Some(Duration::ZERO)
        })
    );
    let none = dial(Answer::Status(StatusCode::TOO_MANY_REQUESTS, &[], "")).await;
    assert_eq!(none, Err(DialError::AtCapacity { retry_after: None }));
}

#[tokio::test]
async fn other_4xx_are_permanent_with_the_start_of_the_body() {
    let error = dial(Answer::Status(
        StatusCode::UNPROCESSABLE_ENTITY,
        &[],
        "{\"error\":\n  \"invalid number\"}",
    ))
    .await
    .unwrap_err();
    assert_eq!(
        error,
        DialError::Permanent {
            reason: "provider 422: {\"error\": \"invalid number\"}".to_owned()
        }
    );
    let bare = dial(Answer::Status(StatusCode::NOT_FOUND, &[], ""))
        .await
        .unwrap_err();
    assert_eq!(
        bare,
        DialError::Permanent {
            reason: "provider 404".to_owned()
        }
    );
}

#[tokio::test]
async fn a_provider_that_hangs_past_the_timeout_is_retryable() {
    let (base, received) = stub(Answer::Hang).await;
    let started = std::time::Instant::now();
    let error = provider(base, None, Duration::from_millis(300))
        .start_call(&dial_request())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        DialError::Retryable {
            reason: "provider timeout".to_owned()
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(received.lock().unwrap().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // Bind to learn a free port, then close it so nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let base = Url::parse(&format!("http://{address}/")).unwrap();
    let error = provider(base, None, Duration::from_secs(5))
        .start_call(&dial_request())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        DialError::Retryable {
            reason: "provider unreachable".to_owned()
        }
    );
}

#[test]
fn bad_configuration_is_refused() {
    let url = |raw: &str| Url::parse(raw).unwrap();
    let config = |base: &str, key: Option<&str>, timeout: Duration| HttpProviderConfig {
        base_url: url(base),
        api_key: key.map(|key| key.parse().unwrap()),
        timeout,
        public_base_url: url("http://127.0.0.1:8080"),
    };
    assert!(matches!(
        HttpProvider::new(&config("ftp://x", None, Duration::from_secs(1))),
        Err(HttpProviderError::BadUrl("PROVIDER_BASE_URL"))
    ));
    assert!(matches!(
        HttpProvider::new(&config("http://x", None, Duration::ZERO)),
        Err(HttpProviderError::ZeroTimeout)
    ));
    for key in ["", "a b", "k\u{e9}y", "tab\tkey"] {
        assert_eq!(key.parse::<ApiKey>().unwrap_err(), BadApiKey, "{key:?}");
    }
    let ok = HttpProvider::new(&config("http://x/v2", Some("k"), Duration::from_secs(1))).unwrap();
    assert_eq!(ok.calls_url().as_str(), "http://x/v2/api/v1/calls");
}

#[test]
fn the_api_key_does_not_show_in_debug_output() {
    let provider = provider(
        Url::parse("http://provider.test").unwrap(),
        Some("sk-live-123"),
        Duration::from_secs(1),
    );
    let shown = format!("{provider:?}");
    assert!(!shown.contains("sk-live-123"), "{shown}");
}
