//! Burn-down: how fast a queued backlog is worked off, graphile-worker
//! (no-op jobs) against ours (calls through the real server and the mock
//! provider at call duration 0), and what each completed call or job costs
//! in SQL statements and commits. Each run in fresh databases.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use orchestrator_core::{CallStatus, Store};
use sqlx::{Connection as _, PgConnection};
use tokio::process::Command;

use crate::cluster::{DbStats, Statement};
use crate::mock::Mock;
use crate::process::{bounded, output};
use crate::report::{Figure, Ratio, Section, Target};
use crate::seed::{self, close, store, wait_until, Calls, CALL_WITHIN};
use crate::server::{Server, Spec, LOG_LEVEL};
use crate::stats::format;
use crate::{progress, Bench};

/// graphile-worker processes run side by side (its perfTest runs several).
pub(crate) const GRAPHILE_PROCESSES: usize = 2;
/// Concurrent jobs per graphile-worker process (its documented setting).
const GRAPHILE_CONCURRENCY: u32 = 24;
/// Jobs in graphile-worker's local queue (its documented setting).
const GRAPHILE_LOCAL_QUEUE: u32 = 500;
/// Our cap for the burn-down.
const CAP: u32 = 1_000;
/// Statements listed in each profile.
const PROFILE: i64 = 15;
/// Longest a burn-down may take.
const WITHIN: Duration = Duration::from_secs(600);

