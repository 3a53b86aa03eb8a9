//! Runs one failover step against the real servers. Every step is idempotent: run again
//! after a crash, it finds its work done and says so. PostgreSQL's steps are here; Redis's
//! are in `redis_steps`, behind the same `execute`.

use std::time::Duration;

use vigil_consensus::group::{FailoverRun, Step, StepFacts};
use vigil_consensus::spec::{ClusterSpec, GroupPolicy, GroupRef, PostgresGroup, SyncMode};

use crate::groups::lease::{LeaseClock, LeaseView};
use crate::members::targets::{pg_ctl, pg_target, primary_conninfo};

/// How long `pg_promote` may take.
pub const PROMOTE_WAIT: Duration = Duration::from_secs(30);
/// How long stopping or starting a server may take.
pub const SERVER_CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a re-pointed replica may take to stream from the new primary.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the candidate may take to replay the old primary's last WAL in a switchover.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResult {
    /// Whether it succeeded.
    pub succeeded: bool,
    /// What happened, in words.
    pub detail: String,
    /// Facts for the run.
    pub facts: StepFacts,
}

impl StepResult {
    /// A success.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self { succeeded: true, detail: detail.into(), facts: StepFacts::default() }
    }

    /// A failure.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self { succeeded: false, detail: detail.into(), facts: StepFacts::default() }
    }
}

/// The name failpoints and logs use for a step.
pub fn step_name(step: &Step) -> &'static str {
    match step {
        Step::StopPrimary { .. } => "stop-primary",
        Step::FenceOldPrimary { .. } => "fence-old-primary",
        Step::WaitForCatchUp => "wait-for-catch-up",
        Step::Promote => "promote",
        Step::VerifyWritable => "verify-writable",
        Step::Repoint { .. } => "repoint",
        Step::RejoinAsReplica { .. } => "rejoin",
    }
}

/// Runs `step` of `run` in the group named `group`; `leases` is this node's view of the
/// primary's lease.
pub async fn execute(
    spec: &ClusterSpec,
    group: &str,
    run: &FailoverRun,
    step: &Step,
    leases: &LeaseClock,
) -> StepResult {
    let outcome = match spec.group(group) {
        Some(GroupRef::Postgres(group)) => run_step(group, run, step, leases).await,
        Some(GroupRef::Redis(group)) => crate::groups::redis_steps::run_step(group, run, step, leases).await,
        None => Err(format!("the spec has no group {group}")),
    };
    outcome.unwrap_or_else(StepResult::failed)
}

fn member<'a>(group: &'a PostgresGroup, name: &str) -> Result<&'a vigil_consensus::spec::PostgresMember, String> {
    group.member(name).ok_or_else(|| format!("group {} has no member {name}", group.name))
}

