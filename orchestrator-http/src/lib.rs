//! # orchestrator-http
//!
//! The HTTP face of the call orchestrator: the client API on axum, the
//! provider's webhook, the HTTP provider client, and (feature `server`) the
//! `orchestrator` and `mock-provider` binaries' logic.
//!
//! Embeddable part, in reading order:
//!
//! - [`state`]: [`AppState`] (engine, webhook secret, API keys, metrics handle) and [`Limits`].
//! - [`auth`]: [`ApiKeys`], the bearer keys the client API may require.
//! - [`problem`]: RFC 9457 problem documents and the one error mapping.
//! - [`extract`]: extractors whose rejections are problem documents.
//! - [`routes`]: the handlers ([`routes::calls`], [`routes::webhook`],
//!   [`routes::ops`]) and [`routes::operations`], the list of what the API serves.
//! - [`router()`]: the routes over an [`AppState`], with their layers.
//! - [`openapi`]: the OpenAPI 3.1 document served at `/openapi.json`.
//! - [`metrics`]: the Prometheus exposition and the recorder for the engine's series.
//! - [`signature`]: Standard Webhooks signing and verification.
//! - [`provider`]: [`HttpProvider`], the engine's provider over HTTP.
//! - [`platforms`]: adapters for real platforms ([`platforms::vapi`]), each a
//!   provider and a webhook of its own.
//! - [`callback`]: [`HttpCallbackSender`], which POSTs terminal events to
//!   the calls' callback URLs, signed.
//! - [`platforms`]: adapters for real platforms ([`platforms::retell`]).
//!
//! Feature `server` (default): the `server` module, the configuration, wiring and
//! binaries; feature `postgres` (default, implies `server`): the PostgreSQL
//! store behind `DATABASE_URL`.
//!
//! Input policy: the client API (`/calls`) is strict, it rejects unknown
//! body members and query parameters with 400 naming them, since a misspelt
//! optional field would otherwise be dropped silently; the provider's
//! webhook is lenient about what it cannot misread (unknown members and
//! query parameters are ignored, any `Content-Type` is read as JSON) and
//! strict about what it settles (status, types, timestamps, signature).

pub mod auth;
pub mod callback;
pub mod egress;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod platforms;
pub mod problem;
pub mod provider;
mod router;
pub mod routes;
#[cfg(feature = "server")]
pub mod server;
pub mod signature;
pub mod state;
mod telemetry;

pub use auth::ApiKeys;
pub use callback::HttpCallbackSender;
pub use problem::{ApiError, FieldError, Problem};
pub use provider::{HttpProvider, HttpProviderConfig};
pub use router::{router, API_PREFIX};
pub use signature::WebhookSecret;
pub use state::{AppState, Limits};