/// Runs the scenario.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Section> {
    let n: u64 = bench.size(20_000, 2_000);
    let count = format(n as f64);
    let mut per_job = GraphileFigures::new("per job", &count);
    let mut batched = GraphileFigures::new("batched", &count);
    let mut our_rate = Figure::new(
        format!(
            "ours: {count} calls, cap {}, calls of 0 s",
            format(f64::from(CAP))
        ),
        "calls/s",
    );
    let mut our_statements = Figure::new(
        "ours: top-level statements per completed call",
        "statements",
    );
    let mut our_nested = Figure::new("ours: nested statements per completed call", "statements");
    let mut our_commits = Figure::new("ours: commits per completed call", "commits");
    let mut our_profile = Vec::new();
    for run in 1..=bench.runs {
        for (figures, local_queue) in [(&mut per_job, 0), (&mut batched, GRAPHILE_LOCAL_QUEUE)] {
            let (rate, cost, profile) = graphile(bench, n, run, local_queue)
                .await
                .context("graphile-worker")?;
            progress!(
                "  run {run}: graphile-worker ({}) {} jobs/s, {:.2} statements (+{:.2} nested), {:.2} commits per job",
                figures.mode,
                format(rate),
                cost.statements as f64 / n as f64,
                cost.nested as f64 / n as f64,
                cost.commits as f64 / n as f64
            );
            figures.record(rate, &cost, n, profile);
        }

        let (rate, cost, profile) = ours(bench, n, run).await.context("ours")?;
        our_profile = profile;
        progress!(
            "  run {run}: ours {} calls/s, {:.2} statements (+{:.2} nested), {:.2} commits per call",
            format(rate),
            cost.statements as f64 / n as f64,
            cost.nested as f64 / n as f64,
            cost.commits as f64 / n as f64
        );
        our_rate.samples.push(rate);
        our_statements
            .samples
            .push(cost.statements as f64 / n as f64);
        our_nested.samples.push(cost.nested as f64 / n as f64);
        our_commits.samples.push(cost.commits as f64 / n as f64);
    }
    let ratio = Ratio::of(
        "burn-down: ours ÷ graphile-worker per job (the issue's reference)",
        &our_rate,
        &per_job.rate,
    );
    let batched_ratio = Ratio::of(
        "burn-down: ours ÷ graphile-worker batched",
        &our_rate,
        &batched.rate,
    );
    let commits = Ratio::of(
        "commits per completed call ÷ per graphile-worker job (per job)",
        &our_commits,
        &per_job.commits,
    );
    let statements = Ratio::of(
        "top-level statements per completed call ÷ per graphile-worker job (per job)",
        &our_statements,
        &per_job.statements,
    );
    let targets = vec![
        Target {
            goal: "burn-down ≥ 1.0 × graphile-worker (per job)".to_owned(),
            measured: format!("{:.2} ×", ratio.value),
            met: ratio.value >= 1.0,
        },
        Target {
            goal: "≤ 2 commits per completed call (happy path)".to_owned(),
            measured: format!("{:.2}", our_commits.median()),
            met: our_commits.median() <= 2.0,
        },
    ];
    Ok(Section {
        title: "Burn-down: graphile-worker vs ours, and SQL per completed call".to_owned(),
        about: vec![
            format!(
                "**Reference**: graphile-worker (npm, see the machine table) in a fresh database: \
                 `graphile-worker --schema-only`, then {count} jobs of task `noop` added in one SQL \
                 statement (`graphile_worker.add_jobs` over `generate_series`), then \
                 {GRAPHILE_PROCESSES} processes of `bench/graphile/burn.mjs` side by side, each \
                 `runOnce` with `concurrentJobs: {GRAPHILE_CONCURRENCY}`, `maxPoolSize: {}`, in two \
                 modes. **Per job** (graphile-worker's default fetching and completion): each job is \
                 fetched by a statement and completed by another, each its own transaction, as in \
                 the issue's reference figure (2 statements and 2 commits per job). **Batched** (the \
                 throughput options of its performance page and perfTest): `localQueue: {{ size: \
                 {GRAPHILE_LOCAL_QUEUE} }}`, `completeJobBatchDelay: 0`, `failJobBatchDelay: 0`, so \
                 one statement fetches up to {GRAPHILE_LOCAL_QUEUE} jobs and one completes many. The \
                 task does nothing. Elapsed: from the first process's worker pool creation \
                 (connected, migrations checked) to the last `runOnce` returning; the jobs table is \
                 checked empty after.",
                GRAPHILE_CONCURRENCY + 1
            ),
            format!(
                "**Ours**: a fresh database with the store's migrations, {count} calls to distinct numbers \
                 created through the library (`PgStore` + `Store::create`, {} tasks, no engine \
                 running); then the `orchestrator` binary with `MAX_CONCURRENT_CALLS={CAP}`, \
                 `RUST_LOG={LOG_LEVEL}`, against the mock provider in the benchmark process (calls of \
                 0 s, every outcome `COMPLETED`, webhooks over real HTTP). Elapsed: from the server's \
                 start (the earlier of its first 200 on `/health` and the first dial at the provider) \
                 to the provider's last webhook answered 2xx (each answered after the call settled); \
                 every call is checked `COMPLETED` after.",
                seed::TASKS
            ),
            "**SQL per completed call or job**: `pg_stat_statements_reset()` and \
             `pg_stat_database.xact_commit` of that database read before the workers or the server \
             start (after seeding), and again after they exited (a backend reports its counters when it \
             ends). `pg_stat_statements.track = all`: top-level statements are the client's, nested ones \
             run inside functions and triggers (foreign-key checks included). Both sides include their \
             start-up (connecting, migration checks) and every background statement during the \
             burn-down."
                .to_owned(),
        ],
        figures: vec![
            per_job.rate.clone(),
            batched.rate.clone(),
            our_rate,
            per_job.statements.clone(),
            batched.statements.clone(),
            our_statements,
            per_job.nested.clone(),
            batched.nested.clone(),
            our_nested,
            per_job.commits.clone(),
            batched.commits.clone(),
            our_commits,
        ],
        details: vec![
            profile_table("ours", "call", n, bench.runs, &our_profile),
            profile_table(
                "graphile-worker (per job)",
                "job",
                n,
                bench.runs,
                &per_job.profile,
            ),
            profile_table(
                "graphile-worker (batched)",
                "job",
                n,
                bench.runs,
                &batched.profile,
            ),
        ],
        ratios: vec![ratio, batched_ratio, statements, commits],
        targets,
    })
}

