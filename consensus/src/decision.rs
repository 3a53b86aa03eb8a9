//! The failover decision: a pure function of the replicated state and the time.
//!
//! Architecture Invariant: no IO, no clock, no randomness. `now_ms` is an argument (the
//! leader's wall clock), iteration is in `BTreeMap` order, and ties are broken by name,
//! so the same inputs always give the same decision. The deterministic tests and property
//! tests in `consensus/tests/decision.rs` hammer this module.

use std::collections::{BTreeMap, BTreeSet};

use crate::group::{FailoverKind, GroupState, Health, Step, VerdictReport};
use crate::spec::{GroupPolicy, SyncMode};
use crate::types::{NodeId, NodeInfo};

/// A verdict older than this (by the observer's clock against the leader's) no longer
/// counts. Nodes refresh their verdicts every few seconds, so only a node that stopped
/// reporting (dead or cut off) goes stale; the bound is coarse enough for clocks kept
/// within seconds by NTP.
pub const STALE_AFTER_MS: u64 = 15_000;

/// Everything the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Situation<'a> {
    /// The group's spec.
    pub spec: &'a GroupPolicy,
    /// The group's replicated state.
    pub state: &'a GroupState,
    /// The Raft voters now.
    pub voters: &'a BTreeSet<NodeId>,
    /// Every node, for datacenters.
    pub nodes: &'a BTreeMap<NodeId, NodeInfo>,
    /// The leader's wall clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// Whether the primary's lease has run out (or was released) by the leader's own clock:
    /// nobody guarantees its writes any more, so a primary that refuses writes is failed.
    pub primary_lease_run_out: bool,
    /// Nodes the leader has not heard from lately: a member beside one is never promoted,
    /// since a promoted member takes writes only once its own node lifts its fence.
    pub unreachable: &'a BTreeSet<NodeId>,
}

/// What the leader should do about a group now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Nothing,
    /// Record `member` as the primary (none is recorded yet).
    RecordPrimary {
        /// The member.
        member: String,
        /// The epoch it carries.
        epoch: Option<u64>,
    },
    /// Start a failover.
    Begin(Plan),
    /// The primary is down but no failover can happen; record why.
    Blocked {
        /// Why, in words.
        reason: String,
    },
    /// A recorded block no longer applies.
    Unblock,
}

/// A failover ready to begin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Automatic, switchover or forced.
    pub kind: FailoverKind,
    /// Why.
    pub reason: String,
    /// The primary being replaced.
    pub old_primary: Option<String>,
    /// The member to promote.
    pub candidate: String,
    /// The steps.
    pub steps: Vec<Step>,
    /// When the first node saw the primary fail.
    pub detected_at_ms: Option<u64>,
    /// The old primary's last known WAL position.
    pub old_primary_lsn: Option<u64>,
    /// The candidate's WAL position.
    pub candidate_lsn: Option<u64>,
}

