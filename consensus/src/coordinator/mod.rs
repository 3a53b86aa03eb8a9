//! The coordinator: every rule that keeps one writer per group, as one pure state machine
//! per node.
//!
//! ```text
//! events: applied state, probe results, effect outcomes, ticks of this node's clock
//!    │
//!    ▼
//! Coordinator::handle(ctx, event) -> Vec<Effect>        (no IO, no clock, no spawning)
//!    │
//!    ▼
//! effects: propose a command | act on a member | tell the fence guard
//!    │            (carried out by the node's one loop, or by the simulation)
//!    ▼
//! Outcome of each effect, by its id ──► back in as Event::Done
//! ```
//!
//! The rules live in one module each: [`verdicts`] (this node's verdicts on every member,
//! reported when they change), [`lease_clock`] (when this node saw each lease change),
//! [`keeper`] (the primary beside this node: renew, fence, lift, release, restart in place,
//! fence a stale primary, arm the guard), [`driver`] (the leader: decide, then run each
//! failover one committed step at a time, and the host-local steps on the member's node;
//! with [`reach`], never towards a member whose node it does not hear from), [`rejoin`] (bring the member beside this node back as a replica), and [`sync`] (the
//! leader keeps strict synchronous standbys in step).
//!
//! Architecture Invariant: this module and everything under it does no IO, reads no clock,
//! spawns nothing and imports no tokio, quinn, redb, tokio-postgres or redis (a test reads
//! the sources to keep it so). Time is [`Now`], passed in; maps are `BTreeMap`s, so the
//! same inputs give the same effects in the same order. Every effect gets exactly one
//! outcome back; the coordinator forgets no effect it started.

pub mod driver;
pub mod effect;
pub mod fence;
pub mod keeper;
pub mod lease_clock;
pub mod mutations;
pub mod prepare;
pub mod reach;
pub mod rejoin;
pub mod sync;
pub mod time;
pub mod upstream;
pub mod verdicts;

use std::collections::BTreeMap;
use std::time::Duration;

pub use effect::{
    Action, ActionFailure, ActionReport, Effect, EffectId, FailureKind, GuardOrder, Outcome, ProposeError,
    StandbyState, SyncGeneration, SyncState,
};
pub use mutations::Mutations;
pub use reach::{Followers, Reach};
pub use time::{Mono, Now};
pub use verdicts::Seen;

use crate::spec::GroupPolicy;
use crate::state::{ClusterState, Command};
use crate::types::NodeId;

/// How often the node's loop must call [`Coordinator::handle`] with [`Event::Tick`] at least:
/// the lease keeper fences within this of its deadline.
pub const TICK: Duration = Duration::from_millis(25);

/// What the coordinator reads on every call: the time, the state this node has applied, and
/// the leader its Raft knows.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The time of the call.
    pub now: Now,
    /// The replicated state as this node has applied it.
    pub state: &'a ClusterState,
    /// The leader this node's Raft knows of, if any (itself when it leads).
    pub leader: Option<NodeId>,
    /// The newest Raft term this node knows of (the term it leads in, when it leads).
    pub term: u64,
    /// When this node leads: which other nodes it hears from. `None` otherwise.
    pub followers: Option<&'a Followers>,
}

/// Something that happened to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed.
    Tick,
    /// This node applied committed entries: [`Ctx::state`] is the newer state.
    Applied,
    /// One of this node's probes of `member` of `group` ended.
    Probed {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// What the probe saw.
        seen: Seen,
        /// When the probe was due to start, by this node's clock: how long a member has been
        /// failing is measured between probe starts, which keep to the probe interval,
        /// rather than between the moments their results were handled, which a busy loop
        /// delays by a varying few milliseconds.
        started: Mono,
    },
    /// An effect ended.
    Done {
        /// The effect.
        id: EffectId,
        /// How it ended.
        outcome: Outcome,
    },
}

/// Settings of one node's coordinator.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Test-only changes of the rules (empty without the `mutations` feature).
    pub mutations: Mutations,
}

/// One node's coordinator. Feed it every event with [`Coordinator::handle`]; carry out the
/// effects it returns and feed their outcomes back.
#[derive(Debug)]
pub struct Coordinator {
    node: NodeId,
    config: Config,
    next_effect: u64,
    pending: BTreeMap<EffectId, Purpose>,
    /// Members this node is acting on with its own hands, and the effect doing it: one action
    /// at a time per member, so a lift and a fence never race.
    busy: BTreeMap<(String, String), EffectId>,
    derived: Derived,
    verdicts: verdicts::Reporter,
    leases: lease_clock::LeaseClock,
    keeper: keeper::Keeper,
    driver: driver::Driver,
    rejoiner: rejoin::Rejoiner,
    preparer: prepare::Preparer,
    settler: sync::Settler,
    last_leader: Option<NodeId>,
}

