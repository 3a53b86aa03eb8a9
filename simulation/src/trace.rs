//! The trace of a run: one short line per thing worth reading when a run fails (faults
//! injected and healed, leaders, failovers begun and finished, promotions, fences, lifts,
//! guard stops), each stamped with true time.

use std::fmt::Write as _;

use crate::clock::Micros;

/// The lines of one run.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    lines: Vec<String>,
}

impl Trace {
    /// Notes `what` at true time `at`.
    pub fn note(&mut self, at: Micros, what: impl AsRef<str>) {
        let mut line = String::with_capacity(16 + what.as_ref().len());
        let _ = write!(line, "{:>9.3}s  {}", at as f64 / 1e6, what.as_ref());
        self.lines.push(line);
    }

    /// The lines so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The lines, taken.
    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

/// Formats true time for messages: "12.345 s".
pub fn seconds(at: Micros) -> String {
    format!("{:.3} s", at as f64 / 1e6)
}
