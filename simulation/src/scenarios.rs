//! The named scenarios: fixed fault schedules, each built to put one rule of the coordinator
//! to the test (the tests in `tests/scenarios.rs` say which property each proves). The
//! `vigil-sim` binary runs them by name (`vigil-sim run --scenario NAME --seed N`), the seed
//! choosing only the world's latencies and clock rates.

use std::time::Duration;

use crate::clock::Micros;
use crate::cluster::{POSTGRES, REDIS};
use crate::config::Config;
use crate::faults::{ActionKind, Episode, Fault, StepKind, Target, Trigger, TweakKind};

/// Every scenario by name, with its schedule, its length and its first leader.
pub fn named(name: &str) -> Option<Config> {
    let (schedule, seconds, first_leader) = match name {
        "isolated-leader" => (isolated_leader(), 40, 1),
        "promoted-then-cut-off" => (promoted_then_cut_off(), 150, 2),
        "stuck-fence" => (fence_stuck_beside_a_cut_off_primary(), 60, 2),
        "late-lift" => (a_late_lift(), 50, 2),
        "wall-step-during-host-step" => (a_wall_step_during_a_host_local_step(), 60, 2),
        "wall-step-back-while-retry-waits" => (a_wall_step_while_a_retry_waits(-300_000), 40, 2),
        "wall-step-ahead-while-retry-waits" => (a_wall_step_while_a_retry_waits(300_000), 40, 2),
        "lagging-standby" => (a_lagging_standby_made_synchronous(), 80, 2),
        "candidate-node-dies" => (the_candidates_node_dies_mid_failover(), 80, 2),
        "guard-stop-restart" => (renewals_stall_past_the_guard(), 40, 2),
        "restart-after-lift" => (a_restart_after_the_lift(), 60, 2),
        "stale-sync-request" => (a_stale_synchronous_request(), 40, 1),
        _ => return None,
    };
    Some(Config {
        schedule: Some(schedule),
        scenario: Some(name.to_string()),
        duration: Some(Duration::from_secs(seconds)),
        first_leader: Some(first_leader),
        ..Config::default()
    })
}

/// The names [`named`] knows.
pub const NAMES: [&str; 12] = [
    "isolated-leader",
    "promoted-then-cut-off",
    "stuck-fence",
    "late-lift",
    "wall-step-during-host-step",
    "wall-step-back-while-retry-waits",
    "wall-step-ahead-while-retry-waits",
    "lagging-standby",
    "candidate-node-dies",
    "guard-stop-restart",
    "restart-after-lift",
    "stale-sync-request",
];

fn seconds(value: f64) -> Micros {
    (value * 1e6) as Micros
}

/// The Raft port of node 2, the leader, is blocked for 8 s (it is cut off from the cluster;
/// the servers on its host are not); the primaries sit beside node 1.
pub fn isolated_leader() -> Vec<Episode> {
    vec![Episode::at(seconds(5.0), seconds(8.0), Fault::BlockRaftPort(Target::Index(1)))]
}

/// Hole 1: the Redis primary dies, and the member promoted in its place has its host cut off
/// right after its promotion commits, before its own node heard of it; that run is given up
/// and another member promoted, while the first stays cut off for 70 s.
pub fn promoted_then_cut_off() -> Vec<Episode> {
    vec![
        Episode::at(seconds(5.0), seconds(60.0), Fault::KillPrimary(REDIS)),
        Episode {
            trigger: Trigger::OnStep { group: REDIS, step: StepKind::Promote, succeeded: Some(true), delay: 0 },
            hold: Some(seconds(70.0)),
            fault: Fault::Isolate(Target::Candidate(REDIS)),
        },
    ]
}

/// Hole 2: every fence of the PostgreSQL primary hangs, and its host is cut off for 20 s, so
/// its node can neither renew its lease nor fence it: only its guard can stop it.
pub fn fence_stuck_beside_a_cut_off_primary() -> Vec<Episode> {
    vec![
        Episode::at(
            seconds(4.0),
            seconds(22.0),
            Fault::StuckFence { group: POSTGRES, member: Target::Primary(POSTGRES) },
        ),
        Episode::at(seconds(5.0), seconds(20.0), Fault::Isolate(Target::Index(0))),
    ]
}

