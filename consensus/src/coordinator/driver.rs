//! Failovers: the leader decides, then drives each run one committed step at a time; the
//! node beside a member runs the steps that need its host.
//!
//! Every step is committed as started before it runs and its result is committed after, so
//! a new leader finds where a dead one stopped: a leader step left started by another node
//! (or by this one before it restarted) is started again under a new attempt and run again
//! (steps are idempotent, and promotion checks first whether it already happened); a
//! host-local step is left to the node beside its member. Before any side effect on a
//! member the leader's node confirms with a quorum that it still leads.
//!
//! Every timeout and retry delay is measured by this node's monotonic clock from when it
//! saw the step's status change, never from the wall-clock stamp another node put in the
//! state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::lease_clock::LeaseView;
use super::{Action, EffectId, Mono, Out, Outcome, Purpose, Reach, View};
use crate::decision::{Decision, Situation, decide};
use crate::group::{FailoverRun, GroupState, Step, StepFacts, StepSeen, StepStatus};
use crate::spec::{GroupPolicy, SyncMode};
use crate::state::{Command, CommandResponse};
use crate::types::NodeId;

/// How many times a critical step is tried before the run is abandoned.
pub const MAX_ATTEMPTS: u32 = 3;
/// Wait between attempts of a failed step.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a host-local step may stay started before the leader gives up on its node.
pub const HOST_STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the leader's own fence of an old primary over the network may take.
pub const REMOTE_FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the leader waits, beyond the lease, for an old primary's lease to run out or be
/// released before the fence step fails.
pub const FENCE_WAIT_BEYOND_LEASE: Duration = Duration::from_secs(30);
/// How long a proposal of the driver may take.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often, and how many times, a step's result is proposed before it is left to the next
/// leader (which runs the step again).
const RESULT_RETRY: Duration = Duration::from_millis(250);
const RESULT_TRIES: u32 = 20;

/// Where a step of a run is: the group, the run's id, the step's index.
type StepKey = (String, u64, usize);

/// An effect of the driver in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A decision's command (record the primary, block, begin a failover).
    Decision {
        /// The group.
        group: String,
    },
    /// A step committed as started.
    Start {
        /// The step.
        key: StepKey,
    },
    /// A step's action.
    Run {
        /// The step.
        key: StepKey,
        /// The attempt.
        attempt: u32,
    },
    /// A step's result.
    Result {
        /// The step.
        key: StepKey,
        /// The next step, started in the same entry.
        next: Option<StepKey>,
    },
    /// The end of a run.
    Finish {
        /// The group.
        group: String,
        /// The run.
        run_id: u64,
    },
}

/// A step's result waiting to be committed.
#[derive(Clone, Debug)]
struct StepResult {
    succeeded: bool,
    detail: String,
    facts: StepFacts,
    tries: u32,
    retry_at: Mono,
    in_flight: bool,
}

/// A leader step running on this node.
#[derive(Clone, Debug)]
struct Running {
    attempt: u32,
    /// For the fence step: when waiting began, and whether the remote fence is still running.
    fence_wait: Option<Mono>,
    action: Option<EffectId>,
}

/// The failover driver of one node.
#[derive(Clone, Debug, Default)]
pub struct Driver {
    deciding: BTreeSet<String>,
    /// Each step's status as this node last saw it, and when it first saw it so.
    seen: BTreeMap<StepKey, (StepStatus, Mono)>,
    starting: BTreeSet<StepKey>,
    /// Leader steps this node started, by the attempt its start makes: a step the state
    /// shows started by this node under another attempt was started by an earlier run of
    /// this node (a start committed after a restart), and is started again, not run.
    started_here: BTreeMap<StepKey, u32>,
    running: BTreeMap<StepKey, Running>,
    /// Host-local attempts this node ran, so each runs once.
    ran_here: BTreeSet<(StepKey, u32)>,
    results: BTreeMap<StepKey, StepResult>,
    finishing: BTreeSet<(String, u64)>,
}

