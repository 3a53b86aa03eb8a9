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
use tracing::{info, warn};
use vigil_consensus::group::{Health, PrimaryLease, Step};
use vigil_consensus::spec::GroupPolicy;
use vigil_consensus::state::{Command, CommandResponse};
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse};
use vigil_consensus::{Cluster, ClusterState};

use crate::groups::local::{GroupMember, REDIS_PAUSE};
use crate::guard::{GuardClient, GuardMessage};

/// How often a node retries making sure of its down primary before releasing its lease.
const RELEASE_RETRY: Duration = Duration::from_secs(1);
/// How long a released primary stays down, with no failover started, before its own node
/// starts it again: far beyond what the leader takes to fail over when it can.
pub const RESTART_IN_PLACE_AFTER: Duration = Duration::from_secs(10);
/// How often the keeper looks at its leases.
const KEEPER_TICK: Duration = Duration::from_millis(25);
/// How many renewals of one lease may be under way at once. A renewal sent to a leader that
/// has just been cut off waits up to a lease for its answer; the next ones must not wait
/// behind it, or the lease runs out although a new leader could have renewed it.
const MAX_RENEWALS_IN_FLIGHT: u32 = 4;

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
        for group in state.spec.groups() {
            let name = group.name();
            let lease = state.groups.get(name).and_then(|group_state| group_state.lease.clone());
            match seen.get_mut(name) {
                Some(entry) if entry.lease == lease => {}
                Some(entry) => *entry = Seen { lease, at: now },
                // A group seen for the first time counts as freshly leased: this node cannot
                // know when it was last renewed, so it waits a whole lease from now.
                None => {
                    seen.insert(name.to_string(), Seen { lease, at: now });
                }
            }
        }
    }

    /// The lease on `member` of `group` as this node sees it, with the leader's wait.
    pub fn view(&self, group: &GroupPolicy, member: &str) -> LeaseView {
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
    /// How many renewals are waiting for their answer.
    renewals_in_flight: u32,
    next_renewal: Instant,
    /// Since when the primary is fenced (by this node), if it is.
    fenced: Option<Instant>,
    released: bool,
    /// Whether the primary's write settings were brought to the spec's since it was taken.
    configured: bool,
    /// When this node last tried to release the lease on its down primary.
    release_attempt_at: Option<Instant>,
    /// Since when this node has seen its primary down, if it does.
    down_since: Option<Instant>,
    /// When this node last started its down primary again in place.
    restart_attempt_at: Option<Instant>,
}

impl Holding {
    fn new(member: &str, now: Instant, lease: Duration) -> Self {
        Holding {
            member: member.to_string(),
            // A keeper that just started counts its lease from now: if it cannot renew
            // within one lease, it fences.
            valid_until: now + lease,
            renewals_in_flight: 0,
            next_renewal: now,
            fenced: None,
            released: false,
            configured: false,
            release_attempt_at: None,
            down_since: None,
            restart_attempt_at: None,
        }
    }
}

