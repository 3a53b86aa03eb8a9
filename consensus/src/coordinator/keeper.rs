//! The lease keeper: what this node does about the member beside it, of every group.
//!
//! While the member is the primary, the keeper renews its lease through Raft (up to
//! [`MAX_RENEWALS_IN_FLIGHT`] at once, one at once to a new leader), counting the lease from
//! before it *sent* each renewal. The member takes writes only while that lease has more
//! than the fence margin left: then the fence is lifted, after the fence guard was armed to
//! stop the server a little later than this node would fence it, should this daemon die.
//! Otherwise it is fenced, and the guard stays armed until the fence is confirmed.
//!
//! A promoted member starts fenced (the promotion fences it) and with no lease: it takes
//! writes only after its first renewal commits. A member this node sees down is left alone
//! (its lease renewed) until it is confirmed down on its own host (not running, refusing
//! connections); then its lease is released, so the leader need not wait for it to run out;
//! one left down with nothing to replace it is started again in place, fenced, after
//! [`RESTART_IN_PLACE_AFTER`]; one its own guard stopped while no renewal could commit is
//! started again at once, fenced, when the cluster confirms its lease within
//! [`GUARD_STOP_RECOVERY`]. A member that is being replaced is fenced and its lease released
//! once the fence holds. A stale primary (an old primary that came back writable) is fenced
//! until it has rejoined.

use std::collections::BTreeMap;
use std::time::Duration;

use super::fence::{FenceTrack, Known, Op, Want};
use super::{Action, ActionReport, EffectId, GuardOrder, Mono, Out, Outcome, Purpose, View};
use crate::group::{Health, Step, StepStatus};
use crate::spec::{GroupPolicy, MemberPolicy};
use crate::state::{Command, CommandResponse};

/// How many renewals of one lease may be under way at once. A renewal sent to a leader that
/// has just been cut off waits up to a lease for its answer; the next ones must not wait
/// behind it, or the lease runs out although a new leader could have renewed it.
pub const MAX_RENEWALS_IN_FLIGHT: usize = 4;
/// How often a node tries again to make sure of its down primary before releasing its lease.
pub const RELEASE_RETRY: Duration = Duration::from_millis(250);
/// How long a released primary stays down, with no failover started, before its own node
/// starts it again: far beyond what the leader takes to fail over when it can.
pub const RESTART_IN_PLACE_AFTER: Duration = Duration::from_secs(10);
/// How long after its guard may have stopped the primary this node starts it again at once
/// when the cluster confirms it as the primary.
pub const GUARD_STOP_RECOVERY: Duration = Duration::from_secs(10);
/// How long a fence or a lift may take.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long making sure of a down member, or starting it again, may take.
pub const HOST_ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a release may take to commit.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Fences before the lease runs out by this much, to leave the fence itself time to act and
/// be confirmed before the guard would stop the server: under load a read-only fence with
/// its confirmation has been seen to take over 300 ms.
pub fn fence_margin(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(100))
}

/// When the guard is to stop the primary, for a lease valid until `valid_until`: when the
/// lease itself runs out by this node's clock, a fence margin after this node would have
/// fenced it. No other node counts the lease as run out before
/// [`crate::spec::LEASE_SAFETY_MARGIN`] (plus the drift bound) later, which is the time the
/// guard's `pg_ctl stop -m immediate` has.
pub fn guard_deadline(valid_until: Mono, lease: Duration) -> Mono {
    let _ = lease;
    valid_until
}

/// How often the holder renews: five renewals per lease, so that losing the leader for a
/// short election costs at most one or two of them.
pub fn renew_every(lease: Duration) -> Duration {
    lease / 5
}

/// Whether a lease valid until `valid_until` leaves the member time to take writes at `now`.
/// A renewal answered late (sent to a leader that was then cut off, committed by the next)
/// may leave none: lifting then would only have the member fenced again at once.
pub fn usable(valid_until: Option<Mono>, now: Mono, lease: Duration) -> bool {
    valid_until.is_some_and(|valid_until| now + fence_margin(lease) < valid_until)
}