impl Driver {
    pub(super) fn drive(&mut self, view: &View<'_>, out: &mut Out<'_>) {
        if view.state_changed {
            self.note_statuses(view);
        }
        self.send_results(view, out);
        for policy in view.policies {
            let Some(state) = view.group_state(&policy.name) else { continue };
            if let Some(run) = &state.running {
                self.host_local(view, out, policy, run);
                if view.is_leader() {
                    self.advance(view, out, policy, run);
                }
            } else if view.is_leader() {
                self.decide(view, out, policy, state);
            }
        }
    }

    /// Notes, by this node's clock, when each step's status changed; forgets finished runs.
    fn note_statuses(&mut self, view: &View<'_>) {
        let now = view.now();
        let mut live = BTreeSet::new();
        for (group, state) in &view.state().groups {
            let Some(run) = &state.running else { continue };
            for (index, step) in run.steps.iter().enumerate() {
                let key = (group.clone(), run.id, index);
                match self.seen.get_mut(&key) {
                    Some((status, _)) if *status == step.status => {}
                    Some(seen) => *seen = (step.status.clone(), now),
                    None => {
                        self.seen.insert(key.clone(), (step.status.clone(), now));
                    }
                }
                live.insert(key);
            }
        }
        self.seen.retain(|key, _| live.contains(key));
        self.starting.retain(|key| live.contains(key));
        self.started_here.retain(|key, _| live.contains(key));
        self.running.retain(|key, _| live.contains(key));
        self.ran_here.retain(|(key, _)| live.contains(key));
        self.results.retain(|key, result| live.contains(key) || result.in_flight);
        self.finishing.retain(|(group, run_id)| {
            view.group_state(group).and_then(|state| state.running.as_ref()).is_some_and(|run| run.id == *run_id)
        });
    }

    /// How long ago this node saw the step's current status appear; with the old rule, the
    /// wall-clock age of the stamp in the state, whoever wrote it.
    fn age(&self, view: &View<'_>, key: &StepKey, stamped_at_ms: u64) -> Duration {
        if view.mutations.wall_clock_step_timeouts() {
            return Duration::from_millis(view.ctx.now.wall_ms.saturating_sub(stamped_at_ms));
        }
        self.seen.get(key).map_or(Duration::ZERO, |(_, since)| view.now().since(*since))
    }

    fn decide(&mut self, view: &View<'_>, out: &mut Out<'_>, policy: &GroupPolicy, state: &GroupState) {
        if self.deciding.contains(&policy.name) {
            return;
        }
        // A primary its own node fenced is failed over only once its lease has stayed run
        // out for a further lease: a node that merely lost its lease during a Raft election
        // renews it and lifts the fence in that time, and no failover is needed.
        let primary_lease_run_out =
            state.primary.as_deref().is_some_and(|primary| match view.leases.view(policy, primary, view.now()) {
                LeaseView::Released(_) => true,
                LeaseView::RunOut { since_renewal } => since_renewal >= policy.lease_wait() + policy.lease_duration,
                LeaseView::Held { .. } => false,
            });
        let unreachable = match view.ctx.followers {
            Some(followers) if followers.leading_for > super::reach::REACH_WITHIN => followers.unreachable(view.node),
            _ => BTreeSet::new(),
        };
        let situation = Situation {
            spec: policy,
            state,
            voters: view.voters,
            nodes: view.nodes,
            now_ms: view.ctx.now.wall_ms,
            primary_lease_run_out,
            unreachable: &unreachable,
        };
        let group = policy.name.clone();
        let command = match decide(&situation) {
            Decision::Nothing => return,
            Decision::RecordPrimary { member, epoch } => Command::RecordPrimary {
                group: group.clone(),
                member,
                epoch,
                at_unix_ms: view.ctx.now.wall_ms,
                proposer: view.node,
            },
            Decision::Blocked { reason } => {
                tracing::warn!(%group, %reason, "no failover possible");
                Command::SetBlocked { group: group.clone(), reason: Some(reason) }
            }
            Decision::Unblock => Command::SetBlocked { group: group.clone(), reason: None },
            Decision::Begin(plan) => {
                tracing::warn!(%group, candidate = %plan.candidate, reason = %plan.reason, "starting failover");
                Command::BeginFailover {
                    group: group.clone(),
                    kind: plan.kind,
                    reason: plan.reason,
                    old_primary: plan.old_primary,
                    candidate: plan.candidate,
                    plan: plan.steps,
                    detected_at_ms: plan.detected_at_ms,
                    decided_at_ms: view.ctx.now.wall_ms,
                    old_primary_lsn: plan.old_primary_lsn,
                    candidate_lsn: plan.candidate_lsn,
                    proposer: view.node,
                }
            }
        };
        out.propose(Purpose::Driver(Pending::Decision { group: group.clone() }), command, PROPOSE_TIMEOUT);
        self.deciding.insert(group);
    }

