//! Hostile input: malformed bodies, paths, queries and headers. Every answer
//! must be a 4xx problem document, never a 5xx or a panic, and the server
//! must stay healthy and correct afterwards.

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::support::{request, Reply, TestApp};

fn assert_client_error(reply: &Reply, what: &str) {
    assert!(
        reply.status.is_client_error(),
        "{what}: expected a 4xx, got {}: {}",
        reply.status,
        reply.text
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{what}: {}",
        reply.text
    );
    assert_eq!(
        reply.body["status"],
        reply.status.as_u16(),
        "{what}: {}",
        reply.text
    );
}

/// Valid bodies to start mutations from.
fn seeds(call_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("/calls", json!({"to": "+966501234567", "scriptId": "welcomeFlow", "metadata": {"a": [1, 2]}, "notBefore": "2030-01-01T00:00:00Z"}).to_string()),
        ("/callbacks/call-status", json!({"callId": "prov-x", "status": "COMPLETED", "durationSec": 42, "completedAt": "2025-07-20T10:00:42Z"}).to_string()),
        ("patch", json!({"to": "+966501234567", "scriptId": "s", "metadata": {}}).to_string()),
        ("/calls", call_id.to_owned()),
    ]
}

/// One random mutation of `text`: flip, insert, delete, truncate or duplicate bytes.
fn mutate(rng: &mut StdRng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..5) {
            0 if at < bytes.len() => bytes[at] = rng.random(),
            1 => bytes.insert(
                at,
                *b"{}[]\",:\\0-e9.nt\xff"
                    .get(rng.random_range(0..16))
                    .unwrap_or(&b'x'),
            ),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            _ => {
                let tail = bytes[at..].to_vec();
                bytes.extend_from_slice(&tail);
            }
        }
    }
    bytes
}

