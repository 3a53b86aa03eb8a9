//! Named scenarios ([`vigil_simulation::scenarios`]): fixed fault schedules, each proving one
//! property of the coordinator, and for the holes it closed, that the old rule put back (a
//! mutation) breaks it there. The world's latencies and clock rates still vary with the
//! seed, so each scenario runs over a few seeds; `vigil-sim run --scenario NAME --seed N
//! [--mutation NAME]` shows one run's trace.

use vigil_consensus::coordinator::Mutations;
use vigil_simulation::{Config, RunResult, run, scenarios};

/// The seeds each scenario runs with.
const SEEDS: std::ops::Range<u64> = 0..8;

fn scenario(name: &str, mutations: Mutations) -> Vec<RunResult> {
    let config = Config { mutations, ..scenarios::named(name).expect("a named scenario") };
    SEEDS.map(|seed| run(seed, &config)).collect()
}

fn explain(result: &RunResult) -> String {
    let violations: Vec<String> = result.violations.iter().map(ToString::to_string).collect();
    format!("{}\n{}\n{}", result.failure_message(), violations.join("\n"), result.trace.join("\n"))
}

fn assert_all_pass(results: &[RunResult]) {
    for result in results {
        assert!(result.passed(), "{}", explain(result));
    }
}

/// Asserts that the mutation broke `checker` in at least one run, and says where.
fn assert_caught(results: &[RunResult], checker: &str) {
    let caught: Vec<u64> = results
        .iter()
        .filter(|result| result.violations.iter().any(|violation| violation.checker == checker))
        .map(|result| result.seed)
        .collect();
    assert!(
        !caught.is_empty(),
        "the old rule went unnoticed ({checker}); first run:\n{}",
        results.first().map(explain).unwrap_or_default()
    );
    println!("the old rule broke \"{checker}\" with seeds {caught:?}");
}

fn with(mutate: impl FnOnce(&mut Mutations)) -> Mutations {
    let mut mutations = Mutations::default();
    mutate(&mut mutations);
    mutations
}

/// (a) The leader's node is cut off (its Raft port blocked, the servers on its host still
/// reachable) while the primaries beside another node stay healthy: another leader is
/// elected, no primary is failed over, and no group ever has two writers.
#[test]
fn an_isolated_leader_fails_over_no_healthy_primary() {
    let results = scenario("isolated-leader", Mutations::default());
    assert_all_pass(&results);
    for result in &results {
        assert!(result.failovers.is_empty(), "a healthy primary was failed over: {}", explain(result));
    }
}

/// (b) Hole 1: a promoted member takes no write before its own node holds its lease, so when
/// its host is cut off right after the promotion commits and another member is promoted
/// later, there are never two writers.
#[test]
fn a_member_cut_off_right_after_its_promotion_never_writes_beside_the_next_one() {
    let results = scenario("promoted-then-cut-off", Mutations::default());
    assert_all_pass(&results);
    assert!(results.iter().all(|result| result.failovers.len() >= 2), "{}", explain(&results[0]));
}

/// (b) With the old rule (a promoted member takes writes at once), the cut-off member writes
/// on while the next one is promoted.
///
/// Why the old rule breaks: the promotion leaves the candidate writable before any lease of
/// its own is committed; cut off at once, its node never learns it is the primary and so
/// never fences it, while the cluster, finding it down, promotes the next member.
#[test]
fn the_old_promotion_rule_leaves_two_writers() {
    let results = scenario("promoted-then-cut-off", with(|m| m.unfenced_promotion = true));
    assert_caught(&results, "one writer");
}

/// (c) Hole 2: when the fence of the old primary hangs while its node is up and cut off from
/// the cluster, its guard stays armed until a fence is confirmed and stops the server before
/// anyone counts the lease as run out: the promotion never meets a writer.
#[test]
fn a_stuck_fence_leaves_the_guard_armed_until_it_stops_the_old_primary() {
    let results = scenario("stuck-fence", Mutations::default());
    assert_all_pass(&results);
    for result in &results {
        assert!(result.trace.iter().any(|line| line.contains("guard of host 1 stops pg1")), "{}", explain(result));
    }
}

/// (c) With the old rule (the guard disarmed when a fence starts, a failed fence not
/// retried), the old primary writes on beside the new one.
///
/// Why the old rule breaks: the fence that hangs is taken as done when it starts, so the
/// guard is disarmed; the server keeps taking writes, and after the lease wait the leader
/// promotes a replica.
#[test]
fn the_old_fence_rule_leaves_two_writers() {
    assert_caught(&scenario("stuck-fence", with(|m| m.unconfirmed_fence = true)), "one writer");
}

