//! Thousands of connections that send part of a request and never finish
//! it must not keep `/health` from answering.
//!
//! The node runs with a soft open-file limit of 1,024 (a common default for
//! services) and a connection limit of 500; the test opens 2,000 slow
//! connections, more than either, and holds them while it probes `/health`
//! on fresh connections every 250 ms for a little longer than the
//! header-read timeout. Every probe must be answered 200 within 2 s.

use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::node::{Node, NodeSpec};
use crate::{log_dir, ms, percentiles, serial};

const SLOW_CONNECTIONS: usize = 2_000;
/// The node's soft `RLIMIT_NOFILE`.
const NODE_OPEN_FILES: u64 = 1_024;
/// Proposed settings: most connections open at once, and how long a client
/// may take to send its request headers.
const MAX_CONNECTIONS: &str = "500";
const HEADER_READ_TIMEOUT_SECONDS: u64 = 5;
/// How long `/health` may take while the slow connections are held.
const HEALTH_WITHIN: Duration = Duration::from_secs(2);
/// How long the slow connections are held while probing: past the
/// header-read timeout, so the server's clean-up runs during the hold.
const HOLD: Duration = Duration::from_secs(HEADER_READ_TIMEOUT_SECONDS + 3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_slow_connections_are_held() {
    let _serial = serial().await;
    let logs = log_dir("slow_connections");
    make_room_for_connections(SLOW_CONNECTIONS as u64 + 1_000);
    let node = Node::start(
        "node",
        &logs,
        &NodeSpec {
            open_files: Some(NODE_OPEN_FILES),
            ..NodeSpec::new([
                ("MAX_CONNECTIONS", MAX_CONNECTIONS.to_owned()),
                (
                    "HEADER_READ_TIMEOUT_SECONDS",
                    HEADER_READ_TIMEOUT_SECONDS.to_string(),
                ),
            ])
        },
    )
    .await;
    let address = node.address();
    probe(address)
        .await
        .expect("/health answers before the slow connections");

    // Open the slow connections, 250 at a time.
    let mut slow = Vec::with_capacity(SLOW_CONNECTIONS);
    let opening = Instant::now();
    for _ in 0..SLOW_CONNECTIONS / 250 {
        let mut batch = JoinSet::new();
        for _ in 0..250 {
            batch.spawn(open_slow(address));
        }
        while let Some(opened) = batch.join_next().await {
            if let Ok(Some(stream)) = opened {
                slow.push(stream);
            }
        }
    }
    let opened = slow.len();
    let opening = opening.elapsed();
    assert!(
        opened as u64 > NODE_OPEN_FILES,
        "only {opened} of {SLOW_CONNECTIONS} slow connections could be opened in {opening:?}"
    );

    // Probe while holding them.
    let held_since = Instant::now();
    let mut answered = Vec::new();
    let mut failures = Vec::new();
    while held_since.elapsed() < HOLD {
        let started = Instant::now();
        match probe(address).await {
            Ok(latency) => answered.push(latency),
            Err(problem) => failures.push(format!(
                "at {:.1} s: {problem}",
                started.duration_since(held_since).as_secs_f64()
            )),
        }
        tokio::time::sleep_until((started + Duration::from_millis(250)).into()).await;
    }
    let held = held_since.elapsed();
    let closed_by_server = count_closed(&mut slow);
    drop(slow);
    let (median, _, max) = percentiles(answered.clone()).unwrap_or_default();
    println!(
        "slow connections: opened {opened} of {SLOW_CONNECTIONS} in {:.1} s and held them for \
         {:.1} s; /health answered {} of {} probes (median {}, max {}); the server closed \
         {closed_by_server} of them during the hold",
        opening.as_secs_f64(),
        held.as_secs_f64(),
        answered.len(),
        answered.len() + failures.len(),
        ms(median),
        ms(max),
    );
    assert!(
        failures.is_empty(),
        "/health must answer within {HEALTH_WITHIN:?} while {opened} slow connections are held; \
         {} of {} probes failed:\n{}\n{}",
        failures.len(),
        answered.len() + failures.len(),
        failures.join("\n"),
        node.log_tail()
    );
}

/// Raises this process's soft open-file limit to at least `needed`.
fn make_room_for_connections(needed: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "the test needs {needed} open files; the hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).expect("setrlimit(RLIMIT_NOFILE)");
}

/// A connection that sends a request line and part of a header, then
/// nothing; `None` when it cannot be established within 300 ms (the accept
/// queue is full: the kernel drops the handshake and the client would only
/// try again after a second).
async fn open_slow(address: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(address))
        .await
        .ok()?
        .ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .ok()?;
    Some(stream)
}

/// `GET /health` on a fresh connection; its latency, or why it failed.
async fn probe(address: std::net::SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|error| format!("write: {error}"))?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|error| format!("read: {error}"))?;
        if &head != b"HTTP/1.1 200" {
            return Err(format!("answered {:?}", String::from_utf8_lossy(&head)));
        }
        Ok(started.elapsed())
    };
    match tokio::time::timeout(HEALTH_WITHIN, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {HEALTH_WITHIN:?}")),
    }
}

/// How many of `streams` the server has closed (end of stream, reset, or
/// any answer such as a 408).
fn count_closed(streams: &mut [TcpStream]) -> usize {
    let mut buffer = [0u8; 64];
    streams
        .iter_mut()
        .filter(|stream| match stream.try_read(&mut buffer) {
            Ok(_) => true,
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}
