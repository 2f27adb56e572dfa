//! Adapters for real AI-call platforms, each a [`Provider`](orchestrator_core::Provider)
//! speaking the platform's own create-call request, status lookup and
//! hang-up, plus its webhook on its own path, verified by the platform's
//! own scheme and mapped onto our dispositions by one table per platform.
//!
//! - [`vapi`]: Vapi (`PROVIDER=vapi`), webhook `POST /callbacks/vapi`.
//! - [`retell`]: Retell AI (`PROVIDER=retell`), webhook `POST /callbacks/retell`.

pub mod retell;
pub mod vapi;
