//! The checkers: each a small pure function of what the world recorded, stating in its doc
//! sentence the property it holds the cluster to. The tests at the end show each one bite on
//! a doctored history.
//!
//! | checker | when it runs |
//! |---|---|
//! | [`one_writer`] | after every event that changes a server |
//! | [`promotion_keeps_acknowledged_writes`] | when a promotion lands (strict groups) |
//! | [`promoted_once`] | when a promotion lands |
//! | [`step_timed_by_elapsed_time`] | when a step's start or failure commits |
//! | [`runs_finished_once`], [`converged`] | at the end of the run |

use std::collections::BTreeMap;

use vigil_consensus::ClusterState;
use vigil_consensus::coordinator::driver::{HOST_STEP_TIMEOUT, RETRY_AFTER};

use crate::clock::Micros;
use crate::servers::Group;
use crate::trace::seconds;

/// A guarantee broken, when and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// True time, µs since the run began.
    pub at_us: Micros,
    /// Which checker found it.
    pub checker: &'static str,
    /// What it found.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}: {}", seconds(self.at_us), self.checker, self.detail)
    }
}

/// Checker 1: never two members of a group writable at the same instant of true time.
pub fn one_writer(group: &Group, at_us: Micros) -> Option<Violation> {
    let writable = group.writable();
    (writable.len() > 1).then(|| Violation {
        at_us,
        checker: "one writer",
        detail: format!(
            "{} has {} writable members at once: {}",
            group.name,
            writable.len(),
            writable.iter().map(|&index| group.servers[index].name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Checker 2: in strict synchronous mode, a member promoted from position (`branch`, `lsn`)
/// holds every write acknowledged on the history it continues.
pub fn promotion_keeps_acknowledged_writes(
    group: &Group,
    member: &str,
    branch: u32,
    lsn: u64,
    at_us: Micros,
) -> Option<Violation> {
    if !group.strict {
        return None;
    }
    // Walk the promoted member's history back to the first branch: on each branch, what it
    // holds ends at its own position or at the fork it left that branch by.
    let (mut walk_branch, mut holds_up_to) = (branch, lsn);
    loop {
        if let Some(&acknowledged) = group.acknowledged.get(&walk_branch)
            && acknowledged > holds_up_to
        {
            return Some(Violation {
                at_us,
                checker: "no acknowledged write lost",
                detail: format!(
                    "{member} of {} was promoted holding branch {walk_branch} up to {holds_up_to}, but writes up to \
                     {acknowledged} had been acknowledged on it",
                    group.name
                ),
            });
        }
        match group.branches[walk_branch as usize].parent {
            Some((parent, fork)) => (walk_branch, holds_up_to) = (parent, holds_up_to.min(fork)),
            None => return None,
        }
    }
}

/// What the committed log and the servers said about failover runs.
#[derive(Clone, Debug, Default)]
pub struct RunLedger {
    /// Runs begun, by (group, run id), with when.
    pub begun: BTreeMap<(String, u64), Micros>,
    /// How many times each run was finished (an applied `FinishFailover`).
    pub finished: BTreeMap<(String, u64), u32>,
    /// How many promotion landings turned a replica into a primary, by (group, epoch).
    pub promotions: BTreeMap<(String, u64), u32>,
    /// When each step's current start committed, by (group, run, step).
    pub step_started_at: BTreeMap<(String, u64, usize), Micros>,
    /// When each step last failed, and at which log index, by (group, run, step).
    pub step_failed_at: BTreeMap<(String, u64, usize), (Micros, u64)>,
}

/// Checker 3a: every failover run begun is finished exactly once.
pub fn runs_finished_once(ledger: &RunLedger, at_us: Micros) -> Vec<Violation> {
    ledger
        .begun
        .iter()
        .filter_map(|(key, begun_at)| {
            let finished = ledger.finished.get(key).copied().unwrap_or(0);
            (finished != 1).then(|| Violation {
                at_us,
                checker: "runs finished once",
                detail: format!(
                    "run #{} of {} (begun at {}) was finished {finished} times",
                    key.1,
                    key.0,
                    seconds(*begun_at)
                ),
            })
        })
        .collect()
}

/// Checker 3b: no run promotes twice: at most one promotion landing turns a replica into a
/// primary for each epoch of a group. Counts the landing of `group`'s promotion into `epoch`.
pub fn promoted_once(
    ledger: &mut RunLedger,
    group: &str,
    member: &str,
    epoch: u64,
    at_us: Micros,
) -> Option<Violation> {
    let count = ledger.promotions.entry((group.to_string(), epoch)).or_default();
    *count += 1;
    (*count > 1).then(|| Violation {
        at_us,
        checker: "promoted once",
        detail: format!("{member} of {group} was promoted into epoch {epoch}: promotion number {count} of that epoch"),
    })
}

/// A step's start or failure, as committed.
#[derive(Clone, Copy, Debug)]
pub enum StepEvent<'a> {
    /// A start; `proposer_saw` is how far its proposer had applied when it proposed (`None`
    /// when no node proposed it).
    Started {
        /// The proposer's applied index.
        proposer_saw: Option<u64>,
    },
    /// A failure, with what it says.
    Failed {
        /// The step's result in words.
        detail: &'a str,
    },
}

/// Checker 5: step timeouts and retries are measured by the time that passed: a host-local
/// step is declared unfinished only after `HOST_STEP_TIMEOUT` of true time (less the clock
/// drift bound), and a failed step is started again by a leader that knew of the failure
/// only after `RETRY_AFTER`. (A new leader that resumes a step it saw started, before it
/// applied the step's failure, resumes rather than retries.) Call it when a step's start or
/// failure commits at log index `index`.
pub fn step_timed_by_elapsed_time(
    ledger: &mut RunLedger,
    key: (String, u64, usize),
    event: StepEvent<'_>,
    index: u64,
    at_us: Micros,
) -> Option<Violation> {
    // A node's clock may run up to 1 % faster than another's (and ours by less).
    let slack = |span: std::time::Duration| (span.as_micros() as f64 * 0.99) as Micros;
    match event {
        StepEvent::Started { proposer_saw } => {
            ledger.step_started_at.insert(key.clone(), at_us);
            let (failed_at, failed_index) = ledger.step_failed_at.get(&key).copied()?;
            let elapsed = at_us.saturating_sub(failed_at);
            let a_retry = proposer_saw.is_some_and(|saw| saw >= failed_index);
            (a_retry && elapsed < slack(RETRY_AFTER)).then(|| Violation {
                at_us,
                checker: "steps timed by elapsed time",
                detail: format!(
                    "step {} of run #{} of {} was retried {} ms after it failed (the retry waits {} ms)",
                    key.2,
                    key.1,
                    key.0,
                    elapsed / 1000,
                    RETRY_AFTER.as_millis()
                ),
            })
        }
        StepEvent::Failed { detail } => {
            ledger.step_failed_at.insert(key.clone(), (at_us, index));
            let started_at = ledger.step_started_at.get(&key).copied()?;
            let elapsed = at_us.saturating_sub(started_at);
            (detail.contains("did not finish it within") && elapsed < slack(HOST_STEP_TIMEOUT)).then(|| Violation {
                at_us,
                checker: "steps timed by elapsed time",
                detail: format!(
                    "step {} of run #{} of {} was declared failed ({detail}) {} ms after it started",
                    key.2,
                    key.1,
                    key.0,
                    elapsed / 1000
                ),
            })
        }
    }
}

/// Checker 4 (liveness, after the settle phase): for each group, no failover runs, exactly
/// one member is writable, it is the primary in the leader's applied state, and every other
/// member runs and streams from it.
pub fn converged(groups: &[Group], leader_state: Option<&ClusterState>, at_us: Micros) -> Vec<Violation> {
    let violation = |detail: String| Violation { at_us, checker: "converged", detail };
    let Some(state) = leader_state else {
        return vec![violation("no effective leader at the end".to_string())];
    };
    let mut violations = Vec::new();
    for group in groups {
        let Some(group_state) = state.groups.get(&group.name) else {
            violations.push(violation(format!("{} is unknown to the leader", group.name)));
            continue;
        };
        if let Some(run) = &group_state.running {
            let step = run.current_step().map(|index| run.steps[index].step.to_string()).unwrap_or_default();
            violations.push(violation(format!("{}: run #{} still running (at step \"{step}\")", group.name, run.id)));
            continue;
        }
        let Some(primary) = group_state.primary.as_deref().and_then(|name| group.index_of(name)) else {
            violations.push(violation(format!("{}: the leader knows no primary", group.name)));
            continue;
        };
        let writable = group.writable();
        if writable != [primary] {
            let names: Vec<&str> = writable.iter().map(|&index| group.servers[index].name.as_str()).collect();
            let blocked =
                group_state.blocked.as_deref().map(|reason| format!(" (blocked: {reason})")).unwrap_or_default();
            violations.push(violation(format!(
                "{}: the primary is {}, but the writable members are [{}]{blocked}",
                group.name,
                group.servers[primary].name,
                names.join(", ")
            )));
            continue;
        }
        for (index, server) in group.servers.iter().enumerate() {
            if index != primary && !(server.running && server.streaming && server.upstream == Some(primary)) {
                let note =
                    group_state.member_notes.get(&server.name).map(|note| format!(" ({note})")).unwrap_or_default();
                violations.push(violation(format!(
                    "{}: {} does not stream from {} (running {}, primary {}, upstream {:?}, streaming {}){note}",
                    group.name,
                    server.name,
                    group.servers[primary].name,
                    server.running,
                    server.primary,
                    server.upstream.map(|upstream| group.servers[upstream].name.as_str()),
                    server.streaming
                )));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::{Kind, WRITE_BYTES};

    fn group(strict: bool) -> Group {
        Group::new("main", Kind::Postgres, strict, 3, 5432)
    }

    #[test]
    fn one_writer_bites_on_two_writable_members() {
        let mut doctored = group(true);
        assert_eq!(one_writer(&doctored, 0), None);
        doctored.servers[1].primary = true;
        let violation = one_writer(&doctored, 5).expect("two writers");
        assert!(violation.detail.contains("pg1, pg2"), "{violation}");
        doctored.servers[1].fenced = true;
        assert_eq!(one_writer(&doctored, 6), None, "a fenced primary takes no writes");
    }

    #[test]
    fn lost_writes_bite_when_the_promoted_member_lacks_an_acknowledged_write() {
        let mut doctored = group(true);
        doctored.acknowledged.insert(0, 10 * WRITE_BYTES);
        assert_eq!(promotion_keeps_acknowledged_writes(&doctored, "pg2", 0, 10 * WRITE_BYTES, 1), None);
        assert!(promotion_keeps_acknowledged_writes(&doctored, "pg2", 0, 9 * WRITE_BYTES, 1).is_some());
        // A member on a branch forked before the acknowledged writes lacks them too.
        doctored.servers[2].lsn = 5 * WRITE_BYTES;
        doctored.fork(2);
        assert!(promotion_keeps_acknowledged_writes(&doctored, "pg3", 1, 50 * WRITE_BYTES, 1).is_some());
        let mut asynchronous = group(false);
        asynchronous.acknowledged.insert(0, 10 * WRITE_BYTES);
        assert_eq!(promotion_keeps_acknowledged_writes(&asynchronous, "pg2", 0, 0, 1), None, "loss is allowed");
    }

    #[test]
    fn run_accounting_bites_on_a_run_never_finished_or_finished_twice_and_a_second_promotion() {
        let mut ledger = RunLedger::default();
        ledger.begun.insert(("main".into(), 0), 1);
        ledger.begun.insert(("main".into(), 1), 2);
        ledger.begun.insert(("cache".into(), 0), 3);
        ledger.finished.insert(("main".into(), 0), 1);
        ledger.finished.insert(("main".into(), 1), 2);
        let violations = runs_finished_once(&ledger, 9);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert_eq!(promoted_once(&mut ledger, "main", "pg2", 2, 4), None);
        assert!(promoted_once(&mut ledger, "main", "pg3", 2, 5).is_some());
    }

    #[test]
    fn step_timing_bites_on_an_early_give_up_and_an_instant_retry() {
        let mut ledger = RunLedger::default();
        let key = ("main".to_string(), 0, 0);
        let started = |saw| StepEvent::Started { proposer_saw: Some(saw) };
        let timed_out = StepEvent::Failed { detail: "node 1 did not finish it within 90 s" };
        assert_eq!(step_timed_by_elapsed_time(&mut ledger, key.clone(), started(9), 10, 1_000_000), None);
        let early = step_timed_by_elapsed_time(&mut ledger, key.clone(), timed_out, 20, 3_000_000);
        assert!(early.is_some(), "declared failed after 2 s");
        let resumed = step_timed_by_elapsed_time(&mut ledger, key.clone(), started(19), 21, 3_050_000);
        assert_eq!(resumed, None, "a leader that had not applied the failure resumes the step");
        let instant = step_timed_by_elapsed_time(&mut ledger, key.clone(), started(20), 22, 3_100_000);
        assert!(instant.is_some(), "retried 100 ms after the failure it knew of");
        let refused = StepEvent::Failed { detail: "refused" };
        assert_eq!(step_timed_by_elapsed_time(&mut ledger, key.clone(), refused, 30, 4_000_000), None);
        assert_eq!(step_timed_by_elapsed_time(&mut ledger, key, started(30), 31, 5_100_000), None, "after 1.1 s");
    }

    #[test]
    fn convergence_bites_on_a_run_left_running_two_writers_and_a_replica_not_streaming() {
        use vigil_consensus::group::GroupState;
        let mut groups = vec![group(true)];
        let mut state = ClusterState::default();
        assert_eq!(converged(&groups, None, 0).len(), 1, "no leader");
        state.groups.insert("main".into(), GroupState { primary: Some("pg1".into()), ..GroupState::default() });
        assert_eq!(converged(&groups, Some(&state), 0), Vec::new());
        groups[0].servers[2].streaming = false;
        assert_eq!(converged(&groups, Some(&state), 0).len(), 1, "pg3 does not stream");
        groups[0].servers[2].streaming = true;
        groups[0].servers[1].primary = true;
        assert_eq!(converged(&groups, Some(&state), 0).len(), 1, "two writable");
        groups[0].servers[1].primary = false;
        state.groups.get_mut("main").expect("main").primary = Some("pg2".into());
        assert_eq!(converged(&groups, Some(&state), 0).len(), 1, "the writable member is not the primary");
    }
}