/// An effect of the keeper in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A lease renewal, sent at `sent_at`.
    Renewal {
        /// The group.
        group: String,
        /// When it was sent, by this node's clock.
        sent_at: Mono,
    },
    /// A fence or a lift.
    Fence {
        /// The group.
        group: String,
        /// Which.
        op: Op,
    },
    /// Making sure a down primary stays down, before releasing its lease.
    MakeSureDown {
        /// The group.
        group: String,
    },
    /// Starting a down primary again, fenced.
    StartFenced {
        /// The group.
        group: String,
    },
    /// A lease release.
    Release {
        /// The group.
        group: String,
    },
    /// A message to the guard.
    Guard,
}

/// The lease this node holds for its primary.
#[derive(Clone, Debug)]
struct Holding {
    /// When this node took the primary over (saw it become the primary, or started).
    taken_at: Mono,
    /// Until when the member may take writes, by this node's clock; `None` before the first
    /// renewal committed.
    valid_until: Option<Mono>,
    renewals: BTreeMap<EffectId, Mono>,
    next_renewal: Mono,
    /// A renewal sent at this time was refused: none sent before it makes the lease usable.
    refused_at: Option<Mono>,
    /// The lease was given up (or found not to be this node's to give up).
    released: bool,
    release_in_flight: bool,
    /// When the last release was sent: a renewal sent before it makes no lease usable, since
    /// it may have committed before the release, which the leader then counts as the end.
    release_sent_at: Option<Mono>,
    release_attempt_at: Option<Mono>,
    down_since: Option<Mono>,
    restart_attempt_at: Option<Mono>,
}

impl Holding {
    fn new(now: Mono, valid_until: Option<Mono>) -> Self {
        Holding {
            taken_at: now,
            valid_until,
            renewals: BTreeMap::new(),
            next_renewal: now,
            refused_at: None,
            released: false,
            release_in_flight: false,
            release_sent_at: None,
            release_attempt_at: None,
            down_since: None,
            restart_attempt_at: None,
        }
    }
}

/// This node's dealings with the member beside it in one group.
#[derive(Clone, Debug)]
struct Local {
    member: String,
    fence: FenceTrack,
    holding: Option<Holding>,
    /// Whether the guard may have a deadline for this group (a daemon that just started cannot
    /// know what the previous one told it).
    guard_armed: bool,
    /// When the guard was last armed to act, by this node's clock.
    guard_deadline: Option<Mono>,
    /// When that deadline passed with the guard still armed: the guard may have fenced.
    guard_acted_at: Option<Mono>,
    /// Starting the member again after its own guard stopped it, with the lease confirmed
    /// since: this node's verdict on it is not Down meanwhile.
    restarting: bool,
    /// After this node held the lease of a member being replaced: whether the release that
    /// lets the leader go on has been committed (or is under way).
    handed_over: bool,
    hand_over_in_flight: bool,
}

impl Local {
    fn new(member: &str) -> Self {
        Local {
            member: member.to_string(),
            fence: FenceTrack::default(),
            holding: None,
            guard_armed: true,
            guard_deadline: None,
            guard_acted_at: None,
            restarting: false,
            handed_over: false,
            hand_over_in_flight: false,
        }
    }
}

/// The keeper of every member beside this node.
#[derive(Clone, Debug, Default)]
pub struct Keeper {
    locals: BTreeMap<String, Local>,
}

impl Keeper {
    /// Whether this node is starting `member` of `group` again after its own guard stopped it
    /// while the cluster still confirms it as the primary: its probes failing meanwhile say
    /// nothing new, and must not count towards a failover.
    pub(super) fn restarting(&self, view: &View<'_>, group: &str, member: &str) -> bool {
        let Some(local) = self.locals.get(group).filter(|local| local.member == member) else { return false };
        let policy = view.policy(group);
        local.restarting
            || (policy.is_some_and(|policy| recovering_from_own_guard(view, policy, local))
                && policy.and_then(|policy| policy.member(member)).is_some_and(|member| member.restarts_in_place))
    }

