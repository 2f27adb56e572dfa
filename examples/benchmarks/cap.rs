//! Cap 2,000: with a backlog of twice the cap, how long from the first dial
//! to the dial that fills the last slot, read at the provider.

use std::time::Duration;

use anyhow::ensure;

use crate::mock::Mock;
use crate::report::{Figure, Section};
use crate::seed::{self, wait_until, Calls};
use crate::server::{Server, Spec, LOG_LEVEL};
use crate::stats::{format, ms};
use crate::{progress, Bench};

/// How long each mock call lasts: longer than the scenario, so no slot frees.
const CALL: Duration = Duration::from_secs(300);

/// Runs the scenario.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Section> {
    let cap: u32 = bench.size(2_000, 200);
    let backlog = 2 * u64::from(cap);
    let mut first_to_last = Figure::new(
        format!("first dial to the {}th dial", format(f64::from(cap))),
        "ms",
    );
    let mut ready_to_last = Figure::new(
        format!("server ready to the {}th dial", format(f64::from(cap))),
        "ms",
    );
    for run in 1..=bench.runs {
        let database = format!("bench_cap_{run}");
        let url = seed::backlog(&bench.pg, &database, Calls::numbered(0..backlog)).await?;
        let mock = Mock::start(CALL)?;
        bench.pg.checkpoint().await?;
        let server = Server::start(
            bench,
            &format!("cap-{run}"),
            &Spec {
                database_url: &url,
                provider_url: &mock.url,
                max_concurrent_calls: cap,
            },
        )
        .await?;
        wait_until(
            &format!("{cap} dials at the provider"),
            Duration::from_secs(120),
            Duration::from_millis(5),
            || mock.provider.timeline().len() >= cap as usize,
        )
        .await?;
        // No slot frees, so no dial may follow the one that filled the cap.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let timeline = mock.provider.timeline();
        let ready_at = server.ready_at;
        server.stop().await?;
        drop(mock);
        bench.pg.drop_database(&database).await?;
        ensure!(
            timeline.len() == cap as usize,
            "{} calls dialled under a cap of {cap}",
            timeline.len()
        );
        let first = timeline[0].arrived;
        let last = timeline[cap as usize - 1].arrived;
        let figure = ms(last.duration_since(first));
        let from_ready = ms(last.duration_since(ready_at.min(first)));
        progress!(
            "  run {run}: {} ms from the first dial to the {cap}th",
            format(figure)
        );
        first_to_last.samples.push(figure);
        ready_to_last.samples.push(from_ready);
    }
    Ok(Section {
        title: format!("Cap {}: time to fill every slot", format(f64::from(cap))),
        about: vec![format!(
            "Each run in a fresh database: {} calls to distinct numbers created through the \
             library, then one `orchestrator` with `MAX_CONCURRENT_CALLS={cap}`, `RUST_LOG={LOG_LEVEL}`, \
             against the mock provider in the benchmark process with calls of {} minutes (no slot \
             frees). Measured at the provider: from the first dial to the {}th, and from the \
             server's readiness (first 200 on `/health`, or the first dial if earlier) to the {}th. \
             A second later the provider must still have exactly {} calls.",
            format(backlog as f64),
            CALL.as_secs() / 60,
            format(f64::from(cap)),
            format(f64::from(cap)),
            format(f64::from(cap)),
        )],
        figures: vec![first_to_last, ready_to_last],
        details: Vec::new(),
        ratios: Vec::new(),
        targets: Vec::new(),
    })
}
