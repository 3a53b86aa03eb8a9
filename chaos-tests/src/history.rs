//! Histories of client writes recorded in the lab, and the checkers that judge them.
//!
//! A writer records every write it attempted: when it was answered (microseconds on the
//! one monotonic clock of the machine that runs the lab, so no clock offset between hosts
//! can blur an overlap), which member answered, whether it acknowledged, and the epoch it
//! held. The checkers are pure functions of such a history and of what the servers hold at
//! the end; the doctored histories in the tests below show that they fail when they must.
//!
//! A member is known to be writable from one acknowledged write to the next one the same
//! writer got from it with nothing refused or unanswered in between: an *acknowledged
//! span*. Two members whose spans overlap were both writable at once. A member that stops
//! and later becomes primary again simply starts a new span.

use std::collections::{BTreeMap, BTreeSet};

/// One write as a client saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteRecord {
    /// The client that made it ("dc1" for the one beside member 1, "client" for the
    /// application's, which goes wherever the writable member is).
    pub writer: String,
    /// When the write was sent, in microseconds on the lab machine's monotonic clock.
    pub sent_us: u64,
    /// When the answer came (or the client gave up), on the same clock.
    pub at_us: u64,
    /// The member that answered, or was asked.
    pub server: String,
    /// The value written; unique per write in a history.
    pub value: i64,
    /// Whether the server acknowledged it (committed, or `OK`).
    pub acknowledged: bool,
    /// The group's epoch as the acknowledging server held it, read atomically with the
    /// write.
    pub epoch: Option<u64>,
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
    /// Acknowledged writes that the final state does not hold and that were acknowledged
    /// earlier than the asynchronous bound allows: more than `bound_us` before their member
    /// stopped acknowledging.
    LossBeyondBound {
        /// The values, in order.
        values: Vec<i64>,
        /// The bound, in microseconds.
        bound_us: u64,
    },
    /// Writes acknowledged at an epoch lower than one acknowledged before them.
    StaleEpoch {
        /// The values, in order.
        values: Vec<i64>,
    },
}

/// A stretch of time over which one writer saw one member acknowledge every write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The writer.
    pub writer: String,
    /// The member.
    pub server: String,
    /// Its first acknowledgement.
    pub from_us: u64,
    /// Its last.
    pub to_us: u64,
}

/// Every acknowledged span in the history: per writer, in time order, a run of consecutive
/// acknowledged writes from one member.
pub fn acknowledged_spans(history: &[WriteRecord]) -> Vec<Span> {
    let mut by_writer: BTreeMap<&str, Vec<&WriteRecord>> = BTreeMap::new();
    for record in history {
        by_writer.entry(record.writer.as_str()).or_default().push(record);
    }
    let mut spans = Vec::new();
    for (writer, mut records) in by_writer {
        records.sort_by_key(|record| record.at_us);
        let mut open: Option<Span> = None;
        for record in records {
            match &mut open {
                Some(span) if record.acknowledged && span.server == record.server => span.to_us = record.at_us,
                _ => {
                    spans.extend(open.take());
                    if record.acknowledged {
                        open = Some(Span {
                            writer: writer.to_string(),
                            server: record.server.clone(),
                            from_us: record.at_us,
                            to_us: record.at_us,
                        });
                    }
                }
            }
        }
        spans.extend(open);
    }
    spans
}

/// Every pair of members whose acknowledged spans overlap: two writable primaries at once.
/// One violation per pair of members, with the largest overlap found.
pub fn dual_primaries(history: &[WriteRecord]) -> Vec<Violation> {
    let spans = acknowledged_spans(history);
    let mut worst: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (index, a) in spans.iter().enumerate() {
        for b in &spans[index + 1..] {
            if a.server == b.server {
                continue;
            }
            let start = a.from_us.max(b.from_us);
            let end = a.to_us.min(b.to_us);
            if start <= end {
                let (first, second) = if (a.from_us, &a.server) <= (b.from_us, &b.server) { (a, b) } else { (b, a) };
                let overlap = worst.entry((first.server.clone(), second.server.clone())).or_insert(0);
                *overlap = (*overlap).max(end - start);
            }
        }
    }
    worst
        .into_iter()
        .map(|((first, second), overlap_us)| Violation::DualPrimary { first, second, overlap_us })
        .collect()
}

/// Acknowledged writes made at a lower epoch than one already acknowledged, by any member,
/// before they were even sent: a primary the cluster had replaced still took writes. (A
/// write in flight while another member's first write at a higher epoch is acknowledged
/// read its epoch before that, and proves nothing.)
pub fn stale_epoch_writes(history: &[WriteRecord]) -> Option<Violation> {
    let mut acknowledged: Vec<&WriteRecord> =
        history.iter().filter(|record| record.acknowledged && record.epoch.is_some()).collect();
    acknowledged.sort_by_key(|record| record.at_us);
    let mut values = Vec::new();
    for record in &acknowledged {
        let epoch = record.epoch.unwrap_or(0);
        let newer_before = acknowledged
            .iter()
            .take_while(|earlier| earlier.at_us < record.sent_us)
            .any(|earlier| earlier.epoch.unwrap_or(0) > epoch);
        if newer_before {
            values.push(record.value);
        }
    }
    values.sort_unstable();
    (!values.is_empty()).then_some(Violation::StaleEpoch { values })
}

/// Acknowledged writes missing from `held`, what the group's primary holds at the end:
/// none may be missing in synchronous mode.
pub fn lost_writes(history: &[WriteRecord], held: &BTreeSet<i64>) -> Option<Violation> {
    let values: Vec<i64> = lost(history, held).map(|record| record.value).collect();
    (!values.is_empty()).then_some(Violation::LostWrites { values })
}