    pub(super) fn drive(
        &mut self,
        view: &View<'_>,
        out: &mut Out<'_>,
        verdicts: &super::verdicts::Reporter,
        new_leader: bool,
    ) {
        self.locals.retain(|group, local| {
            view.policy(group).and_then(|policy| view.local_member(policy)).is_some_and(|m| m.name == local.member)
        });
        for policy in view.policies {
            let Some(member) = view.local_member(policy) else { continue };
            let local = self.locals.entry(policy.name.clone()).or_insert_with(|| Local::new(&member.name));
            drive_one(view, out, verdicts, policy, member, local, new_leader);
        }
    }

    pub(super) fn done(&mut self, view: &View<'_>, out: &mut Out<'_>, pending: Pending, outcome: Outcome) {
        let now = view.now();
        match pending {
            Pending::Renewal { group, sent_at } => {
                let (Some(local), Some(policy)) = (self.locals.get_mut(&group), view.policy(&group)) else { return };
                let lease = policy.lease_duration;
                let Some(holding) = local.holding.as_mut() else { return };
                holding.renewals.retain(|_, sent| *sent != sent_at);
                match outcome {
                    Outcome::Proposed(Ok(CommandResponse::Applied)) => {
                        // Nor one that may have committed before a release: the commit order of
                        // the two is unknown until the release's answer is in.
                        if holding.refused_at.is_some_and(|refused_at| sent_at <= refused_at)
                            || holding.release_in_flight
                            || holding.release_sent_at.is_some_and(|released_at| sent_at <= released_at)
                        {
                            return;
                        }
                        let valid_until = holding.valid_until.map_or(sent_at + lease, |v| v.max(sent_at + lease));
                        holding.valid_until = Some(valid_until);
                        // A committed renewal confirms the member as the primary of the
                        // current epoch, whatever this node released before.
                        holding.released = false;
                        if usable(Some(valid_until), now, lease) && is_guarded(policy, &local.member) {
                            // Armed before the lift that may follow in this same call: should
                            // this daemon die right after lifting, the guard stops the member.
                            let valid_for = guard_deadline(valid_until, lease).since(now);
                            let order =
                                GuardOrder::Arm { group: group.clone(), member: local.member.clone(), valid_for };
                            out.guard(Purpose::Keeper(Pending::Guard), order);
                            local.guard_armed = true;
                            local.guard_deadline = Some(now + valid_for);
                        }
                    }
                    // The cluster says this is not the primary of the current epoch: fence.
                    Outcome::Proposed(Ok(CommandResponse::Refused { reason })) => {
                        tracing::warn!(%group, member = %local.member, %reason, "lease refused: fencing");
                        holding.refused_at = Some(holding.refused_at.map_or(sent_at, |at| at.max(sent_at)));
                        holding.valid_until = None;
                    }
                    _ => {}
                }
            }
            Pending::Fence { group, op } => {
                let Some(local) = self.locals.get_mut(&group) else { return };
                let succeeded = match &outcome {
                    Outcome::Acted(Ok(report)) => {
                        tracing::warn!(%group, member = %local.member, how = %report.detail, "{}", op_words(op, true));
                        true
                    }
                    Outcome::Acted(Err(failure)) => {
                        tracing::error!(%group, member = %local.member, %failure, "{}", op_words(op, false));
                        op == Op::Fence && view.mutations.silent_fence_failure()
                    }
                    _ => false,
                };
                if view.mutations.unconfirmed_fence() || view.mutations.unordered_fence_and_lift() {
                    // The old rule took the action as done when it started.
                    return;
                }
                local.fence.finished(op, succeeded, now);
            }
            Pending::MakeSureDown { group } => {
                let Some(local) = self.locals.get_mut(&group) else { return };
                let Some(holding) = local.holding.as_mut() else { return };
                match outcome {
                    Outcome::Acted(Ok(ActionReport { detail, .. })) => {
                        local.fence.confirmed_fenced(now);
                        let reason = format!("{} is down for node {} and {detail}", local.member, view.node);
                        let command = Command::ReleaseLease {
                            group: group.clone(),
                            member: local.member.clone(),
                            holder: view.node,
                            reason,
                        };
                        out.propose(
                            Purpose::Keeper(Pending::Release { group: group.clone() }),
                            command,
                            RELEASE_TIMEOUT,
                        );
                        holding.release_in_flight = true;
                        // Given up: no renewal answered late may lift its fence again.
                        holding.release_sent_at = Some(now);
                        holding.valid_until = None;
                    }
                    Outcome::Acted(Err(failure)) => {
                        // Not sure it is down: the lease is left to run out, since releasing it
                        // would let a replica be promoted while a server this node cannot see
                        // might take writes.
                        tracing::warn!(%group, member = %local.member, %failure, "cannot make sure the down primary stays down; the lease will run out");
                    }
                    _ => {}
                }
            }
            Pending::Release { group } => {
                let Some(local) = self.locals.get_mut(&group) else { return };
                let released = match &outcome {
                    Outcome::Proposed(Ok(CommandResponse::Applied)) => {
                        tracing::warn!(%group, member = %local.member, "lease released");
                        true
                    }
                    // Not this node's lease to release (any more): nothing to give up.
                    Outcome::Proposed(Ok(CommandResponse::Refused { reason })) => {
                        tracing::info!(%group, member = %local.member, %reason, "no lease to release");
                        true
                    }
                    Outcome::Proposed(Err(error)) => {
                        tracing::warn!(%group, member = %local.member, %error, "could not release the lease");
                        false
                    }
                    _ => false,
                };
                if let Some(holding) = local.holding.as_mut() {
                    holding.release_in_flight = false;
                    holding.released |= released;
                    // Whatever the answer, the release may have committed: every renewal sent
                    // until now may precede it in the log, so none of them lifts the fence.
                    holding.release_sent_at = Some(now);
                    holding.valid_until = None;
                }
                if local.hand_over_in_flight {
                    local.hand_over_in_flight = false;
                    local.handed_over |= released;
                }
            }
            Pending::StartFenced { group } => {
                let Some(local) = self.locals.get_mut(&group) else { return };
                local.restarting = false;
                match outcome {
                    Outcome::Acted(Ok(_)) => {
                        tracing::warn!(%group, member = %local.member, "started again, fenced");
                        local.fence.confirmed_fenced(now);
                    }
                    Outcome::Acted(Err(failure)) => {
                        tracing::warn!(%group, member = %local.member, %failure, "could not start it again");
                    }
                    _ => {}
                }
            }
            Pending::Guard => {
                if let Outcome::Guarded(Err(reason)) = outcome {
                    tracing::error!(%reason, "the fence guard could not be told: a crash of this daemon may leave its primary unfenced");
                }
            }
        }
    }
}

