//! Faults as plain data, and the schedules drawn from a seed. What injecting and healing
//! each one does to the world is in `inject.rs`.
//!
//! A drawn schedule has 2–4 episodes, each injected at a random moment of the 8 s after the
//! warm-up and held 0.5–8 s. Named scenarios write theirs by hand, and may inject an episode when an
//! entry commits ("cut the candidate's host right after its promotion commits"). Targets
//! such as "the leader" or "the primary" are resolved when the episode is injected, and the
//! heal undoes exactly what the injection did.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vigil_consensus::coordinator::Action;
use vigil_consensus::group::Step;

use crate::clock::Micros;
use crate::config::Config;

/// Whom a fault hits, resolved when it is injected. Node `i`, host `i` and member `i` of
/// every group are the same index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This index.
    Index(usize),
    /// The leader of the current term.
    Leader,
    /// The primary of a group (by index), as committed.
    Primary(usize),
    /// The candidate of a group's running failover.
    Candidate(usize),
    /// A confirmed synchronous standby of a group (else its first replica), as committed:
    /// a member a switchover may promote.
    Standby(usize),
}

/// Which actions a one-off tweak applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// [`Action::Lift`].
    Lift,
    /// [`Action::Fence`].
    Fence,
    /// [`Action::Promote`].
    Promote,
    /// [`Action::StopForSwitchover`].
    StopForSwitchover,
    /// [`Action::SetSyncStandbys`].
    SetSyncStandbys,
}

impl ActionKind {
    pub(crate) fn matches(self, action: &Action) -> bool {
        matches!(
            (self, action),
            (ActionKind::Lift, Action::Lift { .. })
                | (ActionKind::Fence, Action::Fence { .. })
                | (ActionKind::Promote, Action::Promote { .. })
                | (ActionKind::StopForSwitchover, Action::StopForSwitchover)
                | (ActionKind::SetSyncStandbys, Action::SetSyncStandbys { .. })
        )
    }
}

/// What a one-off tweak does to the next matching action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TweakKind {
    /// It lands this long after it was sent.
    Slow(Micros),
    /// It fails at once ("refused").
    Fail,
}

/// One fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The node's process dies; at heal a new coordinator starts on its applied state.
    Crash(Target),
    /// The node's process is stopped (SIGSTOP); at heal it handles what waited.
    Freeze(Target),
    /// Every link of the host is cut.
    Isolate(Target),
    /// The link between two hosts is cut.
    Cut(Target, Target),
    /// The host is cut from these hosts only.
    Split {
        /// The host.
        host: Target,
        /// The hosts it loses.
        from: Vec<usize>,
    },
    /// vigil's Raft port is blocked on the host: its node is cut off, its members are not.
    BlockRaftPort(Target),
    /// The link between two hosts is cut and healed every second.
    Flapping(Target, Target),
    /// Messages into and out of the host are lost with this probability.
    PacketLoss(Target, f64),
    /// The primary server of a group dies (Redis is started again at heal as an operator
    /// would; vigil brings PostgreSQL back itself).
    KillPrimary(usize),
    /// Fences of this member never land (they time out).
    StuckFence {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
    },
    /// Fences of this member fail (a PostgreSQL member's own node then stops it).
    FailingFence {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
    },
    /// Every action of this node takes 200–1500 ms to land.
    SlowActions(Target),
    /// This node applies committed entries 1–3 s late.
    ApplyLag(Target),
    /// This replica stops replaying (it still reports streaming).
    ReplicaLag {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
    },
    /// This node's wall clock jumps by `delta_ms` (and back at heal).
    WallClockStep {
        /// The node.
        node: Target,
        /// How far.
        delta_ms: i64,
    },
    /// The next matching action on this member is slowed or fails.
    Tweak {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
        /// Which action.
        action: ActionKind,
        /// What happens to it.
        tweak: TweakKind,
    },
    /// An operator asks for a switchover of the group to this member.
    Switchover {
        /// The group.
        group: usize,
        /// The member to promote.
        to: Target,
    },
}

/// A step of a failover, to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// [`Step::FenceOldPrimary`].
    FenceOldPrimary,
    /// [`Step::Promote`].
    Promote,
    /// [`Step::VerifyWritable`].
    VerifyWritable,
    /// [`Step::StopPrimary`].
    StopPrimary,
}

impl StepKind {
    pub(crate) fn matches(self, step: &Step) -> bool {
        matches!(
            (self, step),
            (StepKind::FenceOldPrimary, Step::FenceOldPrimary { .. })
                | (StepKind::Promote, Step::Promote)
                | (StepKind::VerifyWritable, Step::VerifyWritable)
                | (StepKind::StopPrimary, Step::StopPrimary { .. })
        )
    }
}

/// When an episode begins.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// At this true time.
    At(Micros),
    /// When a step of a failover of the group is committed as started (`succeeded: None`)
    /// or as finished with this outcome, plus `delay`.
    OnStep {
        /// The group, by index.
        group: usize,
        /// The step.
        step: StepKind,
        /// `None`: its start; else its end with this outcome.
        succeeded: Option<bool>,
        /// How long after the commit.
        delay: Micros,
    },
}

/// A fault held for a while.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// When it begins.
    pub trigger: Trigger,
    /// How long it lasts; `None`: to the end of the run.
    pub hold: Option<Micros>,
    /// The fault.
    pub fault: Fault,
}

impl Episode {
    /// A fault at `at` µs, held `hold` µs.
    pub fn at(at: Micros, hold: Micros, fault: Fault) -> Self {
        Episode { trigger: Trigger::At(at), hold: Some(hold), fault }
    }
}

