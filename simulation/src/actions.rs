//! What each [`Action`] of the coordinator does to a fake server when it lands, with the
//! outcome the real member implementations (`node/src/members/`) would report.
//!
//! An action either ends when it lands ([`Landing::Done`]) or waits for something to become
//! true ([`Landing::Wait`]: caught up, writable, streaming), which the world polls every
//! 50 ms until the action's timeout.

use std::collections::{BTreeMap, BTreeSet};

use vigil_consensus::coordinator::{
    Action, ActionFailure, ActionReport, FailureKind, StandbyState, SyncGeneration, SyncState,
};
use vigil_consensus::group::StepFacts;

use crate::net::{Host, Net};
use crate::servers::{Group, Kind, SyncSetting};

/// How often a waiting action looks again.
pub const POLL_US: u64 = 50_000;

/// What an action did when it landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Landing {
    /// It ended, with this outcome.
    Done(Result<ActionReport, ActionFailure>),
    /// It waits: poll it.
    Wait,
}

/// What an action needs to know besides the server.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The host of the node acting.
    pub actor_host: Host,
    /// The network now.
    pub net: &'a Net,
    /// A fault: fencing this member fails (read-only, or the refusal of writes, cannot be set).
    pub failing_fence: bool,
    /// The `unfenced_promotion` mutation: a promoted member takes writes at once.
    pub unfenced_promotion: bool,
}

fn fail(kind: FailureKind, detail: impl Into<String>) -> Landing {
    Landing::Done(Err(ActionFailure::new(kind, detail)))
}

fn done(detail: impl Into<String>) -> Landing {
    Landing::Done(Ok(ActionReport::done(detail)))
}

fn refused_connection(name: &str) -> Landing {
    fail(FailureKind::CannotConnect, format!("{name}: connection refused"))
}