fn op_words(op: Op, succeeded: bool) -> &'static str {
    match (op, succeeded) {
        (Op::Fence, true) => "fenced",
        (Op::Fence, false) => "fencing failed",
        (Op::Lift, true) => "fence lifted",
        (Op::Lift, false) => "could not lift the fence",
    }
}

fn is_guarded(policy: &GroupPolicy, member: &str) -> bool {
    policy.member(member).is_some_and(|member| member.guarded)
}

fn drive_one(
    view: &View<'_>,
    out: &mut Out<'_>,
    verdicts: &super::verdicts::Reporter,
    policy: &GroupPolicy,
    member: &MemberPolicy,
    local: &mut Local,
    new_leader: bool,
) {
    let now = view.now();
    let group = policy.name.as_str();
    let lease = policy.lease_duration;
    if local.guard_armed && local.guard_deadline.is_some_and(|deadline| now >= deadline) {
        // This node sent no renewal in time to push the guard's deadline on: it may have
        // fenced the member (stopped a PostgreSQL server) by now.
        local.guard_acted_at = local.guard_deadline.take();
    }
    let default_state = crate::group::GroupState::default();
    let state = view.group_state(group).unwrap_or(&default_state);
    let verdict = verdicts.current(group, &member.name);
    let health = verdict.map(|verdict| verdict.health);
    let answers_as_primary =
        verdict.is_some_and(|v| v.health != Health::Down && v.facts.as_ref().is_some_and(|facts| !facts.in_recovery));
    let is_primary = state.primary.as_deref() == Some(member.name.as_str());
    let run = state.running.as_ref();
    let replaced = run.is_some_and(|run| run.old_primary.as_deref() == Some(member.name.as_str()));
    let promoting = run.is_some_and(|run| run.candidate == member.name);

    // This node's own probe found the member taking writes although the last fence was
    // confirmed: it was started again (by hand, by its service manager) since. The fence is
    // done again rather than trusted.
    // Likewise a member found refusing writes although the last lift was confirmed (started
    // again fenced, by an operator following the README) is lifted again if it should be.
    let as_primary = verdict.filter(|v| v.facts.as_ref().is_some_and(|facts| !facts.in_recovery));
    let takes_writes = as_primary.is_some_and(|v| v.health == Health::Up);
    let refuses_writes = as_primary.is_some_and(|v| v.health == Health::Degraded);
    let fresh = verdicts
        .probed_at(group, &member.name)
        .is_some_and(|probed_at| local.fence.probed_since_settled(probed_at, policy.probe_timeout));
    if fresh && ((takes_writes && local.fence.settled_fenced()) || (refuses_writes && local.fence.settled_lifted())) {
        local.fence.forget();
    }

    let want = if is_primary && !replaced {
        local.handed_over = false;
        let renewed_in_epoch = !view.mutations.born_fenced_after_restart()
            && state.lease.as_ref().is_some_and(|lease| lease.member == member.name && lease.epoch == state.epoch);
        if local.holding.is_none()
            && promoted_in_epoch(state, &member.name)
            && !renewed_in_epoch
            && !view.mutations.unfenced_promotion()
        {
            // Its promotion fenced it (and confirmed it): it takes no write before its first
            // renewal commits, and there is nothing to fence now. Not once a renewal of this
            // epoch has committed: a daemon restarted since may have lifted it before.
            local.fence.confirmed_fenced(now);
        }
        local.holding.get_or_insert_with(|| {
            // With the old rule a primary this node just learnt of took writes for a lease
            // counted from now; now it takes none before its first renewal commits.
            let valid_until = view.mutations.unfenced_promotion().then(|| now + lease);
            Holding::new(now, valid_until)
        });
        if state.running.is_none()
            && member.restarts_in_place
            && !local.restarting
            && verdicts.last_failed(group, &member.name)
            && recovering_from_own_guard(view, policy, local)
        {
            restart_after_own_guard(out, group, member, local);
        }
        let holding = local.holding.as_mut().expect("a holding was just made");
        if health == Some(Health::Down) {
            keep_down_primary(view, out, policy, member, local, state.running.is_none());
        } else {
            holding.down_since = None;
        }
        let holding = local.holding.as_mut().expect("a holding was just made");
        if health == Some(Health::Down) && (holding.released || holding.release_in_flight) {
            // Confirmed down and given up: no renewal, so that the failover need not wait.
            None
        } else {
            // Renewals go on while this node merely cannot reach its primary: a member only
            // slow to answer it keeps its lease, and if a majority finds it down, the failover
            // that follows refuses renewals anyway. Never more than a few at once: one sent to
            // a leader that was then cut off must not hold up the next, and a new leader is
            // renewed with at once.
            if holding.renewals.len() < MAX_RENEWALS_IN_FLIGHT && (now >= holding.next_renewal || new_leader) {
                let command = Command::RenewLease {
                    group: group.to_string(),
                    member: member.name.clone(),
                    holder: view.node,
                    epoch: state.epoch,
                };
                let id = out.propose(
                    Purpose::Keeper(Pending::Renewal { group: group.to_string(), sent_at: now }),
                    command,
                    lease,
                );
                holding.renewals.insert(id, now);
                holding.next_renewal = now + renew_every(lease);
            }
            if health == Some(Health::Down) {
                // Unreachable from here: no fence or lift could land; the guard covers it.
                None
            } else if usable(holding.valid_until, now, lease) {
                Some(Want::Lifted { epoch: state.epoch })
            } else if holding.valid_until.is_none()
                && now.since(holding.taken_at) + fence_margin(lease) < lease
                && local.fence.known() != Known::Fenced
            {
                // A primary this node takes over without having promoted it (the group's
                // first primary, or this daemon restarted beside it) is left as it is while
                // its first renewal commits, for at most what a renewal sent now would allow:
                // fencing at once would end every client session at every restart, and at
                // start-up, when there is no Raft leader yet, for nothing. The leader counts
                // such a lease from its own sight of the primary, a whole lease wait, so this
                // is safe as long as this node applied that change less than the fence margin
                // and the leader's safety margin after the leader did; a restarted daemon's
                // old lease is also covered by the guard it left armed.
                None
            } else {
                Some(Want::Fenced { stale: false })
            }
        }
    } else if local.holding.is_some() || replaced {
        // Someone else is (or is becoming) the primary: a member beside this node that still
        // took writes would be a second writer. A switchover stops it cleanly in its own step.
        let stop_step = run.and_then(|run| {
            run.steps.iter().find(|step| step.step == Step::StopPrimary { member: member.name.clone() })
        });
        if let Some(step) = stop_step {
            if matches!(step.status, StepStatus::Succeeded { .. }) {
                local.fence.confirmed_fenced(now);
            }
            None
        } else {
            if health == Some(Health::Down) && replaced {
                // The failover began before this node's own probes found its primary down
                // (the other nodes' probes came first): a fence does not land on a server
                // that does not answer, so, as before a failover, this node also makes sure
                // it is down on its own host and then releases the lease, rather than leave
                // the leader to wait a whole lease for it to run out. The fence is still
                // tried: a server that runs but does not answer probes is not down.
                keep_down_primary(view, out, policy, member, local, false);
            }
            hand_over(view, out, policy, member, local);
            Some(Want::Fenced { stale: false })
        }
    } else if answers_as_primary && state.primary.is_some() && !promoting {
        // An old primary that came back (restarted by hand, or by its host) must not take
        // writes until it has rejoined as a replica. The candidate of a running failover
        // answers as a primary before the run records it: that is the promotion.
        Some(Want::Fenced { stale: true })
    } else {
        if verdict.is_some_and(|v| v.facts.as_ref().is_some_and(|facts| facts.in_recovery)) {
            // A replica again: its configuration was rewritten when it rejoined.
            local.fence.forget();
        }
        None
    };

    // The guard is armed before any lift: its arming on a renewal may have been undone since
    // (disarmed while the member was stopped and fenced, then started again fenced).
    if let Some(Want::Lifted { .. }) = want
        && !local.guard_armed
        && is_guarded(policy, &member.name)
        && let Some(valid_until) = local.holding.as_ref().and_then(|holding| holding.valid_until)
    {
        let valid_for = guard_deadline(valid_until, lease).since(now);
        let order = GuardOrder::Arm { group: group.to_string(), member: member.name.clone(), valid_for };
        out.guard(Purpose::Keeper(Pending::Guard), order);
        local.guard_armed = true;
        local.guard_deadline = Some(now + valid_for);
    }
    if let Some(want) = want {
        drive_fence(view, out, policy, member, local, want);
    }
    // A confirmed fence outlives this daemon: the guard's harder fence is no longer needed.
    // Not while a lift may still land.
    if local.guard_armed && local.fence.settled_fenced() && !matches!(want, Some(Want::Lifted { .. })) {
        out.guard(Purpose::Keeper(Pending::Guard), GuardOrder::Disarm { group: group.to_string() });
        local.guard_armed = false;
        local.guard_deadline = None;
    }
    if !is_primary && !replaced && local.fence.settled_fenced() && local.handed_over {
        local.holding = None;
    }
}