async fn run_step(
    group: &PostgresGroup,
    run: &FailoverRun,
    step: &Step,
    leases: &LeaseClock,
) -> Result<StepResult, String> {
    let candidate = member(group, &run.candidate)?;
    match step {
        Step::FenceOldPrimary { member: name } => fence_old_primary(group, member(group, name)?, leases).await,
        Step::Promote => {
            let target = pg_target(group, candidate)?;
            if group.synchronous == SyncMode::Strict {
                // Set before the promotion, so the new primary never acknowledges a commit
                // that no standby holds: until the leader confirms a standby, any may answer.
                vigil_actions::set_synchronous_standby_names(&target, "*").await.map_err(|e| e.to_string())?;
            }
            let promoted = vigil_actions::promote(&target, PROMOTE_WAIT).await.map_err(|e| e.to_string())?;
            let detail = if promoted.already_primary {
                format!("{} already was a primary; not promoted again", candidate.name)
            } else {
                format!("{} promoted", candidate.name)
            };
            Ok(StepResult {
                facts: StepFacts { promoted_lsn: promoted.lsn, ..StepFacts::default() },
                ..StepResult::ok(detail)
            })
        }
        Step::VerifyWritable => {
            let target = pg_target(group, candidate)?;
            vigil_actions::write_epoch(&target, &group.name, run.epoch).await.map_err(|e| e.to_string())?;
            Ok(StepResult::ok(format!("epoch {} written on {}", run.epoch, candidate.name)))
        }
        Step::Repoint { member: name } => {
            let replica = member(group, name)?;
            let target = pg_target(group, replica)?;
            let conninfo = primary_conninfo(group, candidate, name)?;
            vigil_actions::repoint(&target, &conninfo).await.map_err(|e| e.to_string())?;
            let primary = pg_target(group, candidate)?;
            let timeline =
                vigil_actions::wait_for_upstream(&target, &primary, STREAM_TIMEOUT).await.map_err(|e| e.to_string())?;
            Ok(StepResult::ok(format!("{name} streams timeline {timeline} from {}", candidate.name)))
        }
        Step::WaitForCatchUp => {
            let Some(final_lsn) = run.old_primary_lsn else {
                return Err("the old primary's final WAL position is unknown".to_string());
            };
            let target = pg_target(group, candidate)?;
            let replayed = vigil_actions::wait_for_replay(&target, final_lsn, CATCH_UP_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(StepResult::ok(format!(
                "{} replayed {} past the old primary's final {}",
                candidate.name,
                crate::render::lsn(replayed),
                crate::render::lsn(final_lsn)
            )))
        }
        Step::StopPrimary { member: name } => {
            let ctl = pg_ctl(group, member(group, name)?)?;
            let final_lsn =
                vigil_actions::stop_server(&ctl, SERVER_CONTROL_TIMEOUT).await.map_err(|e| e.to_string())?;
            Ok(StepResult {
                facts: StepFacts { final_lsn: Some(final_lsn), ..StepFacts::default() },
                ..StepResult::ok(format!("{name} stopped cleanly at {}", crate::render::lsn(final_lsn)))
            })
        }
        Step::RejoinAsReplica { member: name } => {
            let ctl = pg_ctl(group, member(group, name)?)?;
            let conninfo = primary_conninfo(group, candidate, name)?;
            vigil_actions::start_as_replica(&ctl, &conninfo, SERVER_CONTROL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let (replica, primary) = (pg_target(group, member(group, name)?)?, pg_target(group, candidate)?);
            let timeline = vigil_actions::wait_for_upstream(&replica, &primary, STREAM_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(StepResult::ok(format!(
                "{name} restarted as a replica streaming timeline {timeline} from {}",
                candidate.name
            )))
        }
    }
}

/// How long the leader tries to fence an old primary over the network while it waits for
/// the lease.
pub const REMOTE_FENCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the old primary takes no more writes: its lease released or run out, or the
/// old primary fenced over SQL by the leader itself (when the primary answers but the node
/// beside it does not).
async fn fence_old_primary(
    group: &PostgresGroup,
    old: &vigil_consensus::spec::PostgresMember,
    leases: &LeaseClock,
) -> Result<StepResult, String> {
    let mut target = pg_target(group, old)?;
    target.timeout = REMOTE_FENCE_TIMEOUT.min(target.timeout);
    let remote = async move {
        vigil_actions::fence_read_only(&target)
            .await
            .map(|terminated| format!("read-only, {terminated} client sessions ended"))
            .map_err(|e| e.to_string())
    };
    wait_for_fence(&group.policy(), &old.name, leases, remote).await
}

/// Waits until the old primary `old` takes no more writes: its lease released or run out
/// by this node's clock, or `remote` (the leader's own fence over the network) succeeded.
pub async fn wait_for_fence(
    policy: &GroupPolicy,
    old: &str,
    leases: &LeaseClock,
    remote: impl std::future::Future<Output = Result<String, String>> + Send + 'static,
) -> Result<StepResult, String> {
    let remote = tokio::spawn(remote);
    tokio::pin!(remote);
    let mut remote_done = false;
    let deadline = tokio::time::Instant::now() + policy.lease_wait() + Duration::from_secs(30);
    loop {
        match leases.view(policy, old) {
            LeaseView::Released(reason) => return Ok(StepResult::ok(format!("lease released: {reason}"))),
            LeaseView::RunOut { since_renewal } => {
                return Ok(StepResult::ok(format!(
                    "lease ran out: last renewal seen {} ms ago, so node beside {old} has fenced it",
                    since_renewal.as_millis(),
                )));
            }
            LeaseView::Held { .. } => {}
        }
        if !remote_done {
            tokio::select! {
                outcome = &mut remote => {
                    remote_done = true;
                    if let Ok(Ok(how)) = outcome {
                        return Ok(StepResult::ok(format!("fenced remotely by the leader: {how}")));
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the old primary's lease neither ran out nor was released".to_string());
        }
    }
}
