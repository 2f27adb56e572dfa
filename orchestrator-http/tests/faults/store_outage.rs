//! PostgreSQL restarted, then down for seconds, while one node works
//! through 200 calls under a cap of 10.
//!
//! During the outage the provider answers dials that were in flight when
//! it began (half of them 503, half 202) and posts webhooks; the node can
//! record none of it. Afterwards: every acknowledged call is found and
//! terminal, no attempt was dialled twice, the cap held, each answer and
//! webhook given during the outage was applied (a 503 re-dialled soon after
//! recovery, a 202 completed by its webhook without a re-dial), and a freed
//! slot is refilled within milliseconds again.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::Api;
use crate::cluster::{Cluster, StopMode};
use crate::node::{Node, NodeSpec};
use crate::stand_in::{Answer, StandIn};
use crate::{log_dir, ms, percentiles, ready, serial, wait_until, WEBHOOK_SECRET};

const CALLS: u32 = 200;
const CAP: usize = 10;
/// Longer than the store's pool acquire timeout (5 s), so every store
/// operation attempted during the outage fails instead of outlasting it.
const OUTAGE: Duration = Duration::from_secs(7);
/// An attempt's lease. Long enough for every webhook delayed by the outage
/// to arrive first, short enough that the test ends if a slot is only ever
/// freed by the lease.
const LEASE_SECONDS: &str = "30";
/// How soon after recovery a call whose 503 arrived during the outage must
/// be dialled again. Well below the lease's expiry (about 23 s after
/// recovery), so a slot freed only by the lease fails this.
const REDIAL_WITHIN: Duration = Duration::from_secs(12);
/// A median wake-up slower than this is a poll (the engine's fallback poll
/// is 2 s), not an event. Generous: the nodes are debug builds, and a burst
/// of webhooks is settled before the next dial goes out.
const WAKEUP_MEDIAN_BOUND: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_and_outage_lose_nothing_and_hold_no_slot() {
    let _serial = serial().await;
    let logs = log_dir("store_outage");
    let cluster = Cluster::start_new().await;
    let provider = StandIn::start().await;
    let node = Node::start(
        "node",
        &logs,
        &NodeSpec::new([
            ("DATABASE_URL", cluster.url()),
            ("PROVIDER_BASE_URL", provider.url().to_owned()),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("MAX_CONCURRENT_CALLS", CAP.to_string()),
            ("MAX_ATTEMPTS", "5".to_owned()),
            ("BASE_RETRY_SECONDS", "0.2".to_owned()),
            ("MAX_RETRY_SECONDS", "1".to_owned()),
            ("STALE_INPROG_SECONDS", LEASE_SECONDS.to_owned()),
            // Held dials must not time out on the node's side.
            ("PROVIDER_TIMEOUT_MS", "30000".to_owned()),
        ]),
    )
    .await;
    let api = node.api();
    let mut created = 0;
    let baseline = wakeup_probe(&api, &provider, &mut created).await;
    let mut ids = Vec::new();
    for n in 0..CALLS {
        ids.push(api.create_call(n).await);
    }
    created += u64::from(CALLS);

    // A restart under load.
    let before_load = provider.dial_count();
    wait_until(
        "30 dials before the restart",
        Duration::from_secs(30),
        || ready(provider.dial_count() >= before_load + 30),
    )
    .await;
    cluster.stop(StopMode::Fast).await;
    cluster.start().await;
    let after_restart = provider.dial_count();
    wait_until(
        "20 more dials after the restart",
        Duration::from_secs(30),
        || ready(provider.dial_count() >= after_restart + 20),
    )
    .await;

    // An outage, with dial answers in flight when it begins.
    provider.hold_dials();
    wait_until(
        "6 dials held at the provider",
        Duration::from_secs(20),
        || ready(provider.held_dials() >= 6),
    )
    .await;
    cluster.stop(StopMode::Immediate).await;
    let outage_began = Instant::now();
    provider.set_answers(vec![Answer::Status(503), Answer::Accept]);
    provider.release_dials();
    wait_until(
        "the held dials to be answered",
        Duration::from_secs(10),
        || {
            ready(
                provider
                    .recording()
                    .dials
                    .iter()
                    .all(|dial| dial.answered.is_some()),
            )
        },
    )
    .await;
    provider.set_answers(vec![Answer::Accept]);
    // The fault's length, not a synchronisation.
    tokio::time::sleep_until((outage_began + OUTAGE).into()).await;
    // The server may take connections before `pg_ctl start` returns.
    let outage_ended = Instant::now();
    cluster.start().await;
    let recovered = Instant::now();

    // Answers given during the outage.
    let during = |at: Instant| at >= outage_began && at < outage_ended;
    let recording = provider.recording();
    let refused: Vec<(String, u32)> = recording
        .dials
        .iter()
        .filter(|dial| matches!(dial.answered, Some((at, 503)) if during(at)))
        .map(|dial| (dial.call_id.clone(), dial.attempt))
        .collect();
    let accepted: Vec<usize> = (0..recording.dials.len())
        .filter(|&index| {
            matches!(recording.dials[index].answered, Some((at, 202)) if during(at))
                && !recording.dials[index].resend
        })
        .collect();
    let webhooks_during: Vec<usize> = (0..recording.dials.len())
        .filter(|&index| {
            recording
                .first_webhook(index)
                .is_some_and(|try_| during(try_.sent))
        })
        .collect();
    assert!(
        !refused.is_empty() && !accepted.is_empty() && !webhooks_during.is_empty(),
        "the outage must see 503 answers ({}), 202 answers ({}) and webhooks ({})",
        refused.len(),
        accepted.len(),
        webhooks_during.len()
    );

    // A call refused with 503 during the outage holds its slot no longer
    // than the outage: it is dialled again soon after recovery.
    let redialled = |recording: &crate::stand_in::Recording, (call, attempt): &(String, u32)| {
        recording
            .dials
            .iter()
            .find(|dial| dial.call_id == *call && dial.attempt > *attempt)
            .map(|dial| dial.received)
    };
    let recording = loop {
        let recording = provider.recording();
        let stuck: Vec<&(String, u32)> = refused
            .iter()
            .filter(|refused| redialled(&recording, refused).is_none())
            .collect();
        if stuck.is_empty() {
            break recording;
        }
        if recovered.elapsed() > REDIAL_WITHIN {
            let calls = calls_summary(&api, stuck.iter().map(|(call, _)| call.as_str())).await;
            let seen: Vec<String> = stuck
                .iter()
                .map(|(call, _)| recording.describe(call, recovered))
                .collect();
            panic!(
                "{} of {} calls answered 503 during the outage were not dialled again within \
                 {REDIAL_WITHIN:?} of recovery: the provider's answer was lost and the slot is \
                 held until the lease ({LEASE_SECONDS} s) runs out.\nThe calls now: {calls}\n\
                 The provider saw (times from recovery):\n{}\n{}",
                stuck.len(),
                refused.len(),
                seen.join("\n"),
                node.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let last_released = refused
        .iter()
        .filter_map(|refused| redialled(&recording, refused))
        .max()
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(recovered));

    api.wait_all_terminal(created, Duration::from_secs(60))
        .await;
    let wakeups_back_after = wakeups_back(&api, &provider, &mut created, recovered).await;

    // Nothing lost, each call completed by the attempt the provider saw last.
    let recording = provider.recording();
    let attempts = recording.attempts_by_call();
    for call in api.calls(&ids).await {
        let id = call["id"].as_str().unwrap_or_default();
        assert_eq!(call["status"], "COMPLETED", "{call}");
        let last = attempts.get(id).and_then(|list| list.last()).copied();
        assert_eq!(
            call["attempts"].as_u64(),
            last.map(u64::from),
            "the call's attempts are the last the provider saw: {call}"
        );
    }
    // The 202s of the outage were settled by their webhooks, after it.
    for &index in &accepted {
        let dial = &recording.dials[index];
        let call = api.call(&dial.call_id).await.unwrap_or(Value::Null);
        assert_eq!(
            call["attempts"].as_u64(),
            Some(u64::from(dial.attempt)),
            "a call the provider accepted during the outage is settled by its webhook, \
             not dialled again: {call}"
        );
    }
    for &index in &webhooks_during {
        let applied = recording.accepted_webhook(index).map(|try_| try_.finished);
        assert!(
            applied.is_some_and(|at| at >= outage_ended),
            "a webhook first sent during the outage is accepted after it; times from the \
             outage's start:\n{}",
            recording.describe(&recording.dials[index].call_id, outage_began)
        );
    }
    let double = recording.double_dials();
    assert!(double.is_empty(), "double dials:\n{}", double.join("\n"));
    let (most, peak) = recording.max_in_flight();
    assert!(
        most <= CAP,
        "{most} calls in flight at the provider, cap {CAP}; at that moment:\n{}",
        peak.map(|at| recording.describe_in_flight(at))
            .unwrap_or_default()
    );

    let refused_webhooks = recording
        .webhooks
        .iter()
        .filter(|try_| during(try_.sent) && !try_.accepted())
        .count();
    println!(
        "store outage: {} dials, outage {:?}; during it {} dials answered 503, {} answered 202, \
         {} webhook tries refused; last slot released (re-dialled) {} after recovery; \
         at most {most} in flight (cap {CAP}); wake-ups seen back to milliseconds {} after \
         recovery (median {}; before the faults {})",
        recording.dials.len(),
        outage_ended - outage_began,
        refused.len(),
        accepted.len(),
        refused_webhooks,
        ms(last_released),
        ms(wakeups_back_after.0),
        ms(wakeups_back_after.1),
        ms(baseline.0),
    );
}

/// Runs [`wakeup_probe`]s until the median wake-up is under
/// [`WAKEUP_MEDIAN_BOUND`]; returns how long after `recovered` that was seen,
/// and that median. Panics if it is not within 30 s.
async fn wakeups_back(
    api: &Api,
    provider: &StandIn,
    created: &mut u64,
    recovered: Instant,
) -> (Duration, Duration) {
    loop {
        let (median, ..) = wakeup_probe(api, provider, created).await;
        if median < WAKEUP_MEDIAN_BOUND {
            return (recovered.elapsed(), median);
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(30),
            "wake-ups are not back to milliseconds 30 s after recovery (median {})",
            ms(median)
        );
    }
}

/// Creates 30 calls (three times the cap) and waits until every call is
/// terminal; returns the (median, p90, max) time from one of their webhooks
/// to the next of their dials. `created` counts the calls in the store.
async fn wakeup_probe(
    api: &Api,
    provider: &StandIn,
    created: &mut u64,
) -> (Duration, Duration, Duration) {
    let mut probes = HashSet::new();
    for _ in 0..30 {
        let number = 1_000_000 + u32::try_from(*created).expect("few calls");
        probes.insert(api.create_call(number).await);
        *created += 1;
    }
    api.wait_all_terminal(*created, Duration::from_secs(30))
        .await;
    let latencies = provider.recording().wakeups(&probes);
    let figures = percentiles(latencies.clone()).expect("webhooks followed by dials");
    println!(
        "wake-up probe: {} webhook-to-next-dial gaps, median {}, p90 {}, max {}",
        latencies.len(),
        ms(figures.0),
        ms(figures.1),
        ms(figures.2)
    );
    figures
}

async fn calls_summary<'a>(api: &Api, ids: impl Iterator<Item = &'a str>) -> String {
    let mut lines = Vec::new();
    for id in ids {
        let call = api.call(id).await.unwrap_or(Value::Null);
        lines.push(format!(
            "{id}: {} attempts {} lastError {}",
            call["status"], call["attempts"], call["lastError"]
        ));
    }
    lines.join("; ")
}