/// Whether `member` became the primary of the group's current epoch by a promotion of
/// vigil's (which fences it from its first moment).
fn promoted_in_epoch(state: &crate::group::GroupState, member: &str) -> bool {
    state.running.iter().chain(state.finished.back()).any(|run| {
        run.candidate == member
            && run.epoch == state.epoch
            && run
                .steps
                .iter()
                .any(|step| step.step == Step::Promote && matches!(step.status, StepStatus::Succeeded { .. }))
    })
}

/// Issues the next fence or lift towards `want`, ordered after any action in flight.
fn drive_fence(
    view: &View<'_>,
    out: &mut Out<'_>,
    policy: &GroupPolicy,
    member: &MemberPolicy,
    local: &mut Local,
    want: Want,
) {
    let now = view.now();
    let ordered = !view.mutations.unordered_fence_and_lift();
    let Some(op) = local.fence.next(want, now, policy.fence_lapses_after, ordered) else { return };
    let action = match (op, want) {
        (Op::Fence, Want::Fenced { stale }) => Action::Fence { stale },
        (Op::Lift, Want::Lifted { epoch }) => Action::Lift { epoch },
        _ => return,
    };
    let purpose = Purpose::Keeper(Pending::Fence { group: policy.name.clone(), op });
    let issued = if ordered {
        out.act_alone(purpose, &policy.name, &member.name, action, FENCE_TIMEOUT).is_some()
    } else {
        out.act(purpose, &policy.name, &member.name, action, FENCE_TIMEOUT, false);
        true
    };
    if !issued {
        return;
    }
    match (op, want) {
        (Op::Fence, Want::Fenced { stale: true }) => {
            tracing::warn!(group = %policy.name, member = %member.name, "a stale primary runs beside this node: fencing it")
        }
        (Op::Fence, _) if local.fence.known() == Known::Fenced => {}
        (Op::Fence, _) => tracing::warn!(
            group = %policy.name,
            member = %member.name,
            "no lease with time left (not renewed in time, refused, or not yet granted): fencing the primary"
        ),
        (Op::Lift, _) => tracing::info!(
            group = %policy.name,
            member = %member.name,
            "lease renewed: the cluster confirms the primary; lifting the fence"
        ),
    }
    if view.mutations.unconfirmed_fence() || view.mutations.unordered_fence_and_lift() {
        // The old rule: the keeper believed what it asked for as soon as it asked, and disarmed
        // the guard before a fence ran.
        local.fence.assume(op, now);
        if op == Op::Fence && local.guard_armed {
            out.guard(Purpose::Keeper(Pending::Guard), GuardOrder::Disarm { group: policy.name.clone() });
            local.guard_armed = false;
            local.guard_deadline = None;
        }
    } else {
        local.fence.started(op);
    }
}

