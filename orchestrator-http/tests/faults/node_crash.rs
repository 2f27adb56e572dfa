//! `kill -9` of one of two nodes sharing one PostgreSQL database, under
//! load (200 calls, a cap of 10 across both).
//!
//! Dials and then webhooks are held at the provider just before the kill,
//! so the dead node has calls in flight that the provider accepts, and
//! whose webhooks arrive, after it is gone; the provider then reaches the
//! surviving node, as a load balancer in front of both would send it there.
//! One held dial the provider gives up instead (it never started that
//! call): that call, like any the dead node had claimed but not dialled,
//! comes back when its lease runs out, and the survivor dials it.
//! Afterwards: every acknowledged call is found and completed, no attempt
//! was dialled twice, the cap held across both nodes, and the dead node's
//! calls in flight were settled by their webhooks through the survivor,
//! without a second dial.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::Cluster;
use crate::node::{Node, NodeSpec};
use crate::stand_in::{authority, Dial, Recording, StandIn};
use crate::{log_dir, ready, serial, wait_until, WEBHOOK_SECRET};

const CALLS: u32 = 200;
const CAP: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_two_nodes_loses_nothing_and_dials_nothing_twice() {
    let _serial = serial().await;
    let logs = log_dir("node_crash");
    let cluster = Cluster::start_new().await;
    let provider = StandIn::start().await;
    provider.set_call_duration(Duration::from_millis(200));
    let spec = NodeSpec::new([
        ("DATABASE_URL", cluster.url()),
        ("PROVIDER_BASE_URL", provider.url().to_owned()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("MAX_CONCURRENT_CALLS", CAP.to_string()),
        ("MAX_ATTEMPTS", "5".to_owned()),
        ("BASE_RETRY_SECONDS", "0.2".to_owned()),
        ("MAX_RETRY_SECONDS", "1".to_owned()),
        // Calls the dead node claimed but never dialled come back after
        // this; it is also longer than any dial is held.
        ("STALE_INPROG_SECONDS", "5".to_owned()),
    ]);
    // One after the other: both apply the migrations at start.
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

    // A node refills the slots its own webhooks free before other
    // processes hear of them, so which node dials next is not up to the
    // test: hold the doomed node's dials while it has calls in progress,
    // whose webhooks then make it dial again.
    let doomed_node = authority(&doomed.url());
    let live_at_doomed = |recording: &Recording| -> usize {
        (0..recording.dials.len())
            .filter(|&index| {
                let dial = &recording.dials[index];
                dial.node == doomed_node
                    && matches!(dial.answered, Some((_, 202)))
                    && recording.accepted_webhook(index).is_none()
            })
            .count()
    };
    wait_until(
        "10 dials, with 3 calls of the doomed node in progress",
        Duration::from_secs(30),
        || {
            let recording = provider.recording();
            ready(provider.dial_count() >= 10 && live_at_doomed(&recording) >= 3)
        },
    )
    .await;
    // Hold the doomed node's dials until two wait, and then every webhook
    // not sent yet. Once it is dead, the provider gives up one held
    // dial (it never started that call: only the lease brings it back) and
    // goes on with the others, whose webhooks, like every held one, come
    // after the node is gone.
    let held_of_doomed = |recording: &Recording| -> Vec<usize> {
        (0..recording.dials.len())
            .filter(|&index| {
                let dial = &recording.dials[index];
                dial.node == doomed_node && dial.answered.is_none()
            })
            .collect()
    };
    provider.hold_dials_from(&doomed.url());
    wait_until(
        "two dials of the doomed node held",
        Duration::from_secs(20),
        || ready(held_of_doomed(&provider.recording()).len() >= 2),
    )
    .await;
    provider.hold_webhooks();
    doomed.kill();
    let killed = Instant::now();
    wait_until(
        "the provider to see the doomed node's held dials orphaned",
        Duration::from_secs(10),
        || {
            let recording = provider.recording();
            let held = held_of_doomed(&recording);
            ready(held.iter().all(|&index| recording.dials[index].orphaned))
        },
    )
    .await;
    provider.abandon_orphans(1);
    provider.release_dials();
    provider.release_webhooks();

    survivor_api
        .wait_all_terminal(u64::from(CALLS), Duration::from_secs(60))
        .await;

    let recording = provider.recording();
    let attempts = recording.attempts_by_call();
    let mut reclaimed = 0;
    for call in survivor_api.calls(&ids).await {
        let id = call["id"].as_str().unwrap_or_default();
        assert_eq!(call["status"], "COMPLETED", "{call}");
        let seen = attempts.get(id).cloned().unwrap_or_default();
        assert_eq!(
            call["attempts"].as_u64(),
            seen.last().copied().map(u64::from),
            "the call's attempts are the last the provider saw: {call}"
        );
        // An attempt the provider never saw (claimed by the dead node) came
        // back with its lease.
        if seen.len() < seen.last().copied().unwrap_or(0) as usize {
            reclaimed += 1;
        }
    }
    // The abandoned dial's call came back when its lease ran out, and the
    // survivor dialled its next attempt.
    let abandoned: Vec<&Dial> = recording
        .dials
        .iter()
        .filter(|dial| dial.abandoned.is_some())
        .collect();
    assert_eq!(abandoned.len(), 1, "one held dial is abandoned");
    for dial in &abandoned {
        let next = recording
            .dials
            .iter()
            .find(|next| next.call_id == dial.call_id && next.attempt == dial.attempt + 1);
        assert!(
            next.is_some_and(|next| next.node == authority(&survivor.url())),
            "after its lease, the survivor dials the abandoned call again:\n{}",
            recording.describe(&dial.call_id, killed)
        );
        reclaimed += 1;
    }
    // The dead node's calls in flight: settled by their webhooks, which
    // reached the survivor.
    let survivor_node = authority(&survivor.url());
    let mut in_flight_at_kill = 0;
    for (index, dial) in recording.dials.iter().enumerate() {
        let settled_before = recording
            .accepted_webhook(index)
            .is_some_and(|try_| try_.sent < killed);
        if dial.node != doomed_node
            || dial.resend
            || dial.abandoned.is_some()
            || settled_before
            || dial.received > killed
        {
            continue;
        }
        in_flight_at_kill += 1;
        let accepted = recording.accepted_webhook(index);
        assert!(
            accepted.is_some_and(|try_| try_.target == survivor_node),
            "the webhook of {dial:?}, in flight at the dead node, is accepted by the survivor: {accepted:?}"
        );
        let call = survivor_api
            .call(&dial.call_id)
            .await
            .unwrap_or(Value::Null);
        assert_eq!(
            call["attempts"].as_u64(),
            Some(u64::from(dial.attempt)),
            "settled by its webhook, not dialled again: {call}"
        );
    }
    let answered_after_kill = recording
        .dials
        .iter()
        .filter(|dial| dial.node == doomed_node)
        .filter(|dial| dial.answered.is_some_and(|(at, _)| at > killed))
        .count();
    assert!(
        in_flight_at_kill >= 1 && answered_after_kill >= 1,
        "the dead node had calls in flight ({in_flight_at_kill}), one of them answered after \
         it died ({answered_after_kill})"
    );
    let double = recording.double_dials();
    assert!(double.is_empty(), "double dials:\n{}", double.join("\n"));
    let (most, peak) = recording.max_in_flight();
    assert!(
        most <= CAP,
        "{most} calls in flight at the provider, cap {CAP}; at that moment:\n{}",
        peak.map(|at| recording.describe_in_flight(at))
            .unwrap_or_default()
    );
    println!(
        "node crash: {} dials; calls in flight at the dead node: {in_flight_at_kill} \
         ({answered_after_kill} dials answered after it died), all settled by webhooks through \
         the survivor; {reclaimed} calls came back by lease expiry; \
         at most {most} in flight across both nodes (cap {CAP})",
        recording.dials.len()
    );
}
