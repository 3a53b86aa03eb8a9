//! Brings the member beside this node back as a replica of the current primary, without a
//! human: a stale primary (an old primary that came back, fenced), or a replica that has not
//! streamed from the primary for a while (its WAL diverged, or it points elsewhere).
//!
//! The procedure for PostgreSQL: stop it, `pg_rewind` it onto the primary's timeline (a
//! no-op when nothing diverged), start it with `standby.signal` and `primary_conninfo`, and
//! wait until it streams the primary's timeline. When rewinding is impossible it stays
//! stopped with its data as it was, and status and history say why. For Redis: `REPLICAOF`
//! the primary (its own writes since the fork are discarded by the resync, as they would be
//! by any rejoin) and lift a pause. The how lives in `local`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigil_consensus::Cluster;
use vigil_consensus::cluster::unix_millis_now;
use vigil_consensus::group::{GroupState, Health};
use vigil_consensus::state::Command;
use vigil_consensus::transport::rpc::LeaderRequest;

use crate::groups::local::GroupMember;

/// How often the rejoiner looks.
const TICK: Duration = Duration::from_secs(1);
/// How long a replica may go without streaming from the primary before it is rejoined.
pub const NOT_STREAMING_GRACE: Duration = Duration::from_secs(15);
/// How long after a failed rejoin the next attempt waits.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a member must rejoin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// It runs as a primary, but the cluster's primary is another member.
    StalePrimary,
    /// It is a replica, but it does not stream from the primary.
    NotStreaming,
    /// It does not run (stopped by a fence, or crashed) and is not the primary.
    Stopped,
}

impl Reason {
    fn words(self) -> &'static str {
        match self {
            Reason::StalePrimary => "it ran as a primary, but the cluster's primary is another member",
            Reason::NotStreaming => "it did not stream from the primary",
            Reason::Stopped => "it was not running",
        }
    }
}

/// Why the member beside this node needs to rejoin, if it does, by this node's own verdict
/// made after `not_before_ms` (so a rejoin just done is judged by what followed it).
fn needs_rejoin(
    state: &GroupState,
    member: &str,
    node_id: u64,
    local: &GroupMember,
    primary: &str,
    not_before_ms: u64,
) -> Option<Reason> {
    let report = state.verdicts.get(member)?.get(&node_id)?;
    if report.observed_at_ms <= not_before_ms {
        return None;
    }
    if report.verdict.health == Health::Down {
        // Whether it really is stopped is checked on the host before anything is done.
        return Some(Reason::Stopped);
    }
    let facts = report.verdict.facts.as_ref()?;
    if !facts.in_recovery {
        return Some(Reason::StalePrimary);
    }
    let streaming_from_primary = facts.receiver_status.as_deref() == Some("streaming")
        && facts.upstream.as_deref().is_some_and(|upstream| local.streams_from(upstream, primary));
    (!streaming_from_primary).then_some(Reason::NotStreaming)
}

/// Whether `primary` is still the primary of `group`, with no failover running.
fn still_the_primary(cluster: &Cluster, group: &str, primary: &str) -> bool {
    let state = cluster.state.read().expect("state lock poisoned");
    state
        .groups
        .get(group)
        .is_some_and(|group_state| group_state.primary.as_deref() == Some(primary) && group_state.running.is_none())
}

/// Runs until `cancel`.
pub async fn run(cluster: Cluster, cancel: CancellationToken) {
    let mut not_streaming_since: BTreeMap<String, Instant> = BTreeMap::new();
    // After a failed rejoin, when to try again, and against which primary: a new primary
    // (the failure may have been the old one's) is tried at once.
    let mut retry_at: BTreeMap<String, (Instant, String)> = BTreeMap::new();
    let mut last_attempt_ms: BTreeMap<String, u64> = BTreeMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let work: Vec<(GroupMember, String, Reason)> = {
            let state = cluster.state.read().expect("state lock poisoned");
            let node_name = state.nodes().get(&cluster.node_id).map(|node| node.name.clone()).unwrap_or_default();
            state
                .spec
                .groups()
                .filter_map(|group| {
                    let local = GroupMember::beside(group, &node_name)?;
                    let group_state = state.groups.get(group.name())?;
                    let primary = group_state.primary.clone()?;
                    if primary == local.name() || group_state.running.is_some() {
                        return None;
                    }
                    let not_before = last_attempt_ms.get(group.name()).copied().unwrap_or(0);
                    let why = needs_rejoin(group_state, local.name(), cluster.node_id, &local, &primary, not_before)?;
                    Some((local, primary, why))
                })
                .collect()
        };
        let now = Instant::now();
        let wanted: Vec<String> = work.iter().map(|(local, ..)| local.group_name().to_string()).collect();
        not_streaming_since.retain(|group, _| wanted.contains(group));
        for (local, primary, why) in work {
            let group = local.group_name().to_string();
            let member = local.name().to_string();
            if retry_at.get(&group).is_some_and(|(at, against)| now < *at && *against == primary) {
                continue;
            }
            // A stale primary rejoins at once; a replica gets a grace period, since it may
            // just be reconnecting after a re-point.
            if why == Reason::NotStreaming {
                let since = *not_streaming_since.entry(group.clone()).or_insert(now);
                if now.duration_since(since) < NOT_STREAMING_GRACE {
                    continue;
                }
            }
            if why == Reason::Stopped {
                // Down by the probe may be a network fault: act only on a server that is
                // really not running here.
                if local.is_running().await {
                    continue;
                }
            }
            // The work was read at the tick, and an earlier rejoin in this round may have
            // taken seconds: a failover that ran meanwhile makes it a rejoin against the old
            // primary, which would leave the member following a replica.
            if !still_the_primary(&cluster, &group, &primary) {
                continue;
            }
            warn!(%group, %member, %primary, why = why.words(), "rejoining as a replica");
            let outcome = local.rejoin(&primary).await;
            let (succeeded, detail) = match outcome {
                Ok(detail) => {
                    info!(%group, %member, %detail, "rejoined");
                    retry_at.remove(&group);
                    (true, detail)
                }
                Err(detail) => {
                    error!(%group, %member, %detail, "rejoin failed");
                    retry_at.insert(group.clone(), (Instant::now() + RETRY_AFTER, primary.clone()));
                    (false, detail)
                }
            };
            not_streaming_since.remove(&group);
            last_attempt_ms.insert(group.clone(), unix_millis_now());
            let command = Command::RecordRejoin {
                group: group.clone(),
                member: member.clone(),
                primary: primary.clone(),
                succeeded,
                detail: format!("{}; {detail}", why.words()),
                at_unix_ms: unix_millis_now(),
                proposer: cluster.node_id,
            };
            if let Err(error) = cluster.submit(LeaderRequest::Write { command }).await {
                warn!(%group, %member, %error, "could not record the rejoin");
            }
        }
    }
}
