//! Redis members: what vigil does to a redis-server, always over the network.
//!
//! vigil does not start or stop redis-server: a master is fenced by refusing its writes
//! (`min-replicas-to-write` beyond any number of replicas, which holds even if vigil dies)
//! or by pausing them (`CLIENT PAUSE WRITE`, renewed while fenced). Should the daemon die or
//! hang while its master holds the lease, the fence guard raises the refusal fence when the
//! lease runs out; the fence is lifted through that guard too, so that a lift which reaches
//! the server late cannot undo it (`crate::guard::line`). A refusal is confirmed by a write
//! that the member refuses. A promoted replica is born fenced by refusal; its own node lifts
//! the fence once it holds the new master's lease, and the leader waits for that before it
//! writes the epoch.
//!
//! Offsets are bytes of the replication stream and fill the fields PostgreSQL fills with
//! WAL positions, so the lag policy and the data-loss estimate read the same.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;
use vigil_actions::ActionError;
use vigil_consensus::coordinator::{ActionFailure, ActionReport, FailureKind, Seen, SyncGeneration};
use vigil_consensus::group::{Health, MemberFacts, StepFacts, Verdict};
use vigil_consensus::spec::{self, RedisFenceMethod, RedisGroup};
use vigil_probes::{RedisObservation, RedisOutcome, RedisProbe, RedisTarget};

use super::targets::redis_target;
use super::{ActionResult, BoxFuture, Member, failure, failure_in, misconfigured};
use crate::guard::{GuardClient, GuardedRedis, GuardedServer};

/// How long a Redis pause fence lasts; the keeper renews it well before.
pub const REDIS_PAUSE: Duration = Duration::from_secs(10);
/// `min-replicas-to-write` while fenced: more replicas than any group has, so every write is
/// refused (`NOREPLICAS`) until the fence is lifted, whether or not vigil still runs.
pub const REFUSE_ALL_WRITES: u32 = 1_000_000;

/// How long a switchover keeps the old master's writes paused at most: it is made a replica
/// well before; should the switchover be abandoned, the old master takes writes again.
const SWITCHOVER_PAUSE: Duration = Duration::from_secs(60);
/// How long a promotion, or a re-pointed replica's link coming up, may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the candidate may take to reach the old master's final offset in a switchover.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a rejoined member's link may take to come up.
const REJOIN_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The most the leader's fence over the network waits for each answer.
const REMOTE_FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection to a member seen down may take to be refused.
const DOWN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often `verify_writable` tries the epoch write: the failover's clients wait for it.
const WRITABLE_POLL: Duration = Duration::from_millis(10);
/// How many probe timeouts `verify_writable` waits at most for the new master's node to lift
/// its fence (the caller bounds the action too).
const WRITABLE_WAIT_PROBE_TIMEOUTS: u32 = 40;

/// A Redis member with its group's spec, as this node reaches it.
#[derive(Debug)]
pub struct RedisMember {
    group: RedisGroup,
    member: spec::RedisMember,
    node_id: u64,
    /// The probe, built on first use and then kept, since it keeps its connection; empty
    /// while vigil's credentials cannot be read on this node.
    probe: Mutex<Option<Arc<RedisProbe>>>,
}

impl RedisMember {
    /// The member `member` of `group`, probed and acted on by the node `node_id`.
    pub fn new(group: &RedisGroup, member: &spec::RedisMember, node_id: u64) -> Self {
        RedisMember { group: group.clone(), member: member.clone(), node_id, probe: Mutex::new(None) }
    }

    fn target(&self) -> Result<RedisTarget, ActionFailure> {
        redis_target(&self.group, &self.member).map_err(misconfigured)
    }

    fn peer(&self, name: &str) -> Result<&spec::RedisMember, ActionFailure> {
        self.group.member(name).ok_or_else(|| misconfigured(format!("group {} has no member {name}", self.group.name)))
    }

    /// `min-replicas-max-lag` for the fence: at least one second, since zero turns the
    /// replica check (and so the fence) off.
    fn fence_max_lag(&self) -> u32 {
        self.group.min_replicas_max_lag.max(1)
    }

