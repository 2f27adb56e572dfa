//! The API's handlers, one module per concern, and [`operations`]: the one
//! list of what the API serves. The router is built from that list, and the
//! OpenAPI tests check the document against it, so a route cannot be added
//! without being documented.
//!
//! Handlers translate HTTP to [`Engine`](orchestrator_core::Engine)
//! calls and errors to problem documents; no business rule lives here. They
//! depend on [`crate::state`], [`crate::extract`] and [`crate::problem`], never
//! on the router.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{get, patch, post, MethodRouter};

use crate::state::AppState;

pub mod calls;
pub mod control;
pub mod events;
pub mod ops;
pub mod webhook;

/// The methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Patch,
}

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Clients holding an API key, when the router has keys (see [`crate::auth`]).
    ApiKey,
    /// Anyone: the liveness and readiness probes, which orchestrators and
    /// load balancers call without credentials.
    Open,
    /// The provider, authenticated by the webhook's signature, never by an API key.
    Signed,
}

/// One operation: a method on a path, and the handler answering it.
pub struct Operation {
    verb: Verb,
    path: &'static str,
    access: Access,
    route: MethodRouter<AppState>,
    /// A body limit of its own, instead of [`Limits::body_bytes`](crate::Limits).
    body_limit: Option<usize>,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method(), self.path)
    }
}

impl Operation {
    fn new<H, T>(verb: Verb, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let route = match verb {
            Verb::Get => get(handler),
            Verb::Post => post(handler),
            Verb::Patch => patch(handler),
        };
        Self {
            verb,
            path,
            access,
            route,
            body_limit: None,
        }
    }

    /// The same operation with a body limit of its own, in bytes (a
    /// platform's webhook carrying whole transcripts).
    fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = Some(bytes);
        self
    }

    /// Its body limit in bytes, when it has one of its own.
    #[must_use]
    pub fn body_limit(&self) -> Option<usize> {
        self.body_limit
    }

    /// The HTTP method. `GET` operations also answer `HEAD`.
    #[must_use]
    pub fn method(&self) -> Method {
        match self.verb {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Patch => Method::PATCH,
        }
    }

    /// The path, relative to the API's base (`/` or `/api/v1`), with
    /// parameters in braces as OpenAPI writes them: `/calls/{id}`.
    #[must_use]
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// Who may call it.
    #[must_use]
    pub fn access(&self) -> Access {
        self.access
    }

    /// The handler, for the router.
    pub(crate) fn into_route(self) -> (&'static str, MethodRouter<AppState>) {
        (self.path, self.route)
    }
}

/// Every operation the API serves, in the order the API reference lists them.
#[must_use]
pub fn operations() -> Vec<Operation> {
    vec![
        Operation::new(Verb::Post, "/calls", Access::ApiKey, calls::create),
        Operation::new(Verb::Get, "/calls", Access::ApiKey, calls::list),
        Operation::new(Verb::Get, "/calls/{id}", Access::ApiKey, calls::get),
        Operation::new(Verb::Patch, "/calls/{id}", Access::ApiKey, calls::update),
        Operation::new(
            Verb::Post,
            "/calls/{id}/cancel",
            Access::ApiKey,
            control::cancel,
        ),
        Operation::new(
            Verb::Post,
            "/calls/{id}/retry",
            Access::ApiKey,
            control::retry,
        ),
        Operation::new(
            Verb::Get,
            "/calls/{id}/attempts",
            Access::ApiKey,
            control::attempts,
        ),
        Operation::new(Verb::Get, "/events", Access::ApiKey, events::events),
        Operation::new(
            Verb::Post,
            "/callbacks/call-status",
            Access::Signed,
            webhook::call_status,
        ),
        // Retell's webhook, signed with `x-retell-signature` (see `platforms::retell`).
        Operation::new(
            Verb::Post,
            "/callbacks/retell",
            Access::Signed,
            crate::platforms::retell::webhook::callback,
        )
        .with_body_limit(crate::platforms::retell::webhook::MAX_BODY_BYTES),
        // Platform webhooks (PROVIDER=vapi|retell): authenticated by the
        // platform's own scheme, never by an API key.
        Operation::new(
            Verb::Post,
            "/callbacks/vapi",
            Access::Signed,
            crate::platforms::vapi::webhook::callback,
        )
        .with_body_limit(crate::platforms::vapi::webhook::MAX_BODY_BYTES),
        Operation::new(Verb::Get, "/metrics", Access::ApiKey, ops::metrics),
        Operation::new(Verb::Get, "/health", Access::Open, ops::health),
        Operation::new(Verb::Get, "/ready", Access::Open, ops::ready),
        Operation::new(Verb::Get, "/openapi.json", Access::ApiKey, ops::openapi),
    ]
}
