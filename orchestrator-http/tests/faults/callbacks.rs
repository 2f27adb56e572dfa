//! Client callbacks from two nodes sharing one PostgreSQL database, a
//! receiver that refuses every event's first three tries, and `kill -9` of
//! one node while deliveries are pending and in flight.
//!
//! The receiver verifies each try's Standard Webhooks signature on its own
//! (HMAC-SHA256 over `"{webhook-id}.{webhook-timestamp}.{body}"` with the
//! decoded secret) and answers 500 to the first three tries of each
//! `webhook-id`, then 204. Afterwards every call is terminal, its
//! `callback.state` is DELIVERED, and the receiver accepted exactly one
//! terminal event per call, each under one `webhook-id` on every try: none
//! lost across the kill, none delivered under two ids.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::cluster::Cluster;
use crate::node::{Node, NodeSpec};
use crate::stand_in::StandIn;
use crate::{log_dir, ready, serial, wait_until, WEBHOOK_SECRET};

const CALLS: u32 = 60;
const REFUSED_TRIES: usize = 3;
const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One try the receiver saw.
#[derive(Clone, Debug)]
struct Try {
    webhook_id: String,
    kind: String,
    call_id: String,
    status: String,
    accepted: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    tries: Arc<Mutex<Vec<Try>>>,
}

impl Receiver {
    fn tries(&self) -> Vec<Try> {
        self.tries.lock().unwrap().clone()
    }
}

fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(CALLBACK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    signatures.split(' ').any(|candidate| candidate == expected)
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !verified(&headers, &body) {
        return StatusCode::UNAUTHORIZED;
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let webhook_id = headers["webhook-id"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let mut tries = receiver.tries.lock().unwrap();
    let earlier = tries
        .iter()
        .filter(|seen| seen.webhook_id == webhook_id)
        .count();
    let accepted = earlier >= REFUSED_TRIES;
    tries.push(Try {
        webhook_id,
        kind: event["type"].as_str().unwrap_or_default().to_owned(),
        call_id: event["data"]["id"].as_str().unwrap_or_default().to_owned(),
        status: event["data"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        accepted,
    });
    if accepted {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

async fn start_receiver(receiver: Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_event_is_delivered_once_per_webhook_id_across_a_kill_9() {
    let _serial = serial().await;
    let logs = log_dir("callbacks");
    let cluster = Cluster::start_new().await;
    let provider = StandIn::start().await;
    provider.set_call_duration(Duration::from_millis(100));
    let receiver = Receiver::default();
    let address = start_receiver(receiver.clone()).await;
    let spec = NodeSpec::new([
        ("DATABASE_URL", cluster.url()),
        ("PROVIDER_BASE_URL", provider.url().to_owned()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("MAX_CONCURRENT_CALLS", "10".to_owned()),
        ("STALE_INPROG_SECONDS", "5".to_owned()),
        ("CALLBACK_URL", format!("http://{address}/hooks")),
        ("CALLBACK_SECRET", CALLBACK_SECRET.to_owned()),
        ("CALLBACK_ALLOW_PRIVATE_NETWORKS", "true".to_owned()),
        ("CALLBACK_TIMEOUT_MS", "1000".to_owned()),
        ("CALLBACK_BASE_RETRY_SECONDS", "0.2".to_owned()),
        ("CALLBACK_MAX_RETRY_SECONDS", "0.5".to_owned()),
    ]);
    let mut doomed = Node::start("doomed", &logs, &spec).await;
    let survivor = Node::start("survivor", &logs, &spec).await;
    provider.set_failover(&[doomed.url(), survivor.url()]);
    let (doomed_api, survivor_api) = (doomed.api(), survivor.api());
    let mut ids = Vec::new();
    for n in 0..CALLS {
        let api = if n % 2 == 0 {
            &doomed_api
        } else {
            &survivor_api
        };
        ids.push(api.create_call(n).await);
    }
    // Kill one node once deliveries are under way: some refused, some
    // pending, some claimed by the node about to die.
    wait_until("20 callback tries", Duration::from_secs(60), || {
        ready(receiver.tries().len() >= 20)
    })
    .await;
    doomed.kill();

    survivor_api
        .wait_all_terminal(u64::from(CALLS), Duration::from_secs(90))
        .await;
    let calls = wait_until(
        "every call's callback DELIVERED",
        Duration::from_secs(90),
        || async {
            let calls = survivor_api.calls(&ids).await;
            calls
                .iter()
                .all(|call| call["callback"]["state"] == "DELIVERED")
                .then_some(calls)
        },
    )
    .await;

    let tries = receiver.tries();
    let mut ids_per_call: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut accepted_per_call: BTreeMap<String, Vec<&Try>> = BTreeMap::new();
    for seen in &tries {
        ids_per_call
            .entry(seen.call_id.clone())
            .or_default()
            .insert(seen.webhook_id.clone());
        if seen.accepted {
            accepted_per_call
                .entry(seen.call_id.clone())
                .or_default()
                .push(seen);
        }
    }
    for call in &calls {
        let id = call["id"].as_str().unwrap();
        let status = call["status"].as_str().unwrap();
        assert_eq!(
            ids_per_call.get(id).map(BTreeSet::len),
            Some(1),
            "every try for {id} carries one webhook-id: {:?}",
            ids_per_call.get(id)
        );
        let accepted = accepted_per_call.get(id).cloned().unwrap_or_default();
        assert!(
            !accepted.is_empty(),
            "the terminal event of {id} ({status}) was delivered"
        );
        for seen in &accepted {
            assert_eq!(seen.status, status, "{seen:?}");
            assert_eq!(seen.kind, format!("call.{}", status.to_lowercase()));
        }
        let attempts = call["callback"]["attempts"].as_u64().unwrap_or_default();
        assert!(
            attempts > REFUSED_TRIES as u64,
            "{id}: delivered on try {attempts}, after {REFUSED_TRIES} refusals"
        );
    }
    let duplicates: usize = accepted_per_call.values().map(|seen| seen.len() - 1).sum();
    println!(
        "callbacks: {} calls, {} tries seen by the receiver, every terminal event delivered \
         under one webhook-id; {duplicates} accepted again after a lost answer (at least once)",
        calls.len(),
        tries.len()
    );
}
