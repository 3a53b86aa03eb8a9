//! Strict synchronous mode: the leader keeps the primary's `synchronous_standby_names` and
//! the replicated set of confirmed synchronous standbys in step, so that every member of the
//! set holds every acknowledged commit, and only those members may be promoted.
//!
//! The order of the two writes is what keeps that true. A standby is added to the primary's
//! setting first (commits then wait for it too), and to the replicated set only once the
//! primary reports it synchronous; a standby is taken out of the replicated set first, and
//! out of the setting after. Switching from one standby to another passes through a moment
//! where commits wait for both. With no standby left, the setting keeps naming the lost one:
//! writes block rather than being acknowledged by the primary alone.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ReadPolicy;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigil_consensus::decision::STALE_AFTER_MS;
use vigil_consensus::group::{GroupState, Health};
use vigil_consensus::spec::{PostgresGroup, SyncMode};
use vigil_consensus::state::{Command, CommandResponse};
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse};
use vigil_consensus::{Cluster, cluster::unix_millis_now};

use crate::members::targets::pg_target;

/// How often the leader checks the synchronous standbys.
const TICK: Duration = Duration::from_secs(1);
/// How long a standby added to the setting may take to be reported synchronous.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `cancel`; acts only while this node is the Raft leader.
pub async fn run(cluster: Cluster, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !cluster.raft.is_leader() {
            continue;
        }
        let (spec, groups) = {
            let state = cluster.state.read().expect("state lock poisoned");
            (state.spec.clone(), state.groups.clone())
        };
        for group in &spec.postgres {
            let Some(state) = groups.get(&group.name) else { continue };
            if state.running.is_some() {
                continue;
            }
            if let Err(reason) = settle(&cluster, group, state).await {
                warn!(group = %group.name, %reason, "synchronous standbys not settled");
            }
        }
    }
}

/// Replicas that stream from the primary and answer, by the freshest verdicts.
fn healthy_standbys(group: &PostgresGroup, state: &GroupState, primary_port: u16) -> Vec<String> {
    let now = unix_millis_now();
    group
        .members
        .iter()
        .filter(|member| Some(member.name.as_str()) != state.primary.as_deref() && !member.nofailover)
        .filter(|member| {
            let freshest = state
                .verdicts
                .get(&member.name)
                .into_iter()
                .flatten()
                .map(|(_, report)| report)
                .filter(|report| now.saturating_sub(report.observed_at_ms) <= STALE_AFTER_MS)
                .max_by_key(|report| report.observed_at_ms);
            freshest.is_some_and(|report| {
                report.verdict.health == Health::Up
                    && report.verdict.facts.as_ref().is_some_and(|facts| {
                        facts.in_recovery
                            && facts.upstream.as_deref().is_some_and(|up| up.ends_with(&format!(":{primary_port}")))
                    })
            })
        })
        .map(|member| member.name.clone())
        .collect()
}

async fn settle(cluster: &Cluster, group: &PostgresGroup, state: &GroupState) -> Result<(), String> {
    let Some(primary_name) = state.primary.clone() else { return Ok(()) };
    let primary = group.member(&primary_name).ok_or("the primary is not in the spec")?;
    let target = pg_target(group, primary)?;
    let current = state.sync_standbys.clone();
    if group.synchronous == SyncMode::Off {
        if current.is_empty() {
            return Ok(());
        }
        confirm_leadership(cluster).await?;
        commit(cluster, group, state, &primary_name, BTreeSet::new(), None).await?;
        vigil_actions::set_synchronous_standby_names(&target, "").await.map_err(|e| e.to_string())?;
        info!(group = %group.name, "synchronous mode off: commits no longer wait for a standby");
        return Ok(());
    }
    let healthy = healthy_standbys(group, state, primary.port);
    let desired: BTreeSet<String> = if !current.is_empty() && current.iter().all(|name| healthy.contains(name)) {
        current.clone()
    } else if let Some(best) = best_standby(group, &healthy) {
        BTreeSet::from([best])
    } else {
        // No standby to wait for: keep waiting for the ones named, so writes block.
        let note =
            Some(format!("writes are blocked: no standby streams from {primary_name} (strict synchronous mode)"));
        if state.sync_note != note {
            commit(cluster, group, state, &primary_name, current, note).await?;
        }
        return Ok(());
    };
    confirm_leadership(cluster).await?;
    let (in_force, _) = vigil_actions::synchronous_state(&target).await.map_err(|e| e.to_string())?;
    if desired == current {
        let wanted = vigil_actions::require_all(&current);
        if in_force != wanted {
            vigil_actions::set_synchronous_standby_names(&target, &wanted).await.map_err(|e| e.to_string())?;
        }
        if state.sync_note.is_some() {
            commit(cluster, group, state, &primary_name, current, None).await?;
        }
        return Ok(());
    }
    // Commits wait for the old and the new standbys until the new ones are confirmed.
    let both: BTreeSet<String> = current.union(&desired).cloned().collect();
    vigil_actions::set_synchronous_standby_names(&target, &vigil_actions::require_all(&both))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    loop {
        let (_, standbys) = vigil_actions::synchronous_state(&target).await.map_err(|e| e.to_string())?;
        let confirmed = desired.iter().all(|name| standbys.get(name).is_some_and(|s| s == "sync" || s == "quorum"));
        if confirmed {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{desired:?} not reported synchronous by {primary_name} within {CONFIRM_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    commit(cluster, group, state, &primary_name, both, None).await?;
    commit(cluster, group, state, &primary_name, desired.clone(), None).await?;
    vigil_actions::set_synchronous_standby_names(&target, &vigil_actions::require_all(&desired))
        .await
        .map_err(|e| e.to_string())?;
    info!(group = %group.name, standbys = ?desired, "confirmed synchronous standbys");
    Ok(())
}

/// The standby to make synchronous: highest priority, then name.
fn best_standby(group: &PostgresGroup, healthy: &[String]) -> Option<String> {
    healthy
        .iter()
        .filter_map(|name| group.member(name))
        .max_by(|a, b| a.priority.cmp(&b.priority).then(b.name.cmp(&a.name)))
        .map(|member| member.name.clone())
}

async fn confirm_leadership(cluster: &Cluster) -> Result<(), String> {
    cluster.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map(drop).map_err(|e| e.to_string())
}

async fn commit(
    cluster: &Cluster,
    group: &PostgresGroup,
    state: &GroupState,
    primary: &str,
    standbys: BTreeSet<String>,
    note: Option<String>,
) -> Result<(), String> {
    let command = Command::SetSyncStandbys {
        group: group.name.clone(),
        primary: primary.to_string(),
        epoch: state.epoch,
        standbys,
        note,
    };
    match cluster.submit(LeaderRequest::Write { command }).await {
        Ok(LeaderResponse::Done { response: CommandResponse::Applied, .. }) => Ok(()),
        Ok(other) => Err(format!("not applied: {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}
