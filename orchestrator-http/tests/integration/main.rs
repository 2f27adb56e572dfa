//! Integration tests of orchestrator-http, in one test binary to keep link
//! times down: the router driven with `tower::ServiceExt::oneshot`, the
//! HTTP provider against a local stub server, and end-to-end runs over real
//! sockets with the mock provider.

mod access;
mod calls;
mod control;
#[cfg(feature = "server")]
mod end_to_end;
mod http_provider;
#[cfg(feature = "server")]
mod live;
mod malformed;
mod metrics_and_health;
#[cfg(feature = "postgres")]
mod migrate;
mod openapi;
mod retell;
#[cfg(feature = "server")]
mod serving;
mod support;
#[cfg(feature = "server")]
mod tour;
mod vapi;
mod webhook;
