//! `/calls`: create, get, patch, list, and their errors.

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{request, TestApp};

const PREFIXES: [&str; 2] = ["", "/api/v1"];

#[tokio::test]
async fn create_answers_201_with_the_pending_call_at_both_paths() {
    let app = TestApp::new();
    for prefix in PREFIXES {
        let reply = app
            .post_json(
                &format!("{prefix}/calls"),
                &json!({"to": "+966 50 123 4567", "scriptId": "welcomeFlow", "metadata": {"name": "Sara"}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let call = &reply.body;
        assert_eq!(call["status"], "PENDING");
        assert_eq!(call["attempts"], 0);
        assert_eq!(call["payload"]["to"], "+966501234567", "normalised E.164");
        assert_eq!(call["payload"]["metadata"]["name"], "Sara");
        for member in ["id", "createdAt", "lastError", "startedAt", "endedAt"] {
            assert!(call.get(member).is_some(), "{member} is present");
        }
        let id = call["id"].as_str().unwrap();
        assert_eq!(
            reply.header("location"),
            Some(format!("/calls/{id}").as_str())
        );
        assert!(reply.header("x-request-id").is_some());
        assert_eq!(reply.header("idempotent-replayed"), None);
    }
}

#[tokio::test]
async fn an_idempotent_repeat_answers_201_with_the_first_call() {
    let app = TestApp::new();
    let body = json!({"to": "+14155550100", "scriptId": "welcomeFlow"});
    let create = |key: &'static str| {
        request(Method::POST, "/calls")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = app.send(create("order-42")).await;
    let again = app.send(create("order-42")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(first.body["id"], again.body["id"]);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let list = app.get("/calls").await;
    assert_eq!(list.body["total"], 1);
    let other = app.send(create("order-43")).await;
    assert_ne!(other.body["id"], first.body["id"]);
}

#[tokio::test]
async fn reusing_an_idempotency_key_for_another_payload_is_422() {
    let app = TestApp::new();
    let send = |to: &str| {
        request(Method::POST, "/calls")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "k1")
            .body(Body::from(json!({"to": to, "scriptId": "s"}).to_string()))
            .unwrap()
    };
    assert_eq!(
        app.send(send("+14155550100")).await.status,
        StatusCode::CREATED
    );
    let reply = app.send(send("+14155550199")).await;
    let problem = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
}

#[tokio::test]
async fn invalid_create_bodies_name_the_fields_at_fault() {
    let app = TestApp::new();
    // Objects nested 33 deep; metadata may nest 32.
    let too_deep = (0..32).fold(json!({}), |inner, _| json!({ "k": inner }));
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"to": "966501234567", "scriptId": "s"}), vec!["to"]),
        (json!({"to": "+96650x234567", "scriptId": "s"}), vec!["to"]),
        (json!({"to": 966501234567_u64, "scriptId": "s"}), vec!["to"]),
        (json!({"scriptId": "s"}), vec!["to"]),
        (
            json!({"to": "+966501234567", "scriptId": ""}),
            vec!["scriptId"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "   "}),
            vec!["scriptId"],
        ),
        (json!({"to": "+966501234567"}), vec!["scriptId"]),
        (
            json!({"to": "+966501234567", "scriptId": "s", "metadata": [1]}),
            vec!["metadata"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "s", "notBefore": "tomorrow"}),
            vec!["notBefore"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "s", "notBefore": "2030-01-01T10:00:00"}),
            vec!["notBefore"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "s", "expiresAt": 17}),
            vec!["expiresAt"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "s", "expiresAt": "2001-01-01T00:00:00Z"}),
            vec!["expiresAt"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "s", "notBefore": "2031-01-01T00:00:00Z", "expiresAt": "2030-01-01T00:00:00Z"}),
            vec!["expiresAt"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": "s", "notbefore": "2030-01-01T00:00:00Z"}),
            vec!["notbefore"],
        ),
        (
            json!({"to": "nope", "scriptId": 5, "id": "x"}),
            vec!["id", "to", "scriptId"],
        ),
        (
            json!({"to": "0501234567", "scriptId": "", "metadata": {}}),
            vec!["to", "scriptId"],
        ),
        (
            json!({"to": "+966501234567", "scriptId": " ", "metadata": 1}),
            vec!["scriptId", "metadata"],
        ),
        (json!({"to": "+999 1234 5678", "scriptId": "s"}), vec!["to"]),
        (json!({"to": "+44 20 7183 87", "scriptId": "s"}), vec!["to"]),
        (
            json!({"to": "+966501234567", "scriptId": "s", "metadata": too_deep}),
            vec!["metadata"],
        ),
    ];
    for (body, fields) in cases {
        let reply = app.post_json("/calls", &body).await;
        let problem = reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(problem["type"], "/problems/validation", "{body}");
        assert_eq!(reply.fields(), fields, "{body}: {}", reply.text);
    }
    assert_eq!(
        app.get("/calls").await.body["total"],
        0,
        "nothing was stored"
    );
}

