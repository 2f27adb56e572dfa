//! SIGTERM while a client holds a request open and calls are queued, on a
//! node over PostgreSQL (where another node would pick up what it leaves).
//!
//! A client starts `POST /calls` with `Expect: 100-continue`, waits for the
//! `100 Continue` (so the request is in the handler, reading its body) and
//! then sends only part of the body. The provider accepts two calls, whose
//! webhooks it holds until a second after the signal, and refuses every other
//! dial with 503, so slots keep freeing without webhooks and the node keeps
//! dialling for as long as its engine runs.
//!
//! On SIGTERM the node must stop claiming at once (no dial reaches the
//! provider after the signal, beyond [`IN_TRANSIT`] for a dial already on
//! its way), keep taking webhooks (200) while requests drain, and exit 0
//! within the drain bound plus 5 s although the client never finishes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::Cluster;
use crate::node::{Node, NodeSpec};
use crate::stand_in::{Answer, StandIn};
use crate::{log_dir, ready, serial, wait_until, WEBHOOK_SECRET};

/// Proposed setting: the longest a graceful shutdown waits for requests in flight.
const SHUTDOWN_DRAIN_SECONDS: u64 = 3;
/// The process must be gone this long after SIGTERM.
const EXIT_WITHIN: Duration = Duration::from_secs(SHUTDOWN_DRAIN_SECONDS + 5);
/// When, after the signal, the held webhooks are sent: a third into the drain.
const WEBHOOKS_AFTER: Duration = Duration::from_secs(1);
/// A dial claimed just before the signal may still be on its way.
const IN_TRANSIT: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_client_stops_dialling_takes_webhooks_and_exits_in_time() {
    let _serial = serial().await;
    let logs = log_dir("sigterm");
    let cluster = Cluster::start_new().await;
    let provider = StandIn::start().await;
    provider.set_call_duration(Duration::from_millis(300));
    // Two calls are accepted and their webhooks held until after the
    // signal; every other dial is refused with 503, so slots keep freeing
    // without webhooks and an engine that still runs keeps dialling.
    provider.set_answers(vec![Answer::Status(503)]);
    provider.script_answers(vec![Answer::Accept, Answer::Accept]);
    provider.hold_webhooks();
    let mut node = Node::start(
        "node",
        &logs,
        &NodeSpec::new([
            ("DATABASE_URL", cluster.url()),
            ("PROVIDER_BASE_URL", provider.url().to_owned()),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("MAX_CONCURRENT_CALLS", "5".to_owned()),
            ("MAX_ATTEMPTS", "20".to_owned()),
            ("BASE_RETRY_SECONDS", "0.3".to_owned()),
            ("MAX_RETRY_SECONDS", "0.3".to_owned()),
            ("SHUTDOWN_DRAIN_SECONDS", SHUTDOWN_DRAIN_SECONDS.to_string()),
        ]),
    )
    .await;
    let api = node.api();
    for n in 0..40 {
        api.create_call(n).await;
    }
    wait_until(
        "10 dials, two webhooks held",
        Duration::from_secs(20),
        || ready(provider.dial_count() >= 10 && provider.held_webhooks().len() == 2),
    )
    .await;
    let _stalled = stalled_request(node.address()).await;

    node.terminate();
    let signalled = Instant::now();
    // When the node is surely draining (the stalled client keeps the drain
    // open for its whole bound), not in a race with the signal's delivery.
    tokio::time::sleep_until((signalled + WEBHOOKS_AFTER).into()).await;
    provider.release_webhooks();
    let status = node
        .wait_exit(EXIT_WITHIN.saturating_sub(signalled.elapsed()))
        .await;
    let exited = status.map(|_| Instant::now());
    let took = signalled.elapsed();

    let recording = provider.recording();
    let end = exited.unwrap_or_else(Instant::now);
    let late_dials: Vec<String> = recording
        .dials
        .iter()
        .filter(|dial| dial.received > signalled + IN_TRANSIT)
        .map(|dial| {
            format!(
                "+{} ms: call {} attempt {}",
                dial.received.duration_since(signalled).as_millis(),
                dial.call_id,
                dial.attempt
            )
        })
        .collect();
    let drain_webhooks: Vec<_> = recording
        .webhooks
        .iter()
        .filter(|try_| try_.sent >= signalled && try_.sent < end)
        .collect();
    let refused: Vec<String> = drain_webhooks
        .iter()
        .filter(|try_| !try_.accepted())
        .map(|try_| {
            format!(
                "+{} ms: {:?}",
                try_.sent.duration_since(signalled).as_millis(),
                try_.result
            )
        })
        .collect();
    println!(
        "sigterm: {}; {} dials after the signal; {} of {} webhook tries during the drain accepted",
        match (status, exited) {
            (Some(status), Some(_)) => format!("exited ({status}) {took:.2?} after SIGTERM"),
            _ => format!("still running {took:.2?} after SIGTERM"),
        },
        late_dials.len(),
        drain_webhooks.len() - refused.len(),
        drain_webhooks.len(),
    );

    let mut failures = Vec::new();
    match status {
        None => failures.push(format!("still running {EXIT_WITHIN:?} after SIGTERM")),
        Some(status) if !status.success() => failures.push(format!("exited with {status}")),
        Some(_) => {}
    }
    if !late_dials.is_empty() {
        failures.push(format!(
            "{} dials reached the provider after SIGTERM (+{IN_TRANSIT:?}):\n  {}",
            late_dials.len(),
            first(&late_dials)
        ));
    }
    if drain_webhooks.is_empty() {
        failures.push("no webhook was sent during the drain".to_owned());
    }
    if !refused.is_empty() {
        failures.push(format!(
            "{} webhook tries during the drain were not accepted:\n  {}",
            refused.len(),
            first(&refused)
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        node.log_tail()
    );
}

/// The first ten of `lines`, one per line, and how many more there are.
fn first(lines: &[String]) -> String {
    let mut shown = lines
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if lines.len() > 10 {
        shown.push_str(&format!("\n  ... and {} more", lines.len() - 10));
    }
    shown
}

/// A `POST /calls` whose handler is reading a body that never completes:
/// `Expect: 100-continue` makes the server say when the handler starts
/// reading, then only part of the promised body is sent.
async fn stalled_request(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address)
        .await
        .expect("connect for the stalled request");
    stream
        .write_all(
            b"POST /calls HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 400\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("send the stalled request's head");
    let mut head = [0u8; 25];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && head.starts_with(b"HTTP/1.1 100 Continue"),
        "the server starts reading the body (100 Continue): {read:?} {:?}",
        String::from_utf8_lossy(&head)
    );
    stream
        .write_all(b"{\"to\": \"+96650")
        .await
        .expect("send part of the body");
    stream
}