impl Situation<'_> {
    fn fresh<'s>(&'s self, member: &str) -> impl Iterator<Item = (NodeId, &'s VerdictReport)> + 's {
        let now_ms = self.now_ms;
        self.state
            .verdicts
            .get(member)
            .into_iter()
            .flatten()
            .filter(move |(_, report)| now_ms.saturating_sub(report.observed_at_ms) <= STALE_AFTER_MS)
            .map(|(node, report)| (*node, report))
    }

    /// The voters whose fresh verdict on `member` is down, and the earliest time one of
    /// them saw it fail.
    fn down_voters(&self, member: &str) -> (BTreeSet<NodeId>, Option<u64>) {
        let mut voters = BTreeSet::new();
        let mut since = None::<u64>;
        for (node, report) in self.fresh(member) {
            if report.verdict.health == Health::Down && self.voters.contains(&node) {
                voters.insert(node);
                since = Some(since.map_or(report.since_ms, |earliest| earliest.min(report.since_ms)));
            }
        }
        (voters, since)
    }

    /// Whether a majority of voters see `member` down.
    pub fn objectively_down(&self, member: &str) -> bool {
        let (down, _) = self.down_voters(member);
        down.len() * 2 > self.voters.len()
    }

    /// Whether a majority of voters see `member` either down or answering as a primary that
    /// refuses writes (fenced, read-only).
    fn refuses_writes(&self, member: &str) -> bool {
        let failing = self
            .fresh(member)
            .filter(|(node, report)| {
                self.voters.contains(node)
                    && match report.verdict.health {
                        Health::Down => true,
                        Health::Degraded => report.verdict.facts.as_ref().is_some_and(|facts| !facts.in_recovery),
                        Health::Up => false,
                    }
            })
            .count();
        failing * 2 > self.voters.len()
    }

    /// Why the primary counts as failed, if it does: down for a majority, or refusing
    /// writes for a majority with its lease run out (its node fenced it and is gone).
    pub fn primary_failure(&self, member: &str) -> Option<String> {
        if self.objectively_down(member) {
            let (down, _) = self.down_voters(member);
            let nodes = down.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
            return Some(format!("primary {member} down for nodes {nodes}"));
        }
        if self.primary_lease_run_out && self.refuses_writes(member) {
            return Some(format!("primary {member} refuses writes and its lease ran out"));
        }
        None
    }

    /// The highest WAL position `member` was ever reported at as a primary.
    fn last_primary_lsn(&self, member: &str) -> Option<u64> {
        self.state.last_primary_lsn.get(member).copied()
    }

    fn node_id_of(&self, node_name: &str) -> Option<NodeId> {
        self.nodes.iter().find(|(_, node)| node.name == node_name).map(|(id, _)| *id)
    }

    fn datacenter_of(&self, node_name: &str) -> Option<&str> {
        self.nodes.values().find(|node| node.name == node_name).map(|node| node.datacenter.as_str())
    }
}

/// A member that may be promoted, and how it ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The member.
    pub member: String,
    /// Its WAL position: the most it has received or replayed.
    pub lsn: Option<u64>,
}

/// Picks the replica to promote in place of `old_primary`: reachable replicas within the
/// lag policy (unless `ignore_lag`), not `nofailover`; highest WAL position first,
/// then priority, then datacenter preference, then name. The error lists why each member
/// was passed over.
pub fn choose_candidate(
    situation: &Situation<'_>,
    old_primary: Option<&str>,
    ignore_lag: bool,
) -> Result<Candidate, String> {
    let spec = situation.spec;
    let mut replica_positions = BTreeMap::new();
    let mut passed_over = Vec::new();
    let strict = spec.synchronous == SyncMode::Strict;
    for member in &spec.members {
        if Some(member.name.as_str()) == old_primary {
            continue;
        }
        if strict && !ignore_lag && !situation.state.sync_standbys.contains(&member.name) {
            // Only a confirmed synchronous standby holds every acknowledged commit.
            passed_over.push(format!("{} is not a confirmed synchronous standby", member.name));
            continue;
        }
        if member.nofailover {
            passed_over.push(format!("{} is nofailover", member.name));
            continue;
        }
        if situation.node_id_of(&member.node).is_some_and(|node| situation.unreachable.contains(&node)) {
            passed_over.push(format!(
                "{}'s node {} is out of the leader's reach (nobody could lift its fence)",
                member.name, member.node
            ));
            continue;
        }
        let mut answering = false;
        let mut replica = false;
        let mut position = None::<u64>;
        for (_, report) in situation.fresh(&member.name) {
            if report.verdict.health == Health::Down {
                continue;
            }
            let Some(facts) = &report.verdict.facts else { continue };
            answering = true;
            replica |= facts.in_recovery;
            if facts.in_recovery {
                // A promotion replays everything the replica has received before it opens,
                // so what it received is what it will hold. Ranking by replay alone could pick
                // a replica that received less than another, which then cannot follow it.
                position = position.max(facts.replay_lsn).max(facts.receive_lsn);
            }
        }
        if !answering {
            passed_over.push(format!("{} is unreachable", member.name));
        } else if !replica {
            passed_over.push(format!("{} is not a replica", member.name));
        } else {
            replica_positions.insert(member.name.clone(), position);
        }
    }
    let reference = old_primary
        .and_then(|primary| situation.last_primary_lsn(primary))
        .or_else(|| replica_positions.values().flatten().copied().max());
    let mut eligible = Vec::new();
    for (name, position) in replica_positions {
        let lag = match (reference, position) {
            (Some(reference), Some(position)) => Some(reference.saturating_sub(position)),
            _ => None,
        };
        match lag {
            Some(lag) if lag > spec.maximum_lag_on_failover && !ignore_lag => passed_over
                .push(format!("{name} lags {lag} bytes (maximum_lag_on_failover is {})", spec.maximum_lag_on_failover)),
            None if !ignore_lag && reference.is_some() => {
                passed_over.push(format!("{name} has reported no replay position"));
            }
            _ => eligible.push((name, position)),
        }
    }
    let preference = |member: &str| -> usize {
        let datacenter = spec.member(member).and_then(|m| situation.datacenter_of(&m.node));
        datacenter
            .and_then(|dc| spec.datacenter_preference.iter().position(|preferred| preferred == dc))
            .unwrap_or(usize::MAX)
    };
    eligible.sort_by(|(a, a_lsn), (b, b_lsn)| {
        let priority = |name: &str| spec.member(name).map_or(0, |m| m.priority);
        b_lsn.cmp(a_lsn).then(priority(b).cmp(&priority(a))).then(preference(a).cmp(&preference(b))).then(a.cmp(b))
    });
    match eligible.into_iter().next() {
        Some((member, lsn)) => Ok(Candidate { member, lsn }),
        None if passed_over.is_empty() => Err("no failover possible: the group has no other member".to_string()),
        None => Err(format!("no failover possible: {}", passed_over.join("; "))),
    }
}

