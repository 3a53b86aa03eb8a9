//! PostgreSQL members: what vigil does to a PostgreSQL server, over SQL from any node and
//! with `pg_ctl` on its own host.
//!
//! A fence is `default_transaction_read_only = on` (reloaded, client sessions ended) or a
//! stop, and is reported done only once seen in force: a session opened afterwards finds
//! read-only on, or the server is confirmed stopped on its own host. A read-only fence that
//! fails or cannot be confirmed is retried by the coordinator (never escalated to a stop: a
//! server merely unreachable from here may be healthy); the fence guard stops the server
//! when the lease runs out. A promoted replica is born fenced (read-only is set while it still is a
//! standby); its own node lifts the fence once it holds the new primary's lease, and the
//! leader waits for that before it writes the epoch.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, warn};
use vigil_actions::{ActionError, PgCtl, ToolConnection};
use vigil_consensus::coordinator::{
    ActionFailure, ActionReport, FailureKind, Seen, StandbyState, SyncGeneration, SyncState,
};
use vigil_consensus::group::{Health, MemberFacts, StepFacts, Verdict};
use vigil_consensus::spec::{FenceMethod, PostgresGroup, PostgresMember};
use vigil_probes::{PgObservation, PgProbe, PgTarget, ProbeOutcome};

use super::targets::{pg_ctl, pg_target, primary_conninfo, replication_connection};
use super::{ActionResult, BoxFuture, Member, failure, failure_in, misconfigured};
use crate::guard::{GuardClient, GuardedServer};

/// How long stopping or starting a server as a fence, or to lift one, may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long confirming that a stopped server is down may take.
const CONFIRM_STOPPED_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `pg_promote` may take.
const PROMOTE_WAIT: Duration = Duration::from_secs(30);
/// How long stopping or starting a server in a switchover may take.
const SERVER_CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a re-pointed replica may take to stream from the new primary.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the candidate may take to replay the old primary's last WAL in a switchover.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each step of a rejoin may take.
const REJOIN_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member restarted by a rejoin may take to stream from the primary.
const REJOIN_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The most the leader's fence over the network waits for each answer.
const REMOTE_FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a wait asks again.
const POLL: Duration = Duration::from_millis(50);
/// The least bound on each statement of a promotion or a lift.
const ACTION_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many probe timeouts `verify_writable` waits at most for the new primary's node to
/// lift its fence (the caller bounds the action too).
const WRITABLE_WAIT_PROBE_TIMEOUTS: u32 = 40;

/// A PostgreSQL member with its group's spec, as this node reaches it.
#[derive(Debug)]
pub struct PgMember {
    group: PostgresGroup,
    member: PostgresMember,
    node_id: u64,
    /// The probe, built on first use and then kept, since it keeps its connection; empty
    /// while vigil's password cannot be read on this node.
    probe: Mutex<Option<Arc<PgProbe>>>,
}

impl PgMember {
    /// The member `member` of `group`, probed and acted on by the node `node_id`.
    pub fn new(group: &PostgresGroup, member: &PostgresMember, node_id: u64) -> Self {
        PgMember { group: group.clone(), member: member.clone(), node_id, probe: Mutex::new(None) }
    }

    fn target(&self) -> Result<PgTarget, ActionFailure> {
        pg_target(&self.group, &self.member).map_err(misconfigured)
    }

    /// The target for a step that changes the server (a promotion, a lift): each statement
    /// may take up to [`ACTION_STATEMENT_TIMEOUT`], not just a probe's timeout. `ALTER SYSTEM`
    /// and a reload on a loaded host can take longer than a probe may, and a promotion
    /// cancelled half-way costs the failover a retry.
    fn action_target(&self) -> Result<PgTarget, ActionFailure> {
        let mut target = self.target()?;
        target.timeout = target.timeout.max(ACTION_STATEMENT_TIMEOUT);
        Ok(target)
    }

    fn ctl(&self) -> Result<PgCtl, ActionFailure> {
        pg_ctl(&self.group, &self.member).map_err(misconfigured)
    }

