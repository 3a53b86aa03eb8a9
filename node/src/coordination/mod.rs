//! The node's one coordination loop: it feeds this node's [`Coordinator`] every event
//! (committed state applied, probe results, effect outcomes, ticks of the monotonic clock) and
//! carries out the effects it returns, each as a task under the daemon's one tracker, each
//! answered with exactly one outcome.
//!
//! ```text
//! probes (one task per member) ──Probed──┐
//! Raft applied an entry ──────Applied────┤
//! 25 ms ticker ───────────────Tick───────┼──► Coordinator::handle ──► effects
//! effect tasks ───────────────Done───────┘        │
//!        ▲                                         │ Propose → Cluster::propose
//!        └─────────────────────────────────────────┤ Act     → members::act (after a read
//!                                                  │           index when the leader acts)
//!                                                  └ Guard   → the fence guard
//! ```
//!
//! The loop is the only place where the coordinator meets time, Raft, the servers and the
//! guard. On shutdown it stops taking events and the daemon waits, bounded, for the effects
//! still running.

pub mod failpoints;
pub mod probing;
pub mod publish;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use vigil_consensus::Cluster;
use vigil_consensus::allow::{self, AllowList};
use vigil_consensus::cluster::unix_millis_now;
use vigil_consensus::coordinator::{
    self, Action, ActionFailure, Coordinator, Ctx, Effect, Event, FailureKind, Followers, GuardOrder, Mono, Now,
    Outcome,
};
use vigil_consensus::spec::ClusterSpec;

use crate::guard::{GuardClient, GuardMessage};
use crate::members::{self, Member};
use failpoints::Failpoints;

/// How many events may wait for the loop before senders wait too.
const EVENT_QUEUE: usize = 4096;

/// The members of the spec in force, as this node reaches them.
type Members = BTreeMap<(String, String), Arc<dyn Member>>;

/// Starts the coordination loop and the probes of this node.
pub fn spawn(cluster: &Cluster, guard: GuardClient, allowed: Allowed, tasks: &TaskTracker, cancel: &CancellationToken) {
    let failpoints = Failpoints::from_env();
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let origin = Instant::now();
    let node_loop = Loop {
        cluster: cluster.clone(),
        guard,
        tasks: tasks.clone(),
        cancel: cancel.child_token(),
        events_tx,
        failpoints,
        origin,
        members: Arc::new(Members::new()),
        allowed: allowed.clone(),
        refused: BTreeMap::new(),
        spec: None,
        probes: probing::Probes::new(origin),
        leading_since: None,
    };
    tasks.spawn(publish::publish_allow_list(cluster.clone(), allowed.allow.clone(), cancel.child_token()));
    tasks.spawn(node_loop.run(events_rx));
}

/// What this node allows the spec to make it do, and its name as the spec names it.
#[derive(Clone, Debug)]
pub struct Allowed {
    /// The node's name.
    pub node: String,
    /// Its allow-list, from its configuration.
    pub allow: AllowList,
}

struct Loop {
    cluster: Cluster,
    guard: GuardClient,
    tasks: TaskTracker,
    cancel: CancellationToken,
    events_tx: mpsc::Sender<Event>,
    failpoints: Failpoints,
    /// The origin of this node's monotonic readings.
    origin: Instant,
    members: Arc<Members>,
    /// What this node allows.
    allowed: Allowed,
    /// The groups of the current spec this node refuses, each with the field it refuses.
    refused: BTreeMap<String, vigil_consensus::spec::SpecError>,
    /// The spec the members and probes were built from.
    spec: Option<ClusterSpec>,
    probes: probing::Probes,
    /// Since when this node leads, while it does.
    leading_since: Option<Instant>,
}