/// (d) Hole 3: a lift that lands late, after the lease it was sent under ran out, never
/// leaves the old primary writing beside the new one: the fence waits for the lift, and the
/// guard stops the server meanwhile.
#[test]
fn a_lift_landing_late_never_leaves_two_writers() {
    let results = scenario("late-lift", Mutations::default());
    assert_all_pass(&results);
    assert!(results.iter().all(|result| !result.failovers.is_empty()), "{}", explain(&results[0]));
}

/// (d) With the old rule (a fence and a lift of one member may run at once, each taken as
/// done when it starts), the late lift undoes the fence.
///
/// Why the old rule breaks: the fence is sent while the slow lift is still on its way, lands
/// first, and disarms the guard; the lift lands seconds later, after the cluster promoted a
/// replica, and leaves the old primary writable while its node believes it fenced.
#[test]
fn the_old_unordered_lift_leaves_two_writers() {
    assert_caught(&scenario("late-lift", with(|m| m.unordered_fence_and_lift = true)), "one writer");
}

/// (e) Hole 5: a host-local step is timed by the leader's monotonic clock, so a wall clock
/// stepped by minutes while it runs neither gives it up nor disturbs the switchover.
///
/// The observable: a step declared failed "did not finish it within 90 s" (or retried)
/// sooner than that much true time after it started is a violation of "steps timed by
/// elapsed time".
#[test]
fn a_wall_clock_step_does_not_give_up_a_running_host_local_step() {
    let results = scenario("wall-step-during-host-step", Mutations::default());
    assert_all_pass(&results);
    for result in &results {
        let finished = result.trace.iter().any(|line| line.contains("finish failover of main #0 ok=true"));
        assert!(finished, "the switchover did not finish: {}", explain(result));
    }
}

/// (e) With the old rule (step ages from the deciding node's wall clock against the stamp
/// in the state), the 3 s step is declared failed "within 90 s" at once.
///
/// Why the old rule breaks: the leader reads the age of the step as its wall clock minus
/// the stamp written before the step: 300 s, far beyond the 90 s timeout.
#[test]
fn the_old_wall_clock_rule_gives_a_running_step_up() {
    let results = scenario("wall-step-during-host-step", with(|m| m.wall_clock_step_timeouts = true));
    assert_caught(&results, "steps timed by elapsed time");
}

/// (e) Hole 5: a failed step waits `RETRY_AFTER` by the leader's monotonic clock, whichever
/// way its wall clock is stepped: neither retried at once nor left waiting for minutes.
#[test]
fn a_wall_clock_step_neither_hastens_nor_holds_a_retry() {
    assert_all_pass(&scenario("wall-step-back-while-retry-waits", Mutations::default()));
    assert_all_pass(&scenario("wall-step-ahead-while-retry-waits", Mutations::default()));
}

/// (e) With the old rule, a wall clock stepped back holds the retry for as long as it was
/// stepped (the run does not finish: "converged" fails), and one stepped ahead retries at
/// once ("steps timed by elapsed time" fails).
///
/// Why the old rule breaks: the retry waits until the leader's wall clock is a second past
/// the failure's stamp, which a step back puts 300 s away and a step ahead puts in the past.
#[test]
fn the_old_wall_clock_rule_holds_or_hastens_a_retry() {
    let mutations = with(|m| m.wall_clock_step_timeouts = true);
    assert_caught(&scenario("wall-step-back-while-retry-waits", mutations), "converged");
    assert_caught(&scenario("wall-step-ahead-while-retry-waits", mutations), "steps timed by elapsed time");
}

/// Strict synchronous mode: a standby that lags behind the acknowledged writes (it stopped
/// receiving, while its connection still shows it streaming) is never made the confirmed
/// synchronous standby, so the failover that follows loses no acknowledged write.
#[test]
fn a_lagging_standby_is_never_confirmed_synchronous() {
    assert_all_pass(&scenario("lagging-standby", Mutations::default()));
}

/// The node beside the chosen candidate dies as the failover starts: the leader does not
/// promote a member whose node it does not hear from (nobody could lift its fence); it gives
/// that run up and promotes another member while the node is still down.
#[test]
fn no_member_is_promoted_whose_node_the_leader_does_not_hear_from() {
    let results = scenario("candidate-node-dies", Mutations::default());
    assert_all_pass(&results);
    for result in &results {
        let finished: Vec<&String> =
            result.trace.iter().filter(|line| line.contains("finish failover of cache")).collect();
        let given_up =
            finished.iter().position(|line| line.contains("ok=false") && line.contains("out of the leader's reach"));
        let replaced = finished.iter().position(|line| line.contains("ok=true"));
        assert!(
            matches!((given_up, replaced), (Some(a), Some(b)) if a < b),
            "the run towards the dead node's member was not given up before another member was promoted:\n{}",
            explain(result)
        );
        // The dead node is back only at 35 s or later: the group had a new master well before.
        let (_, _, second_begun) =
            result.failovers.iter().filter(|(group, _, _)| group == "cache").nth(1).expect("a second run");
        assert!(*second_begun < 20_000_000, "the second run began only at {second_begun} us:\n{}", explain(result));
    }
}