    /// What the guard needs to fence (and lift) this member.
    fn guarded(&self, target: &RedisTarget) -> GuardedServer {
        GuardedServer::Redis(GuardedRedis::new(
            target,
            REFUSE_ALL_WRITES,
            self.fence_max_lag(),
            self.group.min_replicas_to_write,
        ))
    }

    /// The kept probe, built now if it was not yet.
    fn kept_probe(&self) -> Result<Arc<RedisProbe>, super::targets::TargetError> {
        let mut kept = self.probe.lock().expect("probe lock poisoned");
        if let Some(probe) = kept.as_ref() {
            return Ok(Arc::clone(probe));
        }
        let probe = Arc::new(RedisProbe::new(redis_target(&self.group, &self.member)?, self.node_id));
        *kept = Some(Arc::clone(&probe));
        Ok(probe)
    }

    async fn check(&self) -> Seen {
        let probe = match self.kept_probe() {
            Ok(probe) => probe,
            // A node that cannot read vigil's credentials must never count towards a failover:
            // its own misconfiguration says nothing of the member. The coordinator's
            // `is_refusal_of_vigil` takes a reason that names the password for vigil being
            // refused (Degraded, never Down), which is why this reason names it even when the
            // TLS files were the problem.
            Err(reason) => {
                return Seen::Failed {
                    reason: format!("cannot probe without vigil's password and TLS files: {reason}"),
                };
            }
        };
        match probe.check().await {
            RedisOutcome::Answered(observation) => Seen::Answered(classify_redis(&observation)),
            RedisOutcome::Failed { reason } => Seen::Failed { reason },
        }
    }

    /// Raises `min-replicas-to-write` beyond reach on `target` and confirms that a write is
    /// refused.
    async fn refuse_writes_confirmed(&self, target: &RedisTarget) -> Result<String, ActionFailure> {
        vigil_actions::redis_set_min_replicas(target, REFUSE_ALL_WRITES, self.fence_max_lag())
            .await
            .map_err(|e| failure_in("raising min-replicas-to-write", e))?;
        let how = confirm_writes_refused(target).await?;
        Ok(format!("writes refused (min-replicas-to-write), {how}"))
    }

    async fn promote_fenced(&self, epoch: u64) -> ActionResult {
        let target = self.target()?;
        let name = &self.member.name;
        let role = vigil_actions::redis_role(&target).await.map_err(|e| failure_in("reading its role", e))?;
        if role.is_master {
            // A promotion retried after it succeeded. The master was fenced as it was
            // promoted, and its node may have lifted that fence since: fencing it again would
            // undo what the cluster confirmed.
            let promoted = vigil_actions::redis_promote(&target, STREAM_TIMEOUT).await.map_err(failure)?;
            return Ok(promoted_report(format!("{name} already was a master; not promoted again"), promoted.offset));
        }
        // Born fenced: a replica takes no client writes before the promotion, and the refusal
        // set now holds from the promotion's first moment, until its own node lifts it once
        // it holds the new master's lease.
        vigil_actions::redis_set_min_replicas(&target, REFUSE_ALL_WRITES, self.fence_max_lag())
            .await
            .map_err(|e| failure_in("raising min-replicas-to-write before promoting", e))?;
        let promoted = vigil_actions::redis_promote(&target, STREAM_TIMEOUT).await.map_err(failure)?;
        let how = confirm_writes_refused(&target).await?;
        let detail = if promoted.already_master {
            format!("{name} already was a master; not promoted again; writes refused, {how}")
        } else {
            format!(
                "{name} promoted (REPLICAOF NO ONE) into epoch {epoch} at offset {}; writes refused, {how}",
                promoted.offset
            )
        };
        Ok(promoted_report(detail, promoted.offset))
    }

