//! Primary leases: the node beside a primary renews its lease through Raft and fences the
//! primary itself before the lease runs out if it cannot; every node notes, by its own
//! monotonic clock, when it last saw each lease renewed, and the leader promotes a replica
//! only once the old primary's lease has run out by that clock (or was released).
//!
//! Why this is safe without comparing clocks across machines: the holder counts its lease
//! from before it *sent* the renewal and fences `lease_duration - margin` later by its own
//! clock; every other node counts from when it *applied* the renewal, which is later in real
//! time, and waits `lease_duration * (1 + drift bound) + margin`. With clock rates within the
//! drift bound (`CLOCK_DRIFT_BOUND`, 1 %), the holder has fenced before any node counts the
//! lease as run out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigil_consensus::group::{Health, PrimaryLease, Step};
use vigil_consensus::spec::{FenceMethod, PostgresGroup, PostgresMember};
use vigil_consensus::state::{Command, CommandResponse};
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse};
use vigil_consensus::{Cluster, ClusterState};

use crate::groups::targets::{pg_ctl, pg_target};
use crate::guard::{GuardClient, GuardMessage, GuardedServer};

/// How often the keeper looks at its leases.
const KEEPER_TICK: Duration = Duration::from_millis(25);
/// How long stopping a server as a fence may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node knows of a lease by its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseView {
    /// The holder released it, saying why.
    Released(String),
    /// Not renewed for longer than the leader's wait.
    RunOut {
        /// How long ago it was last seen renewed.
        since_renewal: Duration,
    },
    /// Still held for at most this long.
    Held {
        /// Time left before it counts as run out.
        remaining: Duration,
    },
}

#[derive(Clone, Debug)]
struct Seen {
    lease: Option<PrimaryLease>,
    at: Instant,
}

/// When this node saw each group's lease change, by its monotonic clock.
#[derive(Clone, Debug, Default)]
pub struct LeaseClock {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
}

impl LeaseClock {
    /// Notes every lease that changed since the last call.
    pub fn observe(&self, state: &ClusterState) {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("lease clock poisoned");
        for group in &state.spec.postgres {
            let lease = state.groups.get(&group.name).and_then(|group_state| group_state.lease.clone());
            match seen.get_mut(&group.name) {
                Some(entry) if entry.lease == lease => {}
                Some(entry) => *entry = Seen { lease, at: now },
                // A group seen for the first time counts as freshly leased: this node cannot
                // know when it was last renewed, so it waits a whole lease from now.
                None => {
                    seen.insert(group.name.clone(), Seen { lease, at: now });
                }
            }
        }
    }

    /// The lease on `member` of `group` as this node sees it, with the leader's wait.
    pub fn view(&self, group: &PostgresGroup, member: &str) -> LeaseView {
        let seen = self.seen.lock().expect("lease clock poisoned");
        let Some(entry) = seen.get(&group.name) else {
            return LeaseView::Held { remaining: group.lease_wait() };
        };
        if let Some(lease) = &entry.lease
            && lease.member == member
            && let Some(reason) = &lease.released
        {
            return LeaseView::Released(reason.clone());
        }
        let since = entry.at.elapsed();
        let wait = group.lease_wait();
        if since >= wait {
            LeaseView::RunOut { since_renewal: since }
        } else {
            LeaseView::Held { remaining: wait - since }
        }
    }
}

/// Keeps the lease clock current: woken by every applied entry.
pub async fn watch(cluster: Cluster, clock: LeaseClock, cancel: CancellationToken) {
    let mut applied = cluster.raft.metrics();
    loop {
        clock.observe(&cluster.state.read().expect("state lock poisoned"));
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = openraft::async_runtime::WatchReceiver::changed(&mut applied) => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The keeper's memory of one group's lease on this node.
#[derive(Debug)]
struct Holding {
    member: String,
    /// Until when this node may let its primary take writes, by its own clock.
    valid_until: Instant,
    /// When the last renewal that was committed had been sent.
    renewal_in_flight: bool,
    next_renewal: Instant,
    fenced: Option<FenceMethod>,
    released: bool,
}

/// The member of `group` that runs beside the node named `node_name`.
fn my_member<'a>(group: &'a PostgresGroup, node_name: &str) -> Option<&'a PostgresMember> {
    group.members.iter().find(|member| member.node == node_name)
}

