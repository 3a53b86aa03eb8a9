//! The leader's failover driver: decides, then drives each run one committed step at a time.
//!
//! Every step is committed as started before it runs and its result is committed after, so
//! a new leader finds where a dead one stopped: a leader step left "started" by another node
//! is run again (steps are idempotent, and promotion checks first whether it already
//! happened); a host-local step is left to the node beside the member (see `executor`).
//! Before any side effect the driver confirms with a quorum that it still leads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ReadPolicy;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigil_consensus::cluster::unix_millis_now;
use vigil_consensus::decision::{Decision, Situation, decide};
use vigil_consensus::group::{FailoverRun, GroupState, StepFacts, StepStatus};
use vigil_consensus::spec::ClusterSpec;
use vigil_consensus::state::Command;
use vigil_consensus::transport::rpc::LeaderRequest;
use vigil_consensus::{Cluster, NodeId, NodeInfo};

use crate::groups::failpoints::Failpoints;
use crate::groups::lease::{LeaseClock, LeaseView};
use crate::groups::steps::{execute, step_name};

/// How often the driver looks at the state.
pub const TICK: Duration = Duration::from_millis(100);
/// How many times a critical step is tried before the run is abandoned.
pub const MAX_ATTEMPTS: u32 = 3;
/// Wait between attempts of a failed step.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a host-local step may stay started before the leader gives up on its node.
pub const HOST_STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// Steps running on this node, by (group, run, step index, attempt).
pub type InFlight = Arc<Mutex<BTreeSet<(String, u64, usize, u32)>>>;

struct Snapshot {
    spec: ClusterSpec,
    groups: BTreeMap<String, GroupState>,
    voters: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, NodeInfo>,
}

fn snapshot(cluster: &Cluster) -> Snapshot {
    let state = cluster.state.read().expect("state lock poisoned");
    Snapshot { spec: state.spec.clone(), groups: state.groups.clone(), voters: state.voter_ids(), nodes: state.nodes() }
}

/// Runs until `cancel`; acts only while this node is the Raft leader.
pub async fn run(cluster: Cluster, failpoints: Failpoints, leases: LeaseClock, cancel: CancellationToken) {
    let in_flight = InFlight::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Every applied entry changes openraft's metrics: waking on them lets the next step of a
    // failover follow the commit of the last one at once, rather than at the next tick.
    let mut applied = cluster.raft.metrics();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            changed = openraft::async_runtime::WatchReceiver::changed(&mut applied) => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if !cluster.raft.is_leader() {
            continue;
        }
        let snapshot = snapshot(&cluster);
        for group in snapshot.spec.groups().map(|group| group.policy()) {
            let group = &group;
            let state = snapshot.groups.get(&group.name).cloned().unwrap_or_default();
            if let Some(run) = &state.running {
                advance(&cluster, &snapshot, &group.name, run, &in_flight, &failpoints, &leases).await;
                continue;
            }
            // A primary its own node fenced is failed over only once its lease has stayed run
            // out for a further lease: a node that merely lost its lease during a Raft election
            // renews it and lifts the fence in that time, and no failover is needed.
            let primary_lease_run_out =
                state.primary.as_deref().is_some_and(|primary| match leases.view(group, primary) {
                    LeaseView::Released(_) => true,
                    LeaseView::RunOut { since_renewal } => since_renewal >= group.lease_wait() + group.lease_duration,
                    LeaseView::Held { .. } => false,
                });
            let situation = Situation {
                spec: group,
                state: &state,
                voters: &snapshot.voters,
                nodes: &snapshot.nodes,
                now_ms: unix_millis_now(),
                primary_lease_run_out,
            };
            let command = match decide(&situation) {
                Decision::Nothing => continue,
                Decision::RecordPrimary { member, epoch } => Command::RecordPrimary {
                    group: group.name.clone(),
                    member,
                    epoch,
                    at_unix_ms: unix_millis_now(),
                    proposer: cluster.node_id,
                },
                Decision::Blocked { reason } => {
                    warn!(group = %group.name, %reason, "no failover possible");
                    Command::SetBlocked { group: group.name.clone(), reason: Some(reason) }
                }
                Decision::Unblock => Command::SetBlocked { group: group.name.clone(), reason: None },
                Decision::Begin(plan) => {
                    warn!(group = %group.name, candidate = %plan.candidate, reason = %plan.reason, "starting failover");
                    Command::BeginFailover {
                        group: group.name.clone(),
                        kind: plan.kind,
                        reason: plan.reason,
                        old_primary: plan.old_primary,
                        candidate: plan.candidate,
                        plan: plan.steps,
                        detected_at_ms: plan.detected_at_ms,
                        decided_at_ms: unix_millis_now(),
                        old_primary_lsn: plan.old_primary_lsn,
                        candidate_lsn: plan.candidate_lsn,
                        proposer: cluster.node_id,
                    }
                }
            };
            propose(&cluster, command).await;
        }
    }
}