    fn peer(&self, name: &str) -> Result<&PostgresMember, ActionFailure> {
        self.group.member(name).ok_or_else(|| misconfigured(format!("group {} has no member {name}", self.group.name)))
    }

    /// The kept probe, built now if it was not yet.
    fn kept_probe(&self) -> Result<Arc<PgProbe>, super::targets::TargetError> {
        let mut kept = self.probe.lock().expect("probe lock poisoned");
        if let Some(probe) = kept.as_ref() {
            return Ok(Arc::clone(probe));
        }
        let target = pg_target(&self.group, &self.member)?;
        let probe = Arc::new(PgProbe::new(target, self.group.name.clone(), self.node_id));
        *kept = Some(Arc::clone(&probe));
        Ok(probe)
    }

    async fn check(&self) -> Seen {
        let probe = match self.kept_probe() {
            Ok(probe) => probe,
            // A node that cannot read vigil's password must never count towards a failover:
            // its own misconfiguration says nothing of the member. The old prober reported
            // nothing at all; the coordinator's `is_refusal_of_vigil` takes a reason that
            // names the password for vigil being refused (Degraded, never Down), which is
            // why this reason names it whatever the secret's problem was.
            Err(reason) => return Seen::Failed { reason: format!("cannot probe without vigil's password: {reason}") },
        };
        match probe.check().await {
            ProbeOutcome::Answered(observation) => Seen::Answered(classify(&observation)),
            ProbeOutcome::Failed { reason } => Seen::Failed { reason },
        }
    }

    /// Stops the server at once and confirms it is down on its own host; the evidence in
    /// words.
    async fn stop_confirmed(&self, ctl: &PgCtl) -> Result<String, ActionFailure> {
        vigil_actions::stop_immediately(ctl, STOP_TIMEOUT).await.map_err(|e| failure_in("stopping it", e))?;
        vigil_actions::confirm_stopped(ctl, &self.member.host, self.member.port, CONFIRM_STOPPED_TIMEOUT)
            .await
            .map_err(|e| failure_in("confirming it stopped", e))
    }

    /// The read-only fence, confirmed. When it cannot be set, a server this node confirms down
    /// (on its own host) is as good as fenced. Nothing is stopped here: under load a fence or
    /// its confirmation may merely be slow, and stopping the primary would turn that into a
    /// failover; the coordinator tries again, and the fence guard, armed until a fence is
    /// confirmed, stops the server should the lease run out first.
    async fn fence_read_only_or_down(&self) -> ActionResult {
        let read_only = match self.target() {
            Ok(target) => fence_read_only_confirmed(&target).await,
            Err(failure) => Err(failure),
        };
        let read_only_failure = match read_only {
            Ok(ended) => {
                warn!(group = %self.group.name, member = %self.member.name, ended, "fenced: read-only");
                return Ok(ActionReport::done(format!("read-only, {ended} sessions ended, confirmed")));
            }
            Err(failure) => failure,
        };
        let down = match pg_ctl(&self.group, &self.member) {
            Ok(ctl) => {
                vigil_actions::confirm_stopped(&ctl, &self.member.host, self.member.port, CONFIRM_STOPPED_TIMEOUT)
                    .await
                    .ok()
            }
            Err(_) => None,
        };
        match down {
            Some(evidence) => Ok(ActionReport::done(format!(
                "not running, so it takes no writes: {evidence} (read-only fence: {})",
                read_only_failure.detail
            ))),
            None => {
                error!(group = %self.group.name, member = %self.member.name, reason = %read_only_failure,
                    "the read-only fence failed; trying again");
                Err(read_only_failure)
            }
        }
    }

