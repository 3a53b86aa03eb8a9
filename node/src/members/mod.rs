//! The members vigil watches, behind one trait: what this node can do to a member with its
//! own hands or over the network, whatever the kind of server.
//!
//! The coordinator (`vigil_consensus::coordinator`) decides *when*, in a vocabulary that
//! knows no kind ([`Action`]); a [`Member`] knows *how* for its kind: PostgreSQL
//! ([`postgres`]: SQL, `pg_ctl`, `pg_rewind`) and Redis ([`redis`]: `CONFIG SET`,
//! `CLIENT PAUSE`, `REPLICAOF`). A new kind of group implements this trait and adds a section
//! to the spec; the coordinator's rules do not change.
//!
//! Every method is idempotent and bounded in time; a failure is an [`ActionFailure`] whose
//! kind tells the coordinator whether to retry. A fence is reported done only once the
//! member was seen refusing writes (or is confirmed down).

pub mod postgres;
pub mod redis;
pub mod targets;

use std::future::Future;
use std::pin::Pin;

use vigil_consensus::coordinator::{Action, ActionFailure, ActionReport, FailureKind, Seen, SyncGeneration};
use vigil_consensus::spec::GroupRef;

use crate::guard::{GuardClient, GuardedServer};

/// A boxed future, so that members of every kind sit behind one `dyn Member`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an action returns.
pub type ActionResult = Result<ActionReport, ActionFailure>;

/// One member of a group, with its group's spec: everything vigil does to it.
pub trait Member: Send + Sync + 'static {
    /// The group's name.
    fn group(&self) -> &str;

    /// The member's name.
    fn name(&self) -> &str;

    /// Probes it once, within the group's probe timeout. A failure is data, not an error.
    fn probe(&self) -> BoxFuture<'_, Seen>;

    /// What the fence guard needs to stop it should this daemon die, if it can be guarded.
    fn guarded_server(&self) -> Option<GuardedServer>;

    /// Makes it refuse writes and confirms that it does, escalating to a stop where the kind
    /// can. `stale`: it is not the primary at all, so a fence that keeps it readable suffices.
    fn fence(&self, stale: bool) -> BoxFuture<'_, ActionResult>;

    /// Lifts the fence: it is the confirmed primary of `epoch`; its write settings are
    /// brought to the spec's. A fence the guard could raise again by itself is lifted
    /// through `guard`, which orders the two.
    fn lift<'a>(&'a self, epoch: u64, guard: &'a GuardClient) -> BoxFuture<'a, ActionResult>;

    /// Confirms that a member this node sees down cannot take writes, on positive evidence
    /// only (its server is not running and refuses connections on its own host). Stops
    /// nothing: a member merely slow to answer this node must not be killed on its word.
    fn make_sure_down(&self) -> BoxFuture<'_, ActionResult>;

    /// Starts a stopped primary again, refusing writes from its first moment.
    fn start_fenced(&self) -> BoxFuture<'_, ActionResult>;

    /// Whether its server process runs on this host (`running` in the report).
    fn is_running(&self) -> BoxFuture<'_, ActionResult>;

    /// Makes it a replica of the member `primary` of its group. Unless `stale_primary`, a
    /// member found running as a primary is left as it is (it was promoted since the rejoin
    /// was decided): a refusal.
    fn rejoin<'a>(&'a self, primary: &'a str, stale_primary: bool) -> BoxFuture<'a, ActionResult>;

    /// Switchover: stops its writes cleanly; reports its final position (`facts.final_lsn`).
    fn stop_for_switchover(&self) -> BoxFuture<'_, ActionResult>;

    /// Switchover: starts the old primary as a replica of `primary`, and waits until it follows.
    fn restart_as_replica<'a>(&'a self, primary: &'a str) -> BoxFuture<'a, ActionResult>;

    /// The leader fences an old primary over the network and confirms it refuses writes.
    fn remote_fence(&self) -> BoxFuture<'_, ActionResult>;

    /// Waits until it has replayed past `position`.
    fn wait_for_catch_up(&self, position: u64) -> BoxFuture<'_, ActionResult>;

    /// Promotes it into `epoch`, refusing writes from its first moment (its own node lifts the
    /// fence once it holds the lease); in strict synchronous mode commits wait for any
    /// standby from the start. Never promotes twice. Reports `facts.promoted_lsn`.
    fn promote(&self, epoch: u64, strict_sync: bool) -> BoxFuture<'_, ActionResult>;

    /// Waits until the new primary takes writes, then writes `epoch` into it.
    fn verify_writable(&self, epoch: u64) -> BoxFuture<'_, ActionResult>;

    /// Points it at `primary` and waits until it follows.
    fn repoint<'a>(&'a self, primary: &'a str) -> BoxFuture<'a, ActionResult>;

    /// Makes commits on this primary wait for every one of `standbys` (none: no waiting),
    /// unless it keeps a setting of a newer `generation`.
    fn set_sync_standbys<'a>(
        &'a self,
        standbys: &'a std::collections::BTreeSet<String>,
        generation: SyncGeneration,
    ) -> BoxFuture<'a, ActionResult>;

    /// Reads this primary's synchronous setting and its standbys' states (`sync` in the report).
    fn read_sync_state(&self) -> BoxFuture<'_, ActionResult>;

    /// Readies this replica for a promotion ahead of time; refused if it is not a replica.
    fn prepare_replica(&self) -> BoxFuture<'_, ActionResult>;
}