    async fn wait_until_writable(&self, epoch: u64) -> ActionResult {
        let target = self.target()?;
        let name = &self.member.name;
        let deadline = Instant::now() + target.timeout * WRITABLE_WAIT_PROBE_TIMEOUTS;
        loop {
            // Its own node lifts the fence once it holds the lease: wait for that rather than
            // lift it from here, since this node does not hold that lease.
            let last = match vigil_actions::redis_write_epoch(&target, epoch).await {
                Ok(_) => return Ok(ActionReport::done(format!("epoch {epoch} written on {name}"))),
                Err(ActionError::Redis(refusal)) if refusal.contains("NOREPLICAS") => refusal,
                // A paused master makes the write wait until the action's time is up.
                Err(error @ (ActionError::Connect(_) | ActionError::Timeout(_))) => error.to_string(),
                Err(error) => return Err(failure_in("writing the epoch", error)),
            };
            if Instant::now() >= deadline {
                return Err(ActionFailure::new(
                    FailureKind::TimedOut,
                    format!(
                        "{name} took no writes within {:?} (its fence is still up, or min-replicas-to-write \
                         waits for replicas): {last}",
                        target.timeout * WRITABLE_WAIT_PROBE_TIMEOUTS
                    ),
                ));
            }
            tokio::time::sleep(WRITABLE_POLL).await;
        }
    }

    /// Points this member at `primary` with `REPLICAOF` and lifts any pause, so the writes
    /// that waited behind it are answered (as a replica: refused) rather than kept hanging.
    async fn follow(&self, primary: &str) -> ActionResult {
        let primary = self.peer(primary)?;
        let target = self.target()?;
        vigil_actions::redis_repoint(&target, &primary.host, primary.port, None)
            .await
            .map_err(|e| failure_in("REPLICAOF", e))?;
        vigil_actions::redis_unpause(&target).await.map_err(|e| failure_in("CLIENT UNPAUSE", e))?;
        vigil_actions::redis_wait_for_upstream(&target, &primary.host, primary.port, REJOIN_STREAM_TIMEOUT)
            .await
            .map_err(|e| failure_in("after REPLICAOF", e))?;
        Ok(ActionReport::done(format!(
            "REPLICAOF {}:{}; replicating from {}",
            primary.host, primary.port, primary.name
        )))
    }
}

impl Member for RedisMember {
    fn group(&self) -> &str {
        &self.group.name
    }

    fn name(&self) -> &str {
        &self.member.name
    }