/// Hole 3: the PostgreSQL primary's node loses Raft for 1.4 s and fences it; once it renews
/// again it lifts the fence, but that lift takes 6 s to land; meanwhile the node loses Raft
/// again, for 15 s, and the cluster fails the fenced primary over.
pub fn a_late_lift() -> Vec<Episode> {
    let slow_lift = Fault::Tweak {
        group: POSTGRES,
        member: Target::Index(0),
        action: ActionKind::Lift,
        tweak: TweakKind::Slow(seconds(6.0)),
    };
    vec![
        Episode::at(seconds(5.0), seconds(1.4), Fault::BlockRaftPort(Target::Index(0))),
        Episode::at(seconds(5.0), seconds(10.0), slow_lift),
        Episode::at(seconds(6.8), seconds(15.0), Fault::BlockRaftPort(Target::Index(0))),
    ]
}

/// Hole 5, first half: an operator's switchover of PostgreSQL to a confirmed standby, whose
/// host-local step (stopping the old primary cleanly) takes 3 s, while the leader's wall
/// clock is stepped 300 s ahead for 20 s.
pub fn a_wall_step_during_a_host_local_step() -> Vec<Episode> {
    let slow_stop = Fault::Tweak {
        group: POSTGRES,
        member: Target::Index(0),
        action: ActionKind::StopForSwitchover,
        tweak: TweakKind::Slow(seconds(3.0)),
    };
    vec![
        Episode::at(seconds(4.0), seconds(30.0), slow_stop),
        Episode::at(seconds(5.0), 0, Fault::Switchover { group: POSTGRES, to: Target::Standby(POSTGRES) }),
        Episode::at(seconds(6.0), seconds(20.0), Fault::WallClockStep { node: Target::Leader, delta_ms: 300_000 }),
    ]
}

/// Hole 5, second half: the Redis primary dies, the promotion of its replacement fails once,
/// and the leader's wall clock is stepped by `delta_ms` (for good) right after the failure
/// is committed, while the step waits for its retry.
pub fn a_wall_step_while_a_retry_waits(delta_ms: i64) -> Vec<Episode> {
    let fail_promotion = |member| Fault::Tweak {
        group: REDIS,
        member: Target::Index(member),
        action: ActionKind::Promote,
        tweak: TweakKind::Fail,
    };
    vec![
        Episode::at(seconds(4.0), seconds(20.0), fail_promotion(1)),
        Episode::at(seconds(4.0), seconds(20.0), fail_promotion(2)),
        Episode::at(seconds(5.0), seconds(10.0), Fault::KillPrimary(REDIS)),
        Episode {
            trigger: Trigger::OnStep { group: REDIS, step: StepKind::Promote, succeeded: Some(false), delay: 0 },
            hold: None,
            fault: Fault::WallClockStep { node: Target::Leader, delta_ms },
        },
    ]
}

/// Strict synchronous mode: pg3 stops receiving (it still reports streaming) at 4 s; pg2,
/// the confirmed synchronous standby, is cut off from the primary at 5 s, so the leader
/// looks for another standby; the primary dies at 9 s.
pub fn a_lagging_standby_made_synchronous() -> Vec<Episode> {
    vec![
        Episode::at(seconds(4.0), seconds(30.0), Fault::ReplicaLag { group: POSTGRES, member: Target::Index(2) }),
        Episode::at(seconds(5.0), seconds(30.0), Fault::Cut(Target::Index(0), Target::Index(1))),
        Episode::at(seconds(9.0), seconds(30.0), Fault::KillPrimary(POSTGRES)),
    ]
}

