//! Runs one failover step of a Redis group: the same saga as PostgreSQL's, step for step.
//!
//! | step | Redis |
//! |---|---|
//! | stop old primary (switchover) | `CLIENT PAUSE WRITE` on the master, its final `master_repl_offset` |
//! | fence old primary | its lease, or the leader raises `min-replicas-to-write` beyond reach |
//! | wait for catch-up | the candidate's `slave_repl_offset` reaches the final offset |
//! | promote | `REPLICAOF NO ONE` (a master already is not promoted again) |
//! | verify writable | the epoch written into `vigil:epoch` |
//! | re-point | `REPLICAOF` the new master, until `master_link_status:up` |
//! | rejoin old primary | `REPLICAOF` the new master, then `CLIENT UNPAUSE` |
//!
//! Offsets are bytes of the replication stream and fill the fields PostgreSQL fills with
//! WAL positions, so the lag policy and the data-loss estimate read the same.

use std::time::Duration;

use vigil_consensus::group::{FailoverRun, Step, StepFacts};
use vigil_consensus::spec::{RedisGroup, RedisMember};

use crate::groups::lease::LeaseClock;
use crate::groups::local::REFUSE_ALL_WRITES;
use crate::groups::steps::{CATCH_UP_TIMEOUT, REMOTE_FENCE_TIMEOUT, STREAM_TIMEOUT, StepResult, wait_for_fence};
use crate::members::targets::redis_target;

/// How long a switchover keeps the old master's writes paused at most: it is made a replica
/// well before; should the switchover be abandoned, the old master takes writes again.
const SWITCHOVER_PAUSE: Duration = Duration::from_secs(60);

fn member<'a>(group: &'a RedisGroup, name: &str) -> Result<&'a RedisMember, String> {
    group.member(name).ok_or_else(|| format!("group {} has no member {name}", group.name))
}

/// Runs `step` of `run` in the Redis `group`.
pub async fn run_step(
    group: &RedisGroup,
    run: &FailoverRun,
    step: &Step,
    leases: &LeaseClock,
) -> Result<StepResult, String> {
    let candidate = member(group, &run.candidate)?;
    let err = |e: vigil_actions::ActionError| e.to_string();
    match step {
        Step::FenceOldPrimary { member: name } => {
            let mut target = redis_target(group, member(group, name)?)?;
            target.timeout = REMOTE_FENCE_TIMEOUT.min(target.timeout);
            let max_lag = group.min_replicas_max_lag.max(1);
            let remote = async move {
                vigil_actions::redis_set_min_replicas(&target, REFUSE_ALL_WRITES, max_lag)
                    .await
                    .map(|()| "writes refused (min-replicas-to-write)".to_string())
                    .map_err(|e| e.to_string())
            };
            wait_for_fence(&group.policy(), name, leases, remote).await
        }
        Step::StopPrimary { member: name } => {
            let target = redis_target(group, member(group, name)?)?;
            let final_offset = vigil_actions::redis_pause_writes(&target, SWITCHOVER_PAUSE).await.map_err(err)?;
            Ok(StepResult {
                facts: StepFacts { final_lsn: Some(final_offset), ..StepFacts::default() },
                ..StepResult::ok(format!("{name}'s writes paused at offset {final_offset}"))
            })
        }
        Step::WaitForCatchUp => {
            let Some(final_offset) = run.old_primary_lsn else {
                return Err("the old master's final offset is unknown".to_string());
            };
            let target = redis_target(group, candidate)?;
            let reached =
                vigil_actions::redis_wait_for_offset(&target, final_offset, CATCH_UP_TIMEOUT).await.map_err(err)?;
            Ok(StepResult::ok(format!(
                "{} reached offset {reached}, past the old master's final {final_offset}",
                candidate.name
            )))
        }
        Step::Promote => {
            let target = redis_target(group, candidate)?;
            // A fence some vigil left on it (while it was a stale master) must not make the new
            // master refuse writes; as a replica it takes none before the promotion anyway.
            vigil_actions::redis_set_min_replicas(&target, 0, group.min_replicas_max_lag.max(1)).await.map_err(err)?;
            let promoted = vigil_actions::redis_promote(&target, STREAM_TIMEOUT).await.map_err(err)?;
            let detail = if promoted.already_master {
                format!("{} already was a master; not promoted again", candidate.name)
            } else {
                format!("{} promoted (REPLICAOF NO ONE) at offset {}", candidate.name, promoted.offset)
            };
            Ok(StepResult {
                facts: StepFacts { promoted_lsn: Some(promoted.offset), ..StepFacts::default() },
                ..StepResult::ok(detail)
            })
        }
        Step::VerifyWritable => {
            let target = redis_target(group, candidate)?;
            vigil_actions::redis_unpause(&target).await.map_err(err)?;
            vigil_actions::redis_write_epoch(&target, run.epoch).await.map_err(err)?;
            Ok(StepResult::ok(format!("epoch {} written on {}", run.epoch, candidate.name)))
        }
        Step::Repoint { member: name } => {
            let replica = redis_target(group, member(group, name)?)?;
            vigil_actions::redis_repoint(&replica, &candidate.host, candidate.port, None).await.map_err(err)?;
            vigil_actions::redis_wait_for_upstream(&replica, &candidate.host, candidate.port, STREAM_TIMEOUT)
                .await
                .map_err(err)?;
            if group.min_replicas_to_write > 0 {
                // The second line of defence goes on once the new master has a replica to count.
                let master = redis_target(group, candidate)?;
                vigil_actions::redis_set_min_replicas(&master, group.min_replicas_to_write, group.min_replicas_max_lag)
                    .await
                    .map_err(err)?;
            }
            Ok(StepResult::ok(format!("{name} replicates from {}", candidate.name)))
        }
        Step::RejoinAsReplica { member: name } => {
            let old = redis_target(group, member(group, name)?)?;
            vigil_actions::redis_repoint(&old, &candidate.host, candidate.port, None).await.map_err(err)?;
            // Writers that waited behind the pause now get READONLY, not a second master.
            vigil_actions::redis_unpause(&old).await.map_err(err)?;
            vigil_actions::redis_wait_for_upstream(&old, &candidate.host, candidate.port, STREAM_TIMEOUT)
                .await
                .map_err(err)?;
            Ok(StepResult::ok(format!("{name} replicates from {}", candidate.name)))
        }
    }
}