/// Renews the leases of the primaries beside this node, and fences them when it cannot.
pub async fn keep(cluster: Cluster, guard: GuardClient, cancel: CancellationToken) {
    let holdings: Arc<Mutex<BTreeMap<String, Holding>>> = Arc::default();
    let mut stale_fenced: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut ticker = tokio::time::interval(KEEPER_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (spec, groups, node_name) = {
            let state = cluster.state.read().expect("state lock poisoned");
            let node_name = state.nodes().get(&cluster.node_id).map(|node| node.name.clone()).unwrap_or_default();
            (state.spec.clone(), state.groups.clone(), node_name)
        };
        for group in &spec.postgres {
            let Some(member) = my_member(group, &node_name) else { continue };
            let group_state = groups.get(&group.name).cloned().unwrap_or_default();
            let is_primary = group_state.primary.as_deref() == Some(member.name.as_str());
            let replaced =
                group_state.running.as_ref().is_some_and(|run| run.old_primary.as_deref() == Some(&member.name));
            let my_verdict = group_state
                .verdicts
                .get(&member.name)
                .and_then(|reports| reports.get(&cluster.node_id))
                .map(|report| report.verdict.health);
            let now = Instant::now();
            let mut all = holdings.lock().expect("holdings poisoned");
            let my_facts = group_state
                .verdicts
                .get(&member.name)
                .and_then(|reports| reports.get(&cluster.node_id))
                .and_then(|report| report.verdict.facts.clone());
            if !is_primary && !replaced {
                // An old primary that came back (restarted by hand, or by its host) must not
                // take writes until the rejoiner has made it a replica.
                let stale = my_facts.as_ref().is_some_and(|facts| !facts.in_recovery) && group_state.primary.is_some();
                if stale && stale_fenced.insert(group.name.clone()) {
                    warn!(group = %group.name, member = %member.name, "a stale primary runs beside this node: fencing it");
                    tokio::spawn(fence(group.clone(), member.clone(), FenceMethod::ReadOnly));
                } else if !stale {
                    stale_fenced.remove(&group.name);
                }
            }
            if !is_primary || replaced {
                // Someone else is (or is becoming) the primary: a primary beside this node
                // that still took writes would be a second writer. A switchover stops it
                // cleanly in its own step, so only other runs are fenced here.
                let stopped_by_plan = group_state.running.as_ref().is_some_and(|run| {
                    run.steps.iter().any(|step| step.step == Step::StopPrimary { member: member.name.clone() })
                });
                if let Some(holding) = all.get_mut(&group.name)
                    && holding.fenced.is_none()
                    && !stopped_by_plan
                {
                    holding.fenced = Some(group.fence_method);
                    holding.released = true;
                    guard.send(GuardMessage::Disarm { group: group.name.clone() });
                    warn!(group = %group.name, member = %member.name, "no longer the primary: fencing");
                    tokio::spawn(fence_and_release(cluster.clone(), group.clone(), member.clone()));
                }
                continue;
            }
            let holding = all.entry(group.name.clone()).or_insert_with(|| Holding {
                member: member.name.clone(),
                // A keeper that just started counts its lease from now: if it cannot renew
                // within one lease, it fences.
                valid_until: now + group.lease_duration,
                renewal_in_flight: false,
                next_renewal: now,
                fenced: None,
                released: false,
            });
            if holding.member != member.name {
                *holding = Holding {
                    member: member.name.clone(),
                    valid_until: now + group.lease_duration,
                    renewal_in_flight: false,
                    next_renewal: now,
                    fenced: None,
                    released: false,
                };
            }
            if my_verdict == Some(Health::Down) {
                if !holding.released {
                    holding.released = true;
                    guard.send(GuardMessage::Disarm { group: group.name.clone() });
                    holding.fenced = Some(FenceMethod::Stop);
                    tokio::spawn(release(cluster.clone(), group.clone(), member.clone()));
                }
                continue;
            }
            let margin = fence_margin(group.lease_duration);
            if holding.fenced.is_none() && now + margin >= holding.valid_until {
                holding.fenced = Some(group.fence_method);
                // This daemon fences it itself: the guard's harder fence is not needed.
                guard.send(GuardMessage::Disarm { group: group.name.clone() });
                warn!(group = %group.name, member = %member.name, "lease not renewed in time: fencing the primary");
                tokio::spawn(fence(group.clone(), member.clone(), group.fence_method));
            }
            if !holding.renewal_in_flight && now >= holding.next_renewal {
                holding.renewal_in_flight = true;
                holding.next_renewal = now + group.lease_duration / 4;
                tokio::spawn(renew(
                    cluster.clone(),
                    guard.clone(),
                    holdings.clone(),
                    group.clone(),
                    member.clone(),
                    group_state.epoch,
                    now,
                ));
            }
        }
    }
}