#[tokio::test]
async fn null_optional_members_count_as_absent_on_create() {
    let app = TestApp::new();
    let reply = app
        .post_json(
            "/calls",
            &json!({"to": "+966501234567", "scriptId": "s", "metadata": null, "notBefore": null, "expiresAt": null}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["notBefore"], Value::Null);
}

#[tokio::test]
async fn schedules_are_stored_in_utc() {
    let app = TestApp::new();
    let reply = app
        .post_json(
            "/calls",
            &json!({"to": "+966501234567", "scriptId": "s",
                    "notBefore": "2030-01-01T12:00:00+03:00", "expiresAt": "2030-01-02T00:00:00.123456789Z"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["notBefore"], "2030-01-01T09:00:00Z");
    assert_eq!(reply.body["expiresAt"], "2030-01-02T00:00:00.123456Z");
}

#[tokio::test]
async fn a_bad_idempotency_key_names_the_header() {
    let app = TestApp::new();
    let send = |key: &str, body: Value| {
        request(Method::POST, "/calls")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let valid = json!({"to": "+966501234567", "scriptId": "s"});
    // Too long (255 visible ASCII characters at most), and spaces or tabs inside.
    for key in [
        "k".repeat(256),
        "order 42".to_owned(),
        "order\t42".to_owned(),
    ] {
        let reply = app.send(send(&key, valid.clone())).await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), ["Idempotency-Key"], "{key:?}");
    }
    // With a bad body too: every field at fault, the header first.
    let reply = app
        .send(send("a\tb", json!({"to": "+966501234567", "scriptId": ""})))
        .await;
    assert_eq!(reply.fields(), ["Idempotency-Key", "scriptId"]);
    let longest = app.send(send(&"k".repeat(255), valid)).await;
    assert_eq!(longest.status, StatusCode::CREATED, "{}", longest.text);
    assert_eq!(app.get("/calls").await.body["total"], 1);
}

#[tokio::test]
async fn every_spelling_of_a_number_is_stored_as_one_canonical_number() {
    let app = TestApp::new();
    for spelling in ["+44 (0) 20 7183 8750", "+44-20-7183-8750", "+442071838750"] {
        let reply = app
            .post_json("/calls", &json!({"to": spelling, "scriptId": "s"}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        assert_eq!(reply.body["payload"]["to"], "+442071838750", "{spelling}");
    }
    // One number, so one call in flight at a time.
    app.dispatch().await;
    let in_progress = app.get("/calls?status=IN_PROGRESS").await;
    assert_eq!(in_progress.body["total"], 1, "{}", in_progress.text);
}

#[tokio::test]
async fn bodies_must_be_json_objects_sent_as_json() {
    let app = TestApp::new();
    let send = |content_type: Option<&str>, body: &str| {
        let mut builder = request(Method::POST, "/calls");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    };
    let valid = r#"{"to":"+966501234567","scriptId":"s"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let reply = app.send(send(content_type, valid)).await;
        reply.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let reply = app
        .send(send(Some("application/json; charset=utf-8"), valid))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    for body in [
        "",
        "{",
        "{\"to\":}",
        "[1,2]",
        "\"call\"",
        "null",
        "{\"to\":\"+1\"}}",
    ] {
        let reply = app.send(send(Some("application/json"), body)).await;
        let problem = reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(problem["type"], "/problems/malformed-body", "{body:?}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::new();
    let metadata = "x".repeat(70 * 1024);
    let body =
        json!({"to": "+966501234567", "scriptId": "s", "metadata": {"blob": metadata}}).to_string();
    // Without Content-Length (as here: `oneshot` adds no header) the limit is
    // enforced while reading; with it, before reading.
    let reply = app
        .send(
            request(Method::POST, "/calls")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
    reply.problem(StatusCode::PAYLOAD_TOO_LARGE);
    let reply = app
        .send(
            request(Method::POST, "/api/v1/calls")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    reply.problem(StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn get_returns_the_call_at_both_paths() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    for prefix in PREFIXES {
        let reply = app.get(&format!("{prefix}/calls/{id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["id"], id.as_str());
    }
}

#[tokio::test]
async fn an_unknown_call_is_404_and_a_malformed_id_is_400() {
    let app = TestApp::new();
    for prefix in PREFIXES {
        let reply = app
            .get(&format!(
                "{prefix}/calls/0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d"
            ))
            .await;
        assert_eq!(
            reply.problem(StatusCode::NOT_FOUND)["type"],
            "/problems/call-not-found"
        );
        for bad in [
            "not-a-uuid",
            "123",
            "0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0",
            "%FF%FE",
        ] {
            let reply = app.get(&format!("{prefix}/calls/{bad}")).await;
            reply.problem(StatusCode::BAD_REQUEST);
        }
        let reply = app.get(&format!("{prefix}/calls/not-a-uuid")).await;
        assert_eq!(reply.fields(), ["id"]);
    }
    let reply = app
        .patch_json(
            "/calls/0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d",
            &json!({"scriptId": "x"}),
        )
        .await;
    reply.problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn patch_changes_a_pending_call() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    for (prefix, script) in PREFIXES.iter().zip(["second", "third"]) {
        let reply = app
            .patch_json(
                &format!("{prefix}/calls/{id}"),
                &json!({"to": "+966 50 765 4321", "scriptId": script, "metadata": {"lang": "ar"}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["payload"]["to"], "+966507654321");
        assert_eq!(reply.body["payload"]["scriptId"], script);
        assert_eq!(reply.body["payload"]["metadata"]["lang"], "ar");
    }
    // Members left out keep their value; `{}` changes nothing.
    let reply = app.patch_json(&format!("/calls/{id}"), &json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["payload"]["scriptId"], "third");
    // JSON Merge Patch's media type is accepted too.
    let reply = app
        .send(
            request(Method::PATCH, &format!("/calls/{id}"))
                .header(header::CONTENT_TYPE, "application/merge-patch+json")
                .body(Body::from(r#"{"scriptId":"fourth"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.body["payload"]["scriptId"], "fourth",
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn invalid_patches_name_the_fields_at_fault() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"to": "0501234567"}), vec!["to"]),
        (json!({"to": null}), vec!["to"]),
        (json!({"scriptId": ""}), vec!["scriptId"]),
        (json!({"metadata": null}), vec!["metadata"]),
        (json!({"metadata": "x"}), vec!["metadata"]),
        (json!({"notBefore": "tomorrow"}), vec!["notBefore"]),
        (json!({"expiresAt": 17}), vec!["expiresAt"]),
        (json!({"status": "COMPLETED"}), vec!["status"]),
    ];
    for (body, fields) in cases {
        let reply = app.patch_json(&format!("/calls/{id}"), &body).await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), fields, "{body}: {}", reply.text);
    }
    let unchanged = app.get(&format!("/calls/{id}")).await;
    assert_eq!(unchanged.body["payload"]["to"], "+966501234567");
}

#[tokio::test]
async fn patch_after_dialling_is_409() {
    let app = TestApp::new();
    let id = app.create("+966501234567").await;
    app.dispatch().await;
    let reply = app
        .patch_json(&format!("/api/v1/calls/{id}"), &json!({"scriptId": "late"}))
        .await;
    let problem = reply.problem(StatusCode::CONFLICT);
    assert_eq!(problem["type"], "/problems/call-not-pending");
    assert!(
        problem["detail"].as_str().unwrap().contains("IN_PROGRESS"),
        "{problem}"
    );
    let call = app.get(&format!("/calls/{id}")).await;
    assert_eq!(call.body["payload"]["scriptId"], "welcomeFlow");
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_by_status() {
    let app = TestApp::new();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.create(&format!("+96650123456{n}")).await);
    }
    let reply = app.get("/calls?page=1&pageSize=2").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["total"], 5);
    assert_eq!(reply.body["page"], 1);
    assert_eq!(reply.body["pageSize"], 2);
    let first_page: Vec<&str> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first_page,
        [ids[4].as_str(), ids[3].as_str()],
        "newest first"
    );
    let last = app.get("/api/v1/calls?page=3&pageSize=2").await;
    assert_eq!(last.body["items"].as_array().unwrap().len(), 1);
    let past_end = app.get("/calls?page=9").await;
    assert_eq!(past_end.body["items"], json!([]));
    assert_eq!(past_end.body["total"], 5);
    let defaults = app.get("/calls").await;
    assert_eq!(defaults.body["pageSize"], 20);

    app.dispatch().await;
    let in_progress = app.get("/calls?status=IN_PROGRESS").await;
    assert_eq!(in_progress.body["total"], 5);
    let pending = app.get("/calls?status=PENDING").await;
    assert_eq!(pending.body["total"], 0);
    assert_eq!(pending.body["items"], json!([]));
}

#[tokio::test]
async fn bad_list_queries_name_the_parameter() {
    let app = TestApp::new();
    let cases: [(&str, &[&str]); 11] = [
        ("status=RINGING", &["status"]),
        ("status=pending", &["status"]),
        ("status=", &["status"]),
        ("page=0", &["page"]),
        ("page=-1", &["page"]),
        ("page=abc", &["page"]),
        ("pageSize=0", &["pageSize"]),
        ("pageSize=101", &["pageSize"]),
        ("pageSize=1.5", &["pageSize"]),
        ("limit=5", &["limit"]),
        ("status=PENDING&status=FAILED", &["status"]),
    ];
    for (query, fields) in cases {
        let reply = app.get(&format!("/calls?{query}")).await;
        reply.problem(StatusCode::BAD_REQUEST);
        assert_eq!(reply.fields(), fields, "{query}: {}", reply.text);
    }
    let reply = app.get("/calls?pageSize=100&page=1&status=EXPIRED").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn many_unknown_members_get_a_bounded_answer() {
    let app = TestApp::new();
    let mut body = serde_json::Map::new();
    for n in 0..500 {
        body.insert(format!("k{n:03}"), json!(n));
    }
    let reply = app.post_json("/calls", &Value::Object(body)).await;
    reply.problem(StatusCode::BAD_REQUEST);
    assert_eq!(reply.fields().len(), 20);
    assert!(reply.text.len() < 8 * 1024, "{} bytes", reply.text.len());
}