    /// The leader: moves `run` on by one step, or ends it.
    fn advance(&mut self, view: &View<'_>, out: &mut Out<'_>, policy: &GroupPolicy, run: &FailoverRun) {
        let group = policy.name.as_str();
        let Some(index) = run.current_step() else {
            let skipped: Vec<String> = run
                .steps
                .iter()
                .filter_map(|step| match &step.status {
                    StepStatus::Failed { detail, .. } => Some(format!("{} failed: {detail}", step.step)),
                    _ => None,
                })
                .collect();
            let mut outcome = format!("{} is the primary of epoch {}", run.candidate, run.epoch);
            if !skipped.is_empty() {
                outcome = format!("{outcome}; {}", skipped.join("; "));
            }
            self.finish(view, out, group, run.id, true, outcome);
            return;
        };
        let key = (group.to_string(), run.id, index);
        let step = &run.steps[index];
        let Some(executor) = executor_of(view, policy, &step.step) else {
            let outcome = format!("no vigil node runs beside the member of step \"{}\"", step.step);
            self.finish(view, out, group, run.id, false, outcome);
            return;
        };
        let host_local = step.step.host_local_member().is_some();
        let start = match &step.status {
            StepStatus::Pending => true,
            StepStatus::Started { at_ms, by, .. } if host_local => {
                if self.age(view, &key, *at_ms) > HOST_STEP_TIMEOUT && !self.results.contains_key(&key) {
                    let detail = format!("node {by} did not finish it within {} s", HOST_STEP_TIMEOUT.as_secs());
                    self.record_result(view, key.clone(), false, detail, StepFacts::default());
                }
                false
            }
            StepStatus::Started { by, attempt, .. } => {
                if *by == view.node && self.started_here.get(&key) == Some(attempt) {
                    if !self.running.contains_key(&key) && !self.results.contains_key(&key) {
                        self.run_step(view, out, policy, run, key.clone(), *attempt);
                    }
                    false
                } else {
                    // Started by another leader, or by this node before it restarted (its
                    // start committed late): whether that attempt ran is unknown, so the step
                    // starts again under a new attempt.
                    if !self.starting.contains(&key) {
                        tracing::warn!(group, run = run.id, step = %step.step, previous = by, attempt, "resuming a step started by an earlier leader");
                    }
                    true
                }
            }
            StepStatus::Failed { attempt, at_ms, detail } => {
                if *attempt >= MAX_ATTEMPTS {
                    let outcome = format!("step \"{}\" failed {attempt} times: {detail}", step.step);
                    self.finish(view, out, group, run.id, false, outcome);
                    false
                } else {
                    self.age(view, &key, *at_ms) >= RETRY_AFTER
                }
            }
            StepStatus::Succeeded { .. } => false,
        };
        if start && !self.starting.contains(&key) && step.step == Step::Promote {
            // The promoted member takes writes only once its own node lifts its fence: never
            // promote towards a node this leader does not hear from, also when resuming a
            // promotion a dead leader started (it may have been that node). A new leader
            // first waits until it could have heard from it.
            let node_name = policy.member(&run.candidate).map(|member| member.node.as_str()).unwrap_or_default();
            let node = view.nodes.iter().find(|(_, info)| info.name == node_name).map(|(id, _)| *id);
            match node.map(|node| view.reach(node)) {
                Some(Reach::Reachable) => {}
                Some(Reach::NotYetKnown) => return,
                Some(Reach::Unreachable) | None => {
                    let outcome = format!(
                        "not promoting {}: its node {node_name} is out of the leader's reach, so nobody could lift \
                         its fence",
                        run.candidate
                    );
                    self.finish(view, out, group, run.id, false, outcome);
                    return;
                }
            }
        }
        if start && !self.starting.contains(&key) {
            let seen = StepSeen::of(&step.status);
            let command = Command::StepStarted {
                group: group.to_string(),
                run_id: run.id,
                index,
                by: executor,
                at_ms: view.ctx.now.wall_ms,
                seen,
            };
            out.propose(Purpose::Driver(Pending::Start { key: key.clone() }), command, PROPOSE_TIMEOUT);
            self.starting.insert(key.clone());
            self.running.remove(&key);
            if let (false, Some(seen)) = (host_local, seen) {
                self.started_here.insert(key, seen.next_attempt());
            }
        }
    }