    async fn promote_fenced(&self, epoch: u64, strict_sync: bool) -> ActionResult {
        let target = self.action_target()?;
        let name = &self.member.name;
        // Born fenced: ALTER SYSTEM works on a hot standby (postgresql.auto.conf is not
        // WAL-logged), so read-only is in force from the promotion's first moment, until its
        // own node lifts it once it holds the new primary's lease. Ending the standby's client
        // sessions costs its readers a reconnect. In strict mode `synchronous_standby_names`
        // is set before the promotion too, so the new primary never acknowledges a commit
        // that no standby holds: until the leader confirms a standby, any may answer.
        let any_sync_standby = strict_sync.then(|| kept_generation(SyncGeneration::promotion(epoch)));
        let born = vigil_actions::promote_born_fenced(&target, PROMOTE_WAIT, any_sync_standby)
            .await
            .map_err(|e| failure_in("promoting read-only", e))?;
        let detail = match born.sessions_ended {
            None => format!("{name} already was a primary; not promoted again"),
            Some(ended) => format!(
                "{name} promoted into epoch {epoch}, read-only in force before the promotion ({ended} sessions ended)"
            ),
        };
        Ok(promoted_report(detail, born.promoted.lsn))
    }

    async fn wait_until_writable(&self, epoch: u64) -> ActionResult {
        let target = self.target()?;
        let name = &self.member.name;
        // Its own node lifts the fence once it holds the lease: wait for that rather than
        // lift it from here, since this node does not hold that lease.
        let wait = target.timeout * WRITABLE_WAIT_PROBE_TIMEOUTS;
        vigil_actions::wait_until_read_write(&target, wait).await.map_err(|error| match error {
            ActionError::Timeout(detail) => ActionFailure::new(
                FailureKind::TimedOut,
                format!("{name} took no writes (its node has not lifted the fence): {detail}"),
            ),
            error => failure_in("reading default_transaction_read_only", error),
        })?;
        vigil_actions::write_epoch(&target, &self.group.name, epoch)
            .await
            .map_err(|e| failure_in("writing the epoch", e))?;
        Ok(ActionReport::done(format!("epoch {epoch} written on {name}")))
    }

    /// Stops, rewinds and restarts this member as a replica of `primary`.
    async fn rewind_and_follow(&self, primary: &str) -> ActionResult {
        let (group, member) = (&self.group, &self.member);
        let primary = self.peer(primary)?;
        let ctl = self.ctl()?;
        let source = pg_target(group, primary).map_err(misconfigured)?;
        // pg_rewind reads the primary as vigil's own role, which must be a superuser. Its
        // session is named so that a fence on the primary (which ends client sessions) spares
        // it: a rewind cut off half-way leaves a data directory that cannot be rewound again.
        let rewind_source = ToolConnection::new(
            &source.host,
            source.port,
            &source.user,
            &source.password,
            "vigil-rewind",
            Some(&source.database),
        )
        .with_words(&super::targets::pg_tls_words(group));
        let conninfo = primary_conninfo(group, primary, &member.name).map_err(misconfigured)?;
        // A clean stop spares pg_rewind a crash recovery; a server that will not stop cleanly
        // is stopped at once.
        if vigil_actions::stop_server(&ctl, REJOIN_STEP_TIMEOUT).await.is_err() {
            vigil_actions::stop_immediately(&ctl, REJOIN_STEP_TIMEOUT)
                .await
                .map_err(|e| failure_in("stopping it", e))?;
        }
        vigil_actions::checkpoint(&source, REJOIN_STEP_TIMEOUT)
            .await
            .map_err(|e| failure_in(&format!("checkpoint on {} before rewinding", primary.name), e))?;
        let rewound = match vigil_actions::rewind(&ctl, &rewind_source, REJOIN_STEP_TIMEOUT).await {
            Ok(outcome) => format!("pg_rewind: {outcome}"),
            Err(error) if group.allow_reclone => {
                warn!(group = %group.name, member = %member.name, %error, "pg_rewind failed: re-cloning with pg_basebackup");
                let clone_source = replication_connection(group, primary, &member.name).map_err(misconfigured)?;
                let aside = vigil_actions::reclone(&ctl, &clone_source, REJOIN_STEP_TIMEOUT)
                    .await
                    .map_err(|e| failure_in(&format!("pg_rewind failed ({error}), and so did pg_basebackup"), e))?;
                format!(
                    "pg_rewind failed ({error}); re-cloned with pg_basebackup, old data kept in {}",
                    aside.display()
                )
            }
            Err(error) => return Err(failure_in("pg_rewind failed, data left as it was (stopped)", error)),
        };
        vigil_actions::start_as_replica(&ctl, &conninfo, REJOIN_STEP_TIMEOUT)
            .await
            .map_err(|e| failure_in("starting it", e))?;
        let replica = self.target()?;
        let timeline = vigil_actions::wait_for_upstream(&replica, &source, REJOIN_STREAM_TIMEOUT)
            .await
            .map_err(|e| failure_in("after restarting", e))?;
        Ok(ActionReport::done(format!("{rewound}; streaming timeline {timeline} from {}", primary.name)))
    }
}

