//! Strict synchronous mode: the leader keeps the primary's synchronous standbys (the
//! setting) and the replicated set of confirmed synchronous standbys in step, so that every
//! member of the set holds every acknowledged commit, and only those members may be promoted.
//!
//! The order of the two writes is what keeps that true. A standby is added to the primary's
//! setting first (commits then wait for it too), and to the replicated set only once the
//! primary reports it synchronous; a standby is taken out of the replicated set first, and
//! out of the setting after. Switching from one standby to another passes through a moment
//! where commits wait for both. With no standby left, the setting keeps naming the lost one:
//! writes block rather than being acknowledged by the primary alone.
//!
//! Every setting the leader asks of the primary carries a [`SyncGeneration`] (epoch, Raft
//! term, request), and the primary refuses one older than the setting it holds: a leader
//! confirms its leadership before it asks, not when the request lands, so without it a
//! deposed leader's slow request could land after the new leader confirmed another standby
//! and leave the primary waiting only for a standby the cluster does not count on.
//!
//! A standby counts as healthy by the freshest verdict this node holds on it, fresh by this
//! node's own clock since it applied the verdict, streaming from the primary (by host and
//! port, never by port alone).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Action, Mono, Out, Outcome, Purpose, SyncGeneration, View};
use crate::decision::STALE_AFTER_MS;
use crate::group::{GroupState, Health};
use crate::spec::{GroupPolicy, SyncMode};
use crate::state::{Command, CommandResponse};
use crate::types::NodeId;

/// How often the leader checks the synchronous standbys.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a standby added to the setting may take to be reported synchronous.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the primary is asked while a standby is being confirmed.
const CONFIRM_POLL: Duration = Duration::from_millis(50);
/// How long one setting change or reading may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long catching up with the cluster before a round may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a catch-up vouches for this node's state.
const CAUGHT_UP_FOR: Duration = Duration::from_secs(1);

/// When this node applied each verdict report, by group, member and observer.
type AppliedAt = BTreeMap<String, BTreeMap<String, BTreeMap<NodeId, (u64, Mono)>>>;

/// An effect of the settler in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    group: String,
}

/// Where a group's settling is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Catching up with the cluster: a leader just elected may not have applied every
    /// committed entry yet, and a round decided on such a state could set the primary's
    /// standbys back to a set the cluster has moved on from.
    CatchingUp,
    /// Synchronous mode was turned off: the set is emptied, then the setting.
    TurningOff {
        committed: bool,
    },
    /// Recording why writes are blocked (or that they no longer are).
    Noting,
    /// The set stays: reading the setting in force to repair it if it drifted.
    Reading {
        current: BTreeSet<String>,
    },
    /// Putting the setting back to the set.
    Repairing,
    /// Commits now wait for the old and the new standbys.
    Widening {
        desired: BTreeSet<String>,
        both: BTreeSet<String>,
    },
    /// Waiting for the new standbys to be reported synchronous and to have flushed what the
    /// primary had written when commits started waiting for them (`must_reach`, read at the
    /// first poll): every commit acknowledged before then is on them.
    Confirming {
        desired: BTreeSet<String>,
        both: BTreeSet<String>,
        deadline: Mono,
        next_poll: Mono,
        asking: bool,
        must_reach: Option<u64>,
    },
    /// The replicated set takes the old and the new, then the new alone.
    Committing {
        desired: BTreeSet<String>,
        both_done: bool,
    },
    /// The setting drops the old standbys.
    Narrowing,
}

#[derive(Clone, Debug)]
struct Settling {
    phase: Phase,
    /// The primary and epoch the phase started with: any change abandons it.
    primary: String,
    epoch: u64,
    next_check: Mono,
    in_flight: bool,
    caught_up_at: Option<Mono>,
}

/// The leader's synchronous-standby settler.
#[derive(Clone, Debug, Default)]
pub struct Settler {
    groups: BTreeMap<String, Settling>,
    /// When this node applied each verdict report it holds (its observer's stamp, and this
    /// node's reading then), by group, member and observer.
    applied_at: AppliedAt,
    /// The order of this node's last setting request ([`SyncGeneration::seq`]).
    last_seq: u64,
}