impl Loop {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut coordinator = Coordinator::new(self.cluster.node_id, coordinator::Config::default());
        let mut ticker = tokio::time::interval(coordinator::TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every applied entry changes openraft's metrics: waking on them lets the next step of
        // a failover follow the commit of the last one at once.
        let mut applied = self.cluster.changes();
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = ticker.tick() => Event::Tick,
                changed = openraft::async_runtime::WatchReceiver::changed(&mut applied) => {
                    if changed.is_err() {
                        break;
                    }
                    Event::Applied
                }
                Some(event) = events.recv() => event,
            };
            self.refresh_members();
            let followers = self.followers();
            let effects = {
                let state = self.cluster.state();
                let (leader, term) = self.cluster.leader_and_term();
                let ctx = Ctx { now: self.now(), state: &state, leader, term, followers: followers.as_ref() };
                coordinator.handle(&ctx, event)
            };
            for effect in effects {
                self.carry_out(effect);
            }
        }
        self.probes.stop();
        tracing::info!(in_flight = coordinator.in_flight(), "coordination stopped");
    }

    /// What this node, when it leads, knows of the others (and since when it leads).
    fn followers(&mut self) -> Option<Followers> {
        let Some(last_ack) = self.cluster.follower_acks() else {
            self.leading_since = None;
            return None;
        };
        let since = *self.leading_since.get_or_insert_with(Instant::now);
        Some(Followers { leading_for: since.elapsed(), last_ack })
    }

    fn now(&self) -> Now {
        Now { mono: Mono::from_origin(self.origin.elapsed()), wall_ms: unix_millis_now() }
    }

    /// Rebuilds the members and their probes when the spec changed.
    fn refresh_members(&mut self) {
        let spec = self.cluster.state().spec.clone();
        if self.spec.as_ref() == Some(&spec) {
            return;
        }
        // A group whose spec asks this node for what it does not allow is not watched here
        // at all: the leader refuses such a spec, so one can only come from before this node
        // narrowed its allow-list, or from a leader that did not check.
        let refused = allow::refused_groups(&spec, &self.allowed.node, &self.allowed.allow);
        for (group, why) in &refused {
            if self.refused.get(group) != Some(why) {
                tracing::error!(%group, %why, "this node refuses the group's spec: it asks for what [allow] does not allow");
            }
            metrics::gauge!("vigil_group_refused", "group" => group.clone()).set(1.0);
        }
        for group in self.refused.keys().filter(|group| !refused.contains_key(*group)) {
            metrics::gauge!("vigil_group_refused", "group" => group.clone()).set(0.0);
        }
        let mut built = Members::new();
        for group in spec.groups().filter(|group| !refused.contains_key(group.name())) {
            for member in members::of_group(group, self.cluster.node_id) {
                let member: Arc<dyn Member> = Arc::from(member);
                built.insert((member.group().to_string(), member.name().to_string()), member);
            }
        }
        self.refused = refused;
        self.members = Arc::new(built);
        self.probes.restart(&spec, &self.members, &self.tasks, &self.cancel, &self.events_tx, &self.failpoints);
        self.spec = Some(spec);
    }

    fn carry_out(&self, effect: Effect) {
        match effect {
            Effect::Propose { id, command, timeout } => {
                let (cluster, events) = (self.cluster.clone(), self.events_tx.clone());
                self.tasks.spawn(async move {
                    let outcome =
                        Outcome::Proposed(cluster.propose(command, timeout).await.map(|applied| applied.response));
                    let _ = events.send(Event::Done { id, outcome }).await;
                });
            }
            Effect::Act { id, group, member, action, timeout, requires_leadership } => {
                let found = self.members.get(&(group.clone(), member.clone())).cloned();
                let (cluster, events, guard) = (self.cluster.clone(), self.events_tx.clone(), self.guard.clone());
                let stall = self.failpoints.stalls(&self.cluster, &group, &action);
                self.tasks.spawn(async move {
                    let result = match found {
                        None => Err(ActionFailure::new(
                            FailureKind::Unexpected,
                            format!("group {group} has no member {member} in the spec this node holds"),
                        )),
                        Some(member) => {
                            act(&cluster, &guard, member.as_ref(), &action, timeout, requires_leadership, stall).await
                        }
                    };
                    let _ = events.send(Event::Done { id, outcome: Outcome::Acted(result) }).await;
                });
            }
            Effect::CatchUp { id, timeout } => {
                let (cluster, events) = (self.cluster.clone(), self.events_tx.clone());
                self.tasks.spawn(async move {
                    let outcome = Outcome::CaughtUp(cluster.catch_up(timeout).await);
                    let _ = events.send(Event::Done { id, outcome }).await;
                });
            }
            Effect::Guard { id, order } => {
                let sent = match order {
                    GuardOrder::Arm { group, member, valid_for } => {
                        match self.members.get(&(group.clone(), member.clone())).and_then(|m| m.guarded_server()) {
                            Some(server) => self.guard.send(GuardMessage::Arm {
                                group,
                                valid_for_ms: valid_for.as_millis() as u64,
                                server,
                            }),
                            None => Err(format!("{group}/{member} cannot be guarded")),
                        }
                    }
                    GuardOrder::Disarm { group } => self.guard.send(GuardMessage::Disarm { group }),
                };
                // Answered through the queue like every outcome, never inline: the coordinator
                // is not re-entered while it runs.
                let events = self.events_tx.clone();
                self.tasks.spawn(async move {
                    let _ = events.send(Event::Done { id, outcome: Outcome::Guarded(sent) }).await;
                });
            }
        }
    }
}

/// Runs one action on a member, within `timeout`, after confirming leadership when the
/// leader acts.
async fn act(
    cluster: &Cluster,
    guard: &GuardClient,
    member: &dyn Member,
    action: &Action,
    timeout: Duration,
    requires_leadership: bool,
    stall: bool,
) -> Result<coordinator::ActionReport, ActionFailure> {
    if stall {
        warn!(%action, "failpoint: stalling before the step");
        std::future::pending::<()>().await;
    }
    if requires_leadership && let Err(reason) = cluster.confirm_leadership().await {
        return Err(ActionFailure::new(FailureKind::NotLeader, format!("leadership not confirmed: {reason}")));
    }
    match tokio::time::timeout(timeout, members::act(member, action, guard)).await {
        Ok(result) => result,
        Err(_) => Err(ActionFailure::new(
            FailureKind::TimedOut,
            format!("{action} on {} did not finish within {} s", member.name(), timeout.as_secs()),
        )),
    }
}