/// What an effect in flight is for, so its outcome reaches the rule that started it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Purpose {
    Verdict(verdicts::Pending),
    Keeper(keeper::Pending),
    Driver(driver::Pending),
    Rejoin(rejoin::Pending),
    Prepare(prepare::Pending),
    Sync(sync::Pending),
}

impl Coordinator {
    /// The coordinator of node `node`.
    pub fn new(node: NodeId, config: Config) -> Self {
        let record_only = config.mutations.unfenced_promotion();
        Coordinator {
            node,
            config,
            next_effect: 0,
            pending: BTreeMap::new(),
            busy: BTreeMap::new(),
            derived: Derived::default(),
            verdicts: verdicts::Reporter::default(),
            // The old rule restarted a lease only when its record changed (a mutation).
            leases: lease_clock::LeaseClock::with_record_only(record_only),
            keeper: keeper::Keeper::default(),
            driver: driver::Driver::default(),
            rejoiner: rejoin::Rejoiner::default(),
            preparer: prepare::Preparer::default(),
            settler: sync::Settler::default(),
            last_leader: None,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// How many effects are waiting for their outcome.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The current verdict of this node on `member` of `group`, by its own probes.
    pub fn own_verdict(&self, group: &str, member: &str) -> Option<&crate::group::Verdict> {
        self.verdicts.current(group, member)
    }

    /// Takes one event and returns what to do about it, in order.
    pub fn handle(&mut self, ctx: &Ctx<'_>, event: Event) -> Vec<Effect> {
        // Most calls are ticks and probe results, on a state that has not changed since the
        // last call: what is derived from the state is derived again only when it has.
        let state_changed = self.derived.refresh(ctx.state, self.node);
        if state_changed {
            self.leases.observe(ctx.state, &self.derived.policies, ctx.now.mono);
        }
        let derived = &self.derived;
        let new_leader = ctx.leader.is_some() && ctx.leader != self.last_leader;
        self.last_leader = ctx.leader;
        let mut out = Out {
            next_effect: &mut self.next_effect,
            pending: &mut self.pending,
            busy: &mut self.busy,
            effects: Vec::new(),
        };
        let view = View {
            ctx,
            node: self.node,
            node_name: derived.node_name.as_deref(),
            policies: &derived.policies,
            nodes: &derived.nodes,
            voters: &derived.voters,
            state_changed,
            leases: &self.leases,
            mutations: self.config.mutations,
        };
        match event {
            Event::Tick | Event::Applied => {}
            Event::Probed { group, member, seen, started } => {
                let restarting = self.keeper.restarting(&view, &group, &member);
                self.verdicts.probed(&view, &group, &member, &seen, started, restarting)
            }
            Event::Done { id, outcome } => {
                let Some(purpose) = out.finish(id) else {
                    tracing::warn!(effect = %id, "an outcome for an effect this coordinator does not know");
                    return out.effects;
                };
                match purpose {
                    Purpose::Verdict(pending) => self.verdicts.done(&view, pending, outcome),
                    Purpose::Keeper(pending) => self.keeper.done(&view, &mut out, pending, outcome),
                    Purpose::Driver(pending) => self.driver.done(&view, &mut out, pending, outcome),
                    Purpose::Rejoin(pending) => self.rejoiner.done(&view, &mut out, pending, outcome),
                    Purpose::Prepare(pending) => self.preparer.done(&view, pending, outcome),
                    Purpose::Sync(pending) => self.settler.done(&view, pending, outcome),
                }
            }
        }
        self.verdicts.drive(&view, &mut out);
        self.keeper.drive(&view, &mut out, &self.verdicts, new_leader);
        self.driver.check_fences(&view);
        self.driver.drive(&view, &mut out);
        self.rejoiner.drive(&view, &mut out, &self.verdicts);
        self.preparer.drive(&view, &mut out, &self.verdicts);
        self.settler.drive(&view, &mut out);
        out.effects
    }
}

/// What the coordinator derives from the applied state, kept until the state changes.
#[derive(Debug, Default)]
struct Derived {
    /// The entry the state was at when this was derived.
    applied: Option<crate::types::LogId>,
    spec: crate::spec::ClusterSpec,
    policies: Vec<GroupPolicy>,
    node_name: Option<String>,
    nodes: BTreeMap<NodeId, crate::types::NodeInfo>,
    voters: std::collections::BTreeSet<NodeId>,
    initialised: bool,
}

impl Derived {
    /// Derives again what changed; whether the state changed since the last call.
    fn refresh(&mut self, state: &ClusterState, node: NodeId) -> bool {
        if self.initialised && self.applied == state.last_applied {
            return false;
        }
        self.initialised = true;
        self.applied = state.last_applied;
        if self.spec != state.spec || self.policies.is_empty() {
            self.spec = state.spec.clone();
            self.policies = state.spec.groups().map(|group| group.policy()).collect();
        }
        self.nodes = state.nodes();
        self.voters = state.voter_ids();
        self.node_name = self.nodes.get(&node).map(|info| info.name.clone());
        true
    }
}

/// What every rule reads during one call.
#[derive(Clone, Copy)]
struct View<'a> {
    ctx: &'a Ctx<'a>,
    node: NodeId,
    /// This node's name in the membership, once it is a member.
    node_name: Option<&'a str>,
    policies: &'a [GroupPolicy],
    /// Every node of the membership, and the voters.
    nodes: &'a BTreeMap<NodeId, crate::types::NodeInfo>,
    voters: &'a std::collections::BTreeSet<NodeId>,
    /// Whether the applied state changed since the previous call.
    state_changed: bool,
    leases: &'a lease_clock::LeaseClock,
    mutations: Mutations,
}

impl<'a> View<'a> {
    fn now(&self) -> Mono {
        self.ctx.now.mono
    }