/// Asks to start `member` again, fenced; whether the action was started (none other of this
/// node's on the member was under way).
fn start_fenced(out: &mut Out<'_>, group: &str, member: &MemberPolicy) -> bool {
    out.act_alone(
        Purpose::Keeper(Pending::StartFenced { group: group.to_string() }),
        group,
        &member.name,
        Action::StartFenced,
        HOST_ACTION_TIMEOUT,
    )
    .is_some()
}

/// Whether this node's guard may have stopped its primary lately (its deadline passed with no
/// renewal to push it on) and the cluster has confirmed the primary since: a renewal with time
/// left has committed, and the lease was neither released nor handed over.
fn recovering_from_own_guard(view: &View<'_>, policy: &GroupPolicy, local: &Local) -> bool {
    let now = view.now();
    local.guard_acted_at.is_some_and(|at| now.since(at) < GUARD_STOP_RECOVERY)
        && local.holding.as_ref().is_some_and(|holding| {
            !holding.released && !holding.release_in_flight && usable(holding.valid_until, now, policy.lease_duration)
        })
}

/// Its own guard stopped the primary when its lease ran out (renewals could not commit for a
/// while, as in a Raft election under load), and a renewal has committed since: the cluster
/// still confirms it as the primary of the current epoch. Start it again at once, fenced (the
/// next renewal lifts the fence), rather than give the lease up and cost the group a
/// failover. Meanwhile this node's failed probes of it count as degraded, not down.
fn restart_after_own_guard(out: &mut Out<'_>, group: &str, member: &MemberPolicy, local: &mut Local) {
    if start_fenced(out, group, member) {
        tracing::warn!(
            group,
            member = %member.name,
            "its fence guard stopped the primary, and the cluster confirms it since: starting it again, fenced"
        );
        local.restarting = true;
        local.guard_acted_at = None;
    }
}

