//! The benchmark command behind `bash bench/run`: starts a throwaway
//! PostgreSQL cluster with durable settings, runs each scenario `--runs`
//! times, side by side with its reference (pgbench, graphile-worker), and
//! writes a Markdown report: min / median / max of every figure, the ratios
//! ours ÷ reference (from medians), and the targets met or missed.
//!
//! ```text
//! cargo run --release --example benchmarks -- --out BENCHMARKS.md [--runs 3] [--quick] [--only insert,burn-down]
//! ```
//! Needs the PostgreSQL server binaries and `pgbench` (`pg_config --bindir`),
//! `wrk`, `node` with graphile-worker installed in `target/bench/graphile`
//! (`bench/run` installs both), and the `orchestrator` binary built in
//! release mode (`target/release/orchestrator`; `ORCHESTRATOR_BIN` names
//! another one, say an older build for "before" figures).
//!
//! Scenarios, one module each: [`insert`], [`burn_down`], [`refill`],
//! [`claim`], [`cap`]. Only the public API is used (`PgStore`, the `Store`
//! trait, `testing::start_cluster`, `MockProvider`, the binary and its
//! settings), so the same harness measures older builds. Progress goes to
//! stderr; the logs of child processes to `target/bench/logs/`. Every child
//! is stopped when the command ends or fails (the servers and PostgreSQL
//! also when it is killed; pgbench, wrk and the graphile-worker processes
//! end by themselves); every wait is bounded.

mod burn_down;
mod cap;
mod claim;
mod cluster;
mod insert;
mod machine;
mod mock;
mod process;
mod refill;
mod report;
mod seed;
mod server;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use clap::{Parser, ValueEnum};

use crate::cluster::Pg;
use crate::report::Section;

/// When the command started: progress lines show the time since.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// One progress line on stderr, prefixed with the seconds since the start.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:>7.1}s] {}",
            $crate::STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}
pub(crate) use progress;

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Runs the benchmarks and writes BENCHMARKS.md")]
struct Args {
    /// Where to write the Markdown report.
    #[arg(long)]
    out: PathBuf,
    /// Runs of each scenario; figures are min / median / max over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Shrinks every size, for a smoke run of a minute or two.
    #[arg(long)]
    quick: bool,
    /// Runs only these scenarios (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

/// A scenario, by its `--only` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// pgbench single-row INSERT vs `POST /calls`.
    Insert,
    /// graphile-worker no-op burn-down vs ours.
    BurnDown,
    /// Slot refill latency and cap utilisation, one and two nodes.
    Refill,
    /// `Store::claim` and `GET /metrics` latency by queue size and backlog.
    Claim,
    /// Time to fill a cap of 2,000.
    Cap,
}

/// What every scenario needs: the cluster, the binaries, the sizes.
#[derive(Debug)]
pub(crate) struct Bench {
    /// The throwaway cluster and its admin connection.
    pub pg: Pg,
    /// Runs per scenario.
    pub runs: u32,
    /// Smaller sizes (`--quick`).
    pub quick: bool,
    /// The `orchestrator` binary.
    pub orchestrator: PathBuf,
    /// Where graphile-worker is installed (`node_modules` and `burn.mjs`).
    pub graphile: PathBuf,
    /// Where child processes write their logs and scripts.
    pub logs: PathBuf,
    /// The repository's `bench/` directory (`post.lua`).
    pub scripts: PathBuf,
}

impl Bench {
    /// `full`, or `quick` under `--quick`.
    pub(crate) fn size<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    STARTED.get_or_init(Instant::now);
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            progress!("benchmarks failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let orchestrator = std::env::var_os("ORCHESTRATOR_BIN")
        .map_or_else(|| target.join("release/orchestrator"), PathBuf::from);
    ensure!(
        orchestrator.is_file(),
        "no orchestrator binary at {} (build it with `cargo build --release -p orchestrator-http --bins`, or set ORCHESTRATOR_BIN)",
        orchestrator.display()
    );
    let graphile = target.join("bench/graphile");
    let logs = target.join("bench/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let scenarios = if args.only.is_empty() {
        vec![
            Scenario::Insert,
            Scenario::BurnDown,
            Scenario::Refill,
            Scenario::Claim,
            Scenario::Cap,
        ]
    } else {
        args.only.clone()
    };
    let machine = machine::Machine::read(&root, &orchestrator, &graphile).await;
    progress!("starting PostgreSQL");
    let pg = Pg::start().await?;
    let bench = Bench {
        pg,
        runs: args.runs,
        quick: args.quick,
        orchestrator,
        graphile,
        logs,
        scripts: root.join("bench"),
    };
    let mut sections: Vec<Section> = Vec::new();
    for scenario in scenarios {
        progress!("== {scenario:?}");
        let section = match scenario {
            Scenario::Insert => insert::run(&bench).await,
            Scenario::BurnDown => burn_down::run(&bench).await,
            Scenario::Refill => refill::run(&bench).await,
            Scenario::Claim => claim::run(&bench).await,
            Scenario::Cap => cap::run(&bench).await,
        }
        .with_context(|| format!("scenario {scenario:?}"))?;
        sections.push(section);
    }
    let settings = bench.pg.settings.clone();
    let mut pg = bench.pg;
    pg.stop();
    let elapsed = STARTED.get_or_init(Instant::now).elapsed();
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let text = report::render(
        &report::Header {
            machine: &machine,
            settings: &settings,
            runs: args.runs,
            quick: args.quick,
            command: &command,
            elapsed,
            load_at_end: machine::load_average(),
        },
        &sections,
    );
    std::fs::write(&args.out, text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    progress!(
        "wrote {} in {:.1} min",
        args.out.display(),
        elapsed.as_secs_f64() / 60.0
    );
    Ok(())
}