    fn probe(&self) -> BoxFuture<'_, Seen> {
        Box::pin(self.check())
    }

    fn guarded_server(&self) -> Option<GuardedServer> {
        // The guard raises the refusal fence itself should this daemon die or hang; once up,
        // the fence outlives vigil by itself.
        Some(self.guarded(&self.target().ok()?))
    }

    fn fence(&self, _stale: bool) -> BoxFuture<'_, ActionResult> {
        // Both fences keep a Redis member readable, so a stale master needs nothing else.
        Box::pin(async move {
            let target = self.target()?;
            let detail = match self.group.fence_method {
                RedisFenceMethod::RefuseWrites => self.refuse_writes_confirmed(&target).await?,
                RedisFenceMethod::PauseWrites => {
                    // The server answers OK only once the pause is in force: that is the
                    // confirmation.
                    let offset = vigil_actions::redis_pause_writes(&target, REDIS_PAUSE)
                        .await
                        .map_err(|e| failure_in("CLIENT PAUSE WRITE", e))?;
                    format!("writes paused at offset {offset}, confirmed")
                }
            };
            warn!(group = %self.group.name, member = %self.member.name, how = %detail, "fenced");
            Ok(ActionReport::done(detail))
        })
    }

    fn lift<'a>(&'a self, epoch: u64, guard: &'a GuardClient) -> BoxFuture<'a, ActionResult> {
        // Through the guard: its fence at the lease's deadline is reversible by a lift, so the
        // guard alone lifts, only before that deadline, and orders its fence behind a lift
        // still on its way (crate::guard::line).
        Box::pin(async move {
            let detail = guard
                .lift(&self.group.name, self.guarded(&self.target()?))
                .await
                .map_err(|refusal| ActionFailure::new(FailureKind::Refused, format!("the fence guard: {refusal}")))?;
            Ok(ActionReport::done(format!("{detail} (epoch {epoch})")))
        })
    }

    fn make_sure_down(&self) -> BoxFuture<'_, ActionResult> {
        // vigil does not stop redis-server and a server that hangs may come back, so only a
        // connection this host refuses counts as down.
        Box::pin(async move {
            let address = format!("{}:{}", self.member.host, self.member.port);
            let connect = tokio::net::TcpStream::connect(&address);
            match tokio::time::timeout(DOWN_CONNECT_TIMEOUT, connect).await {
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Ok(ActionReport::done("not listening"))
                }
                Ok(Err(error)) => {
                    Err(ActionFailure::new(FailureKind::CannotConnect, format!("{address} may still run: {error}")))
                }
                Ok(Ok(_)) => {
                    Err(ActionFailure::new(FailureKind::Refused, format!("{address} still accepts connections")))
                }
                Err(_) => Err(ActionFailure::new(
                    FailureKind::TimedOut,
                    format!("{address} may still run: no answer to a connection"),
                )),
            }
        })
    }

    fn start_fenced(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async { Err(ActionFailure::new(FailureKind::Refused, "vigil does not start redis-server")) })
    }

    fn is_running(&self) -> BoxFuture<'_, ActionResult> {
        // vigil cannot tell, and never acts on a Redis server it thinks stopped: say it runs.
        Box::pin(async {
            Ok(ActionReport {
                running: Some(true),
                ..ActionReport::done("vigil cannot tell whether redis-server runs; taken as running")
            })
        })
    }

    fn rejoin<'a>(&'a self, primary: &'a str, stale_primary: bool) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            // A replica promoted since the rejoin was decided must not follow the old master.
            if !stale_primary {
                let role =
                    vigil_actions::redis_role(&self.target()?).await.map_err(|e| failure_in("reading its role", e))?;
                if role.is_master {
                    return Err(ActionFailure::new(
                        FailureKind::Refused,
                        format!("{} runs as a master now (promoted since?): not demoted", self.member.name),
                    ));
                }
            }
            self.follow(primary).await
        })
    }

    fn stop_for_switchover(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let target = self.target()?;
            let final_offset = vigil_actions::redis_pause_writes(&target, SWITCHOVER_PAUSE).await.map_err(failure)?;
            Ok(ActionReport {
                facts: StepFacts { final_lsn: Some(final_offset), ..StepFacts::default() },
                ..ActionReport::done(format!("{}'s writes paused at offset {final_offset}", self.member.name))
            })
        })
    }

    fn restart_as_replica<'a>(&'a self, primary: &'a str) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            let primary = self.peer(primary)?;
            let target = self.target()?;
            vigil_actions::redis_repoint(&target, &primary.host, primary.port, None).await.map_err(failure)?;
            // Writers that waited behind the pause now get READONLY, not a second master.
            vigil_actions::redis_unpause(&target).await.map_err(failure)?;
            vigil_actions::redis_wait_for_upstream(&target, &primary.host, primary.port, STREAM_TIMEOUT)
                .await
                .map_err(failure)?;
            Ok(ActionReport::done(format!("{} replicates from {}", self.member.name, primary.name)))
        })
    }

    fn remote_fence(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let mut target = self.target()?;
            target.timeout = REMOTE_FENCE_TIMEOUT.min(target.timeout);
            Ok(ActionReport::done(self.refuse_writes_confirmed(&target).await?))
        })
    }

    fn wait_for_catch_up(&self, position: u64) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let target = self.target()?;
            let reached =
                vigil_actions::redis_wait_for_offset(&target, position, CATCH_UP_TIMEOUT).await.map_err(failure)?;
            Ok(ActionReport::done(format!(
                "{} reached offset {reached}, past the old master's final {position}",
                self.member.name
            )))
        })
    }

    fn promote(&self, epoch: u64, _strict_sync: bool) -> BoxFuture<'_, ActionResult> {
        // Redis groups have no synchronous mode: their spec has no such setting.
        Box::pin(self.promote_fenced(epoch))
    }

    fn verify_writable(&self, epoch: u64) -> BoxFuture<'_, ActionResult> {
        Box::pin(self.wait_until_writable(epoch))
    }

    fn repoint<'a>(&'a self, primary: &'a str) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            let primary = self.peer(primary)?;
            let replica = self.target()?;
            vigil_actions::redis_repoint(&replica, &primary.host, primary.port, None).await.map_err(failure)?;
            vigil_actions::redis_wait_for_upstream(&replica, &primary.host, primary.port, STREAM_TIMEOUT)
                .await
                .map_err(failure)?;
            // The new master's `min-replicas-to-write` is left to its own node: the lift sets
            // the spec's value, and setting it from here could lift a fence that node raised.
            Ok(ActionReport::done(format!("{} replicates from {}", self.member.name, primary.name)))
        })
    }

    fn set_sync_standbys<'a>(
        &'a self,
        _standbys: &'a BTreeSet<String>,
        _generation: SyncGeneration,
    ) -> BoxFuture<'a, ActionResult> {
        Box::pin(async { Err(no_synchronous_mode()) })
    }

    fn read_sync_state(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async { Err(no_synchronous_mode()) })
    }

    fn prepare_replica(&self) -> BoxFuture<'_, ActionResult> {
        // A Redis promotion writes no configuration that could be set ahead.
        Box::pin(async { Ok(ActionReport::done("nothing to ready")) })
    }
}

