//! What a scenario reports, and the Markdown file made of it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::machine::Machine;
use crate::stats::{format, quantile, sorted};

/// One figure, one sample per run.
#[derive(Clone, Debug)]
pub(crate) struct Figure {
    /// What it is, e.g. "`POST /calls`, 32 connections: throughput".
    pub name: String,
    /// Its unit, e.g. "req/s", "ms".
    pub unit: &'static str,
    /// One value per run, in run order.
    pub samples: Vec<f64>,
}

impl Figure {
    /// A figure with no samples yet.
    pub(crate) fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            unit,
            samples: Vec::new(),
        }
    }

    /// The median over runs (the lower middle one for an even count).
    pub(crate) fn median(&self) -> f64 {
        quantile(&sorted(self.samples.clone()), 0.5)
    }
}

/// Ours ÷ the reference, from the medians of two figures.
#[derive(Clone, Debug)]
pub(crate) struct Ratio {
    /// What is compared.
    pub name: String,
    /// Our figure's median, formatted with its unit.
    pub ours: String,
    /// The reference's median, formatted with its unit.
    pub reference: String,
    /// ours ÷ reference.
    pub value: f64,
}

impl Ratio {
    /// The ratio of the medians of `ours` and `reference`.
    pub(crate) fn of(name: impl Into<String>, ours: &Figure, reference: &Figure) -> Self {
        Self {
            name: name.into(),
            ours: format!("{} {}", format(ours.median()), ours.unit),
            reference: format!("{} {}", format(reference.median()), reference.unit),
            value: ours.median() / reference.median(),
        }
    }
}

/// A target of the issue, with what this run measured.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The goal, e.g. "refill p99 ≤ 5 ms, one node".
    pub goal: String,
    /// What was measured (median over runs), e.g. "8.1 ms".
    pub measured: String,
    /// Whether the measurement meets the goal.
    pub met: bool,
}

/// What one scenario reports.
#[derive(Clone, Debug, Default)]
pub(crate) struct Section {
    /// The heading.
    pub title: String,
    /// Paragraphs saying what was measured and how.
    pub about: Vec<String>,
    /// The figures, in table order.
    pub figures: Vec<Figure>,
    /// Markdown blocks after the figures (profiles).
    pub details: Vec<String>,
    /// Ratios ours ÷ reference.
    pub ratios: Vec<Ratio>,
    /// The targets this scenario measures.
    pub targets: Vec<Target>,
}

/// The report's header.
#[derive(Debug)]
pub(crate) struct Header<'a> {
    /// Where it ran.
    pub machine: &'a Machine,
    /// PostgreSQL settings as the server reported them, `(name, value)`.
    pub settings: &'a [(String, String)],
    /// Runs per scenario.
    pub runs: u32,
    /// Whether sizes were shrunk.
    pub quick: bool,
    /// The command's arguments.
    pub command: &'a str,
    /// How long the whole command took.
    pub elapsed: Duration,
    /// The load averages when it ended.
    pub load_at_end: String,
}

/// The Markdown report.
pub(crate) fn render(header: &Header<'_>, sections: &[Section]) -> String {
    let mut out = String::new();
    let machine = header.machine;
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `bash bench/run` (`cargo run --release --example benchmarks -- {}`) in {:.1} minutes. \
         Every figure below was measured in that run: each scenario ran {} time{}, and each figure is \
         given as min / median / max over the runs (one value per run). Ratios are ours ÷ reference, \
         from the medians.{}\n",
        header.command,
        header.elapsed.as_secs_f64() / 60.0,
        header.runs,
        if header.runs == 1 { "" } else { "s" },
        if header.quick {
            " **`--quick`: every size shrunk for a smoke run; these figures are not comparable with a full run.**"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "## Machine\n\n| | |\n|---|---|");
    for (name, value) in &machine.rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    let _ = writeln!(
        out,
        "| load average (1, 5, 15 min) at the end | {} |",
        header.load_at_end
    );
    let _ = writeln!(
        out,
        "\n## PostgreSQL\n\nA throwaway cluster started for this run (`orchestrator_pg::testing::start_cluster`), \
         on 127.0.0.1, user `postgres`, stopped at the end. Settings as the server reported them \
         (`current_setting`):\n\n| setting | value |\n|---|---|"
    );
    for (name, value) in header.settings {
        let _ = writeln!(out, "| `{name}` | `{value}` |");
    }
    let ratios: Vec<&Ratio> = sections.iter().flat_map(|s| &s.ratios).collect();
    let targets: Vec<&Target> = sections.iter().flat_map(|s| &s.targets).collect();
    if !ratios.is_empty() {
        let _ = writeln!(
            out,
            "\n## Ratios\n\n| figure | ours (median) | reference (median) | ratio |\n|---|---|---|---|"
        );
        for ratio in ratios {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} |",
                ratio.name, ratio.ours, ratio.reference, ratio.value
            );
        }
    }
    if !targets.is_empty() {
        let _ = writeln!(
            out,
            "\n## Targets\n\nThe issue's targets, against the medians of this run.\n\n| target | measured | |\n|---|---|---|"
        );
        for target in targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                target.goal,
                target.measured,
                if target.met { "met" } else { "**missed**" }
            );
        }
    }
    for section in sections {
        let _ = writeln!(out, "\n## {}\n", section.title);
        for paragraph in &section.about {
            let _ = writeln!(out, "{paragraph}\n");
        }
        let _ = writeln!(
            out,
            "| figure | unit | min | median | max | runs |\n|---|---|---|---|---|---|"
        );
        for figure in &section.figures {
            let values = sorted(figure.samples.clone());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                figure.name,
                figure.unit,
                format(values[0]),
                format(figure.median()),
                format(values[values.len() - 1]),
                figure
                    .samples
                    .iter()
                    .map(|value| format(*value))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for block in &section.details {
            let _ = writeln!(out, "\n{block}");
        }
    }
    out
}