#[tokio::test]
async fn malformed_requests_get_4xx_problems_and_the_server_stays_healthy() {
    let app = TestApp::new();
    let id = app.create("+966501234500").await;
    let patch_path = format!("/calls/{id}");

    // Hand-picked cases: (method, path, content type, body).
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge_number = format!(
        "{{\"to\":\"+966501234567\",\"scriptId\":\"s\",\"metadata\":{{\"n\":1{}}}}}",
        "0".repeat(5000)
    );
    let many_keys = format!(
        "{{{}\"to\":\"+966501234567\",\"scriptId\":\"s\"}}",
        (0..2000)
            .map(|n| format!("\"k{n}\":{n},"))
            .collect::<String>()
    );
    let cases: Vec<(Method, String, Option<&str>, Vec<u8>)> = vec![
        (Method::POST, "/calls".into(), Some("application/json"), deep.clone().into_bytes()),
        (Method::POST, "/callbacks/call-status".into(), None, deep.into_bytes()),
        (Method::POST, "/calls".into(), Some("application/json"), huge_number.into_bytes()),
        (Method::POST, "/calls".into(), Some("application/json"), many_keys.into_bytes()),
        (Method::POST, "/calls".into(), Some("application/json"), b"\xff\xfe\x00\x01".to_vec()),
        (Method::POST, "/calls".into(), Some("application/json"), b"{\"to\":\"+9665\\u0000\",\"scriptId\":\"s\"}".to_vec()),
        (Method::POST, "/calls".into(), Some("application/json"), b"{\"to\":\"\\ud800\",\"scriptId\":\"s\"}".to_vec()),
        (Method::POST, "/calls".into(), Some("application/json"), b"{\"to\":\"+966501234567\",\"scriptId\":\"a\\u0007b\"}".to_vec()),
        (Method::POST, "/calls".into(), Some("application/json"), b"{\"to\":\"+966501234567\",\"scriptId\":\"s\",\"notBefore\":\"+275760-09-13T00:00:00Z\"}".to_vec()),
        (Method::POST, "/calls".into(), Some("application/json"), b"{\"to\":\"+966501234567\",\"scriptId\":\"s\",\"expiresAt\":\"9999-12-31T00:00:00Z\",\"notBefore\":\"9999-12-31T23:59:59-23:59\"}".to_vec()),
        (Method::POST, "/calls".into(), Some("application/json"), format!("{{\"to\":\"+966501234567\",\"scriptId\":\"{}\"}}", "s".repeat(300)).into_bytes()),
        (Method::POST, "/calls".into(), Some("application/json, text/plain"), b"{}".to_vec()),
        (Method::POST, "/calls".into(), Some("multipart/form-data; boundary=x"), b"--x--".to_vec()),
        (Method::POST, "/calls".into(), Some("application/"), b"{}".to_vec()),
        (Method::POST, "/callbacks/call-status?callId=%zz&attempt=1".into(), None, b"{}".to_vec()),
        (Method::POST, "/callbacks/call-status?attempt=99999999999999999999&callId=x".into(), None, b"{}".to_vec()),
        (Method::POST, "/callbacks/call-status".into(), None, b"{\"callId\":\"x\",\"status\":\"COMPLETED\",\"durationSec\":1e400}".to_vec()),
        (Method::POST, "/callbacks/call-status".into(), None, b"{\"callId\":\"x\",\"status\":\"COMPLETED\",\"durationSec\":4294967296}".to_vec()),
        (Method::POST, "/callbacks/call-status".into(), None, format!("{{\"callId\":\"{}\",\"status\":\"COMPLETED\"}}", "x".repeat(600)).into_bytes()),
        (Method::GET, "/calls?page=%FF".into(), None, Vec::new()),
        (Method::GET, "/calls?pageSize=99999999999999999999".into(), None, Vec::new()),
        (Method::GET, "/calls?%=%".into(), None, Vec::new()),
        (Method::GET, "/calls/%00".into(), None, Vec::new()),
        (Method::GET, "/calls/..%2F..%2Fetc%2Fpasswd".into(), None, Vec::new()),
        (Method::GET, format!("/calls/{}", "a".repeat(4000)), None, Vec::new()),
        (Method::GET, "/calls/00000000-0000-0000-0000-000000000000".into(), None, Vec::new()),
        (Method::PATCH, patch_path.clone(), Some("application/json"), b"{\"to\":[\"+966501234567\"]}".to_vec()),
        (Method::OPTIONS, "/calls".into(), None, Vec::new()),
        (Method::TRACE, "/health".into(), None, Vec::new()),
        (Method::from_bytes(b"BREW").unwrap(), "/calls".into(), None, Vec::new()),
    ];
    for (method, path, content_type, body) in cases {
        let what = format!("{method} {path} {content_type:?}");
        let mut builder = request(method, &path);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let reply = app.send(builder.body(Body::from(body)).unwrap()).await;
        assert_client_error(&reply, &what);
    }

    // Seeded mutations of valid bodies.
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut answered = std::collections::BTreeMap::<u16, u32>::new();
    for round in 0..400 {
        for (target, seed) in seeds(&id) {
            let bytes = mutate(&mut rng, &seed);
            let (method, path) = match target {
                "patch" => (Method::PATCH, patch_path.as_str()),
                other => (Method::POST, other),
            };
            let reply = app
                .send(
                    request(method.clone(), path)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(bytes.clone()))
                        .unwrap(),
                )
                .await;
            *answered.entry(reply.status.as_u16()).or_default() += 1;
            // A mutation may still be valid; then it must be a success.
            if reply.status.is_success() {
                continue;
            }
            assert_client_error(
                &reply,
                &format!(
                    "round {round} {method} {path} {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            );
        }
    }
    assert!(answered.keys().all(|status| *status < 500), "{answered:?}");

    // Still healthy and still correct.
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    assert_eq!(app.get("/ready").await.status, StatusCode::OK);
    let fresh = app.create("+966501234599").await;
    assert_eq!(
        app.get(&format!("/calls/{fresh}")).await.status,
        StatusCode::OK
    );
}
