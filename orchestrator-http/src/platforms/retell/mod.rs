//! Retell AI (<https://www.retellai.com>): the adapter.
//!
//! - [`provider`]: [`RetellProvider`], dialling with `create-phone-call`,
//!   hanging up with `stop-call`, reconciling with `get-call`.
//! - [`webhook`]: `POST /callbacks/retell`, Retell's signed webhook.
//! - [`outcome`]: `disconnection_reason` → our dispositions, one table.
//! - `call`: the part of Retell's call object we read.
//!
//! Retell is told where to send webhooks on its side, not per call: set the
//! account's webhook URL (dashboard, webhooks tab) or the agent's
//! `webhook_url` to `{PUBLIC_BASE_URL}/callbacks/retell`. An agent-level URL
//! replaces the account-level one for that agent
//! (<https://docs.retellai.com/features/webhook>).

mod call;
pub(crate) mod openapi;
pub mod outcome;
pub mod provider;
pub mod webhook;

pub use provider::{RetellConfig, RetellError, RetellProvider};
pub use webhook::RetellWebhookKey;