impl Settler {
    pub(super) fn drive(&mut self, view: &View<'_>, out: &mut Out<'_>) {
        let now = view.now();
        if view.state_changed {
            self.note_reports(view);
        }
        self.groups.retain(|group, _| view.policy(group).is_some());
        for policy in view.policies {
            let Some(state) = view.group_state(&policy.name) else { continue };
            let Some(primary) = state.primary.clone() else {
                self.groups.remove(&policy.name);
                continue;
            };
            let wanted = policy.synchronous == SyncMode::Strict || !state.sync_standbys.is_empty();
            if !wanted {
                continue;
            }
            let settling = self.groups.entry(policy.name.clone()).or_insert_with(|| Settling {
                phase: Phase::Idle,
                primary: primary.clone(),
                epoch: state.epoch,
                next_check: now,
                in_flight: false,
                caught_up_at: None,
            });
            if settling.in_flight {
                continue;
            }
            if !view.is_leader()
                || state.running.is_some()
                || settling.primary != primary
                || settling.epoch != state.epoch
            {
                *settling = Settling {
                    phase: Phase::Idle,
                    primary: primary.clone(),
                    epoch: state.epoch,
                    next_check: now,
                    in_flight: false,
                    caught_up_at: None,
                };
                if !view.is_leader() || state.running.is_some() {
                    continue;
                }
            }
            let healthy = healthy_standbys(view, policy, state, &primary, &self.applied_at);
            step(view, out, policy, state, settling, healthy, &mut self.last_seq);
        }
    }

    /// Notes when this node applied each verdict report of a strict group, by its own clock.
    fn note_reports(&mut self, view: &View<'_>) {
        let now = view.now();
        let strict = |group: &str| view.policy(group).is_some_and(|policy| policy.synchronous == SyncMode::Strict);
        self.applied_at.retain(|group, _| strict(group));
        for policy in view.policies.iter().filter(|policy| policy.synchronous == SyncMode::Strict) {
            let Some(state) = view.group_state(&policy.name) else { continue };
            if !self.applied_at.contains_key(&policy.name) {
                self.applied_at.insert(policy.name.clone(), BTreeMap::new());
            }
            let members = self.applied_at.get_mut(&policy.name).expect("inserted above");
            members.retain(|member, _| state.verdicts.contains_key(member));
            for (member, reports) in &state.verdicts {
                if !members.contains_key(member) {
                    members.insert(member.clone(), BTreeMap::new());
                }
                let nodes = members.get_mut(member).expect("inserted above");
                nodes.retain(|node, _| reports.contains_key(node));
                for (node, report) in reports {
                    match nodes.get_mut(node) {
                        Some((observed, _)) if *observed == report.observed_at_ms => {}
                        Some(seen) => *seen = (report.observed_at_ms, now),
                        None => {
                            nodes.insert(*node, (report.observed_at_ms, now));
                        }
                    }
                }
            }
        }
    }

