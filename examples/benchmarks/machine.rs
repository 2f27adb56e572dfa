//! Where the benchmarks ran: hardware, date, code and tool versions.

use std::path::Path;
use std::process::Command;

/// Rows of the report's machine table, `(name, value)`.
#[derive(Debug)]
pub(crate) struct Machine {
    /// In table order.
    pub rows: Vec<(String, String)>,
}

impl Machine {
    /// Reads what can be read; a missing piece reads "unknown".
    pub(crate) async fn read(root: &Path, orchestrator: &Path, graphile: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib as f64 / 1_048_576.0),
            );
        let commit = run(root, "git", &["rev-parse", "HEAD"]);
        let dirty = !run(root, "git", &["status", "--porcelain"]).is_empty();
        let graphile_version =
            std::fs::read_to_string(graphile.join("node_modules/graphile-worker/package.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|json| json["version"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "not installed".to_owned());
        let rows = vec![
            (
                "CPU".to_owned(),
                format!("{model}, {cores} cores available"),
            ),
            ("memory".to_owned(), memory),
            ("kernel".to_owned(), run(root, "uname", &["-sr"])),
            (
                "load average (1, 5, 15 min) at the start".to_owned(),
                load_average(),
            ),
            (
                "date (UTC)".to_owned(),
                chrono::Utc::now().format("%Y-%m-%d %H:%M").to_string(),
            ),
            (
                "git commit".to_owned(),
                format!(
                    "{commit}{}",
                    if dirty {
                        " (with uncommitted changes)"
                    } else {
                        ""
                    }
                ),
            ),
            (
                "orchestrator binary".to_owned(),
                format!(
                    "`{}`{}",
                    orchestrator.display(),
                    if std::env::var_os("ORCHESTRATOR_BIN").is_some() {
                        " (from `ORCHESTRATOR_BIN`)"
                    } else {
                        ""
                    }
                ),
            ),
            ("rustc".to_owned(), run(root, "rustc", &["--version"])),
            ("node".to_owned(), run(root, "node", &["--version"])),
            ("graphile-worker".to_owned(), graphile_version),
            (
                "wrk".to_owned(),
                // "wrk 4.1.0 [epoll] Copyright (C) ...": the version part.
                first_line(&run_all(root, "wrk", &["--version"]))
                    .split(" Copyright")
                    .next()
                    .unwrap_or("unknown")
                    .to_owned(),
            ),
            ("pgbench".to_owned(), run(root, "pgbench", &["--version"])),
        ];
        Self { rows }
    }
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), or "unknown":
/// other work on the machine shows here.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The trimmed stdout of a command, or "unknown".
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |output| String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
}

/// stdout and stderr of a command whatever its status (`wrk --version`
/// prints to stdout and exits 1).
fn run_all(dir: &Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map_or_else(
            |_| "unknown".to_owned(),
            |output| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            },
        )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("unknown").trim().to_owned()
}