    /// Runs a leader step: the action on its member, or, for the fence step, waiting for the
    /// old primary's lease while the leader also fences it over the network.
    fn run_step(
        &mut self,
        view: &View<'_>,
        out: &mut Out<'_>,
        policy: &GroupPolicy,
        run: &FailoverRun,
        key: StepKey,
        attempt: u32,
    ) {
        let step = &run.steps[key.2];
        tracing::info!(group = %policy.name, run = run.id, step = %step.step, attempt, "running step");
        let (member, action) = match step_action(policy, run, &step.step) {
            Ok(found) => found,
            Err(detail) => {
                self.record_result(view, key, false, detail, StepFacts::default());
                return;
            }
        };
        let timeout = action_timeout(&action, policy);
        let pending = Purpose::Driver(Pending::Run { key: key.clone(), attempt });
        let action_id = out.act(pending, &policy.name, &member, action, timeout, true);
        let fence_wait = matches!(step.step, Step::FenceOldPrimary { .. }).then(|| view.now());
        self.running.insert(key.clone(), Running { attempt, fence_wait, action: Some(action_id) });
        if fence_wait.is_some() {
            self.check_fence_wait(view, policy, &key);
        }
    }

    /// The fence step is done once the old primary's lease was released (its node made sure
    /// it is fenced or down) or has run out by this node's clock (its node fenced it, or its
    /// guard stopped it). The leader's own fence over the network is a second line, never
    /// enough alone: a lift its node started just before can still land after it.
    fn check_fence_wait(&mut self, view: &View<'_>, policy: &GroupPolicy, key: &StepKey) {
        let Some(running) = self.running.get(key) else { return };
        let Some(since) = running.fence_wait else { return };
        let Some(run) = view.group_state(&key.0).and_then(|state| state.running.as_ref()) else { return };
        let Some(Step::FenceOldPrimary { member: old }) = run.steps.get(key.2).map(|step| &step.step) else { return };
        let detail = if view.mutations.skip_lease_wait() {
            Some("lease not waited for (mutation)".to_string())
        } else {
            match view.leases.view(policy, old, view.now()) {
                LeaseView::Released(reason) => Some(format!("lease released: {reason}")),
                LeaseView::RunOut { since_renewal } => Some(format!(
                    "lease ran out: last renewal seen {} ms ago, so the node beside {old} has fenced it",
                    since_renewal.as_millis()
                )),
                LeaseView::Held { .. } => None,
            }
        };
        if let Some(detail) = detail {
            self.running.remove(key);
            self.record_result(view, key.clone(), true, detail, StepFacts::default());
        } else if view.now().since(since) > policy.lease_wait() + FENCE_WAIT_BEYOND_LEASE {
            self.running.remove(key);
            let detail = "the old primary's lease neither ran out nor was released".to_string();
            self.record_result(view, key.clone(), false, detail, StepFacts::default());
        }
    }