/// The steps of an automatic failover: make sure the old primary takes no more writes (its
/// lease has run out, or it was fenced), then promote, prove the new primary writable, and
/// re-point the others.
pub fn automatic_steps(spec: &GroupPolicy, old_primary: Option<&str>, candidate: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(old) = old_primary {
        steps.push(Step::FenceOldPrimary { member: old.to_string() });
    }
    steps.push(Step::Promote);
    steps.extend(verify_and_repoint(spec, old_primary, candidate));
    steps
}

/// Proving the new primary writable, and re-pointing the others: in that order, unless the
/// group's primary refuses writes until replicas follow it.
fn verify_and_repoint(spec: &GroupPolicy, old_primary: Option<&str>, candidate: &str) -> Vec<Step> {
    let repoints = repoints(spec, old_primary, candidate);
    if spec.writes_need_replicas {
        repoints.into_iter().chain([Step::VerifyWritable]).collect()
    } else {
        [Step::VerifyWritable].into_iter().chain(repoints).collect()
    }
}

/// The steps of a switchover: stop the old primary cleanly, let the candidate catch up,
/// promote, re-point, and bring the old primary back as a replica.
pub fn switchover_steps(spec: &GroupPolicy, old_primary: &str, candidate: &str) -> Vec<Step> {
    let mut steps = vec![Step::StopPrimary { member: old_primary.to_string() }, Step::WaitForCatchUp, Step::Promote];
    steps.extend(verify_and_repoint(spec, Some(old_primary), candidate));
    steps.push(Step::RejoinAsReplica { member: old_primary.to_string() });
    steps
}

fn repoints(spec: &GroupPolicy, old_primary: Option<&str>, candidate: &str) -> Vec<Step> {
    spec.members
        .iter()
        .filter(|member| member.name != candidate && Some(member.name.as_str()) != old_primary)
        .map(|member| Step::Repoint { member: member.name.clone() })
        .collect()
}

/// The members that fresh verdicts show running as primaries, with the epoch they carry.
fn claimed_primaries(situation: &Situation<'_>) -> BTreeMap<String, Option<u64>> {
    let mut claimed = BTreeMap::new();
    for member in &situation.spec.members {
        for (_, report) in situation.fresh(&member.name) {
            if report.verdict.health == Health::Down {
                continue;
            }
            if let Some(facts) = &report.verdict.facts
                && !facts.in_recovery
            {
                let epoch: &mut Option<u64> = claimed.entry(member.name.clone()).or_default();
                *epoch = (*epoch).max(facts.epoch);
            }
        }
    }
    claimed
}

