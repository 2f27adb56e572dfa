//! Test-and-example host package of the call orchestrator workspace; it has no code of its own.
