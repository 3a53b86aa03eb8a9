//! Readies the replica beside this node for a promotion ahead of time: its kind may set now,
//! at leisure, what a promotion would otherwise have to set while clients wait
//! (PostgreSQL: `default_transaction_read_only = on` in its configuration, so that a
//! promoted replica is born refusing writes without an `ALTER SYSTEM`, whose fsync is the
//! slowest and least steady part of a promotion on many disks).
//!
//! Only a member this node sees as an answering replica, while the cluster has another
//! primary and no failover runs; once per stretch of such verdicts (a member that went down,
//! was rejoined or became the primary is readied again), and after a failure again a while
//! later. A promotion never depends on it: one that finds the member not ready sets what it
//! needs itself.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Action, Mono, Out, Outcome, Purpose, View};
use crate::group::Health;

/// How long readying a replica may take.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a failure the next attempt waits.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// An effect of the preparer in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    group: String,
}

#[derive(Clone, Debug, Default)]
struct Readying {
    busy: bool,
    /// Ready for the stretch of replica verdicts now running.
    ready: bool,
    retry_at: Option<Mono>,
}

/// The preparer of every replica beside this node.
#[derive(Clone, Debug, Default)]
pub struct Preparer {
    groups: BTreeMap<String, Readying>,
}

impl Preparer {
    pub(super) fn drive(&mut self, view: &View<'_>, out: &mut Out<'_>, verdicts: &super::verdicts::Reporter) {
        let now = view.now();
        self.groups.retain(|group, _| view.policy(group).and_then(|policy| view.local_member(policy)).is_some());
        for (policy, member) in view.local_members() {
            let group = policy.name.as_str();
            let entry = self.groups.entry(group.to_string()).or_default();
            if entry.busy {
                continue;
            }
            let Some(state) = view.group_state(group) else { continue };
            let replica = state.primary.as_deref().is_some_and(|primary| primary != member.name)
                && verdicts.current(group, &member.name).is_some_and(|verdict| {
                    verdict.health == Health::Up && verdict.facts.as_ref().is_some_and(|facts| facts.in_recovery)
                });
            if !replica {
                // Whatever happens to it next (a rejoin, a restart, a promotion and a lift)
                // may undo what was set: it is readied again once it answers as a replica.
                entry.ready = false;
                continue;
            }
            if entry.ready || state.running.is_some() || entry.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            let pending = Purpose::Prepare(Pending { group: group.to_string() });
            if out.act_alone(pending, group, &member.name, Action::PrepareReplica, PREPARE_TIMEOUT).is_some() {
                entry.busy = true;
            }
        }
    }

    pub(super) fn done(&mut self, view: &View<'_>, pending: Pending, outcome: Outcome) {
        let Some(entry) = self.groups.get_mut(&pending.group) else { return };
        entry.busy = false;
        match outcome {
            Outcome::Acted(Ok(report)) => {
                tracing::debug!(group = %pending.group, detail = %report.detail, "replica ready for a promotion");
                entry.ready = true;
                entry.retry_at = None;
            }
            Outcome::Acted(Err(failure)) => {
                tracing::info!(group = %pending.group, %failure, "replica not readied for a promotion; trying again later");
                entry.retry_at = Some(view.now() + RETRY_AFTER);
            }
            _ => entry.retry_at = Some(view.now() + RETRY_AFTER),
        }
    }
}