impl Member for PgMember {
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
        pg_ctl(&self.group, &self.member).ok().map(|ctl| GuardedServer::Postgres {
            bin_dir: ctl.bin_dir,
            data_dir: ctl.data_dir,
            run_as: ctl.run_as,
        })
    }

    fn fence(&self, stale: bool) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            // A stale primary is not the primary at all: read-only is enough for it.
            if stale || self.group.fence_method == FenceMethod::ReadOnly {
                return self.fence_read_only_or_down().await;
            }
            let ctl = self.ctl()?;
            let evidence = self.stop_confirmed(&ctl).await?;
            warn!(group = %self.group.name, member = %self.member.name, %evidence, "fenced: stopped");
            Ok(ActionReport::done(format!("stopped: {evidence}")))
        })
    }

    fn lift<'a>(&'a self, epoch: u64, _guard: &'a GuardClient) -> BoxFuture<'a, ActionResult> {
        // The guard's fence on PostgreSQL is a stop, which no lift undoes: lifted here.
        Box::pin(async move {
            // Whatever the fence method, a promoted primary was born read-only. Tried first:
            // a running server (the usual case, a failover's clients waiting) needs no
            // `pg_ctl status`.
            let target = self.action_target()?;
            let mut started = false;
            if let Err(error) = vigil_actions::unfence(&target).await {
                // Only a node with the data directory can have stopped the server (as a fence,
                // or its guard); without one there is nothing to start.
                let stoppable = self.group.fence_method == FenceMethod::Stop;
                let (true, Ok(ctl), ActionError::Connect(_)) = (stoppable, pg_ctl(&self.group, &self.member), &error)
                else {
                    return Err(failure_in("resetting read-only", error));
                };
                let running = vigil_actions::is_running(&ctl).await.map_err(|e| failure_in("checking it runs", e))?;
                if running {
                    return Err(failure_in("resetting read-only", error));
                }
                vigil_actions::start_server(&ctl, STOP_TIMEOUT).await.map_err(|e| failure_in("starting it", e))?;
                started = true;
                vigil_actions::unfence(&target).await.map_err(|e| failure_in("resetting read-only", e))?;
            }
            let detail = if started { "started; fence lifted" } else { "fence lifted" };
            Ok(ActionReport::done(format!("{detail} (epoch {epoch}): default_transaction_read_only reset")))
        })
    }

    fn make_sure_down(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let ctl = self.ctl()?;
            // Nothing is stopped: a server this node merely cannot reach in time (its own
            // host loaded) must not be killed on this node's word alone.
            let evidence =
                vigil_actions::confirm_stopped(&ctl, &self.member.host, self.member.port, CONFIRM_STOPPED_TIMEOUT)
                    .await
                    .map_err(|e| failure_in("confirming it is down", e))?;
            // Once its lease is released another member may be promoted: should anyone start
            // this one again meanwhile, it must come back refusing writes.
            vigil_actions::persist_fence(&ctl).await.map_err(|e| failure_in("writing the fence into its files", e))?;
            Ok(ActionReport::done(format!("not running, and fenced in its files: {evidence}")))
        })
    }

    fn start_fenced(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let ctl = self.ctl()?;
            vigil_actions::start_fenced(&ctl, STOP_TIMEOUT).await.map_err(failure)?;
            Ok(ActionReport::done("started read-only"))
        })
    }

    fn is_running(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let ctl = self.ctl()?;
            let running = vigil_actions::is_running(&ctl).await.map_err(failure)?;
            let words = if running { "the server runs" } else { "the server is not running" };
            Ok(ActionReport { running: Some(running), ..ActionReport::done(words) })
        })
    }

    fn rejoin<'a>(&'a self, primary: &'a str, stale_primary: bool) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            // A replica promoted since the rejoin was decided must not be stopped and rewound
            // onto the old primary. A server that does not answer is not one that runs as a
            // primary now (it is stopped, or the stop below finds out).
            if !stale_primary && let Ok(false) = vigil_actions::in_recovery(&self.target()?).await {
                return Err(ActionFailure::new(
                    FailureKind::Refused,
                    format!("{} runs as a primary now (promoted since?): not demoted", self.member.name),
                ));
            }
            self.rewind_and_follow(primary).await
        })
    }

    fn stop_for_switchover(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let ctl = self.ctl()?;
            let final_lsn = vigil_actions::stop_server(&ctl, SERVER_CONTROL_TIMEOUT).await.map_err(failure)?;
            Ok(ActionReport {
                facts: StepFacts { final_lsn: Some(final_lsn), ..StepFacts::default() },
                ..ActionReport::done(format!(
                    "{} stopped cleanly at {}",
                    self.member.name,
                    crate::render::lsn(final_lsn)
                ))
            })
        })
    }

    fn restart_as_replica<'a>(&'a self, primary: &'a str) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            let primary = self.peer(primary)?;
            let ctl = self.ctl()?;
            let conninfo = primary_conninfo(&self.group, primary, &self.member.name).map_err(misconfigured)?;
            vigil_actions::start_as_replica(&ctl, &conninfo, SERVER_CONTROL_TIMEOUT).await.map_err(failure)?;
            let replica = self.target()?;
            let source = pg_target(&self.group, primary).map_err(misconfigured)?;
            let timeline =
                vigil_actions::wait_for_upstream(&replica, &source, STREAM_TIMEOUT).await.map_err(failure)?;
            Ok(ActionReport::done(format!(
                "{} restarted as a replica streaming timeline {timeline} from {}",
                self.member.name, primary.name
            )))
        })
    }

    fn remote_fence(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let mut target = self.target()?;
            target.timeout = REMOTE_FENCE_TIMEOUT.min(target.timeout);
            // No escalation: the leader cannot stop a server on another host.
            let ended = fence_read_only_confirmed(&target).await?;
            Ok(ActionReport::done(format!("read-only, {ended} client sessions ended, confirmed")))
        })
    }

    fn wait_for_catch_up(&self, position: u64) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let target = self.target()?;
            let replayed =
                vigil_actions::wait_for_replay(&target, position, CATCH_UP_TIMEOUT).await.map_err(failure)?;
            Ok(ActionReport::done(format!(
                "{} replayed {} past the old primary's final {}",
                self.member.name,
                crate::render::lsn(replayed),
                crate::render::lsn(position)
            )))
        })
    }

    fn promote(&self, epoch: u64, strict_sync: bool) -> BoxFuture<'_, ActionResult> {
        Box::pin(self.promote_fenced(epoch, strict_sync))
    }

    fn verify_writable(&self, epoch: u64) -> BoxFuture<'_, ActionResult> {
        Box::pin(self.wait_until_writable(epoch))
    }

    fn repoint<'a>(&'a self, primary: &'a str) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            let primary = self.peer(primary)?;
            let target = self.target()?;
            let conninfo = primary_conninfo(&self.group, primary, &self.member.name).map_err(misconfigured)?;
            vigil_actions::repoint(&target, &conninfo).await.map_err(failure)?;
            let source = pg_target(&self.group, primary).map_err(misconfigured)?;
            let timeline = vigil_actions::wait_for_upstream(&target, &source, STREAM_TIMEOUT).await.map_err(failure)?;
            Ok(ActionReport::done(format!("{} streams timeline {timeline} from {}", self.member.name, primary.name)))
        })
    }

    fn set_sync_standbys<'a>(
        &'a self,
        standbys: &'a BTreeSet<String>,
        generation: SyncGeneration,
    ) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            let target = self.target()?;
            let setting = vigil_actions::require_all(standbys);
            vigil_actions::set_synchronous_standby_names(&target, &setting, kept_generation(generation))
                .await
                .map_err(failure)?;
            if setting.is_empty() {
                Ok(ActionReport::done("commits wait for no standby"))
            } else {
                Ok(ActionReport::done(format!("synchronous_standby_names = '{setting}'")))
            }
        })
    }

    fn read_sync_state(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let target = self.target()?;
            let read = vigil_actions::synchronous_state(&target).await.map_err(failure)?;
            let standbys = read
                .standbys
                .into_iter()
                .map(|(name, (state, flushed))| (name, StandbyState { state, flushed }))
                .collect();
            Ok(ActionReport {
                sync: Some(SyncState {
                    in_force: sync_names_in_force(&read.setting),
                    position: read.position,
                    standbys,
                }),
                ..ActionReport::done(format!("synchronous_standby_names is '{}'", read.setting))
            })
        })
    }

    fn prepare_replica(&self) -> BoxFuture<'_, ActionResult> {
        Box::pin(async move {
            let target = self.target()?;
            let changed = vigil_actions::prepare_for_promotion(&target).await.map_err(failure)?;
            let name = &self.member.name;
            Ok(ActionReport::done(if changed {
                format!("{name} set read-only by default, ready for a promotion")
            } else {
                format!("{name} already read-only by default")
            }))
        })
    }
}