    /// The node beside a member: runs the host-local step the leader started for it here.
    fn host_local(&mut self, view: &View<'_>, out: &mut Out<'_>, policy: &GroupPolicy, run: &FailoverRun) {
        let Some(index) = run.current_step() else { return };
        let step = &run.steps[index];
        if step.step.host_local_member().is_none() {
            return;
        }
        let StepStatus::Started { by, attempt, .. } = step.status else { return };
        let key = (policy.name.clone(), run.id, index);
        if by != view.node || self.ran_here.contains(&(key.clone(), attempt)) {
            return;
        }
        let (member, action) = match step_action(policy, run, &step.step) {
            Ok(found) => found,
            Err(detail) => {
                self.ran_here.insert((key.clone(), attempt));
                self.record_result(view, key, false, detail, StepFacts::default());
                return;
            }
        };
        let timeout = action_timeout(&action, policy);
        let pending = Purpose::Driver(Pending::Run { key: key.clone(), attempt });
        if out.act_alone(pending, &policy.name, &member, action, timeout).is_some() {
            tracing::info!(group = %policy.name, run = run.id, step = %step.step, attempt, "running host-local step");
            self.ran_here.insert((key, attempt));
        }
    }

    fn record_result(&mut self, view: &View<'_>, key: StepKey, succeeded: bool, detail: String, facts: StepFacts) {
        let now = view.now();
        if succeeded {
            tracing::info!(group = %key.0, run = key.1, index = key.2, %detail, "step succeeded");
        } else {
            tracing::error!(group = %key.0, run = key.1, index = key.2, %detail, "step failed");
        }
        self.results.insert(key, StepResult { succeeded, detail, facts, tries: 0, retry_at: now, in_flight: false });
    }

    /// Proposes every result that waits, retrying a little so a transient leader change does
    /// not lose it; past that, the next leader runs the step again.
    fn send_results(&mut self, view: &View<'_>, out: &mut Out<'_>) {
        let now = view.now();
        let mut given_up = Vec::new();
        for (key, result) in &mut self.results {
            if result.in_flight || now < result.retry_at {
                continue;
            }
            if result.tries >= RESULT_TRIES {
                tracing::error!(group = %key.0, run = key.1, index = key.2, "could not commit a step result; the next leader will run the step again");
                given_up.push(key.clone());
                continue;
            }
            // A leader step that succeeded starts the next one in the same entry, when that
            // one could start now (the same rules as `advance`, which starts it otherwise).
            let next = result.succeeded.then(|| next_startable(view, key)).flatten();
            if let Some((next_key, _, host_local)) = &next {
                self.starting.insert(next_key.clone());
                if !host_local {
                    // Only a pending step is started in the same entry: its first attempt.
                    self.started_here.insert(next_key.clone(), 1);
                }
            }
            let command = Command::StepFinished {
                group: key.0.clone(),
                run_id: key.1,
                index: key.2,
                succeeded: result.succeeded,
                detail: result.detail.clone(),
                facts: result.facts.clone(),
                at_ms: view.ctx.now.wall_ms,
                next_by: next.as_ref().map(|(_, by, _)| *by),
            };
            let pending = Pending::Result { key: key.clone(), next: next.map(|(next_key, _, _)| next_key) };
            out.propose(Purpose::Driver(pending), command, PROPOSE_TIMEOUT);
            result.tries += 1;
            result.in_flight = true;
        }
        for key in given_up {
            self.results.remove(&key);
        }
    }