    fn state(&self) -> &'a ClusterState {
        self.ctx.state
    }

    fn is_leader(&self) -> bool {
        self.ctx.leader == Some(self.node)
    }

    /// Whether this node, as the leader, can count on `node`.
    fn reach(&self, node: NodeId) -> Reach {
        match self.ctx.followers {
            Some(followers) => followers.reach(self.node, node),
            None => Reach::NotYetKnown,
        }
    }

    fn policy(&self, group: &str) -> Option<&'a GroupPolicy> {
        self.policies.iter().find(|policy| policy.name == group)
    }

    /// Every group with a member beside this node, and that member.
    fn local_members(&self) -> impl Iterator<Item = (&'a GroupPolicy, &'a crate::spec::MemberPolicy)> + '_ {
        self.policies.iter().filter_map(|policy| Some((policy, self.local_member(policy)?)))
    }

    /// The member of `policy` beside this node, if there is one.
    fn local_member(&self, policy: &'a GroupPolicy) -> Option<&'a crate::spec::MemberPolicy> {
        let name = self.node_name?;
        policy.members.iter().find(|member| member.node == name)
    }

    fn group_state(&self, group: &str) -> Option<&'a crate::group::GroupState> {
        self.ctx.state.groups.get(group)
    }
}

/// Collects the effects of one call and remembers what each is for.
struct Out<'a> {
    next_effect: &'a mut u64,
    pending: &'a mut BTreeMap<EffectId, Purpose>,
    busy: &'a mut BTreeMap<(String, String), EffectId>,
    effects: Vec<Effect>,
}

impl Out<'_> {
    fn id(&mut self, purpose: Purpose) -> EffectId {
        let id = EffectId(*self.next_effect);
        *self.next_effect += 1;
        self.pending.insert(id, purpose);
        id
    }

    /// Forgets a finished effect, freeing its member; says what it was for.
    fn finish(&mut self, id: EffectId) -> Option<Purpose> {
        self.busy.retain(|_, effect| *effect != id);
        self.pending.remove(&id)
    }

    fn propose(&mut self, purpose: Purpose, command: Command, timeout: Duration) -> EffectId {
        let id = self.id(purpose);
        self.effects.push(Effect::Propose { id, command, timeout });
        id
    }

    /// Whether this node is acting on `member` with its own hands now.
    fn is_busy(&self, group: &str, member: &str) -> bool {
        self.busy.keys().any(|(busy_group, busy_member)| busy_group == group && busy_member == member)
    }

    /// Acts on `member`, unless this node is already acting on it: then `None`, and the rule
    /// asks again once that action ended. Ordering every action of this node on one member
    /// is what keeps a lift from landing after a fence.
    fn act_alone(
        &mut self,
        purpose: Purpose,
        group: &str,
        member: &str,
        action: Action,
        timeout: Duration,
    ) -> Option<EffectId> {
        if self.is_busy(group, member) {
            return None;
        }
        let id = self.act(purpose, group, member, action, timeout, false);
        self.busy.insert((group.to_string(), member.to_string()), id);
        Some(id)
    }

    /// Acts on `member` whatever else this node does to it (a leader's remote step).
    fn act(
        &mut self,
        purpose: Purpose,
        group: &str,
        member: &str,
        action: Action,
        timeout: Duration,
        requires_leadership: bool,
    ) -> EffectId {
        let id = self.id(purpose);
        self.effects.push(Effect::Act {
            id,
            group: group.to_string(),
            member: member.to_string(),
            action,
            timeout,
            requires_leadership,
        });
        id
    }

    fn catch_up(&mut self, purpose: Purpose, timeout: Duration) -> EffectId {
        let id = self.id(purpose);
        self.effects.push(Effect::CatchUp { id, timeout });
        id
    }

    fn guard(&mut self, purpose: Purpose, order: GuardOrder) -> EffectId {
        let id = self.id(purpose);
        self.effects.push(Effect::Guard { id, order });
        id
    }
}