/// The verdict on a member that answered.
pub fn classify(observation: &PgObservation) -> Verdict {
    let facts = facts_of(observation);
    let (health, reason) = if !observation.in_recovery {
        match &observation.heartbeat {
            Some(Err(error)) => (Health::Degraded, Some(format!("primary refuses writes: {error}"))),
            _ => (Health::Up, None),
        }
    } else if observation.receiver_status.as_deref() == Some("streaming") {
        (Health::Up, None)
    } else {
        let receiver = observation.receiver_status.as_deref().unwrap_or("not running");
        (Health::Degraded, Some(format!("replica not streaming (WAL receiver {receiver})")))
    };
    Verdict { health, facts: Some(facts), reason }
}

/// The facts of an answered probe, in the replicated form.
pub fn facts_of(observation: &PgObservation) -> MemberFacts {
    MemberFacts {
        in_recovery: observation.in_recovery,
        timeline: observation.timeline,
        current_lsn: observation.current_lsn,
        receive_lsn: observation.receive_lsn,
        replay_lsn: observation.replay_lsn,
        replay_delay_ms: observation.replay_delay_ms,
        receiver_status: observation.receiver_status.clone(),
        upstream: observation.upstream.clone(),
        epoch: observation.epoch,
    }
}

/// A generation as the server keeps it beside its synchronous setting.
fn kept_generation(generation: SyncGeneration) -> vigil_actions::Generation {
    [generation.epoch, generation.term, generation.seq]
}

