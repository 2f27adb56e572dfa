//! Adapters for real AI-call platforms, each a [`Provider`](orchestrator_core::Provider)
//! speaking the platform's own API, with its webhook on its own path.

pub mod retell;
