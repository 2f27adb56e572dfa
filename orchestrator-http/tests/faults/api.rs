//! The client side of the HTTP API, as the scenarios use it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A client of one orchestrator node.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// A client of the node at `base` (`http://127.0.0.1:<port>`).
    pub(crate) fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Creates one call to a distinct number (`number` picks it) and returns
    /// its id; panics unless the answer is 201.
    pub(crate) async fn create_call(&self, number: u32) -> String {
        let response = self
            .client
            .post(format!("{}/calls", self.base))
            .json(&json!({"to": phone(number), "scriptId": "faultFlow"}))
            .send()
            .await
            .unwrap_or_else(|error| panic!("POST /calls to {}: {error}", self.base));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "POST /calls: {body}");
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /calls answered without an id: {body}"))
            .to_owned()
    }

    /// One call, or `None` when the node does not answer 200.
    pub(crate) async fn call(&self, id: &str) -> Option<Value> {
        let response = self
            .client
            .get(format!("{}/calls/{id}", self.base))
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }

    /// Calls per status (`GET /metrics` as JSON), or `None` when the node
    /// does not answer 200.
    pub(crate) async fn counts(&self) -> Option<Value> {
        let response = self
            .client
            .get(format!("{}/metrics", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until the store holds `total` calls and none is PENDING or
    /// IN_PROGRESS; a timeout names the last counts seen.
    pub(crate) async fn wait_all_terminal(&self, total: u64, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        loop {
            if let Some(counts) = self.counts().await {
                let count = |status: &str| counts[status].as_u64().unwrap_or(u64::MAX);
                let sum: u64 = counts
                    .as_object()
                    .map_or(0, |object| object.values().filter_map(Value::as_u64).sum());
                if sum == total && count("PENDING") == 0 && count("IN_PROGRESS") == 0 {
                    return;
                }
                last = counts;
            }
            assert!(
                Instant::now() < deadline,
                "not all {total} calls terminal after {within:?}; last counts: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every id in `ids`, fetched once; panics naming any that is missing.
    pub(crate) async fn calls(&self, ids: &[String]) -> Vec<Value> {
        let mut calls = Vec::with_capacity(ids.len());
        for id in ids {
            let call = self
                .call(id)
                .await
                .unwrap_or_else(|| panic!("call {id} was acknowledged with 201 but is not found"));
            calls.push(call);
        }
        calls
    }
}

/// A valid, distinct Saudi mobile number per `number` (below ten million).
pub(crate) fn phone(number: u32) -> String {
    format!("+96650{number:07}")
}