/// The asynchronous bound: a write may be lost only if it was acknowledged at most
/// `bound_us` before the member that acknowledged it stopped acknowledging (the end of its
/// span), that is, in the window where an old primary, cut off, still held its lease. Any
/// other lost write is a violation.
pub fn loss_beyond_bound(history: &[WriteRecord], held: &BTreeSet<i64>, bound_us: u64) -> Option<Violation> {
    let spans = acknowledged_spans(history);
    let values: Vec<i64> = lost(history, held)
        .filter(|record| {
            let end = spans
                .iter()
                .filter(|span| {
                    span.writer == record.writer
                        && span.server == record.server
                        && (span.from_us..=span.to_us).contains(&record.at_us)
                })
                .map(|span| span.to_us)
                .max()
                .unwrap_or(record.at_us);
            end - record.at_us > bound_us
        })
        .map(|record| record.value)
        .collect();
    (!values.is_empty()).then_some(Violation::LossBeyondBound { values, bound_us })
}

fn lost<'a>(history: &'a [WriteRecord], held: &'a BTreeSet<i64>) -> impl Iterator<Item = &'a WriteRecord> {
    history.iter().filter(|record| record.acknowledged && !held.contains(&record.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(writer: &str, at_ms: u64, server: &str, value: i64, epoch: Option<u64>) -> WriteRecord {
        WriteRecord {
            writer: writer.to_string(),
            sent_us: (at_ms * 1000).saturating_sub(1),
            at_us: at_ms * 1000,
            server: server.to_string(),
            value,
            acknowledged: epoch.is_some(),
            epoch,
        }
    }

    /// A clean failover seen by a writer beside each member: the old primary's last
    /// acknowledgement comes before the new one's first; refusals count for nothing.
    fn clean() -> Vec<WriteRecord> {
        vec![
            write("dc1", 0, "old", 1, Some(1)),
            write("dc1", 10, "old", 2, Some(1)),
            write("dc1", 20, "old", 3, None),
            write("dc2", 900, "new", 4, None),
            write("dc2", 1000, "new", 5, Some(2)),
            write("dc2", 1010, "new", 6, Some(2)),
        ]
    }

    #[test]
    fn a_clean_history_passes_every_checker() {
        let history = clean();
        assert!(dual_primaries(&history).is_empty());
        assert_eq!(stale_epoch_writes(&history), None);
        let held: BTreeSet<i64> = [1, 2, 5, 6].into();
        assert_eq!(lost_writes(&history, &held), None);
        assert_eq!(loss_beyond_bound(&history, &held, 0), None);
    }

    /// The doctored history: the old primary acknowledged one more write while the new one
    /// was taking writes. The checkers must bite, and say by how much.
    #[test]
    fn two_overlapping_primaries_are_caught() {
        let mut history = clean();
        history.push(write("dc1", 1005, "old", 7, Some(1)));
        history.push(write("dc1", 1008, "old", 8, Some(1)));
        assert_eq!(
            dual_primaries(&history),
            vec![Violation::DualPrimary { first: "new".into(), second: "old".into(), overlap_us: 3_000 }]
        );
        assert_eq!(stale_epoch_writes(&history), Some(Violation::StaleEpoch { values: vec![7, 8] }));
    }

    /// A write sent before another member's first acknowledgement at a higher epoch, and
    /// answered after it, read its epoch first: no violation.
    #[test]
    fn a_write_in_flight_across_a_promotion_is_not_stale() {
        let mut history = clean();
        let mut in_flight = write("dc1", 1003, "old", 7, Some(1));
        in_flight.sent_us = 995_000;
        history.push(in_flight);
        assert_eq!(stale_epoch_writes(&history), None);
    }

    /// A member that is primary twice, with another in between, is not a dual primary.
    #[test]
    fn a_member_primary_again_later_starts_a_new_span() {
        let mut history = clean();
        history.push(write("dc2", 1100, "new", 9, None));
        history.push(write("dc1", 2000, "old", 10, Some(3)));
        history.push(write("dc1", 2010, "old", 11, Some(3)));
        assert!(dual_primaries(&history).is_empty(), "{:?}", dual_primaries(&history));
        assert_eq!(stale_epoch_writes(&history), None);
    }

    /// The doctored state: an acknowledged write is missing at the end.
    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let held: BTreeSet<i64> = [1, 5, 6].into();
        assert_eq!(lost_writes(&clean(), &held), Some(Violation::LostWrites { values: vec![2] }));
    }

    /// Asynchronous mode: losing the last acknowledgements before the old primary stopped
    /// is within the bound; losing one acknowledged long before it stopped is not.
    #[test]
    fn asynchronous_loss_is_judged_against_the_bound() {
        let mut history = vec![write("dc1", 0, "old", 1, Some(1))];
        history.extend((1..=100).map(|index| write("dc1", index * 10, "old", index as i64 + 1, Some(1))));
        history.push(write("dc2", 2000, "new", 500, Some(2)));
        let all: BTreeSet<i64> = (1..=101).chain([500]).collect();
        let without_last: BTreeSet<i64> = all.iter().copied().filter(|value| *value < 95).collect();
        assert_eq!(loss_beyond_bound(&history, &without_last, 100_000), None);
        let without_early: BTreeSet<i64> = all.iter().copied().filter(|value| *value != 3).collect();
        assert_eq!(
            loss_beyond_bound(&history, &without_early, 100_000),
            Some(Violation::LossBeyondBound { values: vec![3], bound_us: 100_000 })
        );
    }
}