/// Lands `action` on `member` of `group`.
pub fn land(group: &mut Group, member: usize, action: &Action, context: &Context<'_>) -> Landing {
    let kind = group.kind;
    let primary_index = |name: &str| group.index_of(name);
    let server = &group.servers[member];
    let local = context.actor_host == server.host;
    let name = server.name.clone();
    match action {
        Action::Fence { .. } | Action::RemoteFence => {
            let beside = kind == Kind::Postgres && local && matches!(action, Action::Fence { .. });
            if !server.running {
                // The node beside a PostgreSQL member confirms on its own host that a server
                // which does not run takes no writes; over the network it cannot connect.
                return if beside { done("not running, so it takes no writes") } else { refused_connection(&name) };
            }
            if context.failing_fence {
                // Nothing escalates to a stop (node/src/members/postgres.rs): the coordinator
                // tries again, and the guard covers the lease's end meanwhile.
                return fail(FailureKind::Refused, format!("{name} refused the fence"));
            }
            group.servers[member].fenced = true;
            done(match kind {
                Kind::Postgres => "read-only, sessions ended, confirmed",
                Kind::Redis => "writes refused (min-replicas-to-write), confirmed",
            })
        }
        Action::Lift { epoch } => {
            if !server.running {
                return refused_connection(&name);
            }
            group.servers[member].fenced = false;
            done(format!("fence lifted (epoch {epoch})"))
        }
        // Confirms, stops nothing: a server merely slow to answer is not killed on one node's
        // word.
        Action::MakeSureDown if !server.running => {
            // PostgreSQL's fence is written into its files: started again by anyone, it
            // refuses writes until its node lifts the fence.
            if kind == Kind::Postgres {
                group.servers[member].fenced = true;
            }
            done("not running: confirmed down")
        }
        Action::MakeSureDown => fail(FailureKind::Refused, format!("{name} still runs")),
        Action::StartFenced => match kind {
            Kind::Postgres => {
                let server = &mut group.servers[member];
                server.running = true;
                server.fenced = true;
                done("started read-only")
            }
            Kind::Redis => fail(FailureKind::Refused, "vigil does not start redis-server"),
        },
        Action::IsRunning => {
            let running = kind == Kind::Redis || server.running;
            Landing::Done(Ok(ActionReport { running: Some(running), ..ActionReport::done("checked") }))
        }
        Action::Rejoin { primary, stale_primary } => {
            let Some(source) = primary_index(primary) else {
                return fail(FailureKind::Unexpected, format!("no member {primary}"));
            };
            if !stale_primary && server.running && server.primary {
                // Promoted since its node decided: not demoted (node/src/members).
                return fail(FailureKind::Refused, format!("{name} runs as a primary now: not demoted"));
            }
            if kind == Kind::Redis && !server.running {
                return refused_connection(&name);
            }
            let reachable = group.can_reach_source(member, source, context.net);
            let target = &mut group.servers[member];
            if kind == Kind::Postgres {
                // pg_rewind stops the server first, then needs the primary.
                target.running = false;
                if !reachable {
                    return fail(
                        FailureKind::CannotConnect,
                        format!("checkpoint on {primary} before rewinding: cannot connect"),
                    );
                }
                target.running = true;
            }
            // Redis: REPLICAOF takes effect whether or not the master answers.
            (target.primary, target.upstream, target.streaming) = (false, Some(source), false);
            if kind == Kind::Postgres {
                target.fenced = false;
            }
            if !reachable {
                return fail(FailureKind::TimedOut, format!("the link of {name} to {primary} did not come up"));
            }
            follow_now(group, member, source);
            done(format!("rewound; streaming from {primary}"))
        }
        Action::StopForSwitchover => {
            let final_lsn = server.lsn;
            match kind {
                Kind::Postgres => group.servers[member].running = false,
                Kind::Redis => group.servers[member].fenced = true,
            }
            Landing::Done(Ok(ActionReport {
                facts: StepFacts { final_lsn: Some(final_lsn), ..StepFacts::default() },
                ..ActionReport::done(format!("{name} stopped cleanly at {final_lsn}"))
            }))
        }
        Action::RestartAsReplica { primary } | Action::Repoint { primary } => {
            let Some(source) = primary_index(primary) else {
                return fail(FailureKind::Unexpected, format!("no member {primary}"));
            };
            let restarts = matches!(action, Action::RestartAsReplica { .. });
            if !(server.running || (restarts && kind == Kind::Postgres)) {
                return refused_connection(&name);
            }
            if server.primary && !restarts {
                return fail(FailureKind::Refused, format!("{name} runs as a primary"));
            }
            let target = &mut group.servers[member];
            (target.running, target.primary, target.upstream) = (true, false, Some(source));
            if restarts {
                target.fenced = false;
            }
            Landing::Wait
        }
        Action::WaitForCatchUp { .. } | Action::VerifyWritable { .. } => {
            if !server.running {
                return refused_connection(&name);
            }
            Landing::Wait
        }
        Action::Promote { epoch, strict_sync } => {
            if !server.running {
                return refused_connection(&name);
            }
            let lsn = server.lsn;
            let report = |detail: String| {
                Landing::Done(Ok(ActionReport {
                    facts: StepFacts { promoted_lsn: Some(lsn), ..StepFacts::default() },
                    ..ActionReport::done(detail)
                }))
            };
            if server.primary {
                return report(format!("{name} already was a primary; not promoted again"));
            }
            group.fork(member);
            let target = &mut group.servers[member];
            target.primary = true;
            target.fenced = !context.unfenced_promotion;
            (target.upstream, target.streaming) = (None, false);
            if *strict_sync && kind == Kind::Postgres {
                target.sync = SyncSetting::Any;
                target.sync_generation = SyncGeneration::promotion(*epoch);
            }
            let how = if target.fenced { "refusing writes" } else { "taking writes at once" };
            report(format!("{name} promoted into epoch {epoch}, {how}"))
        }
        Action::SetSyncStandbys { standbys, generation } => {
            if kind == Kind::Redis {
                return fail(FailureKind::Refused, "Redis groups have no synchronous mode");
            }
            if !server.running {
                return refused_connection(&name);
            }
            if server.sync_generation > *generation {
                let kept = server.sync_generation;
                return fail(FailureKind::Refused, format!("{name} keeps generation {kept}; {generation} is refused"));
            }
            let target = &mut group.servers[member];
            target.sync = if standbys.is_empty() { SyncSetting::Off } else { SyncSetting::All(standbys.clone()) };
            target.sync_generation = *generation;
            done(format!("synchronous standbys {standbys:?}"))
        }
        Action::PrepareReplica => {
            if !server.running {
                return refused_connection(&name);
            }
            if server.primary {
                return fail(FailureKind::Refused, format!("{name} is not a replica: not readied"));
            }
            done(format!("{name} ready for a promotion"))
        }
        Action::ReadSyncState => {
            if kind == Kind::Redis {
                return fail(FailureKind::Refused, "Redis groups have no synchronous mode");
            }
            if !server.running {
                return refused_connection(&name);
            }
            Landing::Done(Ok(ActionReport { sync: Some(sync_state(group, member)), ..ActionReport::done("read") }))
        }
    }
}

/// Looks again at an action that waits: its outcome once what it waits for is true.
pub fn poll(
    group: &mut Group,
    member: usize,
    action: &Action,
    context: &Context<'_>,
) -> Option<Result<ActionReport, ActionFailure>> {
    let server = &group.servers[member];
    if !context.net.reachable(context.actor_host, server.host) || !server.running {
        return None;
    }
    match action {
        Action::WaitForCatchUp { position } => (!server.primary && server.lsn >= *position)
            .then(|| ActionReport::done(format!("{} replayed {} past {position}", server.name, server.lsn))),
        Action::VerifyWritable { epoch } => {
            if !server.writable() {
                return None;
            }
            group.servers[member].epoch = Some(*epoch);
            Some(ActionReport::done(format!("epoch {epoch} written")))
        }
        Action::RestartAsReplica { primary } | Action::Repoint { primary } => {
            let source = group.index_of(primary)?;
            (!server.primary && server.streaming && server.upstream == Some(source))
                .then(|| ActionReport::done(format!("{} streams from {primary}", server.name)))
        }
        _ => None,
    }
    .map(Ok)
}