/// Renewals of the PostgreSQL primary's node cannot commit for longer than a lease (its Raft
/// port blocked, every server reachable) and its fence is slow to land, so its guard stops
/// the healthy primary. Once renewals commit again, the keeper starts it again, fenced, and
/// lifts the fence: the group is back on the same primary, with no failover.
#[test]
fn a_primary_its_guard_stopped_is_started_again_once_renewals_commit() {
    let results = scenario("guard-stop-restart", Mutations::default());
    assert_all_pass(&results);
    for result in &results {
        let line_of = |needle: &str, after: usize| {
            result.trace.iter().skip(after).position(|line| line.contains(needle)).map(|index| index + after)
        };
        let stopped = line_of("guard of host 1 stops pg1", 0);
        let started = stopped.and_then(|stopped| line_of("n1 start it fenced: pg1", stopped));
        let lifted = started.and_then(|started| line_of("n1 lift the fence (epoch 0): pg1", started));
        assert!(
            lifted.is_some(),
            "the guard's stop was not followed by a fenced start and a lift:\n{}",
            explain(result)
        );
        assert!(
            result.failovers.iter().all(|(group, _, _)| group != "main"),
            "the primary its guard stopped was failed over:\n{}",
            explain(result)
        );
    }
}

/// A node restarted beside a primary it promoted and lifted before its crash, then cut off:
/// it keeps its guard armed (the member is not taken for born fenced once a renewal of its
/// epoch committed), so the guard stops it before another member is promoted. The old rule
/// disarmed the guard at the restart, and the cut-off primary took writes beside the next.
#[test]
fn a_node_restarted_after_the_lift_keeps_its_guard_armed() {
    let results = scenario("restart-after-lift", Mutations::default());
    assert_all_pass(&results);
    for result in &results {
        let stopped = result.trace.iter().any(|line| line.contains("guard of host") && line.contains("stops pg"));
        assert!(stopped, "no guard stopped the cut-off primary:\n{}", explain(result));
    }
    let mutations = with(|m| m.born_fenced_after_restart = true);
    assert_caught(&scenario("restart-after-lift", mutations), "one writer");
}

/// Strict synchronous mode: a deposed leader's request to wait for pg2 lands on the primary
/// after the next leader confirmed pg3, and the primary refuses it (an older generation), so
/// pg3 holds every acknowledged commit when it is promoted. Without generations the old
/// request took effect, the primary acknowledged commits that only pg2 held, and promoting
/// pg3 lost them.
#[test]
fn a_deposed_leaders_synchronous_request_is_refused() {
    let results = scenario("stale-sync-request", Mutations::default());
    assert_all_pass(&results);
    let refused = results.iter().filter(|result| {
        result.trace.iter().any(|line| line.contains("set synchronous standbys") && line.contains("is refused"))
    });
    assert!(refused.count() > 0, "no run saw the old request refused:\n{}", explain(&results[0]));
    let mutations = with(|m| m.unversioned_sync_setting = true);
    assert_caught(&scenario("stale-sync-request", mutations), "no acknowledged write lost");
}

/// Each replica is readied for a promotion by its own node, only while it is a replica: at
/// the start, and the old primary again once it has rejoined as a replica after the failover
/// (its lift had undone what was set), never while it is the primary.
#[test]
fn replicas_are_readied_for_a_promotion_by_their_own_node() {
    let config = Config { verbose: true, ..scenarios::named("restart-after-lift").expect("a named scenario") };
    let result = run(0, &config);
    assert_all_pass(std::slice::from_ref(&result));
    let readied = |node: &str, member: &str| {
        result
            .trace
            .iter()
            .filter(|line| line.contains(&format!("{node} asks: ready it for a promotion on {member} ")))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(!readied("n2", "pg2").is_empty() && !readied("n3", "pg3").is_empty(), "{}", explain(&result));
    let old_primary = readied("n1", "pg1");
    assert!(!old_primary.is_empty(), "pg1 was not readied after its rejoin:\n{}", explain(&result));
    assert!(
        old_primary.iter().all(|line| !line.contains("Some((Some(\"pg1\")")),
        "pg1 was readied while it was the primary: {old_primary:?}"
    );
}