/// The standbys a `synchronous_standby_names` value makes commits wait for, every one of
/// them: the `FIRST n ("a", "b")` form [`vigil_actions::require_all`] writes, n being the
/// number of names. An empty value waits for none. Any other value (`*`, `ANY 1 (...)`, a
/// list of which some suffice) is kept whole as one element, so that it never equals a set
/// of names and the leader writes its own.
pub fn sync_names_in_force(setting: &str) -> BTreeSet<String> {
    let setting = setting.trim();
    if setting.is_empty() {
        return BTreeSet::new();
    }
    parse_require_all(setting).unwrap_or_else(|| BTreeSet::from([setting.to_string()]))
}

/// The names of a `FIRST n ("a", "b")` value that requires all of them, double quotes
/// doubled inside a name; `None` for anything else.
fn parse_require_all(setting: &str) -> Option<BTreeSet<String>> {
    if !setting.get(..5)?.eq_ignore_ascii_case("FIRST") {
        return None;
    }
    let rest = &setting[5..];
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let count: usize = rest[..digits].parse().ok()?;
    let list = rest[digits..].trim_start().strip_prefix('(')?.trim_end().strip_suffix(')')?;
    let mut names = BTreeSet::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next()? != '"' {
            return None;
        }
        let mut name = String::new();
        loop {
            match chars.next()? {
                '"' if chars.next_if_eq(&'"').is_some() => name.push('"'),
                '"' => break,
                other => name.push(other),
            }
        }
        names.insert(name);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return None,
        }
    }
    // `FIRST 1 ("a", "b")` waits for one of two: not "all of them".
    (count == names.len()).then_some(names)
}