    pub(super) fn done(&mut self, view: &View<'_>, pending: Pending, outcome: Outcome) {
        let now = view.now();
        let Some(settling) = self.groups.get_mut(&pending.group) else { return };
        settling.in_flight = false;
        let group = pending.group.as_str();
        let ok = match &outcome {
            Outcome::Proposed(Ok(CommandResponse::Refused { reason })) => {
                tracing::warn!(group, %reason, "synchronous standbys not settled: refused");
                false
            }
            Outcome::Proposed(Ok(_)) | Outcome::Acted(Ok(_)) => true,
            Outcome::Proposed(Err(error)) => {
                tracing::warn!(group, %error, "synchronous standbys not settled");
                false
            }
            Outcome::Acted(Err(failure)) => {
                tracing::warn!(group, %failure, "synchronous standbys not settled");
                false
            }
            Outcome::CaughtUp(Ok(())) => true,
            Outcome::CaughtUp(Err(error)) => {
                tracing::info!(group, %error, "cannot catch up with the cluster; synchronous standbys not settled now");
                false
            }
            Outcome::Guarded(_) => false,
        };
        if !ok {
            settling.phase = Phase::Idle;
            settling.next_check = now + CHECK_EVERY;
            return;
        }
        let phase = std::mem::replace(&mut settling.phase, Phase::Idle);
        settling.phase = match phase {
            Phase::CatchingUp => {
                settling.caught_up_at = Some(now);
                settling.next_check = now;
                return;
            }
            Phase::TurningOff { committed: false } => Phase::TurningOff { committed: true },
            Phase::TurningOff { committed: true } => {
                tracing::info!(group, "synchronous mode off: commits no longer wait for a standby");
                Phase::Idle
            }
            Phase::Reading { current } => {
                let in_force = match outcome {
                    Outcome::Acted(Ok(report)) => report.sync.map(|sync| sync.in_force),
                    _ => None,
                };
                if in_force.as_ref() == Some(&current) { Phase::Idle } else { Phase::Repairing }
            }
            Phase::Widening { desired, both } => Phase::Confirming {
                desired,
                both,
                deadline: now + CONFIRM_TIMEOUT,
                next_poll: now,
                asking: false,
                must_reach: None,
            },
            Phase::Confirming { desired, both, deadline, must_reach, .. } => {
                let sync = match outcome {
                    Outcome::Acted(Ok(report)) => report.sync,
                    _ => None,
                };
                // Read once, after the primary's setting named the new standbys: every commit
                // acknowledged before is at or below this position.
                let must_reach = must_reach.or_else(|| sync.as_ref().and_then(|sync| sync.position));
                let confirmed = sync.as_ref().zip(must_reach).is_some_and(|(sync, must_reach)| {
                    desired.iter().all(|name| {
                        sync.standbys.get(name).is_some_and(|standby| {
                            (standby.state == "sync" || standby.state == "quorum")
                                && standby.flushed.is_some_and(|flushed| flushed >= must_reach)
                        })
                    })
                });
                if confirmed {
                    Phase::Committing { desired, both_done: false }
                } else if now > deadline {
                    tracing::warn!(group, standbys = ?desired, "not confirmed synchronous within {CONFIRM_TIMEOUT:?}");
                    Phase::Idle
                } else {
                    Phase::Confirming {
                        desired,
                        both,
                        deadline,
                        next_poll: now + CONFIRM_POLL,
                        asking: false,
                        must_reach,
                    }
                }
            }
            Phase::Committing { desired, both_done: false } => Phase::Committing { desired, both_done: true },
            Phase::Committing { desired, both_done: true } => {
                tracing::info!(group, standbys = ?desired, "confirmed synchronous standbys");
                Phase::Narrowing
            }
            Phase::Noting | Phase::Repairing | Phase::Narrowing | Phase::Idle => Phase::Idle,
        };
        if settling.phase == Phase::Idle {
            settling.next_check = now + CHECK_EVERY;
        }
    }
}

/// Takes the next step of one group's settling, if one is due.
fn step(
    view: &View<'_>,
    out: &mut Out<'_>,
    policy: &GroupPolicy,
    state: &GroupState,
    settling: &mut Settling,
    healthy: Vec<String>,
    last_seq: &mut u64,
) {
    let now = view.now();
    let group = policy.name.as_str();
    let primary = settling.primary.clone();
    let current = state.sync_standbys.clone();
    let purpose = || Purpose::Sync(Pending { group: group.to_string() });
    let mut set = |standbys: BTreeSet<String>| Action::SetSyncStandbys {
        standbys,
        generation: next_generation(view, state.epoch, last_seq),
    };
    let commit = |standbys: BTreeSet<String>, note: Option<String>| Command::SetSyncStandbys {
        group: group.to_string(),
        primary: primary.clone(),
        epoch: state.epoch,
        standbys,
        note,
    };
    match &mut settling.phase {
        Phase::Idle => {
            if now < settling.next_check {
                return;
            }
            if settling.caught_up_at.is_none_or(|at| now.since(at) > CAUGHT_UP_FOR) {
                out.catch_up(purpose(), CATCH_UP_TIMEOUT);
                settling.phase = Phase::CatchingUp;
                settling.in_flight = true;
                return;
            }
            if policy.synchronous == SyncMode::Off {
                out.propose(purpose(), commit(BTreeSet::new(), None), ACTION_TIMEOUT);
                settling.phase = Phase::TurningOff { committed: false };
            } else {
                let desired = if !current.is_empty() && current.iter().all(|name| healthy.contains(name)) {
                    current.clone()
                } else if let Some(best) = best_standby(policy, &healthy) {
                    BTreeSet::from([best])
                } else {
                    // No standby to wait for: keep waiting for the ones named, so writes block.
                    let note = Some(format!(
                        "writes are blocked: no standby streams from {primary} (strict synchronous mode)"
                    ));
                    if state.sync_note != note {
                        out.propose(purpose(), commit(current, note), ACTION_TIMEOUT);
                        settling.phase = Phase::Noting;
                        settling.in_flight = true;
                    } else {
                        settling.next_check = now + CHECK_EVERY;
                    }
                    return;
                };
                if desired == current {
                    if state.sync_note.is_some() {
                        out.propose(purpose(), commit(current, None), ACTION_TIMEOUT);
                        settling.phase = Phase::Noting;
                    } else {
                        out.act(purpose(), group, &primary, Action::ReadSyncState, ACTION_TIMEOUT, true);
                        settling.phase = Phase::Reading { current };
                    }
                } else {
                    let both: BTreeSet<String> = current.union(&desired).cloned().collect();
                    out.act(purpose(), group, &primary, set(both.clone()), ACTION_TIMEOUT, true);
                    settling.phase = Phase::Widening { desired, both };
                }
            }
        }
        Phase::TurningOff { committed: true } => {
            out.act(purpose(), group, &primary, set(BTreeSet::new()), ACTION_TIMEOUT, true);
        }
        Phase::Repairing => {
            out.act(purpose(), group, &primary, set(current), ACTION_TIMEOUT, true);
        }
        Phase::Confirming { next_poll, asking, .. } => {
            if now < *next_poll || *asking {
                return;
            }
            *asking = true;
            out.act(purpose(), group, &primary, Action::ReadSyncState, ACTION_TIMEOUT, true);
        }
        Phase::Committing { desired, both_done } => {
            let standbys = if *both_done { desired.clone() } else { current.union(desired).cloned().collect() };
            out.propose(purpose(), commit(standbys, None), ACTION_TIMEOUT);
        }
        Phase::Narrowing => {
            out.act(purpose(), group, &primary, set(current), ACTION_TIMEOUT, true);
        }
        // Waiting for an outcome.
        Phase::CatchingUp
        | Phase::TurningOff { committed: false }
        | Phase::Noting
        | Phase::Reading { .. }
        | Phase::Widening { .. } => {
            return;
        }
    }
    settling.in_flight = true;
}