/// The primary beside this node is down by this node's own probes: once it is confirmed down
/// on its own host (not running, refusing connections), give the lease up so the leader need
/// not wait for it to run out. Once released and still not replaced long after, start
/// it again, fenced: the group has no primary at all otherwise (strict synchronous mode with
/// no confirmed standby, every replica `nofailover`), and the next committed renewal, which
/// only succeeds while it is still the primary of the current epoch, lifts the fence.
fn keep_down_primary(
    view: &View<'_>,
    out: &mut Out<'_>,
    policy: &GroupPolicy,
    member: &MemberPolicy,
    local: &mut Local,
    no_run: bool,
) {
    let now = view.now();
    let group = policy.name.as_str();
    let guard_stopped_it =
        member.restarts_in_place && local.guard_acted_at.is_some_and(|at| now.since(at) < GUARD_STOP_RECOVERY);
    let Some(holding) = local.holding.as_mut() else { return };
    let down_since = *holding.down_since.get_or_insert(now);
    // Its own guard stopped it lately, for renewals that could not commit: a renewal still in
    // flight may yet confirm it (the one committed first may have been sent too long ago to
    // leave time), and then it is started again rather than given up.
    let awaiting_renewal = guard_stopped_it && !holding.renewals.is_empty();
    if !holding.released && !holding.release_in_flight && !awaiting_renewal {
        let due = holding.release_attempt_at.is_none_or(|at| now.since(at) >= RELEASE_RETRY);
        if due
            && out
                .act_alone(
                    Purpose::Keeper(Pending::MakeSureDown { group: group.to_string() }),
                    group,
                    &member.name,
                    Action::MakeSureDown,
                    HOST_ACTION_TIMEOUT,
                )
                .is_some()
        {
            holding.release_attempt_at = Some(now);
        }
    } else if holding.released
        && no_run
        && member.restarts_in_place
        && now.since(down_since) >= RESTART_IN_PLACE_AFTER
        && holding.restart_attempt_at.is_none_or(|at| now.since(at) >= RESTART_IN_PLACE_AFTER)
        && start_fenced(out, group, member)
    {
        holding.restart_attempt_at = Some(now);
        tracing::warn!(
            group,
            member = %member.name,
            down_for_ms = now.since(down_since).as_millis() as u64,
            "the primary is down and nothing replaced it: starting it again, fenced, until the cluster confirms its lease"
        );
    }
}

