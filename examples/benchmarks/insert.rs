//! Insert: the ceiling of one durable single-row INSERT (pgbench, 32
//! clients) against `POST /calls` through the real server (wrk, 32
//! connections), each run in a fresh database.
//!
//! The reference table `bench_calls` has the columns of `calls`
//! (`LIKE calls INCLUDING DEFAULTS INCLUDING GENERATED`) and its primary
//! key, nothing else: no other index, no trigger. The server runs with a
//! cap of 30 against the mock provider with calls of an hour, so the 30
//! slots are full before the load starts and stay full: intake runs next
//! to a busy dispatcher, as it does in production.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use tokio::process::Command;

use crate::mock::Mock;
use crate::process::{bounded, output};
use crate::report::{Figure, Ratio, Section, Target};
use crate::seed::{self, close, store, wait_until, Calls, CALL_WITHIN};
use crate::server::{Server, Spec, LOG_LEVEL};
use crate::stats::{format, ms, quantile, sorted};
use crate::{progress, Bench};

/// Load generators' clients or connections.
const CLIENTS: u32 = 32;

/// The pgbench script: one realistic call row per transaction.
const PGBENCH_SCRIPT: &str = "\\set n random(0, 9999999)\n\
\\set customer random(1, 1000000)\n\
INSERT INTO bench_calls (id, to_number, script_id, metadata, status, attempts, created_at) \
VALUES (gen_random_uuid(), '+96650' || lpad(:n::text, 7, '0'), 'welcomeFlow', \
json_build_object('customer', :customer, 'campaign', 'bench'), 'PENDING', 0, now());\n";

/// Runs the scenario.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Section> {
    let seconds: u32 = bench.size(10, 3);
    let mut pg_tps = Figure::new("pgbench single-row INSERT, 32 clients: throughput", "tx/s");
    let mut pg_p50 = Figure::new("pgbench INSERT latency p50", "ms");
    let mut pg_p99 = Figure::new("pgbench INSERT latency p99", "ms");
    let mut post_rps = Figure::new("`POST /calls`, 32 connections: throughput", "req/s");
    let mut post_p50 = Figure::new("`POST /calls` latency p50", "ms");
    let mut post_p99 = Figure::new("`POST /calls` latency p99", "ms");
    let mut post_errors = Figure::new("`POST /calls` non-2xx answers and socket errors", "count");
    let script = bench.logs.join("insert.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    for run in 1..=bench.runs {
        let database = format!("bench_insert_{run}");
        let url = bench.pg.create_database(&database).await?;
        let setup = store(&bench.pg, &database, 2).await?;
        bounded("migrate", CALL_WITHIN, setup.migrate()).await?;
        sqlx::raw_sql(
            "CREATE TABLE bench_calls (LIKE calls INCLUDING DEFAULTS INCLUDING GENERATED); \
             ALTER TABLE bench_calls ADD PRIMARY KEY (id);",
        )
        .execute(setup.pool())
        .await
        .context("creating bench_calls")?;
        close(setup).await;
        // Thirty calls for the server to dial at start, so every slot is
        // held before the load begins.
        seed::create(
            &bench.pg,
            &database,
            Calls::numbered(10_000_000 - 30..10_000_000),
        )
        .await?;

        bench.pg.checkpoint().await?;
        let pgbench = pgbench(bench, &url, &script, seconds, run).await?;
        progress!(
            "  run {run}: pgbench {} tx/s, p50 {} ms, p99 {} ms",
            format(pgbench.tps),
            format(pgbench.p50),
            format(pgbench.p99)
        );
        pg_tps.samples.push(pgbench.tps);
        pg_p50.samples.push(pgbench.p50);
        pg_p99.samples.push(pgbench.p99);

        let mock = Mock::start(Duration::from_secs(3600))?;
        let server = Server::start(
            bench,
            &format!("insert-{run}"),
            &Spec {
                database_url: &url,
                provider_url: &mock.url,
                max_concurrent_calls: 30,
            },
        )
        .await?;
        wait_until(
            "30 calls in progress at the provider",
            Duration::from_secs(30),
            Duration::from_millis(10),
            || mock.provider.timeline().len() >= 30,
        )
        .await?;
        bench.pg.checkpoint().await?;
        let wrk = wrk(bench, &server.url, seconds).await?;
        server.stop().await?;
        drop(mock);
        let errors = wrk.non_2xx + wrk.socket_errors;
        if errors > 0 {
            bail!(
                "run {run}: {} non-2xx answers and {} socket errors to POST /calls (see target/bench/logs/insert-{run}.log)",
                wrk.non_2xx,
                wrk.socket_errors
            );
        }
        progress!(
            "  run {run}: POST /calls {} req/s, p50 {} ms, p99 {} ms",
            format(wrk.rps),
            format(wrk.p50),
            format(wrk.p99)
        );
        post_rps.samples.push(wrk.rps);
        post_p50.samples.push(wrk.p50);
        post_p99.samples.push(wrk.p99);
        post_errors.samples.push(errors as f64);
        bench.pg.drop_database(&database).await?;
    }
    let ratio = Ratio::of(
        "`POST /calls` ÷ pgbench INSERT, 32 connections",
        &post_rps,
        &pg_tps,
    );
    let targets = vec![
        Target {
            goal: "`POST /calls` ≥ 0.8 × pgbench single-row INSERT".to_owned(),
            measured: format!("{:.2} ×", ratio.value),
            met: ratio.value >= 0.8,
        },
        Target {
            goal: "`POST /calls` p99 < 20 ms".to_owned(),
            measured: format!("{} ms", format(post_p99.median())),
            met: post_p99.median() < 20.0,
        },
    ];
    Ok(Section {
        title: "Insert: pgbench single-row INSERT vs `POST /calls`".to_owned(),
        about: vec![
            format!(
                "Each run in a fresh database with the store's migrations applied. **Reference**: \
                 `pgbench -n -c {CLIENTS} -j 2 -T {seconds} -l -f insert.sql` (simple query protocol; `-l` \
                 logs each transaction's latency for the percentiles), one row per transaction into \
                 `bench_calls`, a table with the columns of `calls` (`LIKE calls INCLUDING DEFAULTS \
                 INCLUDING GENERATED`) and a primary key on `id`, no other index, no trigger: a random \
                 uuid, a random `+96650…` number, script `welcomeFlow`, a small JSON metadata object, \
                 `PENDING`, `now()`."
            ),
            format!(
                "**Ours**: `wrk -t2 -c{CLIENTS} -d{seconds}s --latency -s bench/post.lua` against the \
                 `orchestrator` binary (`DATABASE_URL` on that database, `MAX_CONCURRENT_CALLS=30`, \
                 `RUST_LOG={LOG_LEVEL}`, the mock provider in the benchmark process with calls lasting \
                 an hour). Thirty calls created before the server starts fill its 30 slots (checked at \
                 the provider) before the load begins, and hold them throughout. Each body has a random \
                 `+96650…` number and a small metadata object. Latencies are wrk's, from each request's \
                 send on a kept-alive connection. Any non-2xx answer or socket error fails the run."
            ),
            "A checkpoint runs before each load, so neither side starts with the other's dirty pages to write.".to_owned(),
        ],
        figures: vec![pg_tps, pg_p50, pg_p99, post_rps, post_p50, post_p99, post_errors],
        details: Vec::new(),
        ratios: vec![ratio],
        targets,
    })
}