/// The figures of one graphile-worker mode.
struct GraphileFigures {
    mode: &'static str,
    rate: Figure,
    statements: Figure,
    nested: Figure,
    commits: Figure,
    /// The statement profile of the last run.
    profile: Vec<Statement>,
}

impl GraphileFigures {
    fn new(mode: &'static str, count: &str) -> Self {
        Self {
            mode,
            rate: Figure::new(
                format!("graphile-worker ({mode}): {count} no-op jobs"),
                "jobs/s",
            ),
            statements: Figure::new(
                format!("graphile-worker ({mode}): top-level statements per job"),
                "statements",
            ),
            nested: Figure::new(
                format!("graphile-worker ({mode}): nested statements per job"),
                "statements",
            ),
            commits: Figure::new(
                format!("graphile-worker ({mode}): commits per job"),
                "commits",
            ),
            profile: Vec::new(),
        }
    }

    fn record(&mut self, rate: f64, cost: &DbStats, n: u64, profile: Vec<Statement>) {
        self.rate.samples.push(rate);
        self.statements
            .samples
            .push(cost.statements as f64 / n as f64);
        self.nested.samples.push(cost.nested as f64 / n as f64);
        self.commits.samples.push(cost.commits as f64 / n as f64);
        self.profile = profile;
    }
}

/// One graphile-worker burn-down: jobs per second and its SQL cost.
/// `local_queue` 0 is graphile-worker's per-job mode (each job fetched and
/// completed by statements of its own); otherwise the size of its local
/// queue, with completions batched.
async fn graphile(
    bench: &Bench,
    n: u64,
    run: u32,
    local_queue: u32,
) -> anyhow::Result<(f64, DbStats, Vec<Statement>)> {
    let database = format!("bench_graphile_{run}_{local_queue}");
    let url = bench.pg.create_database(&database).await?;
    let cli = bench.graphile.join("node_modules/.bin/graphile-worker");
    ensure!(
        cli.is_file(),
        "graphile-worker is not installed at {} (bash bench/run installs it)",
        bench.graphile.display()
    );
    output(
        "graphile-worker --schema-only",
        Command::new(&cli)
            .args(["-c", &url, "--schema-only"])
            .current_dir(&bench.graphile),
        Duration::from_secs(60),
    )
    .await?;
    let mut connection = PgConnection::connect(&url).await?;
    let seeded = Instant::now();
    let add = sqlx::query(
        "SELECT graphile_worker.add_jobs(ARRAY(\
             SELECT json_populate_record(null::graphile_worker.job_spec, \
                 json_build_object('identifier', 'noop', 'payload', json_build_object('id', i))) \
             FROM generate_series(1, $1::int) AS i))",
    )
    .bind(i32::try_from(n)?);
    bounded("adding the jobs", CALL_WITHIN, add.execute(&mut connection)).await?;
    progress!(
        "  queued {n} graphile-worker jobs in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    connection.close().await?;
    bench.pg.wait_idle(&database).await?;
    bench.pg.checkpoint().await?;
    bench.pg.reset_statements().await?;
    let before = bench.pg.stats(&database).await?;
    let mut workers = Vec::new();
    for _ in 0..GRAPHILE_PROCESSES {
        let mut command = Command::new("node");
        command
            .arg("burn.mjs")
            .current_dir(&bench.graphile)
            .env("DATABASE_URL", &url)
            .env("BURN_CONCURRENCY", GRAPHILE_CONCURRENCY.to_string())
            .env("BURN_LOCAL_QUEUE", local_queue.to_string());
        workers.push(async move { output("node burn.mjs", &mut command, WITHIN).await });
    }
    let mut started = f64::INFINITY;
    let mut finished = f64::NEG_INFINITY;
    let mut succeeded = 0.0;
    for result in join_all(workers).await {
        let text = result??;
        let line = text
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .with_context(|| format!("burn.mjs printed no result:\n{text}"))?;
        let json: serde_json::Value = serde_json::from_str(line)?;
        let field = |key: &str| {
            json[key]
                .as_f64()
                .with_context(|| format!("no {key} in {line}"))
        };
        started = started.min(field("started")?);
        finished = finished.max(field("finished")?);
        succeeded += field("succeeded")?;
    }
    bench.pg.wait_idle(&database).await?;
    let cost = bench.pg.stats(&database).await? - before;
    let profile = bench.pg.profile(&database, PROFILE).await?;
    let mut connection = PgConnection::connect(&url).await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM graphile_worker._private_jobs")
        .fetch_one(&mut connection)
        .await?;
    connection.close().await?;
    ensure!(
        left == 0,
        "{left} graphile-worker jobs left after the burn-down"
    );
    ensure!(
        succeeded as u64 == n,
        "graphile-worker ran {succeeded} jobs successfully, not {n}"
    );
    bench.pg.drop_database(&database).await?;
    let elapsed = (finished - started) / 1e3;
    Ok((n as f64 / elapsed, cost, profile))
}

/// Runs `futures` concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future + Send + 'static>(
    futures: Vec<F>,
) -> Vec<anyhow::Result<F::Output>>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.context("task panicked"));
    }
    outputs
}