/// Carries out `action` on `member`.
pub async fn act(member: &dyn Member, action: &Action, guard: &GuardClient) -> ActionResult {
    match action {
        Action::Fence { stale } => member.fence(*stale).await,
        Action::Lift { epoch } => member.lift(*epoch, guard).await,
        Action::MakeSureDown => member.make_sure_down().await,
        Action::StartFenced => member.start_fenced().await,
        Action::IsRunning => member.is_running().await,
        Action::Rejoin { primary, stale_primary } => member.rejoin(primary, *stale_primary).await,
        Action::StopForSwitchover => member.stop_for_switchover().await,
        Action::RestartAsReplica { primary } => member.restart_as_replica(primary).await,
        Action::RemoteFence => member.remote_fence().await,
        Action::WaitForCatchUp { position } => member.wait_for_catch_up(*position).await,
        Action::Promote { epoch, strict_sync } => member.promote(*epoch, *strict_sync).await,
        Action::VerifyWritable { epoch } => member.verify_writable(*epoch).await,
        Action::Repoint { primary } => member.repoint(primary).await,
        Action::SetSyncStandbys { standbys, generation } => member.set_sync_standbys(standbys, *generation).await,
        Action::ReadSyncState => member.read_sync_state().await,
        Action::PrepareReplica => member.prepare_replica().await,
    }
}

/// Every member of `group`, as this node (`node_id`) reaches them.
pub fn of_group(group: GroupRef<'_>, node_id: u64) -> Vec<Box<dyn Member>> {
    match group {
        GroupRef::Postgres(group) => group
            .members
            .iter()
            .map(|member| Box::new(postgres::PgMember::new(group, member, node_id)) as Box<dyn Member>)
            .collect(),
        GroupRef::Redis(group) => group
            .members
            .iter()
            .map(|member| Box::new(redis::RedisMember::new(group, member, node_id)) as Box<dyn Member>)
            .collect(),
    }
}

/// The kind of failure an action error is.
pub fn failure(error: vigil_actions::ActionError) -> ActionFailure {
    use vigil_actions::ActionError;
    let kind = match &error {
        ActionError::Connect(_) => FailureKind::CannotConnect,
        ActionError::Sql(_) | ActionError::Redis(_) | ActionError::Unexpected(_) => FailureKind::Refused,
        ActionError::Timeout(_) => FailureKind::TimedOut,
        ActionError::Command { .. } => FailureKind::Unexpected,
    };
    ActionFailure::new(kind, error.to_string())
}

/// A failure that no retry mends until the spec or this node's configuration changes (no
/// data directory, a secret that cannot be read).
pub fn misconfigured(detail: impl std::fmt::Display) -> ActionFailure {
    ActionFailure::new(FailureKind::Unexpected, detail.to_string())
}

/// An action error met while doing `what` ("stopping it", "REPLICAOF"), of the kind
/// [`failure`] gives it, with `what` in front of its detail.
pub fn failure_in(what: &str, error: vigil_actions::ActionError) -> ActionFailure {
    let plain = failure(error);
    ActionFailure::new(plain.kind, format!("{what}: {}", plain.detail))
}
