//! # orchestrator-http
//!
//! The HTTP face of the call orchestrator: the API of SPEC section 2 on axum,
//! the provider webhook, the HTTP provider client, the `orchestrator` and
//! `mock-provider` binaries' logic.
//!
//! - [`router`](mod@router): [`router()`](fn@router::router) over an [`AppState`]; layers.
//! - [`problem`]: RFC 9457 problem documents and the one error mapping.
//! - [`extract`]: extractors whose rejections are problem documents.
//! - [`calls`], [`webhook`], [`metrics`]: the handlers.
//! - [`signature`]: Standard Webhooks signing and verification.
//! - [`provider`]: [`HttpProvider`], the provider contract of SPEC section 3.
//! - [`config`], [`app`]: the `orchestrator` binary's configuration and wiring.
//! - [`mock_provider`]: the `mock-provider` binary's server.
//!
//! Input policy: the client API (`/calls`) is strict, it rejects unknown
//! body members and query parameters with 400 naming them, since a misspelt
//! optional field would otherwise be dropped silently; the provider's
//! webhook is lenient about what it cannot misread (unknown members and
//! query parameters are ignored, any `Content-Type` is read as JSON) and
//! strict about what it settles (status, types, timestamps, signature).

pub mod app;
pub mod calls;
pub mod config;
pub mod extract;
pub mod metrics;
pub mod mock_provider;
pub mod problem;
pub mod provider;
pub mod router;
pub mod signature;
pub mod webhook;

pub use problem::{ApiError, FieldError, Problem};
pub use provider::{HttpProvider, HttpProviderConfig};
pub use router::{router, AppState, Limits};
pub use signature::WebhookSecret;
