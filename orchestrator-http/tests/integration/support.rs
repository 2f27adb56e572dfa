//! Shared fixtures: an engine over the memory store and a scripted provider,
//! a router over it, and request helpers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use orchestrator_core::hooked::{HookedStore, Operation, StoreHook};
use orchestrator_core::store::StoreError;
use orchestrator_core::{DialError, DialRequest, Dialled, Engine, MemoryStore, Provider, Store};
use orchestrator_http::{router, ApiKeys, AppState, Limits, WebhookSecret};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex, Notify};
use tower::ServiceExt as _;

/// A provider that accepts every dial at once, naming it `prov-{callId}:{attempt}`.
pub(crate) struct AcceptingProvider;

#[async_trait]
impl Provider for AcceptingProvider {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        Ok(Dialled {
            provider_call_id: provider_id(request),
        })
    }
}

/// The provider call id [`AcceptingProvider`] gives a dial.
pub(crate) fn provider_id(request: &DialRequest) -> String {
    format!("prov-{}", request.idempotency_key())
}

/// A provider whose dials wait until released, announcing each dial first:
/// lets a test act while a call is claimed but the provider has not answered.
pub(crate) struct GatedProvider {
    entered: mpsc::UnboundedSender<DialRequest>,
    release: Arc<Notify>,
}

impl GatedProvider {
    /// The provider, the stream of dials it entered, and the release switch.
    pub(crate) fn new() -> (
        Self,
        Mutex<mpsc::UnboundedReceiver<DialRequest>>,
        Arc<Notify>,
    ) {
        let (entered, dials) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        (
            Self {
                entered,
                release: Arc::clone(&release),
            },
            Mutex::new(dials),
            release,
        )
    }
}

#[async_trait]
impl Provider for GatedProvider {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        let released = self.release.notified();
        let _ = self.entered.send(request.clone());
        released.await;
        Ok(Dialled {
            provider_call_id: provider_id(request),
        })
    }
}

/// A router and the engine behind it (not started: tests call `tick`).
pub(crate) struct TestApp {
    pub router: Router,
    pub engine: Engine,
}

impl TestApp {
    /// Memory store, accepting provider, no webhook secret.
    pub(crate) fn new() -> Self {
        Self::with(
            Arc::new(MemoryStore::new()),
            Arc::new(AcceptingProvider),
            None,
        )
    }

    /// Memory store, accepting provider, signatures required with `secret`.
    pub(crate) fn signed(secret: &WebhookSecret) -> Self {
        Self::with(
            Arc::new(MemoryStore::new()),
            Arc::new(AcceptingProvider),
            Some(secret.clone()),
        )
    }

    pub(crate) fn with(
        store: Arc<dyn Store>,
        provider: Arc<dyn Provider>,
        secret: Option<WebhookSecret>,
    ) -> Self {
        Self::with_limits(store, provider, secret, Limits::default())
    }

    pub(crate) fn with_limits(
        store: Arc<dyn Store>,
        provider: Arc<dyn Provider>,
        secret: Option<WebhookSecret>,
        limits: Limits,
    ) -> Self {
        let engine = engine(store, provider);
        let mut state = AppState::new(engine.clone())
            .with_webhook_secret(secret)
            .with_limits(limits);
        if let Some(handle) = orchestrator_http::metrics::prometheus_recorder() {
            state = state.with_metrics(handle);
        }
        Self {
            router: router(state),
            engine,
        }
    }

    /// Memory store, accepting provider, webhooks signed with `secret`, and
    /// the client API behind `keys`.
    pub(crate) fn with_api_keys(keys: ApiKeys, secret: &WebhookSecret) -> Self {
        let engine = engine(Arc::new(MemoryStore::new()), Arc::new(AcceptingProvider));
        let state = AppState::new(engine.clone())
            .with_webhook_secret(Some(secret.clone()))
            .with_api_keys(Some(keys));
        Self {
            router: router(state),
            engine,
        }
    }