    fn finish(
        &mut self,
        view: &View<'_>,
        out: &mut Out<'_>,
        group: &str,
        run_id: u64,
        succeeded: bool,
        outcome: String,
    ) {
        if !self.finishing.insert((group.to_string(), run_id)) {
            return;
        }
        if succeeded {
            tracing::info!(group, run = run_id, %outcome, "failover finished");
        } else {
            tracing::error!(group, run = run_id, %outcome, "failover abandoned");
        }
        let command = Command::FinishFailover {
            group: group.to_string(),
            run_id,
            succeeded,
            outcome,
            at_ms: view.ctx.now.wall_ms,
            proposer: view.node,
        };
        out.propose(Purpose::Driver(Pending::Finish { group: group.to_string(), run_id }), command, PROPOSE_TIMEOUT);
    }

    pub(super) fn done(&mut self, view: &View<'_>, out: &mut Out<'_>, pending: Pending, outcome: Outcome) {
        let _ = out;
        match pending {
            Pending::Decision { group } => {
                self.deciding.remove(&group);
                log_refusal(&outcome, "decision");
            }
            Pending::Start { key } => {
                self.starting.remove(&key);
                if !matches!(outcome, Outcome::Proposed(Ok(CommandResponse::Applied))) {
                    log_refusal(&outcome, "step start");
                    self.started_here.remove(&key);
                }
            }
            Pending::Run { key, attempt } => {
                let leader_step = self.running.get(&key).is_some_and(|running| running.attempt == attempt);
                let (succeeded, detail, facts) = match outcome {
                    Outcome::Acted(Ok(report)) => (true, report.detail, report.facts),
                    Outcome::Acted(Err(failure)) => (false, failure.to_string(), StepFacts::default()),
                    _ => (false, "unexpected outcome".to_string(), StepFacts::default()),
                };
                if leader_step {
                    let fence_wait = self.running.get(&key).and_then(|running| running.fence_wait);
                    if fence_wait.is_some() {
                        // The remote fence is a second line only: the step still waits for the lease.
                        if let Some(running) = self.running.get_mut(&key) {
                            running.action = None;
                        }
                        if succeeded {
                            tracing::info!(group = %key.0, %detail, "old primary also fenced remotely by the leader");
                        }
                        return;
                    }
                    self.running.remove(&key);
                    self.record_result(view, key, succeeded, detail, facts);
                } else if self.ran_here.contains(&(key.clone(), attempt)) {
                    self.record_result(view, key, succeeded, detail, facts);
                }
            }
            Pending::Result { key, next } => {
                if let Some(next) = next {
                    // As for a start of its own: the state shows it started, or it is
                    // started again the usual way.
                    self.starting.remove(&next);
                    if !matches!(outcome, Outcome::Proposed(Ok(CommandResponse::Applied))) {
                        self.started_here.remove(&next);
                    }
                }
                let Some(result) = self.results.get_mut(&key) else { return };
                result.in_flight = false;
                match outcome {
                    Outcome::Proposed(Ok(_)) => {
                        self.results.remove(&key);
                    }
                    Outcome::Proposed(Err(_)) | Outcome::Acted(_) | Outcome::CaughtUp(_) | Outcome::Guarded(_) => {
                        result.retry_at = view.now() + RESULT_RETRY;
                    }
                }
            }
            Pending::Finish { group, run_id } => {
                self.finishing.remove(&(group, run_id));
                log_refusal(&outcome, "finish");
            }
        }
    }

    /// Checks the fence steps waiting for a lease; called on every event.
    pub(super) fn check_fences(&mut self, view: &View<'_>) {
        let waiting: Vec<StepKey> = self
            .running
            .iter()
            .filter(|(_, running)| running.fence_wait.is_some())
            .map(|(key, _)| key.clone())
            .collect();
        for key in waiting {
            if let Some(policy) = view.policy(&key.0) {
                self.check_fence_wait(view, policy, &key);
            }
        }
    }
}