async fn propose(cluster: &Cluster, command: Command) -> bool {
    let text = command.to_string();
    match cluster.submit(LeaderRequest::Write { command }).await {
        Ok(vigil_consensus::transport::rpc::LeaderResponse::Done {
            response: vigil_consensus::CommandResponse::Refused { reason },
            ..
        }) => {
            warn!(command = %text, %reason, "command refused");
            false
        }
        Ok(_) => true,
        Err(error) => {
            warn!(command = %text, %error, "command not committed");
            false
        }
    }
}

/// The node that runs `step` of a run: the member's node for host-local steps, else the leader.
pub fn executor_of(
    step: &vigil_consensus::group::Step,
    group: &vigil_consensus::spec::GroupPolicy,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    leader: NodeId,
) -> Option<NodeId> {
    match step.host_local_member() {
        Some(member) => {
            let node_name = &group.member(member)?.node;
            nodes.iter().find(|(_, info)| &info.name == node_name).map(|(id, _)| *id)
        }
        None => Some(leader),
    }
}

async fn advance(
    cluster: &Cluster,
    snapshot: &Snapshot,
    group_name: &str,
    run: &FailoverRun,
    in_flight: &InFlight,
    failpoints: &Failpoints,
    leases: &LeaseClock,
) {
    let Some(group) = snapshot.spec.group(group_name).map(|group| group.policy()) else { return };
    let Some(index) = run.current_step() else {
        let skipped: Vec<String> = run
            .steps
            .iter()
            .filter_map(|step| match &step.status {
                StepStatus::Failed { detail, .. } => Some(format!("{} failed: {detail}", step.step)),
                _ => None,
            })
            .collect();
        let outcome = if skipped.is_empty() {
            format!("{} is the primary of epoch {}", run.candidate, run.epoch)
        } else {
            format!("{} is the primary of epoch {}; {}", run.candidate, run.epoch, skipped.join("; "))
        };
        info!(group = group_name, run = run.id, %outcome, "failover finished");
        propose(
            cluster,
            Command::FinishFailover {
                group: group_name.to_string(),
                run_id: run.id,
                succeeded: true,
                outcome,
                at_ms: unix_millis_now(),
                proposer: cluster.node_id,
            },
        )
        .await;
        return;
    };
    let step = &run.steps[index];
    let Some(executor) = executor_of(&step.step, &group, &snapshot.nodes, cluster.node_id) else {
        let outcome = format!("no vigil node runs beside the member of step \"{}\"", step.step);
        finish_failed(cluster, group_name, run, outcome).await;
        return;
    };
    let host_local = step.step.host_local_member().is_some();
    let now_ms = unix_millis_now();
    let next_attempt = match &step.status {
        StepStatus::Pending => Some(1),
        StepStatus::Started { at_ms, by, .. } if host_local => {
            if now_ms.saturating_sub(*at_ms) > HOST_STEP_TIMEOUT.as_millis() as u64 {
                let detail = format!("node {by} did not finish it within {} s", HOST_STEP_TIMEOUT.as_secs());
                finish_step(cluster, group_name, run.id, index, false, detail, StepFacts::default()).await;
            }
            None
        }
        StepStatus::Started { by, attempt, .. } => {
            let running_here = in_flight
                .lock()
                .expect("in-flight lock poisoned")
                .iter()
                .any(|(g, r, i, _)| g == group_name && *r == run.id && *i == index);
            if running_here {
                None
            } else {
                if *by != cluster.node_id {
                    warn!(group = group_name, run = run.id, step = %step.step, previous = by, "resuming a step another leader started");
                }
                Some(attempt + 1)
            }
        }
        StepStatus::Failed { attempt, at_ms, detail } => {
            if *attempt >= MAX_ATTEMPTS {
                let outcome = format!("step \"{}\" failed {attempt} times: {detail}", step.step);
                finish_failed(cluster, group_name, run, outcome).await;
                None
            } else if now_ms.saturating_sub(*at_ms) >= RETRY_AFTER.as_millis() as u64 {
                Some(attempt + 1)
            } else {
                None
            }
        }
        StepStatus::Succeeded { .. } => None,
    };
    let Some(attempt) = next_attempt else { return };
    let started = Command::StepStarted {
        group: group_name.to_string(),
        run_id: run.id,
        index,
        by: executor,
        at_ms: unix_millis_now(),
    };
    if !propose(cluster, started).await || host_local {
        // Host-local steps run on the member's node once it sees them started.
        return;
    }
    let key = (group_name.to_string(), run.id, index, attempt);
    in_flight.lock().expect("in-flight lock poisoned").insert(key.clone());
    let (cluster, spec, run, in_flight, failpoints, leases) =
        (cluster.clone(), snapshot.spec.clone(), run.clone(), in_flight.clone(), failpoints.clone(), leases.clone());
    tokio::spawn(async move {
        let step = run.steps[index].step.clone();
        failpoints.before_step(step_name(&step), run.id, attempt).await;
        // An isolated old leader may still think it leads; only a quorum can confirm it.
        if let Err(error) = cluster.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            warn!(%error, step = %step, "not running the step: leadership not confirmed");
            in_flight.lock().expect("in-flight lock poisoned").remove(&key);
            return;
        }
        info!(group = %group.name, run = run.id, step = %step, attempt, "running step");
        let result = execute(&spec, &group.name, &run, &step, &leases).await;
        if result.succeeded {
            info!(group = %group.name, run = run.id, step = %step, detail = %result.detail, "step succeeded");
        } else {
            error!(group = %group.name, run = run.id, step = %step, detail = %result.detail, "step failed");
        }
        finish_step(&cluster, &group.name, run.id, index, result.succeeded, result.detail, result.facts).await;
        in_flight.lock().expect("in-flight lock poisoned").remove(&key);
    });
}

/// Commits a step's result, retrying a little so a transient leader change does not lose it.
pub async fn finish_step(
    cluster: &Cluster,
    group: &str,
    run_id: u64,
    index: usize,
    succeeded: bool,
    detail: String,
    facts: StepFacts,
) {
    for _ in 0..20 {
        let command = Command::StepFinished {
            group: group.to_string(),
            run_id,
            index,
            succeeded,
            detail: detail.clone(),
            facts: facts.clone(),
            at_ms: unix_millis_now(),
        };
        if propose(cluster, command).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    error!(group, run_id, index, "could not commit a step result; the next leader will run the step again");
}

async fn finish_failed(cluster: &Cluster, group: &str, run: &FailoverRun, outcome: String) {
    error!(group, run = run.id, %outcome, "failover abandoned");
    propose(
        cluster,
        Command::FinishFailover {
            group: group.to_string(),
            run_id: run.id,
            succeeded: false,
            outcome,
            at_ms: unix_millis_now(),
            proposer: cluster.node_id,
        },
    )
    .await;
}