/// pgbench's figures for one run.
struct Pgbench {
    tps: f64,
    p50: f64,
    p99: f64,
}

async fn pgbench(
    bench: &Bench,
    url: &str,
    script: &std::path::Path,
    seconds: u32,
    run: u32,
) -> anyhow::Result<Pgbench> {
    let prefix = bench.logs.join(format!("pgbench-{run}"));
    remove_logs(&prefix)?;
    let text = output(
        "pgbench",
        Command::new(bench.pg.bindir.join("pgbench"))
            .args([
                "-n",
                "-c",
                &CLIENTS.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "-l",
            ])
            .arg(format!("--log-prefix={}", prefix.display()))
            .arg("-f")
            .arg(script)
            .arg(url),
        Duration::from_secs(u64::from(seconds) + 120),
    )
    .await?;
    let field = |label: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
            .with_context(|| format!("no `{label}` in pgbench's output:\n{text}"))
    };
    let tps = field("tps = ")?;
    if let Ok(failed) = field("number of failed transactions: ") {
        ensure!(
            failed == 0.0,
            "pgbench: {failed} failed transactions:\n{text}"
        );
    }
    // Per-transaction log lines: client, transaction, latency (µs), ...
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&bench.logs)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&format!("pgbench-{run}.")) {
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some(micros) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    latencies.push(micros / 1e3);
                }
            }
        }
    }
    ensure!(
        !latencies.is_empty(),
        "pgbench wrote no transaction log at {}",
        prefix.display()
    );
    let latencies = sorted(latencies);
    remove_logs(&prefix)?;
    Ok(Pgbench {
        tps,
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
    })
}

/// Deletes the per-thread transaction logs of `prefix` (`prefix.<pid>[.<thread>]`).
fn remove_logs(prefix: &std::path::Path) -> anyhow::Result<()> {
    let Some(dir) = prefix.parent() else {
        return Ok(());
    };
    let stem = format!(
        "{}.",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(&stem))
        {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// wrk's figures for one load period.
struct Wrk {
    rps: f64,
    p50: f64,
    p99: f64,
    non_2xx: u64,
    socket_errors: u64,
}

async fn wrk(bench: &Bench, url: &str, seconds: u32) -> anyhow::Result<Wrk> {
    let text = output(
        "wrk",
        Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{CLIENTS}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(bench.scripts.join("post.lua"))
            .arg(url),
        Duration::from_secs(u64::from(seconds) + 60),
    )
    .await
    .context("wrk (install it with `apt-get install wrk`)")?;
    let line = text
        .lines()
        .find(|line| line.starts_with("{\"requests\""))
        .with_context(|| format!("no summary line in wrk's output:\n{text}"))?;
    let json: serde_json::Value = serde_json::from_str(line)?;
    let number = |key: &str| {
        json[key]
            .as_f64()
            .with_context(|| format!("no {key} in {line}"))
    };
    let socket_errors = ["connect_errors", "read_errors", "write_errors", "timeouts"]
        .iter()
        .map(|key| number(key))
        .sum::<anyhow::Result<f64>>()? as u64;
    Ok(Wrk {
        rps: number("requests")? / (number("duration_us")? / 1e6),
        p50: ms(Duration::from_micros(number("p50_us")? as u64)),
        p99: ms(Duration::from_micros(number("p99_us")? as u64)),
        non_2xx: number("non_2xx")? as u64,
        socket_errors,
    })
}