/// The Redis master dies at 5 s, and the node beside the candidate chosen to replace it
/// crashes as the failover starts (as when the leader that began it was that node), for
/// 30 s: a promoted member takes writes only once its own node lifts its fence.
pub fn the_candidates_node_dies_mid_failover() -> Vec<Episode> {
    vec![
        Episode::at(seconds(5.0), seconds(40.0), Fault::KillPrimary(REDIS)),
        Episode {
            trigger: Trigger::OnStep { group: REDIS, step: StepKind::FenceOldPrimary, succeeded: None, delay: 0 },
            hold: Some(seconds(30.0)),
            fault: Fault::Crash(Target::Candidate(REDIS)),
        },
    ]
}

/// The primaries' node (node 1) loses Raft for 1.6 s, longer than a lease (1.5 s), while
/// every server stays reachable, as in a Raft election on a loaded host: no renewal can
/// commit, and because the fence of the PostgreSQL primary is slow to land (0.6 s), its
/// guard stops it at the deadline. Once renewals commit again, the keeper starts it again,
/// fenced, and lifts the fence: the group is back on its primary within a second.
pub fn renewals_stall_past_the_guard() -> Vec<Episode> {
    let slow_fence = Fault::Tweak {
        group: POSTGRES,
        member: Target::Index(0),
        action: ActionKind::Fence,
        tweak: TweakKind::Slow(seconds(0.6)),
    };
    vec![
        Episode::at(seconds(4.0), seconds(10.0), slow_fence),
        Episode::at(seconds(5.0), seconds(1.6), Fault::BlockRaftPort(Target::Index(0))),
    ]
}

/// The PostgreSQL primary dies; half a second after its replacement was found writable (the
/// failover over), the node beside the new primary crashes for 0.8 s and its host is cut
/// off for 10 s. The restarted node must not take the new primary for born fenced (its
/// previous run lifted it): its guard stays armed and stops it when the lease runs out,
/// before another member is promoted.
pub fn a_restart_after_the_lift() -> Vec<Episode> {
    let after_verify =
        Trigger::OnStep { group: POSTGRES, step: StepKind::VerifyWritable, succeeded: Some(true), delay: seconds(0.5) };
    vec![
        Episode::at(seconds(5.0), seconds(60.0), Fault::KillPrimary(POSTGRES)),
        Episode {
            trigger: after_verify.clone(),
            hold: Some(seconds(0.8)),
            fault: Fault::Crash(Target::Primary(POSTGRES)),
        },
        Episode { trigger: after_verify, hold: Some(seconds(10.0)), fault: Fault::Isolate(Target::Primary(POSTGRES)) },
    ]
}

/// Strict synchronous mode, a deposed leader's request landing late: the first request of
/// the leader (node 2) to the primary (wait for pg2, sent in the first 1.5 s) takes 7 s to
/// land; pg2 is cut off from the primary from 1.6 s to 6 s and the leader freezes at 4 s, so
/// the next leader confirms pg3 instead. pg3 stops receiving at 6.5 s (commits then wait);
/// the old request lands between 7 and 8.5 s, after pg2 streams again, and the primary dies
/// at 9 s. A primary that took the old request acknowledges commits that only pg2 holds
/// until the leader repairs the setting, and pg3, the confirmed standby, is promoted.
pub fn a_stale_synchronous_request() -> Vec<Episode> {
    let slow_setting = Fault::Tweak {
        group: POSTGRES,
        member: Target::Primary(POSTGRES),
        action: ActionKind::SetSyncStandbys,
        tweak: TweakKind::Slow(seconds(7.0)),
    };
    vec![
        Episode::at(0, seconds(40.0), slow_setting),
        Episode::at(seconds(1.6), seconds(4.4), Fault::Cut(Target::Index(0), Target::Index(1))),
        Episode::at(seconds(4.0), seconds(15.0), Fault::Freeze(Target::Leader)),
        Episode::at(seconds(6.5), seconds(30.0), Fault::ReplicaLag { group: POSTGRES, member: Target::Index(2) }),
        Episode::at(seconds(9.0), seconds(30.0), Fault::KillPrimary(POSTGRES)),
    ]
}