/// The verdict on a Redis member that answered, its facts in the shared shape: offsets as
/// positions, a replica with its link up counted as streaming.
pub fn classify_redis(observation: &RedisObservation) -> Verdict {
    let link_up = observation.link_status.as_deref() == Some("up");
    let facts = MemberFacts {
        in_recovery: !observation.is_master,
        timeline: None,
        current_lsn: observation.is_master.then_some(observation.master_repl_offset),
        receive_lsn: observation.replica_offset,
        replay_lsn: observation.replica_offset,
        replay_delay_ms: None,
        receiver_status: (!observation.is_master).then(|| {
            if link_up {
                "streaming".to_string()
            } else {
                format!("link {}", observation.link_status.as_deref().unwrap_or("unknown"))
            }
        }),
        upstream: observation.upstream.clone(),
        epoch: observation.epoch,
    };
    let (health, reason) = if observation.is_master {
        match &observation.heartbeat {
            Some(Err(error)) => (Health::Degraded, Some(format!("master refuses writes: {error}"))),
            _ => (Health::Up, None),
        }
    } else if link_up {
        (Health::Up, None)
    } else {
        let link = observation.link_status.as_deref().unwrap_or("unknown");
        (Health::Degraded, Some(format!("replica's link to its master is {link}")))
    };
    Verdict { health, facts: Some(facts), reason }
}

/// A promotion's report, with the offset the new master starts from.
fn promoted_report(detail: String, offset: u64) -> ActionReport {
    ActionReport {
        facts: StepFacts { promoted_lsn: Some(offset), ..StepFacts::default() },
        ..ActionReport::done(detail)
    }
}

/// Confirms that `target` refuses writes by trying one: `NOREPLICAS` is the refusal fence in
/// force; `READONLY` is a replica, which takes no writes either and, should it be promoted
/// behind vigil's back, meets the raised `min-replicas-to-write`. Says which.
async fn confirm_writes_refused(target: &RedisTarget) -> Result<&'static str, ActionFailure> {
    let refusal =
        vigil_actions::redis_write_refusal(target).await.map_err(|e| failure_in("confirming the fence", e))?;
    match refusal {
        Some(refusal) if refusal.starts_with("NOREPLICAS") => Ok("confirmed"),
        Some(refusal) if refusal.starts_with("READONLY") => Ok("confirmed (a read-only replica)"),
        Some(refusal) => Err(ActionFailure::new(
            FailureKind::Unexpected,
            format!("{} refused a test write, but not for the fence: {refusal}", target.address()),
        )),
        None => Err(ActionFailure::new(
            FailureKind::Refused,
            format!("{} still takes writes after min-replicas-to-write was raised", target.address()),
        )),
    }
}