fn log_refusal(outcome: &Outcome, what: &str) {
    match outcome {
        Outcome::Proposed(Ok(CommandResponse::Refused { reason })) => tracing::warn!(%reason, "{what} refused"),
        Outcome::Proposed(Err(error)) => tracing::warn!(%error, "{what} not committed"),
        _ => {}
    }
}

/// The step after the leader step `key`, if this node, the leader, may start it in the entry
/// that records `key`'s success: the step, who runs it, and whether it is host-local. Only
/// a pending step whose executor is known, and a promotion only towards a node the leader
/// hears from; anything else is left to `advance`, which also decides what to do about it.
fn next_startable(view: &View<'_>, key: &StepKey) -> Option<(StepKey, NodeId, bool)> {
    if !view.is_leader() {
        return None;
    }
    let policy = view.policy(&key.0)?;
    let run = view.group_state(&key.0)?.running.as_ref().filter(|run| run.id == key.1)?;
    let current = run.steps.get(key.2)?;
    if current.step.host_local_member().is_some() {
        return None;
    }
    let index = key.2 + 1;
    let next = run.steps.get(index).filter(|next| next.status == StepStatus::Pending)?;
    let executor = executor_of(view, policy, &next.step)?;
    if next.step == Step::Promote {
        let node_name = &policy.member(&run.candidate)?.node;
        let node = view.nodes.iter().find(|(_, info)| &info.name == node_name).map(|(id, _)| *id)?;
        if view.reach(node) != Reach::Reachable {
            return None;
        }
    }
    Some(((key.0.clone(), key.1, index), executor, next.step.host_local_member().is_some()))
}

/// The node that runs `step`: the member's node for host-local steps, else the leader.
fn executor_of(view: &View<'_>, policy: &GroupPolicy, step: &Step) -> Option<NodeId> {
    match step.host_local_member() {
        Some(member) => {
            let node_name = &policy.member(member)?.node;
            view.nodes.iter().find(|(_, info)| &info.name == node_name).map(|(id, _)| *id)
        }
        None => Some(view.node),
    }
}

/// The member a step acts on and what it does to it.
fn step_action(policy: &GroupPolicy, run: &FailoverRun, step: &Step) -> Result<(String, Action), String> {
    let candidate = run.candidate.clone();
    let found = |member: &str| -> Result<String, String> {
        policy
            .member(member)
            .map(|m| m.name.clone())
            .ok_or_else(|| format!("group {} has no member {member}", policy.name))
    };
    Ok(match step {
        Step::StopPrimary { member } => (found(member)?, Action::StopForSwitchover),
        Step::FenceOldPrimary { member } => (found(member)?, Action::RemoteFence),
        Step::WaitForCatchUp => {
            let Some(position) = run.old_primary_lsn else {
                return Err("the old primary's final position is unknown".to_string());
            };
            (found(&candidate)?, Action::WaitForCatchUp { position })
        }
        Step::Promote => (
            found(&candidate)?,
            Action::Promote { epoch: run.epoch, strict_sync: policy.synchronous == SyncMode::Strict },
        ),
        Step::VerifyWritable => (found(&candidate)?, Action::VerifyWritable { epoch: run.epoch }),
        Step::Repoint { member } => (found(member)?, Action::Repoint { primary: candidate }),
        Step::RejoinAsReplica { member } => (found(member)?, Action::RestartAsReplica { primary: candidate }),
    })
}

/// How long each step's action may take.
fn action_timeout(action: &Action, policy: &GroupPolicy) -> Duration {
    match action {
        Action::RemoteFence => REMOTE_FENCE_TIMEOUT,
        // The new primary takes writes once its own node holds its lease: a few renewals.
        Action::VerifyWritable { .. } => policy.lease_duration * 4 + Duration::from_secs(10),
        Action::Promote { .. } | Action::Repoint { .. } => Duration::from_secs(60),
        Action::WaitForCatchUp { .. } | Action::StopForSwitchover => Duration::from_secs(75),
        _ => Duration::from_secs(120),
    }
}
