//! Probes every member of every group from this node and reports its verdicts to Raft.
//!
//! One task per member, each with its own connection and timeout, so a hung member never
//! delays the probing of another. Reports go through a per-member reporter task that always
//! sends the latest verdict, so a slow or leaderless cluster never blocks probing either.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use vigil_consensus::Cluster;
use vigil_consensus::cluster::unix_millis_now;
use vigil_consensus::group::VerdictReport;
use vigil_consensus::state::Command;
use vigil_consensus::transport::rpc::LeaderRequest;
use vigil_probes::{PgProbe, RedisProbe};

use crate::groups::failpoints::Failpoints;
use crate::groups::local::GroupMember;
use crate::groups::verdicts::{Seen, VerdictTracker};
use crate::members::targets::{pg_target, redis_target};

/// How long one verdict report may take; a newer verdict replaces it after that.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the prober looks for spec changes.
const SPEC_POLL: Duration = Duration::from_secs(1);

struct Running {
    member: GroupMember,
    cancel: CancellationToken,
}

/// A probe of either kind.
enum Probe {
    Postgres(PgProbe),
    Redis(RedisProbe),
}

impl Probe {
    fn new(member: &GroupMember, node_id: u64) -> Result<Self, String> {
        Ok(match member {
            GroupMember::Postgres { group, member } => {
                Probe::Postgres(PgProbe::new(pg_target(group, member)?, group.name.clone(), node_id))
            }
            GroupMember::Redis { group, member } => {
                Probe::Redis(RedisProbe::new(redis_target(group, member)?, node_id))
            }
        })
    }

    async fn check(&self) -> Seen {
        match self {
            Probe::Postgres(probe) => Seen::from(&probe.check().await),
            Probe::Redis(probe) => Seen::from(&probe.check().await),
        }
    }
}

/// Runs until `cancel`: keeps one probing task per member of the spec in force.
pub async fn run(cluster: Cluster, failpoints: Failpoints, cancel: CancellationToken) {
    let mut running: BTreeMap<(String, String), Running> = BTreeMap::new();
    let mut ticker = tokio::time::interval(SPEC_POLL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let spec = cluster.state.read().expect("state lock poisoned").spec.clone();
        let mut wanted = BTreeMap::new();
        for group in spec.groups() {
            for member in GroupMember::all(group) {
                wanted.insert((member.group_name().to_string(), member.name().to_string()), member);
            }
        }
        running.retain(|key, task| {
            // Restart a member's task when its group or member spec changed.
            let keep = wanted.get(key).is_some_and(|member| *member == task.member);
            if !keep {
                task.cancel.cancel();
            }
            keep
        });
        for (key, member) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let task_cancel = cancel.child_token();
            let cut = failpoints.probe_cut(member.name());
            tokio::spawn(probe_member(cluster.clone(), member.clone(), cut, task_cancel.clone()));
            running.insert(key, Running { member, cancel: task_cancel });
        }
    }
    for task in running.values() {
        task.cancel.cancel();
    }
}

async fn probe_member(cluster: Cluster, member: GroupMember, cut: bool, cancel: CancellationToken) {
    let (group_name, member_name) = (member.group_name().to_string(), member.name().to_string());
    let (down_after, probe_interval) = match &member {
        GroupMember::Postgres { group, .. } => (group.down_after, group.probe_interval),
        GroupMember::Redis { group, .. } => (group.down_after, group.probe_interval),
    };
    let probe = loop {
        match Probe::new(&member, cluster.node_id) {
            Ok(probe) => break probe,
            Err(reason) => {
                // A node that cannot read the secret reports nothing rather than "down":
                // its own misconfiguration must never count towards a failover.
                error!(group = %group_name, member = %member_name, %reason, "cannot probe: no credentials");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        }
    };
    let (report_tx, report_rx) = watch::channel::<Option<VerdictReport>>(None);
    tokio::spawn(report_verdicts(cluster.clone(), group_name.clone(), member_name.clone(), report_rx, cancel.clone()));
    let mut tracker = VerdictTracker::new(down_after);
    let mut ticker = tokio::time::interval(probe_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    info!(group = %group_name, member = %member_name, "probing");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let outcome = if cut {
            Seen::Failed { reason: "failpoint: this node's network to the member is cut".to_string() }
        } else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = probe.check() => outcome,
            }
        };
        if let Some(report) = tracker.observe(&outcome, Instant::now(), unix_millis_now()) {
            debug!(group = %group_name, member = %member_name, health = %report.verdict.health, "verdict");
            report_tx.send_replace(Some(report));
        }
    }
}

/// Sends the latest verdict to Raft, retrying until it is committed or superseded.
async fn report_verdicts(
    cluster: Cluster,
    group: String,
    member: String,
    mut reports: watch::Receiver<Option<VerdictReport>>,
    cancel: CancellationToken,
) {
    let mut last_health = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = reports.changed() => if changed.is_err() { return },
        }
        loop {
            let Some(report) = reports.borrow_and_update().clone() else { break };
            if last_health != Some(report.verdict.health) {
                let reason = report.verdict.reason.clone().unwrap_or_default();
                info!(%group, %member, health = %report.verdict.health, %reason, "verdict changed");
                last_health = Some(report.verdict.health);
            }
            let command =
                Command::ReportVerdict { node: cluster.node_id, group: group.clone(), member: member.clone(), report };
            let submitted =
                tokio::time::timeout(REPORT_TIMEOUT, cluster.submit(LeaderRequest::Write { command })).await;
            match submitted.unwrap_or(Err(vigil_consensus::SubmitError::Refused("no answer in time".to_string()))) {
                Ok(_) => break,
                Err(error) => {
                    warn!(%group, %member, %error, "cannot report a verdict; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }
}
