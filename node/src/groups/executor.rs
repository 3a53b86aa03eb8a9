//! Runs the host-local steps assigned to this node (stopping or restarting the server
//! beside it), whichever node leads. A step is run again if this node restarted while it
//! was started; steps are idempotent.

use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use vigil_consensus::Cluster;
use vigil_consensus::group::StepStatus;

use crate::groups::driver::{InFlight, TICK, finish_step};
use crate::groups::failpoints::Failpoints;
use crate::groups::lease::LeaseClock;
use crate::groups::steps::{execute, step_name};

/// Runs until `cancel`.
pub async fn run(cluster: Cluster, failpoints: Failpoints, leases: LeaseClock, cancel: CancellationToken) {
    let in_flight = InFlight::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Woken by every applied entry, so a step starts as soon as it is committed as started.
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
        let work: Vec<_> = {
            let state = cluster.state.read().expect("state lock poisoned");
            state
                .groups
                .iter()
                .filter_map(|(name, group_state)| {
                    let run = group_state.running.as_ref()?;
                    let index = run.current_step()?;
                    let step = &run.steps[index];
                    step.step.host_local_member()?;
                    match step.status {
                        StepStatus::Started { by, attempt, .. } if by == cluster.node_id => {
                            state.spec.group(name)?;
                            Some((state.spec.clone(), name.clone(), run.clone(), index, attempt))
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        for (spec, group, run, index, attempt) in work {
            let key = (group.clone(), run.id, index, attempt);
            if !in_flight.lock().expect("in-flight lock poisoned").insert(key.clone()) {
                continue;
            }
            let (cluster, failpoints, in_flight, leases) =
                (cluster.clone(), failpoints.clone(), in_flight.clone(), leases.clone());
            tokio::spawn(async move {
                let step = run.steps[index].step.clone();
                failpoints.before_step(step_name(&step), run.id, attempt).await;
                info!(%group, run = run.id, step = %step, attempt, "running host-local step");
                let result = execute(&spec, &group, &run, &step, &leases).await;
                if result.succeeded {
                    info!(%group, run = run.id, step = %step, detail = %result.detail, "step succeeded");
                } else {
                    error!(%group, run = run.id, step = %step, detail = %result.detail, "step failed");
                }
                finish_step(&cluster, &group, run.id, index, result.succeeded, result.detail, result.facts).await;
                // The key stays: this attempt is done, and a retry is a new attempt.
                let _ = in_flight;
            });
        }
    }
}
