//! `GET /openapi.json`: the document covers exactly the operations the router
//! serves, validates as OpenAPI 3.1, and describes what the API really answers.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use jsonschema::{Registry, Resource, Validator};
use orchestrator_http::routes::{operations, Access};
use serde_json::{json, Value};

use crate::support::{json_request, request, TestApp};

/// The official JSON Schema of OpenAPI 3.1 documents, and of the Schema
/// Objects in them (see `tests/openapi-3.1/README.md`).
const OAS_SCHEMA: &str = include_str!("../openapi-3.1/schema.json");
const OAS_DIALECT: &str = include_str!("../openapi-3.1/dialect-base.schema.json");
const OAS_VOCABULARY: &str = include_str!("../openapi-3.1/meta-base.schema.json");

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn served_document(app: &TestApp, path: &str) -> Value {
    let reply = app.get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.body
}

/// `(METHOD, path)` of every operation the document describes.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(move |method| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a vendored schema is JSON")
}

/// A registry of the OAS dialect and vocabulary schemas, under their `$id`s.
fn oas_registry() -> Registry<'static> {
    let mut builder = Registry::new();
    for text in [OAS_SCHEMA, OAS_DIALECT, OAS_VOCABULARY] {
        let schema = parse(text);
        let id = schema["$id"].as_str().expect("$id").to_owned();
        builder = builder
            .add(id, Resource::from_contents(schema))
            .expect("a valid resource");
    }
    builder.prepare().expect("the OAS schemas resolve")
}

fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect()
}

/// A validator for the document's component schema `name`, with the
/// document's other components resolvable.
fn component_validator(document: &Value, name: &str) -> Validator {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|error| panic!("schema {name}: {error}"))
}

fn assert_conforms(document: &Value, name: &str, instance: &Value) {
    let validator = component_validator(document, name);
    let found = errors(&validator, instance);
    assert!(found.is_empty(), "{instance} is not a {name}: {found:?}");
}

#[tokio::test]
async fn the_document_is_served_bare_and_under_api_v1() {
    let app = TestApp::new();
    let bare = served_document(&app, "/openapi.json").await;
    let prefixed = served_document(&app, "/api/v1/openapi.json").await;
    assert_eq!(bare, prefixed);
    assert_eq!(bare["openapi"], "3.1.0");
    assert_eq!(
        bare,
        serde_json::to_value(orchestrator_http::openapi::document()).unwrap()
    );
    let servers: Vec<&str> = bare["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|server| server["url"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["/", "/api/v1"]);
}

#[tokio::test]
async fn every_operation_the_router_serves_is_documented_and_nothing_else() {
    let document = served_document(&TestApp::new(), "/openapi.json").await;
    let served: BTreeSet<(String, String)> = operations()
        .iter()
        .map(|operation| (operation.method().to_string(), operation.path().to_owned()))
        .collect();
    assert_eq!(served, documented(&document));
}

#[tokio::test]
async fn operations_that_need_an_api_key_say_so_and_document_the_401() {
    let document = served_document(&TestApp::new(), "/openapi.json").await;
    let scheme = &document["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    for operation in operations() {
        let method = operation.method().as_str().to_ascii_lowercase();
        let documented = &document["paths"][operation.path()][&method];
        let what = format!("{operation:?}");
        if operation.access() == Access::ApiKey {
            assert_eq!(documented["security"], json!([{"apiKey": []}]), "{what}");
            let refused = &documented["responses"]["401"];
            assert!(
                refused["content"]["application/problem+json"].is_object(),
                "{what}: {refused}"
            );
            assert!(refused["headers"]["WWW-Authenticate"].is_object(), "{what}");
        } else {
            assert!(documented.get("security").is_none(), "{what}");
        }
    }
}

#[tokio::test]
async fn every_documented_operation_answers_bare_and_under_api_v1() {
    let app = TestApp::new();
    let document = served_document(&app, "/openapi.json").await;
    for (method, path) in documented(&document) {
        let path = path.replace("{id}", "0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d");
        for prefix in ["", "/api/v1"] {
            let uri = format!("{prefix}{path}");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let reply = app
                .send(request(method.clone(), &uri).body(Body::empty()).unwrap())
                .await;
            assert_ne!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}"
            );
            // A 404 may be the resource's (no such call), never the router's.
            if reply.status == StatusCode::NOT_FOUND {
                assert_ne!(reply.body["type"], "about:blank", "{method} {uri}");
            }
        }
    }
}