/// The generation of this node's next setting request in `epoch`. The request's order is
/// counted from the wall clock as well as by one, so that it also grows across a restart of
/// this node (openraft lets a restarted leader lead on in the same term).
fn next_generation(view: &View<'_>, epoch: u64, last_seq: &mut u64) -> SyncGeneration {
    if view.mutations.unversioned_sync_setting() {
        return SyncGeneration::promotion(epoch);
    }
    *last_seq = (*last_seq + 1).max(view.ctx.now.wall_ms);
    SyncGeneration { epoch, term: view.ctx.term, seq: *last_seq }
}

/// Replicas that stream from the primary and answer, by the freshest verdict this node holds.
fn healthy_standbys(
    view: &View<'_>,
    policy: &GroupPolicy,
    state: &GroupState,
    primary: &str,
    applied_at: &AppliedAt,
) -> Vec<String> {
    let now = view.now();
    let stale_after = Duration::from_millis(STALE_AFTER_MS);
    policy
        .members
        .iter()
        .filter(|member| member.name != primary && !member.nofailover)
        .filter(|member| {
            let freshest = state
                .verdicts
                .get(&member.name)
                .into_iter()
                .flatten()
                .filter_map(|(node, report)| {
                    let age = if view.mutations.wall_clock_step_timeouts() {
                        Duration::from_millis(view.ctx.now.wall_ms.saturating_sub(report.observed_at_ms))
                    } else {
                        let (_, applied) = applied_at.get(&policy.name)?.get(&member.name)?.get(node)?;
                        now.since(*applied)
                    };
                    (age <= stale_after).then_some((age, report))
                })
                .min_by_key(|(age, _)| *age)
                .map(|(_, report)| report);
            freshest.is_some_and(|report| {
                report.verdict.health == Health::Up
                    && report.verdict.facts.as_ref().is_some_and(|facts| {
                        facts.in_recovery && facts.upstream.as_deref().is_some_and(|up| policy.follows(up, primary))
                    })
            })
        })
        .map(|member| member.name.clone())
        .collect()
}

/// The standby to make synchronous: highest priority, then name.
fn best_standby(policy: &GroupPolicy, healthy: &[String]) -> Option<String> {
    healthy
        .iter()
        .filter_map(|name| policy.member(name))
        .max_by(|a, b| a.priority.cmp(&b.priority).then(b.name.cmp(&a.name)))
        .map(|member| member.name.clone())
}