/// Fences before the lease runs out by this much, to leave the fence itself time to act.
pub fn fence_margin(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_millis(100))
}

async fn renew(
    cluster: Cluster,
    guard: GuardClient,
    holdings: Arc<Mutex<BTreeMap<String, Holding>>>,
    group: PostgresGroup,
    member: PostgresMember,
    epoch: u64,
    sent_at: Instant,
) {
    let command =
        Command::RenewLease { group: group.name.clone(), member: member.name.clone(), holder: cluster.node_id, epoch };
    let outcome = tokio::time::timeout(group.lease_duration, cluster.submit(LeaderRequest::Write { command })).await;
    let mut lift = false;
    {
        let mut all = holdings.lock().expect("holdings poisoned");
        let Some(holding) = all.get_mut(&group.name) else { return };
        holding.renewal_in_flight = false;
        match outcome {
            Ok(Ok(LeaderResponse::Done { response: CommandResponse::Applied, .. })) => {
                holding.valid_until = holding.valid_until.max(sent_at + group.lease_duration);
                if holding.fenced.take().is_some() && !holding.released {
                    lift = true;
                }
                // Should this daemon die, the guard stops the primary a little after this
                // daemon would have fenced it, and before the lease runs out.
                if let Ok(ctl) = pg_ctl(&group, &member) {
                    let guard_at = holding.valid_until - fence_margin(group.lease_duration) / 2;
                    let valid_for_ms = guard_at.saturating_duration_since(Instant::now()).as_millis() as u64;
                    guard.send(GuardMessage::Arm {
                        group: group.name.clone(),
                        valid_for_ms,
                        server: GuardedServer { bin_dir: ctl.bin_dir, data_dir: ctl.data_dir, run_as: ctl.run_as },
                    });
                }
            }
            // The cluster says this is not the primary of the current epoch: stay fenced.
            Ok(Ok(LeaderResponse::Done { response: CommandResponse::Refused { reason }, .. }))
                if holding.fenced.is_none() =>
            {
                holding.fenced = Some(group.fence_method);
                guard.send(GuardMessage::Disarm { group: group.name.clone() });
                warn!(group = %group.name, member = %member.name, %reason, "lease refused: fencing");
                tokio::spawn(fence(group.clone(), member.clone(), group.fence_method));
            }
            _ => {}
        }
    }
    if lift {
        info!(group = %group.name, member = %member.name, "lease renewed: the cluster confirms the primary; lifting the fence");
        lift_fence(&group, &member).await;
    }
}

