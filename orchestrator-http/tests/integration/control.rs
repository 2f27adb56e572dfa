//! Call control through the router: cancel, retry, attempts, rescheduling
//! with PATCH, and the list filters. Every status code of each route.

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{json_request, request, Reply, TestApp};

const UNKNOWN: &str = "0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d";

/// A call dialled once by the accepting provider, and its provider id.
async fn dialled(app: &TestApp, to: &str) -> (String, String) {
    let id = app.create(to).await;
    app.dispatch().await;
    let call = app.get(&format!("/calls/{id}")).await;
    assert_eq!(call.body["status"], "IN_PROGRESS");
    (id, call.body["providerCallId"].as_str().unwrap().to_owned())
}

/// Settles `provider_id` with a webhook reporting `status`.
async fn report(app: &TestApp, provider_id: &str, status: &str) {
    let reply = app
        .post_json(
            "/callbacks/call-status",
            &json!({"callId": provider_id, "status": status}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

async fn cancel(app: &TestApp, id: &str, body: Option<&Value>) -> Reply {
    let uri = format!("/calls/{id}/cancel");
    match body {
        Some(body) => app.post_json(&uri, body).await,
        None => {
            app.send(request(Method::POST, &uri).body(Body::empty()).unwrap())
                .await
        }
    }
}

async fn retry(app: &TestApp, id: &str, key: Option<&str>) -> Reply {
    let mut builder = request(Method::POST, &format!("/calls/{id}/retry"));
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    app.send(builder.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn canceling_a_pending_call_ends_it_at_once_and_again_changes_nothing() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let reply = cancel(&app, &id, Some(&json!({"reason": "do not call"}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "CANCELED");
    assert_eq!(reply.body["lastError"], "do not call");
    assert!(reply.body["endedAt"].is_string());
    let again = app
        .send(
            request(Method::POST, &format!("/api/v1/calls/{id}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body, reply.body, "a repeat changes nothing");
    app.dispatch().await;
    let call = app.get(&format!("/calls/{id}")).await;
    assert_eq!(call.body["attempts"], 0, "never dialled");
}

#[tokio::test]
async fn canceling_without_a_reason_says_canceled() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let reply = cancel(&app, &id, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["lastError"], "canceled");
    let other = app.create("+966501234568").await;
    let null = cancel(&app, &other, Some(&json!({"reason": null}))).await;
    assert_eq!(null.body["lastError"], "canceled");
}

#[tokio::test]
async fn canceling_a_live_call_is_accepted_and_it_ends_canceled_never_redialled() {
    let app = TestApp::new();
    let (id, provider_id) = dialled(&app, "+966501234567").await;
    let reply = cancel(&app, &id, Some(&json!({"reason": "withdrawn"}))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["status"], "IN_PROGRESS");
    assert!(
        reply.body["cancelRequestedAt"].is_string(),
        "{}",
        reply.text
    );
    report(&app, &provider_id, "BUSY").await;
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "CANCELED");
    assert_eq!(call["lastError"], "withdrawn");
    app.dispatch().await;
    let attempts = app.get(&format!("/calls/{id}/attempts")).await;
    assert_eq!(attempts.status, StatusCode::OK);
    let items = attempts.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "never re-dialled: {}", attempts.text);
    assert_eq!(items[0]["outcome"], "CANCELED");
    assert_eq!(items[0]["providerCallId"], provider_id);
}

#[tokio::test]
async fn canceling_a_finished_call_is_409() {
    let app = TestApp::new();
    let (id, provider_id) = dialled(&app, "+966501234567").await;
    report(&app, &provider_id, "COMPLETED").await;
    let reply = cancel(&app, &id, None).await;
    let problem = reply.problem(StatusCode::CONFLICT);
    assert_eq!(problem["type"], "/problems/call-status-conflict");
    assert!(
        problem["detail"].as_str().unwrap().contains("COMPLETED"),
        "{problem}"
    );
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "COMPLETED");
}

#[tokio::test]
async fn cancel_requests_that_cannot_be_read_are_refused() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    cancel(&app, UNKNOWN, None)
        .await
        .problem(StatusCode::NOT_FOUND);
    let malformed = cancel(&app, "not-a-uuid", None).await;
    malformed.problem(StatusCode::BAD_REQUEST);
    assert_eq!(malformed.fields(), ["id"]);
    for body in [
        json!({"reason": "  "}),
        json!({"reason": 42}),
        json!({"reason": "a\u{7}b"}),
        json!({"reason": "x".repeat(501)}),
    ] {
        let reply = cancel(&app, &id, Some(&body)).await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), ["reason"], "{body}");
    }
    let unknown = cancel(&app, &id, Some(&json!({"why": "x"}))).await;
    unknown.problem(StatusCode::BAD_REQUEST);
    assert_eq!(unknown.fields(), ["why"]);
    let text = app
        .send(
            request(Method::POST, &format!("/calls/{id}/cancel"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("stop"))
                .unwrap(),
        )
        .await;
    text.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let call = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(call["status"], "PENDING", "no refused request changed it");
}

#[tokio::test]
async fn retrying_a_canceled_call_creates_a_new_one_and_keys_repeat_it() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    cancel(&app, &id, None).await;
    let first = retry(&app, &id, Some("retry-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.body["status"], "PENDING");
    assert_eq!(first.body["retryOf"], id.as_str());
    assert_eq!(first.body["attempts"], 0);
    assert_eq!(first.body["payload"]["to"], "+966501234567");
    let new_id = first.body["id"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(
        first.header("location"),
        Some(format!("/calls/{new_id}").as_str())
    );
    assert_eq!(first.header("idempotent-replayed"), None);
    let repeat = retry(&app, &id, Some("retry-1")).await;
    assert_eq!(repeat.status, StatusCode::CREATED);
    assert_eq!(repeat.body["id"], new_id);
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    let original = app.get(&format!("/calls/{id}")).await.body;
    assert_eq!(
        original["status"], "CANCELED",
        "the original stays as it is"
    );
    // Without a key, each retry is a new call.
    let unkeyed = retry(&app, &id, None).await;
    assert_eq!(unkeyed.status, StatusCode::CREATED);
    assert_ne!(unkeyed.body["id"], new_id);
}

#[tokio::test]
async fn a_key_used_for_another_request_is_422() {
    let app = TestApp::new();
    let a = app.create("+966501234567").await;
    let b = app.create("+966501234568").await;
    cancel(&app, &a, None).await;
    cancel(&app, &b, None).await;
    assert_eq!(
        retry(&app, &a, Some("k-1")).await.status,
        StatusCode::CREATED
    );
    let problem = retry(&app, &b, Some("k-1")).await;
    assert_eq!(
        problem.problem(StatusCode::UNPROCESSABLE_ENTITY)["type"],
        "/problems/idempotency-key-reused"
    );
    // Nor may a create reuse a retry's key.
    let create = app
        .send({
            let mut request = json_request(
                Method::POST,
                "/calls",
                &json!({"to": "+966501234567", "scriptId": "welcomeFlow"}),
            );
            request
                .headers_mut()
                .insert("idempotency-key", "k-1".parse().unwrap());
            request
        })
        .await;
    create.problem(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn only_failed_expired_or_canceled_calls_can_be_retried() {
    let app = TestApp::new();
    let pending = app.create("+966501234567").await;
    let refused = retry(&app, &pending, None).await;
    assert_eq!(
        refused.problem(StatusCode::CONFLICT)["type"],
        "/problems/call-status-conflict"
    );
    let (live, provider_id) = dialled(&app, "+966501234568").await;
    retry(&app, &live, None).await.problem(StatusCode::CONFLICT);
    report(&app, &provider_id, "COMPLETED").await;
    retry(&app, &live, None).await.problem(StatusCode::CONFLICT);
    let (failed, provider_id) = dialled(&app, "+966501234569").await;
    report(&app, &provider_id, "NO_ANSWER").await;
    let retried = retry(&app, &failed, None).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    retry(&app, UNKNOWN, None)
        .await
        .problem(StatusCode::NOT_FOUND);
    let malformed = retry(&app, "nope", None).await;
    malformed.problem(StatusCode::BAD_REQUEST);
    assert_eq!(malformed.fields(), ["id"]);
    let bad_key = retry(&app, &failed, Some("  ")).await;
    bad_key.problem(StatusCode::BAD_REQUEST);
    assert_eq!(bad_key.fields(), ["Idempotency-Key"]);
}

#[tokio::test]
async fn attempts_list_dials_in_order() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let none = app.get(&format!("/calls/{id}/attempts")).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.body, json!({"items": []}));
    app.dispatch().await;
    let one = app.get(&format!("/api/v1/calls/{id}/attempts")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["items"][0]["attempt"], 1);
    assert_eq!(one.body["items"][0]["outcome"], "IN_PROGRESS");
    assert!(one.body["items"][0]["dialledAt"].is_string());
    app.get(&format!("/calls/{UNKNOWN}/attempts"))
        .await
        .problem(StatusCode::NOT_FOUND);
    let malformed = app.get("/calls/x/attempts").await;
    malformed.problem(StatusCode::BAD_REQUEST);
    assert_eq!(malformed.fields(), ["id"]);
}

#[tokio::test]
async fn patch_reschedules_and_null_clears() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let uri = format!("/calls/{id}");
    let moved = app
        .patch_json(
            &uri,
            &json!({"notBefore": "2099-01-01T09:00:00+03:00", "expiresAt": "2099-01-02T00:00:00Z"}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["notBefore"], "2099-01-01T06:00:00Z");
    assert_eq!(moved.body["expiresAt"], "2099-01-02T00:00:00Z");
    app.dispatch().await;
    assert_eq!(app.get(&uri).await.body["status"], "PENDING", "not due");
    let kept = app.patch_json(&uri, &json!({"scriptId": "other"})).await;
    assert_eq!(
        kept.body["notBefore"], "2099-01-01T06:00:00Z",
        "left out: kept"
    );
    let cleared = app
        .patch_json(&uri, &json!({"notBefore": null, "expiresAt": null}))
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert_eq!(cleared.body["notBefore"], Value::Null);
    assert_eq!(cleared.body["expiresAt"], Value::Null);
    app.dispatch().await;
    assert_eq!(app.get(&uri).await.body["status"], "IN_PROGRESS");
    let late = app
        .patch_json(&uri, &json!({"notBefore": "2099-01-01T00:00:00Z"}))
        .await;
    late.problem(StatusCode::CONFLICT);
}

#[tokio::test]
async fn reschedules_that_break_the_creation_rules_name_the_field() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let uri = format!("/calls/{id}");
    let past = app
        .patch_json(&uri, &json!({"expiresAt": "2001-01-01T00:00:00Z"}))
        .await;
    past.problem(StatusCode::BAD_REQUEST);
    assert_eq!(past.fields(), ["expiresAt"], "{}", past.text);
    assert_eq!(
        app.patch_json(&uri, &json!({"expiresAt": "2099-01-01T00:00:00Z"}))
            .await
            .status,
        StatusCode::OK
    );
    // Merged with the call as it is: a notBefore after its expiresAt.
    let after = app
        .patch_json(&uri, &json!({"notBefore": "2099-06-01T00:00:00Z"}))
        .await;
    after.problem(StatusCode::BAD_REQUEST);
    assert_eq!(after.fields(), ["notBefore"], "{}", after.text);
    let call = app.get(&uri).await.body;
    assert_eq!(call["notBefore"], Value::Null, "nothing changed");
    app.patch_json(&format!("/calls/{UNKNOWN}"), &json!({"notBefore": null}))
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_filter_by_number_in_any_spelling_script_and_creation_time() {
    let app = TestApp::new();
    let london = app.create("+442071838750").await;
    let riyadh = app.create("+966501234567").await;
    let other_script = app
        .post_json(
            "/calls",
            &json!({"to": "+44 20 7183 8750", "scriptId": "survey"}),
        )
        .await;
    let other_script = other_script.body["id"].as_str().unwrap().to_owned();
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|call| call["id"].as_str().unwrap().to_owned())
            .collect()
    };
    for spelling in [
        "%2B442071838750",
        "%2B44%20(0)%2020%207183%208750",
        "%2B44-20-7183-8750",
    ] {
        let reply = app.get(&format!("/calls?to={spelling}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(ids(&reply), [other_script.clone(), london.clone()]);
    }
    let by_script = app.get("/calls?to=%2B442071838750&scriptId=survey").await;
    assert_eq!(ids(&by_script), [other_script.as_str()]);
    let created = app.get(&format!("/calls/{riyadh}")).await.body["createdAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let from = app.get(&format!("/calls?createdFrom={created}")).await;
    assert!(ids(&from).contains(&riyadh), "inclusive: {}", from.text);
    assert!(!ids(&from).contains(&london), "{}", from.text);
    let to = app.get(&format!("/calls?createdTo={created}")).await;
    assert_eq!(ids(&to), [london.as_str()], "exclusive");
    cancel(&app, &london, None).await;
    let canceled = app.get("/calls?status=CANCELED&to=%2B442071838750").await;
    assert_eq!(ids(&canceled), [london]);
    assert_eq!(canceled.body["total"], 1);
}

#[tokio::test]
async fn bad_list_filters_name_the_parameter() {
    let app = TestApp::new();
    for (query, field) in [
        ("to=%2B9991234", "to"),
        ("scriptId=", "scriptId"),
        ("createdFrom=yesterday", "createdFrom"),
        ("createdTo=2025-07-20", "createdTo"),
        (
            "createdFrom=2025-07-20T00:00:00Z&createdTo=2025-07-19T00:00:00Z",
            "createdTo",
        ),
        ("status=canceled", "status"),
    ] {
        let reply = app.get(&format!("/calls?{query}")).await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), [field], "{query}: {}", reply.text);
    }
}