/// A member being replaced: once its fence holds, release its lease so the leader need not
/// wait for it to run out.
fn hand_over(view: &View<'_>, out: &mut Out<'_>, policy: &GroupPolicy, member: &MemberPolicy, local: &mut Local) {
    if local.handed_over || local.hand_over_in_flight || !local.fence.settled_fenced() {
        return;
    }
    if local.holding.as_ref().is_some_and(|holding| holding.release_in_flight) {
        return;
    }
    if local.holding.as_ref().is_some_and(|holding| holding.released) {
        local.handed_over = true;
        return;
    }
    let reason = format!("{} fenced by node {} ({})", member.name, view.node, policy.fence_words);
    let command =
        Command::ReleaseLease { group: policy.name.clone(), member: member.name.clone(), holder: view.node, reason };
    out.propose(Purpose::Keeper(Pending::Release { group: policy.name.clone() }), command, RELEASE_TIMEOUT);
    local.hand_over_in_flight = true;
    if let Some(holding) = local.holding.as_mut() {
        holding.release_sent_at = Some(view.now());
        holding.valid_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1500);

    fn at(ms: u64) -> Mono {
        Mono::from_origin(Duration::from_millis(ms))
    }

    #[test]
    fn the_guard_acts_between_the_fence_and_the_end_of_the_lease() {
        let valid_until = at(10_000);
        let deadline = guard_deadline(valid_until, LEASE);
        let fence_at = valid_until - fence_margin(LEASE);
        assert!(deadline > fence_at, "the guard acts after this node would have fenced");
        assert!(deadline <= valid_until, "and no later than the lease runs out by this node's clock");
    }

    #[test]
    fn a_renewal_answered_after_its_lease_ran_out_is_of_no_use() {
        // Sent 1.6 s ago to a leader that was then cut off, committed only now by the next.
        let now = at(10_000);
        assert!(!usable(Some(at(8_400) + LEASE), now, LEASE));
        assert!(!usable(Some(now + fence_margin(LEASE)), now, LEASE));
        assert!(usable(Some(now + fence_margin(LEASE) + Duration::from_millis(1)), now, LEASE));
        assert!(!usable(None, now, LEASE));
    }
}
