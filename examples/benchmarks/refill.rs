//! Refill: at a cap of 30 with a backlog, how soon a freed slot is dialled
//! again, and how full the cap is kept, read at the provider (the mock's
//! timeline), with one node and with two nodes sharing the database.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use orchestrator_http::server::mock_provider::DialTiming;

use crate::mock::Mock;
use crate::report::{Figure, Section, Target};
use crate::seed::{self, wait_until, Calls};
use crate::server::{Server, Spec, LOG_LEVEL};
use crate::stats::{format, ms, quantile, sorted};
use crate::{progress, Bench};

/// The global cap.
const CAP: u32 = 30;
/// How long each mock call lasts.
const CALL: Duration = Duration::from_millis(100);

/// What one run measured.
struct Refill {
    p50: f64,
    p99: f64,
    /// Webhook sent to answered (the settlement's share): median.
    settle_p50: f64,
    /// From the webhook's answer to the dial (the claim's and the dial
    /// request's share): median.
    claim_p50: f64,
    utilisation: f64,
    rate: f64,
}

/// Runs the scenario.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Section> {
    // About ten seconds of dialling at 30 calls of 100 ms at a time.
    let backlog: u64 = bench.size(3_000, 600);
    let mut figures = Vec::new();
    let mut targets = Vec::new();
    for nodes in [1_u32, 2] {
        let label = if nodes == 1 { "one node" } else { "two nodes" };
        let mut p50 = Figure::new(format!("refill p50, {label}"), "ms");
        let mut p99 = Figure::new(format!("refill p99, {label}"), "ms");
        let mut settle_p50 = Figure::new(
            format!("of which webhook sent to answered (settled), p50, {label}"),
            "ms",
        );
        let mut claim_p50 = Figure::new(
            format!("of which webhook answered to the next dial (claim, dial), p50, {label}"),
            "ms",
        );
        let mut utilisation = Figure::new(format!("cap utilisation, {label}"), "%");
        let mut rate = Figure::new(
            format!("dials per second in the steady window, {label}"),
            "dials/s",
        );
        for run in 1..=bench.runs {
            let measured = once(bench, nodes, backlog, run).await?;
            progress!(
                "  run {run}, {label}: refill p50 {} ms, p99 {} ms, utilisation {:.1} %, {} dials/s",
                format(measured.p50),
                format(measured.p99),
                measured.utilisation,
                format(measured.rate)
            );
            p50.samples.push(measured.p50);
            p99.samples.push(measured.p99);
            settle_p50.samples.push(measured.settle_p50);
            claim_p50.samples.push(measured.claim_p50);
            utilisation.samples.push(measured.utilisation);
            rate.samples.push(measured.rate);
        }
        let bound = if nodes == 1 { 5.0 } else { 50.0 };
        targets.push(Target {
            goal: format!("refill p99 ≤ {bound} ms, {label}"),
            measured: format!("{} ms", format(p99.median())),
            met: p99.median() <= bound,
        });
        targets.push(Target {
            goal: format!("cap utilisation ≥ 98 %, {label}"),
            measured: format!("{:.1} %", utilisation.median()),
            met: utilisation.median() >= 98.0,
        });
        figures.extend([p50, p99, settle_p50, claim_p50, utilisation, rate]);
    }
    Ok(Section {
        title: "Refill: slot refill latency and cap utilisation at cap 30".to_owned(),
        about: vec![format!(
            "Each run in a fresh database: {} calls to distinct numbers created through the \
             library, then one or two `orchestrator` processes on that database \
             (`MAX_CONCURRENT_CALLS={CAP}` each, which is the global cap, `RUST_LOG={LOG_LEVEL}`) \
             against the mock provider in the benchmark process: every call lasts {} ms and ends \
             `COMPLETED`. The mock records when each dial arrived and when each webhook was sent. \
             **Refill latency**: webhooks and dials each in time order, the k-th webhook is matched \
             with the (30 + k)-th dial, the first dial that needed its slot; over every webhook sent \
             while calls were still waiting. It is split in two, each a median: from each webhook's sending to the orchestrator's 2xx answer (given once the attempt is settled), and from the k-th answer to the dial matched with the k-th webhook (the claim and the dial request). **Utilisation**: the time-integral of calls live at the \
             provider (dialled, webhook not yet sent) ÷ (30 × the window), over the steady window from \
             the 30th dial (first fill done) to the last dial (backlog empty). The rate is the dials in \
             that window per second.",
            format(backlog as f64),
            CALL.as_millis()
        )],
        figures,
        details: Vec::new(),
        ratios: Vec::new(),
        targets,
    })
}

