//! Histories of client writes recorded in the lab, and the checkers that judge them.
//!
//! A writer records every write it attempted: when it was answered (microseconds on the
//! one monotonic clock of the machine that runs the lab, so no clock offset between hosts
//! can blur an overlap), which server answered, and whether the write was acknowledged.
//! The checkers are pure functions of such a history and of what the servers hold at the
//! end; the doctored histories in the tests below show that they fail when they must.
//!
//! Scope of this first version: a history covers one change of primary per group (the
//! shape of a single fault); a server that becomes primary again later needs the run's
//! promotion times to split its writes into eras, which the scenario runner will provide.

use std::collections::{BTreeMap, BTreeSet};

/// One write as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    /// When the answer came, in microseconds on the lab machine's monotonic clock.
    pub at_us: u64,
    /// The server that answered ("host:port").
    pub server: String,
    /// The value written; unique per write in a history.
    pub value: i64,
    /// Whether the server acknowledged it (committed, or `OK`).
    pub acknowledged: bool,
}

/// What a checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two servers acknowledged writes in overlapping spans of time.
    DualPrimary {
        /// The server whose acknowledgements started first.
        first: String,
        /// The other one.
        second: String,
        /// How long both acknowledged writes, in microseconds.
        overlap_us: u64,
    },
    /// Acknowledged writes that the final state does not hold.
    LostWrites {
        /// The values lost, in order.
        values: Vec<i64>,
    },
}

/// The span from each server's first acknowledged write to its last.
pub fn acknowledged_spans(history: &[WriteRecord]) -> BTreeMap<String, (u64, u64)> {
    let mut spans: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for record in history.iter().filter(|record| record.acknowledged) {
        let span = spans.entry(record.server.clone()).or_insert((record.at_us, record.at_us));
        span.0 = span.0.min(record.at_us);
        span.1 = span.1.max(record.at_us);
    }
    spans
}

/// Every pair of servers whose acknowledged spans overlap: two writable primaries at once.
pub fn dual_primaries(history: &[WriteRecord]) -> Vec<Violation> {
    let spans: Vec<(String, (u64, u64))> = acknowledged_spans(history).into_iter().collect();
    let mut violations = Vec::new();
    for (index, (a, (a_first, a_last))) in spans.iter().enumerate() {
        for (b, (b_first, b_last)) in &spans[index + 1..] {
            let start = (*a_first).max(*b_first);
            let end = (*a_last).min(*b_last);
            if start <= end {
                let (first, second) = if a_first <= b_first { (a, b) } else { (b, a) };
                violations.push(Violation::DualPrimary {
                    first: first.clone(),
                    second: second.clone(),
                    overlap_us: end - start,
                });
            }
        }
    }
    violations
}

/// Acknowledged writes missing from `held`, what the group's primary holds at the end.
pub fn lost_writes(history: &[WriteRecord], held: &BTreeSet<i64>) -> Option<Violation> {
    let values: Vec<i64> = history
        .iter()
        .filter(|record| record.acknowledged && !held.contains(&record.value))
        .map(|record| record.value)
        .collect();
    (!values.is_empty()).then_some(Violation::LostWrites { values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(at_ms: u64, server: &str, value: i64, acknowledged: bool) -> WriteRecord {
        WriteRecord { at_us: at_ms * 1000, server: server.to_string(), value, acknowledged }
    }

    /// A clean failover: the old primary's last acknowledgement comes before the new one's
    /// first, and refused writes in between count for nothing.
    fn clean() -> Vec<WriteRecord> {
        vec![
            write(0, "old", 1, true),
            write(10, "old", 2, true),
            write(20, "old", 3, false),
            write(900, "new", 4, false),
            write(1000, "new", 5, true),
            write(1010, "new", 6, true),
        ]
    }

    #[test]
    fn a_clean_history_passes_both_checkers() {
        let history = clean();
        assert!(dual_primaries(&history).is_empty());
        let held: BTreeSet<i64> = [1, 2, 5, 6].into();
        assert_eq!(lost_writes(&history, &held), None);
    }

    /// The doctored history: the old primary acknowledged one more write after the new one
    /// took its first. The checker must bite, and say by how much.
    #[test]
    fn two_overlapping_primaries_are_caught() {
        let mut history = clean();
        history.push(write(1005, "old", 7, true));
        assert_eq!(
            dual_primaries(&history),
            vec![Violation::DualPrimary { first: "old".into(), second: "new".into(), overlap_us: 5_000 }]
        );
    }

    /// The doctored state: an acknowledged write is missing at the end.
    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let held: BTreeSet<i64> = [1, 5, 6].into();
        assert_eq!(lost_writes(&clean(), &held), Some(Violation::LostWrites { values: vec![2] }));
    }
}