    /// Memory store, accepting provider, and no metrics handle: `/metrics`
    /// knows only what it can count in the store.
    pub(crate) fn without_metrics() -> Self {
        let engine = engine(Arc::new(MemoryStore::new()), Arc::new(AcceptingProvider));
        Self {
            router: router(AppState::new(engine.clone())),
            engine,
        }
    }

    /// Sends one request through the router.
    pub(crate) async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let streams = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streams {
            // An event stream never ends: its body is read by the SSE tests.
            return Reply {
                status,
                headers,
                text: String::new(),
                body: Value::Null,
            };
        }
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body reads");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            body,
        }
    }

    pub(crate) async fn get(&self, uri: &str) -> Reply {
        self.send(request(Method::GET, uri).body(Body::empty()).unwrap())
            .await
    }

    pub(crate) async fn post_json(&self, uri: &str, body: &Value) -> Reply {
        self.send(json_request(Method::POST, uri, body)).await
    }

    pub(crate) async fn patch_json(&self, uri: &str, body: &Value) -> Reply {
        self.send(json_request(Method::PATCH, uri, body)).await
    }

    /// Creates a call to `to` and returns its id.
    pub(crate) async fn create(&self, to: &str) -> String {
        let reply = self
            .post_json(
                "/calls",
                &serde_json::json!({"to": to, "scriptId": "welcomeFlow"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    /// Runs one dispatch round and waits for its dials.
    pub(crate) async fn dispatch(&self) {
        self.engine.tick().await.expect("dispatch round");
    }
}

fn engine(store: Arc<dyn Store>, provider: Arc<dyn Provider>) -> Engine {
    Engine::builder(store, provider)
        .seed(7)
        .build()
        .expect("default engine config is valid")
}

pub(crate) fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

pub(crate) fn json_request(method: Method, uri: &str, body: &Value) -> Request<Body> {
    request(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// Asserts this is an RFC 9457 problem document with `status`; returns it.
    pub(crate) fn problem(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.text);
        for member in ["type", "title", "detail"] {
            assert!(self.body[member].is_string(), "{member} in {}", self.text);
        }
        &self.body
    }

    /// The fields named in the problem's `errors`.
    pub(crate) fn fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|error| error["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How [`BrokenStore`]'s `ping` and `counts` misbehave.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ping {
    /// Answers "unavailable" at once.
    Fails,
    /// Never answers.
    Hangs,
}

/// A memory store whose `ping` and `counts` misbehave, for readiness and
/// timeouts: always, or while a switch says the store is down.
pub(crate) type BrokenStore = HookedStore<Misbehave>;

/// The hook of [`BrokenStore`].
pub(crate) struct Misbehave {
    ping: Ping,
    down: Option<Arc<AtomicBool>>,
}

/// A store that always misbehaves as `ping` says.
pub(crate) fn broken_store(ping: Ping) -> BrokenStore {
    HookedStore::new(Arc::new(MemoryStore::new()), Misbehave { ping, down: None })
}

/// A store that misbehaves as `ping` says while the switch returned is on.
pub(crate) fn switchable_store(ping: Ping) -> (BrokenStore, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let hook = Misbehave {
        ping,
        down: Some(Arc::clone(&down)),
    };
    (HookedStore::new(Arc::new(MemoryStore::new()), hook), down)
}

#[async_trait]
impl StoreHook for Misbehave {
    async fn before(&self, operation: Operation<'_>) -> Result<(), StoreError> {
        let up = self
            .down
            .as_ref()
            .is_some_and(|down| !down.load(Ordering::SeqCst));
        if up || !matches!(operation, Operation::Ping | Operation::Counts) {
            return Ok(());
        }
        match self.ping {
            Ping::Fails => Err(StoreError::Unavailable(
                "connection refused (db:5432)".into(),
            )),
            Ping::Hangs => std::future::pending().await,
        }
    }
}

/// A log written to memory.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}