async fn once(bench: &Bench, nodes: u32, backlog: u64, run: u32) -> anyhow::Result<Refill> {
    let database = format!("bench_refill_{nodes}_{run}");
    let url = seed::backlog(&bench.pg, &database, Calls::numbered(0..backlog)).await?;
    let mock = Mock::start(CALL)?;
    bench.pg.checkpoint().await?;
    let spec = Spec {
        database_url: &url,
        provider_url: &mock.url,
        max_concurrent_calls: CAP,
    };
    let mut servers = Vec::new();
    for node in 1..=nodes {
        servers.push(Server::start(bench, &format!("refill-{nodes}-{run}-{node}"), &spec).await?);
    }
    let within = Duration::from_secs(60 + backlog / 10);
    wait_until(
        &format!("{backlog} webhooks answered"),
        within,
        Duration::from_millis(10),
        || mock.provider.webhooks_delivered() >= backlog,
    )
    .await?;
    for server in servers {
        server.stop().await?;
    }
    let timeline = mock.provider.timeline();
    drop(mock);
    bench.pg.drop_database(&database).await?;
    ensure!(
        timeline.len() as u64 == backlog,
        "{} dials for {backlog} calls: a call was dialled twice",
        timeline.len()
    );
    measure(&timeline, CAP as usize)
}

/// Refill latency and utilisation from the mock's timeline (see the section text).
fn measure(timeline: &[DialTiming], cap: usize) -> anyhow::Result<Refill> {
    let dials: Vec<Instant> = {
        let mut dials: Vec<Instant> = timeline.iter().map(|timing| timing.arrived).collect();
        dials.sort();
        dials
    };
    let mut webhooks: Vec<Instant> = timeline
        .iter()
        .map(|timing| timing.webhook_sent.context("a call without its webhook"))
        .collect::<anyhow::Result<_>>()?;
    webhooks.sort();
    ensure!(
        dials.len() > cap,
        "a backlog of {} calls does not exceed the cap",
        dials.len()
    );
    let mut latencies = Vec::new();
    for (k, webhook) in webhooks.iter().enumerate() {
        let Some(dial) = dials.get(cap + k) else {
            break;
        };
        let Some(latency) = dial.checked_duration_since(*webhook) else {
            bail!(
                "dial {} arrived before webhook {} was sent: more than {cap} calls live",
                cap + k + 1,
                k + 1
            );
        };
        latencies.push(ms(latency));
    }
    let latencies = sorted(latencies);
    // The same path in two parts: each webhook's own answer, and from the
    // k-th answer to the dial matched with the k-th webhook.
    let mut answers: Vec<Instant> = timeline
        .iter()
        .map(|timing| timing.webhook_answered.context("a webhook never answered"))
        .collect::<anyhow::Result<_>>()?;
    let settling = sorted(
        timeline
            .iter()
            .filter_map(|timing| {
                Some(ms(timing
                    .webhook_answered?
                    .checked_duration_since(timing.webhook_sent?)?))
            })
            .collect(),
    );
    answers.sort();
    let claiming = sorted(
        answers
            .iter()
            .enumerate()
            .filter_map(|(k, answered)| {
                Some(ms(dials.get(cap + k)?.checked_duration_since(*answered)?))
            })
            .collect(),
    );

    // The integral of live calls over [30th dial, last dial].
    let (start, end) = (dials[cap - 1], dials[dials.len() - 1]);
    let mut events: Vec<(Instant, i64)> = dials.iter().map(|at| (*at, 1)).collect();
    events.extend(webhooks.iter().map(|at| (*at, -1)));
    events.sort();
    let mut live = 0_i64;
    let mut last = start;
    let mut integral = 0.0;
    for (at, change) in events {
        if at > start {
            let upto = at.min(end);
            if upto > last {
                integral += live as f64 * upto.duration_since(last).as_secs_f64();
                last = upto;
            }
        }
        if at > end {
            break;
        }
        live += change;
    }
    let window = end.duration_since(start).as_secs_f64();
    ensure!(window > 0.0, "an empty steady window");
    let in_window = (dials.len() - cap) as f64;
    Ok(Refill {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        settle_p50: quantile(&settling, 0.5),
        claim_p50: quantile(&claiming, 0.5),
        utilisation: 100.0 * integral / (cap as f64 * window),
        rate: in_window / window,
    })
}
