//! What a chaos run leaves behind: the faults it injected, what every group's primary was
//! over time, every write the clients attempted, and what the checkers concluded. The
//! runner fills a [`RunRecord`]; the report renders it; nothing here does any I/O.
//!
//! Every instant is microseconds since the run started, on the one monotonic clock of the
//! machine that runs the lab (all hosts are namespaces of it), so comparing two instants
//! never involves a clock offset.

use serde::{Deserialize, Serialize};

pub use crate::history::WriteRecord;

/// One whole run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRecord {
    /// The scenario's name ("seed 17" for a generated one).
    pub name: String,
    /// The seed a generated schedule came from.
    pub seed: Option<u64>,
    /// The shell command that runs this schedule again.
    pub reproduce: String,
    /// Wall-clock start of the run, Unix milliseconds (for the reader only).
    pub started_unix_ms: u64,
    /// How long the run took, in microseconds.
    pub duration_us: u64,
    /// The faults, in order of injection.
    pub faults: Vec<FaultEvent>,
    /// The groups the lab ran.
    pub groups: Vec<GroupRecord>,
    /// Every check made, passed or not.
    pub checks: Vec<CheckResult>,
}

impl RunRecord {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }
}

/// One fault as injected.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultEvent {
    /// When it was injected.
    pub at_us: u64,
    /// When it was healed, if it was.
    pub healed_at_us: Option<u64>,
    /// What it was, resolved to hosts ("cut dc1 (primary of main)").
    pub description: String,
    /// The fault's kind, as in a scenario file ("cut", "partition", ...).
    pub kind: String,
}

/// One group over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's name.
    pub name: String,
    /// "postgres" or "redis".
    pub kind: String,
    /// Whether acknowledged writes must survive any failover (strict synchronous mode).
    pub synchronous: bool,
    /// The members, in lab order (member i lives in datacenter i+1).
    pub members: Vec<String>,
    /// Which member the cluster recorded as primary, and when (from the nodes' status).
    pub primaries: Vec<PrimarySpan>,
    /// Every write attempted by the group's clients.
    pub writes: Vec<WriteRecord>,
    /// Every change of primary, with its recovery time.
    pub failovers: Vec<Failover>,
}

/// A stretch of time during which the cluster recorded one member as the group's primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimarySpan {
    /// The member.
    pub member: String,
    /// The group's epoch over the span.
    pub epoch: u64,
    /// From.
    pub from_us: u64,
    /// To (the end of the run for the last span).
    pub to_us: u64,
}

/// One change of primary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failover {
    /// The member that was primary before.
    pub from: String,
    /// The member that is primary after.
    pub to: String,
    /// When the cluster recorded the new primary.
    pub recorded_at_us: u64,
    /// The fault that caused it, as an index into [`RunRecord::faults`], if one did.
    pub fault: Option<usize>,
    /// From the fault to the first write the new primary acknowledged, in microseconds.
    pub rto_us: Option<u64>,
}

/// What one checker concluded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckResult {
    /// The checker ("dual primary", "lost writes", "failover in time", ...).
    pub name: String,
    /// The group it judged, if it judges one.
    pub group: Option<String>,
    /// Whether it passed.
    pub passed: bool,
    /// What it found, in a sentence a person can read.
    pub detail: String,
}