fn no_synchronous_mode() -> ActionFailure {
    ActionFailure::new(FailureKind::Refused, "redis groups have no synchronous mode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(heartbeat: Option<Result<(), String>>) -> RedisObservation {
        RedisObservation { is_master: true, master_repl_offset: 42, heartbeat, ..RedisObservation::default() }
    }

    fn replica(link: Option<&str>) -> RedisObservation {
        RedisObservation {
            is_master: false,
            master_repl_offset: 40,
            replica_offset: Some(40),
            link_status: link.map(str::to_string),
            upstream: Some("10.0.0.1:6379".into()),
            ..RedisObservation::default()
        }
    }

    /// A master that takes its heartbeat is up, with its offset as its position; one that
    /// refuses it is degraded, saying why.
    #[test]
    fn a_master_is_judged_by_its_heartbeat() {
        let up = classify_redis(&master(Some(Ok(()))));
        assert_eq!(up.health, Health::Up);
        let facts = up.facts.expect("facts");
        assert_eq!((facts.in_recovery, facts.current_lsn, facts.receiver_status), (false, Some(42), None));
        let refused = classify_redis(&master(Some(Err("NOREPLICAS Not enough good replicas to write.".into()))));
        assert_eq!(refused.health, Health::Degraded);
        assert_eq!(
            refused.reason.as_deref(),
            Some("master refuses writes: NOREPLICAS Not enough good replicas to write.")
        );
    }

    /// A replica with its link up counts as streaming; with it down, it is degraded.
    #[test]
    fn a_replica_is_judged_by_its_link() {
        let up = classify_redis(&replica(Some("up")));
        assert_eq!(up.health, Health::Up);
        let facts = up.facts.expect("facts");
        assert_eq!(facts.receiver_status.as_deref(), Some("streaming"));
        assert_eq!((facts.in_recovery, facts.current_lsn, facts.replay_lsn), (true, None, Some(40)));
        let down = classify_redis(&replica(Some("down")));
        assert_eq!(down.health, Health::Degraded);
        assert_eq!(down.reason.as_deref(), Some("replica's link to its master is down"));
        assert_eq!(down.facts.and_then(|facts| facts.receiver_status).as_deref(), Some("link down"));
    }

    fn member() -> RedisMember {
        let group = RedisGroup {
            name: "cache".into(),
            user: None,
            password: Some(spec::SecretSource { file: Some("/nonexistent/vigil-secret".into()), env: None }),
            tls: None,
            maximum_lag_on_failover: 1_000,
            down_after: Duration::from_millis(600),
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(500),
            lease_duration: Duration::from_millis(1500),
            fence_method: RedisFenceMethod::RefuseWrites,
            min_replicas_to_write: 0,
            min_replicas_max_lag: 10,
            datacenter_preference: vec![],
            members: vec![spec::RedisMember {
                name: "r1".into(),
                host: "127.0.0.1".into(),
                port: 1,
                node: "n1".into(),
                priority: 0,
                nofailover: false,
            }],
        };
        RedisMember::new(&group, &group.members[0], 1)
    }

    /// A node that cannot read vigil's password reports a failure naming it, which the
    /// coordinator takes as Degraded, never Down.
    #[tokio::test]
    async fn an_unreadable_password_never_counts_as_down() {
        let Seen::Failed { reason } = member().probe().await else { panic!("a probe without a password failed") };
        assert!(vigil_consensus::coordinator::verdicts::is_refusal_of_vigil(&reason), "{reason}");
    }

    /// What vigil never does to redis-server is refused, and it is taken as running.
    #[tokio::test]
    async fn what_vigil_does_not_do_is_refused() {
        let member = member();
        assert!(member.guarded_server().is_none());
        assert_eq!(member.is_running().await.expect("answered").running, Some(true));
        assert_eq!(member.start_fenced().await.expect_err("refused").kind, FailureKind::Refused);
        assert_eq!(
            member.set_sync_standbys(&BTreeSet::new(), SyncGeneration::default()).await.expect_err("refused").kind,
            FailureKind::Refused
        );
        assert_eq!(member.read_sync_state().await.expect_err("refused").kind, FailureKind::Refused);
    }
}
