//! `/metrics`, `/health`, `/ready`, and the cross-cutting behaviour of the
//! router: unknown routes, wrong methods, request ids, the request timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use orchestrator_http::Limits;
use serde_json::json;

use crate::support::{
    broken_store, request, switchable_store, AcceptingProvider, Log, Ping, TestApp,
};

#[tokio::test]
async fn metrics_default_to_the_flat_json_counts() {
    let app = TestApp::new();
    let empty = app.get("/metrics").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(
        empty.body,
        json!({"PENDING": 0, "IN_PROGRESS": 0, "COMPLETED": 0, "FAILED": 0, "EXPIRED": 0, "CANCELED": 0})
    );
    assert_eq!(empty.header("vary"), Some("accept"));
    for n in 0..3 {
        app.create(&format!("+96650123456{n}")).await;
    }
    app.dispatch().await;
    app.create("+966501234569").await;
    for (path, accept) in [
        ("/metrics", None),
        ("/api/v1/metrics", Some("application/json")),
        ("/metrics", Some("*/*")),
    ] {
        let mut builder = request(Method::GET, path);
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        let reply = app.send(builder.body(Body::empty()).unwrap()).await;
        assert!(reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        assert_eq!(
            reply.body,
            json!({"PENDING": 1, "IN_PROGRESS": 3, "COMPLETED": 0, "FAILED": 0, "EXPIRED": 0, "CANCELED": 0})
        );
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_when_asked() {
    let app = TestApp::new();
    app.create("+966501234567").await;
    app.dispatch().await;
    let scraper =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    for (path, accept) in [("/metrics", "text/plain"), ("/api/v1/metrics", scraper)] {
        let reply = app
            .send(
                request(Method::GET, path)
                    .header(header::ACCEPT, accept)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = &reply.text;
        for line in [
            "# TYPE orchestrator_calls gauge",
            "orchestrator_calls{status=\"PENDING\"} 0",
            "orchestrator_calls{status=\"IN_PROGRESS\"} 1",
            "orchestrator_calls{status=\"EXPIRED\"} 0",
            "orchestrator_calls{status=\"CANCELED\"} 0",
            "orchestrator_slots_in_use 1",
            "orchestrator_slots_max 30",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        // The engine's series, from the recorder whose handle the router was given.
        assert!(
            text.contains("orchestrator_dials_total{outcome=\"accepted\"}"),
            "{text}"
        );
        assert!(text.contains("orchestrator_calls_created_total"), "{text}");
    }
}

#[tokio::test]
async fn without_a_metrics_handle_prometheus_text_has_the_store_gauges_only() {
    let app = TestApp::without_metrics();
    app.create("+966501234567").await;
    app.dispatch().await;
    let json = app.get("/metrics").await;
    assert_eq!(json.body["IN_PROGRESS"], 1, "{}", json.text);
    let reply = app
        .send(
            request(Method::GET, "/metrics")
                .header(header::ACCEPT, "text/plain")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .text
            .lines()
            .any(|l| l == "orchestrator_slots_in_use 1"),
        "{}",
        reply.text
    );
    // The engine's series belong to whoever installed the recorder; this
    // router was not given its handle.
    assert!(
        !reply.text.contains("orchestrator_dials_total"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn health_is_always_200_and_ready_follows_the_store() {
    let app = TestApp::new();
    for prefix in ["", "/api/v1"] {
        assert_eq!(
            app.get(&format!("{prefix}/health")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            app.get(&format!("{prefix}/ready")).await.status,
            StatusCode::OK
        );
    }
    let broken = TestApp::with(
        Arc::new(broken_store(Ping::Fails)),
        Arc::new(AcceptingProvider),
        None,
    );
    assert_eq!(broken.get("/health").await.status, StatusCode::OK);
    for prefix in ["", "/api/v1"] {
        let reply = broken.get(&format!("{prefix}/ready")).await;
        let problem = reply.problem(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem["type"], "/problems/store-unavailable");
        assert!(
            !reply.text.contains("5432"),
            "the cause is not leaked: {}",
            reply.text
        );
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    let reply = broken.get("/metrics").await;
    reply.problem(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn prometheus_text_is_served_while_the_store_is_down() {
    let scrape = || {
        request(Method::GET, "/metrics")
            .header(header::ACCEPT, "text/plain")
            .body(Body::empty())
            .unwrap()
    };
    let healthy = TestApp::new();
    let up = healthy.send(scrape()).await;
    assert_eq!(up.status, StatusCode::OK);
    assert!(
        up.text.lines().any(|l| l == "orchestrator_store_up 1"),
        "{}",
        up.text
    );

    let broken = TestApp::with(
        Arc::new(broken_store(Ping::Fails)),
        Arc::new(AcceptingProvider),
        None,
    );
    let down = broken.send(scrape()).await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.text);
    assert_eq!(
        down.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &down.text;
    assert!(
        text.lines().any(|l| l == "orchestrator_store_up 0"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "orchestrator_slots_max 30"),
        "{text}"
    );
    // What only the store knows is left out rather than made up.
    assert!(!text.contains("orchestrator_calls{"), "{text}");
    assert!(!text.contains("orchestrator_slots_in_use "), "{text}");
    assert!(!text.contains("5432"), "the cause is not leaked: {text}");
    // The JSON map is nothing but the store's counts: 503 while it is down.
    let json = broken.get("/metrics").await;
    let problem = json.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["type"], "/problems/store-unavailable");
}

#[tokio::test]
async fn the_store_going_down_and_coming_back_is_logged_once_each_way() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // A callsite first reached by another test while this subscriber was
    // being installed may have cached "no interest"; ask every one again.
    tracing::callsite::rebuild_interest_cache();
    let (store, down) = switchable_store(Ping::Fails);
    let app = TestApp::with(Arc::new(store), Arc::new(AcceptingProvider), None);
    let scrape = || {
        request(Method::GET, "/metrics")
            .header(header::ACCEPT, "text/plain")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(app.get("/ready").await.status, StatusCode::OK);
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    app.get("/ready")
        .await
        .problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(app
        .send(scrape())
        .await
        .text
        .contains("orchestrator_store_up 0\n"));
    app.get("/ready")
        .await
        .problem(StatusCode::SERVICE_UNAVAILABLE);
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(app
        .send(scrape())
        .await
        .text
        .contains("orchestrator_store_up 1\n"));
    assert_eq!(app.get("/ready").await.status, StatusCode::OK);

    let text = log.text();
    let lines = |message: &str| text.lines().filter(|line| line.contains(message)).count();
    assert_eq!(lines("store unreachable"), 1, "{text}");
    assert_eq!(lines("store reachable again"), 1, "{text}");
    let back = text
        .lines()
        .find(|line| line.contains("store reachable again"))
        .unwrap();
    assert!(back.contains("down_for_seconds="), "{back}");
}

#[tokio::test]
async fn a_server_error_cause_is_logged_once() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let broken = TestApp::with(
        Arc::new(broken_store(Ping::Fails)),
        Arc::new(AcceptingProvider),
        None,
    );
    let reply = broken.get("/ready").await;
    reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    let text = log.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("connection refused (db:5432)"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("request_id="),
        "in the request's span: {}",
        lines[0]
    );
}

#[tokio::test(start_paused = true)]
async fn requests_that_outlast_the_timeout_get_a_503_problem() {
    let limits = Limits {
        request_timeout: Duration::from_millis(250),
        ..Limits::default()
    };
    let app = TestApp::with_limits(
        Arc::new(broken_store(Ping::Hangs)),
        Arc::new(AcceptingProvider),
        None,
        limits,
    );
    // The paused clock jumps to the deadline as soon as the handler waits.
    let reply = app.get("/ready").await;
    let problem = reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["type"], "/problems/timeout");
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_documents() {
    let app = TestApp::new();
    for path in [
        "/",
        "/nope",
        "/calls/",
        "/api/v2/calls",
        "/api/v1",
        "/callbacks",
    ] {
        let reply = app.get(path).await;
        reply.problem(StatusCode::NOT_FOUND);
    }
    let cases = [
        (Method::DELETE, "/calls", "GET,HEAD,POST"),
        (
            Method::PUT,
            "/api/v1/calls/0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d",
            "GET,HEAD,PATCH",
        ),
        (Method::GET, "/callbacks/call-status", "POST"),
        (Method::POST, "/metrics", "GET,HEAD"),
    ];
    for (method, path, allowed) in cases {
        let reply = app
            .send(request(method, path).body(Body::empty()).unwrap())
            .await;
        reply.problem(StatusCode::METHOD_NOT_ALLOWED);
        let mut allow: Vec<&str> = reply
            .header("allow")
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        allow.sort_unstable();
        assert_eq!(allow.join(","), allowed, "{path}");
    }
}

#[tokio::test]
async fn request_ids_are_generated_or_propagated() {
    let app = TestApp::new();
    let generated = app.get("/health").await;
    assert!(generated
        .header("x-request-id")
        .is_some_and(|id| id.len() == 36));
    let given = app
        .send(
            request(Method::GET, "/calls/nope")
                .header("x-request-id", "trace-me-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(given.header("x-request-id"), Some("trace-me-42"));
}
