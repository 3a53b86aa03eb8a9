//! The soak report: how many schedules ran, for how long, and the first violation of every
//! seed that failed, as Markdown.

use std::fmt::Write as _;

use crate::config::RunResult;

/// What a soak found.
#[derive(Clone, Debug, Default)]
pub struct Soak {
    /// The first seed run.
    pub first_seed: u64,
    /// How many schedules ran.
    pub schedules: u64,
    /// Wall-clock seconds the soak took.
    pub seconds: f64,
    /// The mutation the coordinators ran with, if any.
    pub mutation: Option<String>,
    /// The runs that failed.
    pub failed: Vec<RunResult>,
}

impl Soak {
    /// The report, as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# vigil simulation soak\n");
        let _ = writeln!(out, "- schedules run: {}", self.schedules);
        let _ = writeln!(out, "- seeds: {} to {}", self.first_seed, self.first_seed + self.schedules.saturating_sub(1));
        let _ = writeln!(out, "- seconds: {:.1}", self.seconds);
        if let Some(mutation) = &self.mutation {
            let _ = writeln!(out, "- mutation: {mutation}");
        }
        let _ = writeln!(out, "- failed: {}\n", self.failed.len());
        if self.failed.is_empty() {
            let _ = writeln!(out, "No violation.");
            return out;
        }
        let _ = writeln!(out, "| seed | first violation | reproduce |");
        let _ = writeln!(out, "|---|---|---|");
        for run in &self.failed {
            let first = run.violations.first().map(ToString::to_string).unwrap_or_default().replace('|', "\\|");
            let _ = writeln!(out, "| {} | {first} | `vigil-sim run --seed {}` |", run.seed, run.seed);
        }
        out
    }
}
