//! This node's probes: one task per member of the spec in force, each with its own
//! connection and interval, so a hung member never delays the probing of another; each
//! result goes to the coordination loop as an event. What a result means (verdicts, when to
//! report them) is the coordinator's business.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigil_consensus::coordinator::{Event, Mono, Seen};
use vigil_consensus::spec::ClusterSpec;

use super::Members;
use super::failpoints::Failpoints;

/// The probe tasks running, each with the token that stops it.
pub struct Probes {
    running: BTreeMap<(String, String), CancellationToken>,
    /// The origin of this node's monotonic readings, to stamp each probe's start with.
    origin: Instant,
}

impl Probes {
    /// No probe running yet; starts are read against `origin`.
    pub fn new(origin: Instant) -> Self {
        Probes { running: BTreeMap::new(), origin }
    }

    /// Stops every probe and starts one per member of `spec`.
    pub fn restart(
        &mut self,
        spec: &ClusterSpec,
        members: &Members,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
        events: &mpsc::Sender<Event>,
        failpoints: &Failpoints,
    ) {
        self.stop();
        for group in spec.groups() {
            let interval = group.policy().probe_interval;
            for ((group_name, member_name), member) in members.iter().filter(|((g, _), _)| g == group.name()) {
                let token = cancel.child_token();
                let cut = failpoints.probe_cut(member_name);
                tasks.spawn(probe(member.clone(), interval, cut, events.clone(), token.clone(), self.origin));
                self.running.insert((group_name.clone(), member_name.clone()), token);
            }
        }
    }

    /// Stops every probe.
    pub fn stop(&mut self) {
        for token in std::mem::take(&mut self.running).into_values() {
            token.cancel();
        }
    }
}

async fn probe(
    member: std::sync::Arc<dyn crate::members::Member>,
    interval: Duration,
    cut: bool,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    origin: Instant,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(group = member.group(), member = member.name(), "probing");
    loop {
        let due = tokio::select! {
            _ = cancel.cancelled() => return,
            due = ticker.tick() => due,
        };
        let started = Mono::from_origin(due.saturating_duration_since(origin));
        let seen = if cut {
            Seen::Failed { reason: "failpoint: this node's network to the member is cut".to_string() }
        } else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                seen = member.probe() => seen,
            }
        };
        let event =
            Event::Probed { group: member.group().to_string(), member: member.name().to_string(), seen, started };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