#[tokio::test]
async fn the_document_validates_against_the_openapi_3_1_schema() {
    let document = served_document(&TestApp::new(), "/openapi.json").await;
    let registry = oas_registry();
    let validator = jsonschema::options()
        .with_registry(&registry)
        .build(&parse(OAS_SCHEMA))
        .expect("the OAS 3.1 schema compiles");
    let found = errors(&validator, &document);
    assert!(found.is_empty(), "{found:?}");
    let mut broken = document.clone();
    broken["paths"]["/calls"]["post"]["responses"]["201"] = json!({"content": {}});
    assert!(
        !validator.is_valid(&broken),
        "a response needs a description"
    );
    // The document schema checks Schema Objects only for being objects;
    // the OAS dialect checks them as JSON Schemas.
    let dialect = jsonschema::options()
        .with_registry(&registry)
        .build(&json!({"$ref": "https://spec.openapis.org/oas/3.1/dialect/base"}))
        .expect("the OAS dialect compiles");
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        let found = errors(&dialect, schema);
        assert!(found.is_empty(), "{name}: {found:?}");
    }
    assert!(!dialect.is_valid(&json!({"type": "strnig"})));
}

#[tokio::test]
async fn every_reference_resolves() {
    fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|value| references(value, found));
            }
            Value::Array(items) => items.iter().for_each(|value| references(value, found)),
            _ => {}
        }
    }
    let document = served_document(&TestApp::new(), "/openapi.json").await;
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} is not local"));
        assert!(document.pointer(pointer).is_some(), "{target} resolves");
    }
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let app = TestApp::new();
    let document = served_document(&app, "/openapi.json").await;

    let body = json!({
        "to": "+966501234567",
        "scriptId": "welcomeFlow",
        "metadata": {"customer": 42},
        "notBefore": "2025-07-20T10:00:00+03:00",
    });
    assert_conforms(&document, "NewCall", &body);
    let created = app.post_json("/calls", &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_conforms(&document, "Call", &created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();

    let patch = json!({"scriptId": "reminderFlow"});
    assert_conforms(&document, "CallPatch", &patch);
    let patched = app.patch_json(&format!("/calls/{id}"), &patch).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_conforms(&document, "Call", &patched.body);

    app.dispatch().await;
    let page = app.get("/calls?pageSize=5").await;
    assert_conforms(&document, "Page", &page.body);
    assert_conforms(&document, "StatusCounts", &app.get("/metrics").await.body);
    assert_conforms(&document, "Health", &app.get("/health").await.body);
    assert_conforms(&document, "Health", &app.get("/ready").await.body);

    let report = json!({
        "callId": page.body["items"][0]["providerCallId"],
        "status": "COMPLETED",
        "durationSec": 42,
        "completedAt": "2025-07-20T10:00:42Z",
    });
    assert_conforms(&document, "CallStatusReport", &report);
    let answer = app.post_json("/callbacks/call-status", &report).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_conforms(&document, "WebhookAnswer", &answer.body);

    let refused = app
        .post_json("/calls", &json!({"to": "+966501234567", "script": "x"}))
        .await;
    refused.problem(StatusCode::BAD_REQUEST);
    assert_conforms(&document, "Problem", &refused.body);
    let unknown = app.get("/calls/0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d").await;
    unknown.problem(StatusCode::NOT_FOUND);
    assert_conforms(&document, "Problem", &unknown.body);
}

#[tokio::test]
async fn request_schemas_refuse_what_the_api_refuses() {
    let app = TestApp::new();
    let document = served_document(&app, "/openapi.json").await;
    let cases = [
        ("NewCall", json!({"to": "+966501234567"})),
        (
            "NewCall",
            json!({"to": "+966501234567", "scriptId": "a", "notbefore": "2025-07-20T10:00:00Z"}),
        ),
        ("CallPatch", json!({"to": null})),
        ("CallPatch", json!({"status": "COMPLETED"})),
    ];
    for (name, body) in cases {
        let validator = component_validator(&document, name);
        assert!(!validator.is_valid(&body), "{name} accepts {body}");
        let reply = match name {
            "NewCall" => app.send(json_request(Method::POST, "/calls", &body)).await,
            _ => {
                let id = app.create("+966501234567").await;
                app.patch_json(&format!("/calls/{id}"), &body).await
            }
        };
        reply.problem(StatusCode::BAD_REQUEST);
    }
}