/// Decides what the leader should do about a group now, when no failover is running.
pub fn decide(situation: &Situation<'_>) -> Decision {
    let state = situation.state;
    if state.running.is_some() {
        return Decision::Nothing;
    }
    let Some(primary) = state.primary.as_deref() else {
        let claimed = claimed_primaries(situation);
        return match claimed.len() {
            0 => Decision::Nothing,
            1 => {
                let (member, epoch) = claimed.into_iter().next().expect("one claim");
                Decision::RecordPrimary { member, epoch }
            }
            _ => blocked(
                state,
                format!(
                    "members {} all run as primaries; vigil will not choose between them",
                    claimed.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
        };
    };
    let Some(failure) = situation.primary_failure(primary) else {
        return if state.blocked.is_some() { Decision::Unblock } else { Decision::Nothing };
    };
    if state.paused {
        return blocked(state, format!("primary {primary} is down, but the group is paused: no automatic failover"));
    }
    match choose_candidate(situation, Some(primary), false) {
        Ok(candidate) => {
            let (_, detected_at_ms) = situation.down_voters(primary);
            Decision::Begin(Plan {
                kind: FailoverKind::Automatic,
                reason: failure,
                old_primary: Some(primary.to_string()),
                steps: automatic_steps(situation.spec, Some(primary), &candidate.member),
                candidate: candidate.member,
                detected_at_ms,
                old_primary_lsn: situation.last_primary_lsn(primary),
                candidate_lsn: candidate.lsn,
            })
        }
        Err(reason) => blocked(state, reason),
    }
}

fn blocked(state: &GroupState, reason: String) -> Decision {
    if state.blocked.as_deref() == Some(reason.as_str()) { Decision::Nothing } else { Decision::Blocked { reason } }
}

/// Why an operator's switchover or failover request is refused.
pub type Refusal = String;

/// Plans an operator's switchover (`forced` false) or forced failover (`forced` true) to
/// `to`, or to the best candidate when `to` is `None`.
pub fn plan_requested(situation: &Situation<'_>, to: Option<&str>, forced: bool) -> Result<Plan, Refusal> {
    let spec = situation.spec;
    let state = situation.state;
    let kind = if forced { FailoverKind::Forced } else { FailoverKind::Switchover };
    if state.paused {
        return Err(format!("group {} is paused: run `vigil resume {}` first", spec.name, spec.name));
    }
    if let Some(running) = &state.running {
        return Err(format!("{} #{} to {} is already running", running.kind, running.id, running.candidate));
    }
    let Some(primary) = state.primary.as_deref() else {
        return Err(format!("group {} has no known primary", spec.name));
    };
    if to == Some(primary) {
        return Err(format!("{primary} already is the primary"));
    }
    let candidate = match to {
        Some(member) => {
            let Some(member_spec) = spec.member(member) else {
                return Err(format!("group {} has no member {member:?}", spec.name));
            };
            if member_spec.nofailover && !forced {
                return Err(format!("{member} is marked nofailover"));
            }
            // Rank the whole group, then insist on the named member, so the refusal says
            // exactly why it is not eligible.
            let only = GroupPolicy {
                members: spec
                    .members
                    .iter()
                    .filter(|m| m.name == member || m.name == primary)
                    .cloned()
                    .map(|mut m| {
                        if forced {
                            m.nofailover = false;
                        }
                        m
                    })
                    .collect(),
                ..spec.clone()
            };
            let narrowed = Situation { spec: &only, ..*situation };
            choose_candidate(&narrowed, Some(primary), forced)
                .map_err(|reason| reason.replacen("no failover possible", &format!("cannot promote {member}"), 1))?
        }
        None => choose_candidate(situation, Some(primary), forced)?,
    };
    let primary_down = situation.objectively_down(primary);
    let steps = if forced && primary_down {
        automatic_steps(spec, Some(primary), &candidate.member)
    } else {
        let primary_spec = spec.member(primary).expect("the recorded primary is a member");
        if !primary_spec.stoppable {
            return Err(format!("{primary} has no data_dir in the spec: stopping it cleanly needs host-local control"));
        }
        let mut steps = switchover_steps(spec, primary, &candidate.member);
        if forced {
            // Forcing means promoting without waiting for the candidate: what it lacks is lost.
            steps.retain(|step| *step != Step::WaitForCatchUp);
        }
        steps
    };
    Ok(Plan {
        kind,
        reason: match to {
            Some(member) => format!("{kind} to {member} requested"),
            None => format!("{kind} requested"),
        },
        old_primary: Some(primary.to_string()),
        candidate: candidate.member,
        steps,
        detected_at_ms: None,
        old_primary_lsn: situation.last_primary_lsn(primary),
        candidate_lsn: candidate.lsn,
    })
}