/// Renews the leases of the primaries beside this node, and fences them when it cannot.
pub async fn keep(cluster: Cluster, guard: GuardClient, cancel: CancellationToken) {
    let holdings: Arc<Mutex<BTreeMap<String, Holding>>> = Arc::default();
    let mut stale_fenced: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut ticker = tokio::time::interval(KEEPER_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_leader = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A new leader renews at once: the renewals sent to the old one may never be answered,
        // and the lease has been running down since the old leader went quiet.
        let leader = cluster.current_leader();
        let new_leader = leader.is_some() && leader != last_leader;
        last_leader = leader;
        let (spec, groups, node_name) = {
            let state = cluster.state.read().expect("state lock poisoned");
            let node_name = state.nodes().get(&cluster.node_id).map(|node| node.name.clone()).unwrap_or_default();
            (state.spec.clone(), state.groups.clone(), node_name)
        };
        for group in spec.groups() {
            let Some(local) = GroupMember::beside(group, &node_name) else { continue };
            let (group_name, member_name) = (local.group_name().to_string(), local.name().to_string());
            let lease_duration = local.lease_duration();
            let group_state = groups.get(&group_name).cloned().unwrap_or_default();
            let is_primary = group_state.primary.as_deref() == Some(member_name.as_str());
            let replaced =
                group_state.running.as_ref().is_some_and(|run| run.old_primary.as_deref() == Some(&member_name));
            let my_report = group_state.verdicts.get(&member_name).and_then(|reports| reports.get(&cluster.node_id));
            let my_verdict = my_report.map(|report| report.verdict.health);
            let my_facts = my_report.and_then(|report| report.verdict.facts.clone());
            let now = Instant::now();
            let mut all = holdings.lock().expect("holdings poisoned");
            if !is_primary && !replaced {
                // An old primary that came back (restarted by hand, or by its host) must not
                // take writes until the rejoiner has made it a replica.
                // The candidate of a running failover answers as a primary before the run
                // records it as one: that is the promotion, not a stale primary.
                let promoting = group_state.running.as_ref().is_some_and(|run| run.candidate == member_name);
                let stale = my_facts.as_ref().is_some_and(|facts| !facts.in_recovery)
                    && group_state.primary.is_some()
                    && !promoting;
                if stale && stale_fenced.insert(group_name.clone()) {
                    warn!(group = %group_name, member = %member_name, "a stale primary runs beside this node: fencing it");
                    let local = local.clone();
                    tokio::spawn(async move { local.fence(true).await });
                } else if !stale {
                    stale_fenced.remove(&group_name);
                }
            }
            if !is_primary || replaced {
                // Someone else is (or is becoming) the primary: a primary beside this node
                // that still took writes would be a second writer. A switchover stops it
                // cleanly in its own step, so only other runs are fenced here.
                let stopped_by_plan = group_state.running.as_ref().is_some_and(|run| {
                    run.steps.iter().any(|step| step.step == Step::StopPrimary { member: member_name.clone() })
                });
                if let Some(holding) = all.get_mut(&group_name)
                    && holding.fenced.is_none()
                    && !stopped_by_plan
                {
                    holding.fenced = Some(now);
                    holding.released = true;
                    guard.send(GuardMessage::Disarm { group: group_name.clone() });
                    warn!(group = %group_name, member = %member_name, "no longer the primary: fencing");
                    tokio::spawn(fence_and_release(cluster.clone(), local.clone()));
                }
                continue;
            }
            let holding =
                all.entry(group_name.clone()).or_insert_with(|| Holding::new(&member_name, now, lease_duration));
            if holding.member != member_name {
                *holding = Holding::new(&member_name, now, lease_duration);
            }
            if my_verdict == Some(Health::Down) {
                let down_since = *holding.down_since.get_or_insert(now);
                // No renewal while the primary is down for this node: if it cannot be made sure
                // of, the lease runs out, and a primary that answers again finds itself fenced.
                if !holding.released
                    && holding.release_attempt_at.is_none_or(|at| now.duration_since(at) >= RELEASE_RETRY)
                {
                    holding.release_attempt_at = Some(now);
                    tokio::spawn(release(cluster.clone(), guard.clone(), holdings.clone(), local.clone()));
                } else if holding.released
                    && group_state.running.is_none()
                    && local.starts_in_place()
                    && now.duration_since(down_since) >= RESTART_IN_PLACE_AFTER
                    && holding.restart_attempt_at.is_none_or(|at| now.duration_since(at) >= RESTART_IN_PLACE_AFTER)
                {
                    // Released long ago and still nobody replaced it (strict synchronous mode
                    // with no confirmed standby, every replica nofailover): the group has no
                    // primary at all. Start it again fenced; the next committed renewal, which
                    // only succeeds while it is still the primary of the current epoch, lifts
                    // the fence. Should a failover start instead, it is fenced already.
                    holding.restart_attempt_at = Some(now);
                    holding.fenced = Some(now);
                    warn!(
                        group = %group_name,
                        member = %member_name,
                        down_for_ms = now.duration_since(down_since).as_millis() as u64,
                        "the primary is down and nothing replaced it: starting it again, fenced, until the cluster \
                         confirms its lease"
                    );
                    let local = local.clone();
                    tokio::spawn(async move {
                        if let Err(reason) = local.start_fenced().await {
                            warn!(group = local.group_name(), member = local.name(), %reason, "could not start it again");
                        }
                    });
                }
                continue;
            }
            holding.down_since = None;
            let margin = fence_margin(lease_duration);
            if holding.fenced.is_none() && now + margin >= holding.valid_until {
                holding.fenced = Some(now);
                // This daemon fences it itself: the guard's harder fence is not needed.
                guard.send(GuardMessage::Disarm { group: group_name.clone() });
                warn!(group = %group_name, member = %member_name, "lease not renewed in time: fencing the primary");
                let local = local.clone();
                tokio::spawn(async move { local.fence(false).await });
            } else if let Some(since) = holding.fenced
                && local.fence_expires()
                && !holding.released
                && now.duration_since(since) >= REDIS_PAUSE / 3
            {
                // A pause lapses by itself: renew it while the fence stands.
                holding.fenced = Some(now);
                let local = local.clone();
                tokio::spawn(async move { local.fence(false).await });
            }
            if holding.renewals_in_flight < MAX_RENEWALS_IN_FLIGHT && (now >= holding.next_renewal || new_leader) {
                holding.renewals_in_flight += 1;
                holding.next_renewal = now + lease_duration / 4;
                tokio::spawn(renew(
                    cluster.clone(),
                    guard.clone(),
                    holdings.clone(),
                    local.clone(),
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

/// After a committed renewal, with the lease now valid until `valid_until`: how long from
/// `now` the guard is to wait before stopping the primary (a little after this daemon would
/// fence it, and before the lease runs out), or `None` when the lease is already within the
/// fence margin. A renewal answered that late (sent to a leader that was then cut off, and
/// committed by the next one) leaves no time to use: lifting the fence, or arming the guard
/// with nothing left, would only have the primary fenced, or stopped, again at once.
fn guard_after_renewal(valid_until: Instant, now: Instant, lease: Duration) -> Option<Duration> {
    let margin = fence_margin(lease);
    (now + margin < valid_until).then(|| (valid_until - margin / 2).saturating_duration_since(now))
}

async fn renew(
    cluster: Cluster,
    guard: GuardClient,
    holdings: Arc<Mutex<BTreeMap<String, Holding>>>,
    local: GroupMember,
    epoch: u64,
    sent_at: Instant,
) {
    let (group, member) = (local.group_name().to_string(), local.name().to_string());
    let lease_duration = local.lease_duration();
    let command = Command::RenewLease { group: group.clone(), member: member.clone(), holder: cluster.node_id, epoch };
    let outcome = tokio::time::timeout(lease_duration, cluster.submit(LeaderRequest::Write { command })).await;
    let mut lift = false;
    {
        let mut all = holdings.lock().expect("holdings poisoned");
        let Some(holding) = all.get_mut(&group) else { return };
        holding.renewals_in_flight = holding.renewals_in_flight.saturating_sub(1);
        match outcome {
            Ok(Ok(LeaderResponse::Done { response: CommandResponse::Applied, .. })) => {
                holding.valid_until = holding.valid_until.max(sent_at + lease_duration);
                // A committed renewal confirms this member as the primary of the current
                // epoch, whatever this node released or fenced before.
                holding.released = false;
                if let Some(guard_in) = guard_after_renewal(holding.valid_until, Instant::now(), lease_duration) {
                    // The first renewal of a primary this keeper took over also lifts a fence
                    // a previous run of vigil may have left, and sets the spec's write settings.
                    let first = !holding.configured && local.lift_on_takeover();
                    holding.configured = true;
                    if holding.fenced.take().is_some() || first {
                        lift = true;
                    }
                    if let Some(server) = local.guarded() {
                        let valid_for_ms = guard_in.as_millis() as u64;
                        guard.send(GuardMessage::Arm { group: group.clone(), valid_for_ms, server });
                    }
                }
            }
            // The cluster says this is not the primary of the current epoch: stay fenced.
            Ok(Ok(LeaderResponse::Done { response: CommandResponse::Refused { reason }, .. }))
                if holding.fenced.is_none() =>
            {
                holding.fenced = Some(Instant::now());
                guard.send(GuardMessage::Disarm { group: group.clone() });
                warn!(%group, %member, %reason, "lease refused: fencing");
                let local = local.clone();
                tokio::spawn(async move { local.fence(false).await });
            }
            _ => {}
        }
    }
    if lift {
        info!(%group, %member, "lease renewed: the cluster confirms the primary; lifting the fence");
        local.lift().await;
    }
}

/// The primary beside this node is down by this node's own probes: make sure it stays down
/// (a half-dead server must not come back writable), then give the lease up so the leader
/// need not wait for it to run out.
async fn release(
    cluster: Cluster,
    guard: GuardClient,
    holdings: Arc<Mutex<BTreeMap<String, Holding>>>,
    local: GroupMember,
) {
    let (group, member) = (local.group_name().to_string(), local.name().to_string());
    let how = match local.make_sure_down().await {
        Ok(how) => how,
        Err(reason) => {
            // Not sure it is down: the lease is left to run out, since releasing it would let
            // a replica be promoted while a server this node cannot see might take writes.
            warn!(%group, %member, %reason, "cannot make sure the down primary stays down; the lease will run out");
            return;
        }
    };
    if let Some(holding) = holdings.lock().expect("holdings poisoned").get_mut(&group) {
        holding.released = true;
    }
    guard.send(GuardMessage::Disarm { group: group.clone() });
    let reason = format!("{member} is down for node {} and {how}", cluster.node_id);
    let command = Command::ReleaseLease {
        group: group.clone(),
        member: member.clone(),
        holder: cluster.node_id,
        reason: reason.clone(),
    };
    match cluster.submit(LeaderRequest::Write { command }).await {
        Ok(_) => warn!(%group, %member, %reason, "lease released"),
        Err(error) => warn!(%group, %member, %error, "could not release the lease"),
    }
}

/// Fences a primary that is being replaced and tells the leader, so the promotion need not
/// wait for the lease to run out.
async fn fence_and_release(cluster: Cluster, local: GroupMember) {
    let (group, member) = (local.group_name().to_string(), local.name().to_string());
    let reason = if local.fence(false).await {
        format!("{member} fenced by node {} ({})", cluster.node_id, local.fence_words())
    } else {
        // A server that cannot be fenced because it is gone is as good as fenced, if this
        // node can make sure it stays gone.
        match local.make_sure_down().await {
            Ok(how) => format!("{member} is down for node {} and {how}", cluster.node_id),
            Err(reason) => {
                // Not fenced: the lease must run out before anything is promoted.
                warn!(%group, %member, %reason, "neither fenced nor sure to be down; the lease will run out");
                return;
            }
        }
    };
    let command =
        Command::ReleaseLease { group: group.clone(), member: member.clone(), holder: cluster.node_id, reason };
    if let Err(error) = cluster.submit(LeaderRequest::Write { command }).await {
        warn!(%group, %member, %error, "could not release the lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1500);

    #[test]
    fn a_timely_renewal_arms_the_guard_between_the_fence_and_the_end_of_the_lease() {
        let now = Instant::now();
        let guard_in = guard_after_renewal(now + LEASE, now, LEASE).expect("a fresh lease is usable");
        let margin = fence_margin(LEASE);
        assert_eq!(guard_in, LEASE - margin / 2);
        assert!(guard_in > LEASE - margin, "the guard acts after the daemon would have fenced");
        assert!(guard_in < LEASE, "and before the lease runs out");
    }

    #[test]
    fn a_renewal_answered_after_its_lease_ran_out_neither_lifts_nor_arms() {
        // Sent 1.6 s ago to a leader that was then cut off, committed only now by the next.
        let now = Instant::now();
        let sent_at = now - Duration::from_millis(1600);
        assert_eq!(guard_after_renewal(sent_at + LEASE, now, LEASE), None);
    }

    #[test]
    fn a_renewal_that_leaves_less_than_the_fence_margin_is_of_no_use() {
        let now = Instant::now();
        let margin = fence_margin(LEASE);
        assert_eq!(guard_after_renewal(now + margin, now, LEASE), None);
        assert!(guard_after_renewal(now + margin + Duration::from_millis(1), now, LEASE).is_some());
    }
}