/// One burn-down of ours: calls per second and its SQL cost.
async fn ours(bench: &Bench, n: u64, run: u32) -> anyhow::Result<(f64, DbStats, Vec<Statement>)> {
    let database = format!("bench_burn_{run}");
    let url = seed::backlog(&bench.pg, &database, Calls::numbered(0..n)).await?;
    bench.pg.wait_idle(&database).await?;
    let mock = Mock::start(Duration::ZERO)?;
    bench.pg.checkpoint().await?;
    bench.pg.reset_statements().await?;
    let before = bench.pg.stats(&database).await?;
    let server = Server::start(
        bench,
        &format!("burn-down-{run}"),
        &Spec {
            database_url: &url,
            provider_url: &mock.url,
            max_concurrent_calls: CAP,
        },
    )
    .await?;
    let finished = wait_until(
        &format!("{n} webhooks answered"),
        WITHIN,
        Duration::from_millis(2),
        || mock.provider.webhooks_delivered() >= n,
    )
    .await?;
    let first_dial = mock
        .provider
        .timeline()
        .first()
        .map(|timing| timing.arrived);
    let started = first_dial.map_or(server.ready_at, |dial| dial.min(server.ready_at));
    let elapsed = finished.duration_since(started);
    server.stop().await?;
    bench.pg.wait_idle(&database).await?;
    let cost = bench.pg.stats(&database).await? - before;
    let profile = bench.pg.profile(&database, PROFILE).await?;
    drop(mock);
    let check = store(&bench.pg, &database, 2).await?;
    let counts = bounded("Store::counts", CALL_WITHIN, check.counts()).await?;
    close(check).await;
    ensure!(
        counts.get(CallStatus::Completed) == n,
        "after the burn-down: {counts:?}, not {n} COMPLETED"
    );
    bench.pg.drop_database(&database).await?;
    Ok((n as f64 / elapsed.as_secs_f64(), cost, profile))
}

/// The statement profile of one burn-down as a Markdown table.
fn profile_table(who: &str, unit: &str, n: u64, run: u32, profile: &[Statement]) -> String {
    let mut table = format!(
        "Statements of {who} in run {run}, most executed first (`pg_stat_statements`, at most \
         {PROFILE}; nested: inside a function or trigger):\n\n\
         | statement | nested | per {unit} | total ms |\n|---|---|---|---|\n"
    );
    for statement in profile {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            statement.query.replace('|', "\\|").replace('`', "'"),
            if statement.toplevel { "" } else { "yes" },
            format(statement.calls as f64 / n as f64),
            format(statement.total_ms)
        ));
    }
    table
}