/// A promotion's report, with the position it kept.
fn promoted_report(detail: String, promoted_lsn: Option<u64>) -> ActionReport {
    ActionReport { facts: StepFacts { promoted_lsn, ..StepFacts::default() }, ..ActionReport::done(detail) }
}

/// Fences `target` read-only and confirms it; how many client sessions were ended.
async fn fence_read_only_confirmed(target: &PgTarget) -> Result<u64, ActionFailure> {
    let ended = vigil_actions::fence_read_only(target).await.map_err(|e| failure_in("setting read-only", e))?;
    confirm_read_only(target).await?;
    Ok(ended)
}

/// Waits (up to the target's timeout) until a new session on `target` finds
/// `default_transaction_read_only` on: the postmaster applies a reload a moment after
/// `pg_reload_conf()` returns.
async fn confirm_read_only(target: &PgTarget) -> Result<(), ActionFailure> {
    let deadline = Instant::now() + target.timeout;
    loop {
        let in_force =
            vigil_actions::read_only_in_force(target).await.map_err(|e| failure_in("confirming read-only", e))?;
        if in_force {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ActionFailure::new(
                FailureKind::Refused,
                format!("{} still lets new sessions write: default_transaction_read_only is off", target.address()),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    /// What `require_all` writes reads back as the same set, odd names included.
    #[test]
    fn require_all_reads_back_as_its_set() {
        for set in [names(&["pg2"]), names(&["pg2", "pg3"]), names(&["we\"ird, (name)", "x y", "é"])] {
            assert_eq!(sync_names_in_force(&vigil_actions::require_all(&set)), set, "{set:?}");
        }
    }

    /// An empty setting waits for nobody.
    #[test]
    fn empty_setting_is_no_standby() {
        assert!(sync_names_in_force("").is_empty());
        assert!(sync_names_in_force("  ").is_empty());
    }

    /// Spacing and the keyword's case do not matter.
    #[test]
    fn loose_spacing_is_read() {
        assert_eq!(sync_names_in_force(r#"first 2 ( "a" ,"b" )"#), names(&["a", "b"]));
        assert_eq!(sync_names_in_force(r#"FIRST 1("a")"#), names(&["a"]));
    }

    /// A setting that does not require all of a list of names stays whole, so it never
    /// equals a set of names.
    #[test]
    fn anything_else_is_kept_whole() {
        for setting in [
            "*",
            r#"ANY 1 ("a", "b")"#,
            r#"FIRST 1 ("a", "b")"#,
            r#"FIRST 2 ("a", "a")"#,
            "FIRST 1 (a)",
            r#""a""#,
            r#"FIRST1 ("a")"#,
            r#"FIRST 1 ("a"#,
            r#"FIRST 1 ("a" "b")"#,
            "FIRST x (\"a\")",
        ] {
            assert_eq!(sync_names_in_force(setting), names(&[setting]), "{setting}");
        }
    }

    fn observation() -> PgObservation {
        PgObservation { in_recovery: false, timeline: Some(2), current_lsn: Some(100), ..PgObservation::default() }
    }

    /// A primary that takes its heartbeat is up; one that refuses it is degraded, saying why.
    #[test]
    fn a_primary_is_judged_by_its_heartbeat() {
        let up = classify(&PgObservation { heartbeat: Some(Ok(())), ..observation() });
        assert_eq!((up.health, up.reason), (Health::Up, None));
        let refused = PgObservation { heartbeat: Some(Err("read-only transaction".into())), ..observation() };
        let verdict = classify(&refused);
        assert_eq!(verdict.health, Health::Degraded);
        assert_eq!(verdict.reason.as_deref(), Some("primary refuses writes: read-only transaction"));
        assert_eq!(verdict.facts.map(|facts| facts.current_lsn), Some(Some(100)));
    }

    /// A replica is up while it streams, degraded otherwise.
    #[test]
    fn a_replica_is_judged_by_its_receiver() {
        let replica = |status: Option<&str>| PgObservation {
            in_recovery: true,
            receiver_status: status.map(str::to_string),
            ..PgObservation::default()
        };
        assert_eq!(classify(&replica(Some("streaming"))).health, Health::Up);
        let stopped = classify(&replica(None));
        assert_eq!(stopped.health, Health::Degraded);
        assert_eq!(stopped.reason.as_deref(), Some("replica not streaming (WAL receiver not running)"));
    }

    fn group(data_dir: Option<&str>) -> PostgresGroup {
        let unreadable =
            vigil_consensus::spec::SecretSource { file: Some("/nonexistent/vigil-secret".into()), env: None };
        PostgresGroup {
            name: "main".into(),
            database: "postgres".into(),
            user: "vigil".into(),
            password: unreadable.clone(),
            replication_user: "replicator".into(),
            replication_password: unreadable,
            maximum_lag_on_failover: 1_000,
            down_after: Duration::from_millis(600),
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(500),
            lease_duration: Duration::from_millis(1500),
            fence_method: FenceMethod::Stop,
            synchronous: vigil_consensus::spec::SyncMode::Off,
            bin_dir: "/usr/lib/postgresql/16/bin".into(),
            run_as: Some("postgres".into()),
            allow_reclone: false,
            tls: None,
            datacenter_preference: vec![],
            members: vec![PostgresMember {
                name: "pg1".into(),
                host: "127.0.0.1".into(),
                port: 1,
                node: "n1".into(),
                data_dir: data_dir.map(str::to_string),
                start_command: None,
                stop_command: None,
                priority: 0,
                nofailover: false,
            }],
        }
    }

    fn member(data_dir: Option<&str>) -> PgMember {
        let group = group(data_dir);
        PgMember::new(&group, &group.members[0], 1)
    }

    /// A node that cannot read vigil's password reports a failure naming the password, which
    /// the coordinator takes as Degraded, never Down.
    #[tokio::test]
    async fn an_unreadable_password_never_counts_as_down() {
        let Seen::Failed { reason } = member(None).probe().await else { panic!("a probe without a password failed") };
        assert!(vigil_consensus::coordinator::verdicts::is_refusal_of_vigil(&reason), "{reason}");
    }

    /// Only a member with a data directory can be guarded, stopped or started by its node.
    #[tokio::test]
    async fn without_a_data_dir_nothing_is_done_on_the_host() {
        let Some(GuardedServer::Postgres { data_dir, run_as, .. }) = member(Some("/srv/pg1")).guarded_server() else {
            panic!("a data directory is guarded, by stopping the server")
        };
        assert_eq!(data_dir, std::path::PathBuf::from("/srv/pg1"));
        assert_eq!(run_as.as_deref(), Some("postgres"));
        let member = member(None);
        assert!(member.guarded_server().is_none());
        for failure in [member.make_sure_down().await, member.fence(false).await, member.start_fenced().await]
            .map(|result| result.expect_err("nothing to stop or start"))
        {
            assert_eq!(failure.kind, FailureKind::Unexpected);
            assert!(failure.detail.contains("no data_dir"), "{}", failure.detail);
        }
    }
}