/// An episode as the run goes.
#[derive(Clone, Debug)]
pub struct EpisodeState {
    /// The episode.
    pub episode: Episode,
    /// Its targets as resolved when it was injected.
    pub(crate) resolved: Vec<usize>,
    pub(crate) injected: bool,
    pub(crate) healed: bool,
    /// For a flapping link: whether it is cut now.
    pub(crate) flap_cut: bool,
}

impl EpisodeState {
    /// An episode not yet injected.
    pub fn new(episode: Episode) -> Self {
        EpisodeState { episode, resolved: Vec::new(), injected: false, healed: false, flap_cut: false }
    }

    /// When it is injected, if that is fixed in advance.
    pub fn scheduled_at(&self) -> Option<Micros> {
        match self.episode.trigger {
            Trigger::At(at) => Some(at),
            Trigger::OnStep { .. } => None,
        }
    }

    /// When it heals at the latest, if that is fixed in advance.
    pub fn latest_heal(&self) -> Option<Micros> {
        Some(self.scheduled_at()? + self.episode.hold?)
    }
}

/// The faults in force that actions and Raft consult.
#[derive(Clone, Debug)]
pub struct Active {
    /// Fences that never land, by (group, member), counted.
    pub stuck_fence: BTreeMap<(usize, usize), u32>,
    /// Fences that fail, by (group, member), counted.
    pub failing_fence: BTreeMap<(usize, usize), u32>,
    /// Nodes whose actions are slow, counted.
    pub slow_actions: Vec<u32>,
    /// Nodes that apply late, counted.
    pub apply_lag: Vec<u32>,
    /// One-off tweaks waiting for their action: (group, member, action, tweak).
    pub(crate) tweaks: Vec<(usize, usize, ActionKind, TweakKind)>,
}

impl Active {
    /// Nothing in force, for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Active {
            stuck_fence: BTreeMap::new(),
            failing_fence: BTreeMap::new(),
            slow_actions: vec![0; nodes],
            apply_lag: vec![0; nodes],
            tweaks: Vec::new(),
        }
    }

    /// Takes the tweak waiting for `action` on `member` of `group`, if one is.
    pub fn take_tweak(&mut self, group: usize, member: usize, action: &Action) -> Option<TweakKind> {
        let position = self.tweaks.iter().position(|(tweak_group, tweak_member, kind, _)| {
            *tweak_group == group && *tweak_member == member && kind.matches(action)
        })?;
        Some(self.tweaks.remove(position).3)
    }
}

/// Draws a schedule from `rng`: 2–4 episodes after the warm-up.
pub fn draw(rng: &mut ChaCha8Rng, config: &Config) -> Vec<Episode> {
    let warm_up = config.warm_up.as_micros() as Micros;
    let window = config.inject_window.as_micros() as Micros;
    let count = rng.random_range(config.episodes.clone());
    (0..count)
        .map(|_| {
            let at = warm_up + rng.random_range(0..=window);
            let hold = rng.random_range(500_000..=8_000_000);
            Episode::at(at, hold, draw_fault(rng, config.nodes, config.fence_faults_on_redis))
        })
        .collect()
}

fn draw_fault(rng: &mut ChaCha8Rng, nodes: usize, fence_faults_on_redis: bool) -> Fault {
    let host = |rng: &mut ChaCha8Rng| rng.random_range(0..nodes);
    let two = |rng: &mut ChaCha8Rng| {
        let a = rng.random_range(0..nodes);
        let b = (a + rng.random_range(1..nodes)) % nodes;
        (Target::Index(a), Target::Index(b))
    };
    // Fences of Redis fail or hang only if asked: no guard backs a Redis master whose fence
    // failed, so such a schedule tests what vigil documents it cannot do.
    let fence_group = |rng: &mut ChaCha8Rng| if fence_faults_on_redis { rng.random_range(0..2) } else { 0 };
    let member = |rng: &mut ChaCha8Rng, group: usize| {
        if rng.random_bool(2.0 / 3.0) { Target::Primary(group) } else { Target::Index(rng.random_range(0..nodes)) }
    };
    match rng.random_range(0..16) {
        0 => Fault::Crash(Target::Index(host(rng))),
        1 => Fault::Freeze(Target::Index(host(rng))),
        2 => Fault::Isolate(Target::Index(host(rng))),
        3 => {
            let (a, b) = two(rng);
            Fault::Cut(a, b)
        }
        4 => {
            let split = host(rng);
            let mut others: Vec<usize> = (0..nodes).filter(|&other| other != split).collect();
            let keep = rng.random_range(1..others.len().max(2));
            let from = others.split_off(others.len() - keep.min(others.len()));
            Fault::Split { host: Target::Index(split), from }
        }
        5 => Fault::Isolate(Target::Leader),
        6 => Fault::BlockRaftPort(if rng.random_bool(0.5) { Target::Leader } else { Target::Index(host(rng)) }),
        7 => {
            let (a, b) = two(rng);
            Fault::Flapping(a, b)
        }
        8 => Fault::PacketLoss(Target::Index(host(rng)), 0.3),
        9 => Fault::KillPrimary(rng.random_range(0..2)),
        10 => {
            let group = fence_group(rng);
            Fault::StuckFence { group, member: member(rng, group) }
        }
        11 => {
            let group = fence_group(rng);
            Fault::FailingFence { group, member: member(rng, group) }
        }
        12 => Fault::SlowActions(Target::Index(host(rng))),
        13 => Fault::ApplyLag(Target::Index(host(rng))),
        14 => {
            let group = rng.random_range(0..2);
            Fault::ReplicaLag { group, member: Target::Index(host(rng)) }
        }
        _ => {
            let magnitude = rng.random_range(60_000..=600_000);
            let delta_ms = if rng.random_bool(0.5) { magnitude } else { -magnitude };
            Fault::WallClockStep { node: Target::Index(host(rng)), delta_ms }
        }
    }
}