/// How long the member implementation itself waits before it gives up on a waiting action
/// (node/src/members/: a re-pointed replica streams within 20 s, a candidate catches up
/// within 60 s, a new primary takes writes within 40 probe timeouts), whatever the action's
/// own timeout.
pub fn gives_up_after(action: &Action) -> Option<std::time::Duration> {
    use std::time::Duration;
    match action {
        Action::Repoint { .. } | Action::RestartAsReplica { .. } => Some(Duration::from_secs(20)),
        Action::WaitForCatchUp { .. } => Some(Duration::from_secs(60)),
        Action::VerifyWritable { .. } => Some(vigil_consensus::spec::DEFAULT_PROBE_TIMEOUT * 40),
        _ => None,
    }
}

/// What the time-out of a waiting action says.
pub fn gave_up(action: &Action, name: &str) -> ActionFailure {
    ActionFailure::new(FailureKind::TimedOut, format!("{action} on {name} did not finish in time"))
}

/// Makes `member` a streaming replica of `source` holding its history at once (a rewind or
/// a full resynchronisation).
fn follow_now(group: &mut Group, member: usize, source: usize) {
    let (branch, lsn, epoch) = (group.servers[source].branch, group.servers[source].lsn, group.servers[source].epoch);
    let target = &mut group.servers[member];
    (target.branch, target.lsn, target.epoch, target.streaming) = (branch, lsn, epoch, true);
}

/// A primary's synchronous setting and each standby's state, as `pg_stat_replication` says.
fn sync_state(group: &Group, primary: usize) -> SyncState {
    let setting = &group.servers[primary].sync;
    let in_force = match setting {
        SyncSetting::Off => BTreeSet::new(),
        SyncSetting::Any => BTreeSet::from(["*".to_string()]),
        SyncSetting::All(names) => names.clone(),
    };
    let mut standbys = BTreeMap::new();
    let mut first_any = true;
    for server in &group.servers {
        if server.primary || server.upstream != Some(primary) || !server.streaming {
            continue;
        }
        let state = match setting {
            SyncSetting::All(names) if names.contains(&server.name) => "sync",
            SyncSetting::Any if first_any => {
                first_any = false;
                "sync"
            }
            SyncSetting::Any => "potential",
            _ => "async",
        };
        // A standby that stopped receiving still reports streaming, with what it flushed.
        standbys.insert(server.name.clone(), StandbyState { state: state.to_string(), flushed: Some(server.lsn) });
    }
    SyncState { in_force, position: Some(group.servers[primary].lsn), standbys }
}

impl Group {
    /// Whether `member`'s host reaches the running `source` (what a rejoin needs).
    pub fn can_reach_source(&self, member: usize, source: usize, net: &Net) -> bool {
        member != source
            && self.servers[source].running
            && net.reachable(self.servers[member].host, self.servers[source].host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(net: &Net, actor_host: Host) -> Context<'_> {
        Context { actor_host, net, failing_fence: false, unfenced_promotion: false }
    }

    #[test]
    fn a_promoted_replica_is_born_fenced_on_a_new_branch() {
        let net = Net::new(3);
        let mut group = Group::new("cache", Kind::Redis, false, 3, 6379);
        let promote = Action::Promote { epoch: 2, strict_sync: false };
        assert!(matches!(land(&mut group, 1, &promote, &context(&net, 0)), Landing::Done(Ok(_))));
        assert!(group.servers[1].primary && group.servers[1].fenced && !group.servers[1].writable());
        assert_eq!(group.servers[1].branch, 1);
        let again = land(&mut group, 1, &promote, &context(&net, 0));
        assert_eq!(group.branches.len(), 2, "not promoted twice");
        assert!(matches!(again, Landing::Done(Ok(report)) if report.detail.contains("already")));
    }

    #[test]
    fn a_failing_fence_fails_until_the_server_is_confirmed_down() {
        let net = Net::new(3);
        let mut group = Group::new("main", Kind::Postgres, true, 3, 5432);
        let failing = Context { failing_fence: true, ..context(&net, 0) };
        let fence = Action::Fence { stale: false };
        let refused = land(&mut group, 0, &fence, &failing);
        assert!(matches!(refused, Landing::Done(Err(ref failure)) if failure.kind == FailureKind::Refused));
        assert!(group.servers[0].writable(), "nothing is stopped");
        group.servers[0].running = false;
        assert!(matches!(land(&mut group, 0, &fence, &failing), Landing::Done(Ok(_))), "down counts as fenced");
        let remote = land(&mut group, 0, &Action::RemoteFence, &Context { actor_host: 1, ..failing });
        assert!(matches!(remote, Landing::Done(Err(ref failure)) if failure.kind == FailureKind::CannotConnect));
    }
}