/// Fences the primary beside this node; falls back to stopping it when the chosen fence
/// fails (the stop fence needs the member's data directory in the spec). Whether it worked.
pub async fn fence(group: PostgresGroup, member: PostgresMember, method: FenceMethod) -> bool {
    let result = match method {
        FenceMethod::ReadOnly => match pg_target(&group, &member) {
            Ok(target) => {
                vigil_actions::fence_read_only(&target).await.map(|n| format!("read-only, {n} sessions ended"))
            }
            Err(reason) => Err(vigil_actions::ActionError::Unexpected(reason)),
        },
        FenceMethod::Stop => stop(&group, &member).await.map(|()| "stopped".to_string()),
    };
    match result {
        Ok(how) => {
            warn!(group = %group.name, member = %member.name, %how, "primary fenced");
            true
        }
        Err(error) => {
            error!(group = %group.name, member = %member.name, %error, "fencing failed; stopping the server instead");
            match stop(&group, &member).await {
                Ok(()) => true,
                Err(error) => {
                    error!(group = %group.name, member = %member.name, %error, "the server could not be stopped either");
                    false
                }
            }
        }
    }
}

async fn stop(group: &PostgresGroup, member: &PostgresMember) -> Result<(), vigil_actions::ActionError> {
    let ctl = pg_ctl(group, member).map_err(vigil_actions::ActionError::Unexpected)?;
    vigil_actions::stop_immediately(&ctl, STOP_TIMEOUT).await
}

async fn lift_fence(group: &PostgresGroup, member: &PostgresMember) {
    let result = match group.fence_method {
        FenceMethod::ReadOnly => match pg_target(group, member) {
            Ok(target) => vigil_actions::unfence(&target).await,
            Err(reason) => Err(vigil_actions::ActionError::Unexpected(reason)),
        },
        FenceMethod::Stop => match pg_ctl(group, member) {
            Ok(ctl) => vigil_actions::start_server(&ctl, STOP_TIMEOUT).await,
            Err(reason) => Err(vigil_actions::ActionError::Unexpected(reason)),
        },
    };
    if let Err(error) = result {
        error!(group = %group.name, member = %member.name, %error, "could not lift the fence");
    }
}

/// The primary beside this node is down by this node's own probes: make sure it stays down
/// (a half-dead server must not come back writable), then give the lease up so the leader
/// need not wait for it to run out.
async fn release(cluster: Cluster, group: PostgresGroup, member: PostgresMember) {
    let how = match stop(&group, &member).await {
        Ok(()) => "stopped",
        Err(error) => {
            // Without a stop, the lease is left to run out: releasing it would let a replica be
            // promoted while a server this node cannot see might still take writes.
            error!(group = %group.name, member = %member.name, %error, "cannot stop the down primary; keeping the lease");
            return;
        }
    };
    let reason = format!("{} is down for node {} and {how}", member.name, cluster.node_id);
    let command = Command::ReleaseLease {
        group: group.name.clone(),
        member: member.name.clone(),
        holder: cluster.node_id,
        reason: reason.clone(),
    };
    match cluster.submit(LeaderRequest::Write { command }).await {
        Ok(_) => warn!(group = %group.name, member = %member.name, %reason, "lease released"),
        Err(error) => warn!(group = %group.name, member = %member.name, %error, "could not release the lease"),
    }
}

/// Fences a primary that is being replaced and tells the leader, so the promotion need not
/// wait for the lease to run out.
async fn fence_and_release(cluster: Cluster, group: PostgresGroup, member: PostgresMember) {
    if !fence(group.clone(), member.clone(), group.fence_method).await {
        // Not fenced: the lease must run out before anything is promoted.
        return;
    }
    let command = Command::ReleaseLease {
        group: group.name.clone(),
        member: member.name.clone(),
        holder: cluster.node_id,
        reason: format!("{} fenced by node {} ({:?})", member.name, cluster.node_id, group.fence_method),
    };
    if let Err(error) = cluster.submit(LeaderRequest::Write { command }).await {
        warn!(group = %group.name, member = %member.name, %error, "could not release the lease");
    }
}
