//! The ready-made server (cargo feature `server`, on by default): what the
//! `orchestrator` and `mock-provider` binaries run. Embedding the router
//! needs none of it, nor its dependencies (clap, sqlx, tracing-subscriber,
//! anyhow).
//!
//! - [`config`]: the command line and environment, parsed into a typed [`Config`].
//! - [`start`] builds the application a [`Config`] describes (store,
//!   provider, engine, metrics recorder, HTTP server) and runs it in the
//!   background; [`serve`] runs a router on a listener with a header-read
//!   timeout, a connection limit and a bounded graceful drain
//!   ([`ServeOptions`]); [`migrate`] applies the PostgreSQL migrations.
//! - [`mock_provider`]: a stand-alone mock of the AI-call provider;
//!   [`mock_retell`]: its Retell dialect.
//!   [`mock_vapi`]: its Vapi dialect.

mod app;
pub mod config;
mod connections;
pub mod mock_provider;
pub mod mock_retell;
pub mod mock_vapi;

pub use app::{migrate, serve, shutdown_signal, start, AppError, Running};
pub use config::Config;
pub use connections::{default_max_connections, ServeOptions};
