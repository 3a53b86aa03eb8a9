//! Watching groups: every node probes every member and reports verdicts; the node beside a
//! primary keeps its lease (and fences it when it cannot); the Raft leader decides and drives
//! failovers; the node beside a member runs the steps that need its host.
//!
//! ```text
//! prober (every node) --ReportVerdict--> Raft --> state --> driver (leader): decide(), saga
//!                                                        \--> executor (member's node): host-local steps
//! ```

pub mod driver;
pub mod executor;
pub mod failpoints;
pub mod lease;
pub mod local;
pub mod prober;
pub mod redis_steps;
pub mod rejoin;
pub mod steps;
pub mod sync;
pub mod verdicts;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigil_consensus::Cluster;

/// Starts the prober, the driver and the executor of this node.
pub fn spawn(cluster: &Cluster, guard: crate::guard::GuardClient, tasks: &TaskTracker, cancel: &CancellationToken) {
    let failpoints = failpoints::Failpoints::from_env();
    let leases = lease::LeaseClock::default();
    tasks.spawn(lease::watch(cluster.clone(), leases.clone(), cancel.child_token()));
    tasks.spawn(lease::keep(cluster.clone(), guard, cancel.child_token()));
    tasks.spawn(prober::run(cluster.clone(), failpoints.clone(), cancel.child_token()));
    tasks.spawn(rejoin::run(cluster.clone(), cancel.child_token()));
    tasks.spawn(sync::run(cluster.clone(), cancel.child_token()));
    tasks.spawn(driver::run(cluster.clone(), failpoints.clone(), leases.clone(), cancel.child_token()));
    tasks.spawn(executor::run(cluster.clone(), failpoints, leases, cancel.child_token()));
}
