//! Runs one schedule in a fresh [`ChaosLab`]: starts the writers and the observer, plays
//! the episodes (inject, hold, heal, settle), waits for the cluster to converge, reads
//! what the primaries hold, and judges the whole run with the checkers.
//!
//! What each fault is expected to cause is decided when it is injected, from where the
//! primaries and the Raft leader are at that moment:
//! - losing the datacenter of a group's primary (cut, killed) must fail that group over
//!   within the target;
//! - cutting the vigil node beside a primary from its peers (isolating the primary's vigil,
//!   or the leader's when the primary is beside it) must fail that group over within the
//!   target plus one lease: the node fences its primary when it cannot renew the lease, and
//!   the leader waits a further lease before failing over a fenced primary;
//! - a fault that leaves a quorum of watchers seeing a healthy primary (a partition, packet
//!   loss into a watcher's host, a replica's datacenter lost or flapping) must not;
//! - packet loss into the primary's own host, a flapping link there, and every vigil daemon
//!   killed at once (no lease can be renewed until the restarted cluster has a leader, and
//!   a fence guard cannot tell that from a partition) may go either way.
//!
//! Whatever the expectation, every run is held to the guarantees: no two primaries, no
//! stale epoch, no acknowledged write lost in synchronous mode, asynchronous loss within
//! the lease window, and convergence after the last heal.

#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::history::{self, Violation, WriteRecord};
use crate::lab::{CLIENT, ChaosLab, DATACENTERS, PG_GROUP, RAFT_PORT, REDIS_GROUP};
use crate::observe::{Observer, Sample, primary_spans};
use crate::record::{CheckResult, Failover, FaultEvent, GroupRecord, RunRecord};
use crate::schedule::{Fault, HostRef, Schedule};
use crate::workload::{Endpoint, PG_TABLE, REDIS_SET, ServerKind, Writer, WriterSpec};

/// How the run is judged and where vigil is.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `vigil` binary.
    pub vigil: PathBuf,
    /// The longest a failover may take, from the fault to the new primary's first
    /// acknowledged write.
    pub rto_target: Duration,
    /// How long the cluster may take to converge after the last heal.
    pub converge_within: Duration,
    /// The command that reproduces the run, for the report.
    pub reproduce: String,
    /// Set (by a signal handler, say) to end the run early: the run stops at its next wait
    /// and returns an error, and everything it started is torn down on the way out.
    pub interrupted: Arc<AtomicBool>,
}

impl RunOptions {
    /// Sleeps for `duration`, waking every 100 ms to see whether the run was interrupted.
    fn pause(&self, duration: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// The lease an old asynchronous primary may hold after it is cut off (vigil's default),
/// plus one write timeout and period of slack: the window in which acknowledged writes may
/// be lost in asynchronous mode.
pub const ASYNC_LOSS_BOUND: Duration = Duration::from_millis(1500 + 500);
/// vigil's default lease, which the lab's groups use.
const DEFAULT_LEASE: Duration = Duration::from_millis(1500);
/// Writing before the first fault, so every writer has found its primary.
const WARM_UP: Duration = Duration::from_secs(3);
/// Writing after convergence, so the final state holds writes made after the last heal.
const COOL_DOWN: Duration = Duration::from_secs(2);

/// What a fault should do to one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The group must fail over within the target.
    Failover,
    /// The group must fail over within the target plus one lease: its primary's own node
    /// was cut from the cluster, fenced it, and the leader waits a further lease before
    /// failing over a fenced primary (so a Raft election alone never causes a failover); or
    /// the leader died mid-failover, and a new one waits out the old primary's lease again.
    FailoverAfterLease,
    /// The group's primary must not change.
    NoFailover,
    /// Either is right.
    Either,
}

/// One episode as it was played.
struct Played {
    event: FaultEvent,
    /// The end of its settle time.
    end_us: u64,
    expect: BTreeMap<String, Expect>,
}

/// The lab's state that healing needs: which servers and nodes a fault took down.
#[derive(Default)]
struct Down {
    nodes: BTreeSet<u64>,
    redis: BTreeSet<usize>,
}

/// Runs `schedule` in a new lab and judges it. An error means the run itself broke (the
/// lab did not start, a fault could not be injected), not that vigil failed a check.
pub fn run(schedule: &Schedule, options: &RunOptions, logs_dir: Option<&std::path::Path>) -> anyhow::Result<RunRecord> {
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut lab = ChaosLab::start(&options.vigil)?;
    lab.pg
        .sql(
            0,
            &format!(
                "CREATE SCHEMA IF NOT EXISTS vigil; \
                 CREATE TABLE IF NOT EXISTS vigil.epoch (group_name text PRIMARY KEY, epoch bigint NOT NULL, \
                 promoted_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE TABLE {PG_TABLE} (id bigint PRIMARY KEY)"
            ),
        )
        .context("create the writers' table")?;
    let origin = Instant::now();
    let now_us = || origin.elapsed().as_micros() as u64;
    let observer = Observer::start(&lab, options.vigil.clone(), origin);
    let writers = start_writers(&lab, origin);
    options.pause(WARM_UP)?;

    let mut played = Vec::new();
    let mut down = Down::default();
    for episode in &schedule.episodes {
        let view = wait_for_view(&observer)?;
        // The fault starts when its first action does: a kill in the middle of a failover
        // starts by killing the primary, well before the leader goes.
        let at_us = now_us();
        let (mut description, mut expect) = inject(&mut lab, &episode.fault, &view, &mut down)?;
        // A group still recovering from the last episode (a member rejoining, a failover
        // running) may have no candidate to promote: nothing is required of it then, though
        // every guarantee still holds.
        let unsettled: Vec<&String> =
            view.groups.iter().filter(|(_, group)| !group.all_up || group.running).map(|(name, _)| name).collect();
        for group in &unsettled {
            if let Some(expected @ (Expect::Failover | Expect::FailoverAfterLease)) = expect.get_mut(group.as_str()) {
                *expected = Expect::Either;
            }
        }
        if !unsettled.is_empty() {
            let names: Vec<&str> = unsettled.iter().map(|name| name.as_str()).collect();
            description.push_str(&format!(" [not yet settled at injection: {}]", names.join(", ")));
        }
        if let Fault::Flap { host, period } = &episode.fault {
            let host = resolve(host, &view)?;
            let until = Instant::now() + episode.hold;
            while Instant::now() + *period <= until {
                options.pause(*period / 2)?;
                lab.net.heal(&host)?;
                options.pause(*period / 2)?;
                lab.net.cut(&host)?;
            }
            options.pause(until.saturating_duration_since(Instant::now()))?;
        } else {
            options.pause(episode.hold)?;
        }
        heal(&mut lab, &episode.fault, &view, &mut down, &observer)?;
        let healed_at_us = now_us();
        options.pause(episode.settle)?;
        played.push(Played {
            event: FaultEvent {
                at_us,
                healed_at_us: Some(healed_at_us),
                description,
                kind: episode.fault.kind().into(),
            },
            end_us: now_us(),
            expect,
        });
    }

    let converge_started = Instant::now();
    let converged = converge(&lab, &observer, options);
    let converge_ms = converge_started.elapsed().as_millis();
    options.pause(COOL_DOWN)?;
    let mut histories: BTreeMap<String, Vec<WriteRecord>> = BTreeMap::new();
    for (group, writer) in writers {
        histories.entry(group).or_default().extend(writer.finish());
    }
    let held = match &converged {
        Ok(primaries) => Some(read_held(&lab, primaries)?),
        Err(_) => None,
    };
    let samples = observer.finish();
    let duration_us = now_us();

    let mut record = RunRecord {
        name: schedule.name.clone(),
        seed: schedule.seed,
        reproduce: options.reproduce.clone(),
        started_unix_ms,
        duration_us,
        faults: played.iter().map(|episode| episode.event.clone()).collect(),
        groups: Vec::new(),
        checks: Vec::new(),
    };
    record.checks.push(CheckResult {
        name: "convergence".into(),
        group: None,
        passed: converged.is_ok(),
        detail: match &converged {
            Ok(primaries) => format!(
                "one primary per group ({}), every replica following it, every member up for every node, \
                 {converge_ms} ms after the last heal",
                primaries
                    .iter()
                    .map(|(group, index)| format!("{group}: {}", member_name(group, *index)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(error) => format!("not converged within {:?}: {error:#}", options.converge_within),
        },
    });
    for (group, kind, synchronous) in [(PG_GROUP, "postgres", true), (REDIS_GROUP, "redis", false)] {
        let writes = histories.remove(group).unwrap_or_default();
        let primaries = primary_spans(&samples, group, duration_us);
        let failovers = failovers(&primaries, &record.faults, &writes);
        judge(&mut record.checks, group, synchronous, &writes, held.as_ref().map(|held| &held[group]));
        judge_episodes(&mut record.checks, group, &played, &failovers, options);
        record.groups.push(GroupRecord {
            name: group.into(),
            kind: kind.into(),
            synchronous,
            members: (0..3).map(|index| member_name(group, index)).collect(),
            primaries,
            writes,
            failovers,
        });
    }
    if !record.passed()
        && let Some(dir) = logs_dir
    {
        lab.save_logs(dir)?;
    }
    Ok(record)
}

fn member_name(group: &str, index: usize) -> String {
    if group == PG_GROUP { format!("pg{}", index + 1) } else { format!("redis{}", index + 1) }
}

fn member_index(member: &str) -> Option<usize> {
    let digits = member.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    digits.parse::<usize>().ok().and_then(|number| number.checked_sub(1))
}

/// A local writer beside each member and a client writer, for each group.
fn start_writers(lab: &ChaosLab, origin: Instant) -> Vec<(String, Writer)> {
    let mut writers = Vec::new();
    let mut first_value = 0i64;
    for (group, kind) in [(PG_GROUP, ServerKind::Postgres), (REDIS_GROUP, ServerKind::Redis)] {
        let endpoints: Vec<Endpoint> = (0..3)
            .map(|index| {
                let (host, port) =
                    if kind == ServerKind::Postgres { lab.pg.address(index) } else { lab.redis.address(index) };
                Endpoint { member: member_name(group, index), host, port }
            })
            .collect();
        let mut specs: Vec<WriterSpec> = DATACENTERS
            .iter()
            .enumerate()
            .map(|(index, dc)| WriterSpec {
                name: dc.to_string(),
                host: dc.to_string(),
                group: group.into(),
                kind,
                endpoints: vec![endpoints[index].clone()],
                first_value: 0,
            })
            .collect();
        specs.push(WriterSpec {
            name: CLIENT.into(),
            host: CLIENT.into(),
            group: group.into(),
            kind,
            endpoints,
            first_value: 0,
        });
        for mut spec in specs {
            first_value += 1_000_000_000;
            spec.first_value = first_value;
            writers.push((group.to_string(), Writer::start(&lab.net, spec, origin)));
        }
    }
    writers
}

fn wait_for_view(observer: &Observer) -> anyhow::Result<Sample> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(view) = observer.now()
            && view.leader.is_some()
            && view.groups.values().all(|group| group.primary.is_some())
        {
            return Ok(view);
        }
        if Instant::now() > deadline {
            bail!("no node reported a leader and both primaries for 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The datacenter of a group's primary in `view`.
fn primary_host(view: &Sample, group: &str) -> anyhow::Result<String> {
    let primary = view.groups.get(group).and_then(|group| group.primary.clone());
    let index = primary.as_deref().and_then(member_index).with_context(|| format!("no primary for group {group}"))?;
    Ok(DATACENTERS[index].to_string())
}

fn leader_host(view: &Sample) -> anyhow::Result<String> {
    let leader = view.leader.context("no leader")?;
    Ok(DATACENTERS[leader as usize - 1].to_string())
}

fn resolve(host: &HostRef, view: &Sample) -> anyhow::Result<String> {
    match host {
        HostRef::Dc(number) => Ok(format!("dc{number}")),
        HostRef::Client => Ok(CLIENT.into()),
        HostRef::PrimaryOf(group) => primary_host(view, group),
        HostRef::Leader => leader_host(view),
    }
}

/// What losing `host` (its link, its processes) should do to each group.
fn expect_losing(host: &str, view: &Sample, when_primary_there: Expect) -> anyhow::Result<BTreeMap<String, Expect>> {
    let mut expect = BTreeMap::new();
    for group in [PG_GROUP, REDIS_GROUP] {
        let there = primary_host(view, group)? == host;
        expect.insert(group.to_string(), if there { when_primary_there } else { Expect::NoFailover });
    }
    Ok(expect)
}

fn inject(
    lab: &mut ChaosLab,
    fault: &Fault,
    view: &Sample,
    down: &mut Down,
) -> anyhow::Result<(String, BTreeMap<String, Expect>)> {
    let where_ = |host: &str| -> String {
        let mut roles = Vec::new();
        if leader_host(view).is_ok_and(|leader| leader == host) {
            roles.push("Raft leader".to_string());
        }
        for group in [PG_GROUP, REDIS_GROUP] {
            if primary_host(view, group).is_ok_and(|primary| primary == host) {
                roles.push(format!("primary of {group}"));
            }
        }
        if roles.is_empty() { host.to_string() } else { format!("{host} ({})", roles.join(", ")) }
    };
    match fault {
        Fault::Cut { host } => {
            let host = resolve(host, view)?;
            lab.net.cut(&host)?;
            Ok((format!("cut the link of {}", where_(&host)), expect_losing(&host, view, Expect::Failover)?))
        }
        Fault::Kill { host } => {
            let host = resolve(host, view)?;
            let Some(id) = lab.node_in(&host) else {
                bail!("kill {host}: only a datacenter's processes may be killed")
            };
            lab.net.kill_all(&host)?;
            lab.reap_node(id);
            down.nodes.insert(id);
            down.redis.insert(id as usize - 1);
            Ok((format!("kill -9 every process in {}", where_(&host)), expect_losing(&host, view, Expect::Failover)?))
        }
        Fault::Partition { a, b } => {
            let (a, b) = (resolve(a, view)?, resolve(b, view)?);
            let expect = [PG_GROUP, REDIS_GROUP].map(|group| (group.to_string(), Expect::NoFailover)).into();
            if a == b {
                return Ok((format!("partition {a} from itself: nothing to do"), expect));
            }
            lab.net.partition(&a, &b)?;
            Ok((format!("partition {} | {}", where_(&a), where_(&b)), expect))
        }
        Fault::IsolateLeader => {
            let host = leader_host(view)?;
            lab.net.block_port(&host, RAFT_PORT)?;
            Ok((
                format!("isolate the vigil of {}", where_(&host)),
                expect_losing(&host, view, Expect::FailoverAfterLease)?,
            ))
        }
        Fault::IsolatePrimaryVigil { group } => {
            let host = primary_host(view, group)?;
            lab.net.block_port(&host, RAFT_PORT)?;
            Ok((
                format!("isolate the vigil of {}", where_(&host)),
                expect_losing(&host, view, Expect::FailoverAfterLease)?,
            ))
        }
        Fault::KillLeaderMidFailover { group } => {
            let index = member_index(view.groups[group.as_str()].primary.as_deref().unwrap_or_default())
                .context("no primary to kill")?;
            let epoch = view.groups[group.as_str()].epoch;
            if group == PG_GROUP {
                lab.pg.kill_postmaster(index)?;
            } else {
                lab.redis.kill(index)?;
                down.redis.insert(index);
            }
            // Catch the failover running: ask the nodes directly, faster than the observer.
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut seen = None;
            while Instant::now() < deadline && seen.is_none() {
                for id in 1..=3 {
                    let Some(status) = lab.status(id) else { continue };
                    let Some(state) = status["groups"].as_array().and_then(|groups| {
                        groups.iter().find(|candidate| candidate["name"] == group.as_str()).cloned()
                    }) else {
                        continue;
                    };
                    let running = !state["running"].is_null();
                    let finished = state["epoch"].as_u64().unwrap_or(0) > epoch && !running;
                    if (running || finished)
                        && let Some(leader) = status["leader"]["id"].as_u64()
                    {
                        let candidate = state["running"]["candidate"].as_str().and_then(member_index);
                        seen = Some((leader, running, candidate));
                        break;
                    }
                }
            }
            let (leader, running, candidate) = seen.context("the failover never started within 15 s")?;
            lab.kill_node(leader);
            down.nodes.insert(leader);
            let moment = if running { "while it ran" } else { "just after it finished" };
            let mut expect = expect_losing(DATACENTERS[leader as usize - 1], view, Expect::Either)?;
            // A double fault: the failover starts over on a new leader after an election, and
            // the leader killed may be the node beside the dead primary, which keeps renewing
            // its lease until it has made sure on its host that the server is down (a primary
            // merely unreachable from its node keeps its lease), and may die before it gave
            // the lease up. Either way the new leader waits out the old primary's lease as it
            // saw it: one lease more than a single fault may take.
            // Strict synchronous mode promotes only a confirmed synchronous standby, and the
            // lab's group keeps one: when the leader killed here is the node beside that
            // candidate, no other member may be promoted without risking acknowledged writes,
            // and nobody can lift the fence of that one (it is promoted born fenced), so the
            // group waits for that node to come back, as Patroni's strict synchronous mode
            // does. The checks on lost writes and convergence still judge the run.
            let strict_candidate_node_killed =
                group == PG_GROUP && candidate.is_some_and(|candidate| leader as usize == candidate + 1);
            let expected = if strict_candidate_node_killed { Expect::Either } else { Expect::FailoverAfterLease };
            expect.insert(group.clone(), expected);
            Ok((
                format!(
                    "kill {} of {group}, then kill -9 the vigil leader n{leader} {moment}",
                    member_name(group, index)
                ),
                expect,
            ))
        }
        Fault::RestartAll => {
            for id in 1..=3 {
                lab.kill_node(id);
            }
            for id in 1..=3 {
                lab.start_node(id)?;
            }
            // With every daemon gone at once, no lease can be renewed until the restarted
            // cluster has a leader again; a fence guard whose lease runs out first stops its
            // primary (it cannot tell a restart from a partition), and the group fails over.
            let expect = [PG_GROUP, REDIS_GROUP].map(|group| (group.to_string(), Expect::Either)).into();
            Ok(("kill -9 every vigil daemon and start them again".into(), expect))
        }
        Fault::Loss { host, percent } => {
            let host = resolve(host, view)?;
            lab.net.packet_loss(&host, *percent)?;
            // Loss into a watcher's host must never move a primary. Loss into the primary's
            // own host makes it as hard to reach for the other datacenters' probes as for
            // its clients; a failover away from it is then a judgement call either way.
            Ok((format!("{percent}% packet loss into {}", where_(&host)), expect_losing(&host, view, Expect::Either)?))
        }
        Fault::Flap { host, period } => {
            let host = resolve(host, view)?;
            lab.net.cut(&host)?;
            Ok((
                format!("flap the link of {} every {}", where_(&host), humantime::format_duration(*period)),
                expect_losing(&host, view, Expect::Either)?,
            ))
        }
    }
}

fn heal(lab: &mut ChaosLab, fault: &Fault, view: &Sample, down: &mut Down, observer: &Observer) -> anyhow::Result<()> {
    match fault {
        Fault::Cut { host } | Fault::Flap { host, .. } => lab.net.heal(&resolve(host, view)?)?,
        Fault::Partition { a, b } => {
            let (a, b) = (resolve(a, view)?, resolve(b, view)?);
            if a != b {
                lab.net.unpartition(&a, &b)?;
            }
        }
        Fault::IsolateLeader => lab.net.unblock_port(&leader_host(view)?, RAFT_PORT)?,
        Fault::IsolatePrimaryVigil { group } => lab.net.unblock_port(&primary_host(view, group)?, RAFT_PORT)?,
        Fault::Loss { host, .. } => lab.net.packet_loss(&resolve(host, view)?, 0)?,
        Fault::Kill { .. } | Fault::KillLeaderMidFailover { .. } | Fault::RestartAll => {}
    }
    // vigil comes back first: it brings a stopped PostgreSQL member back as a replica.
    for id in std::mem::take(&mut down.nodes) {
        lab.start_node(id)?;
    }
    // redis-server is restarted the way vigil's README asks an operator to: as a replica of
    // the current master, never as a master of its own.
    let master = wait_for_view(observer)?.groups[REDIS_GROUP].primary.as_deref().and_then(member_index);
    for index in std::mem::take(&mut down.redis) {
        match master {
            Some(master) if master != index => lab.redis.start_instance_replica_of(index, master)?,
            _ => lab.redis.start_instance(index)?,
        }
    }
    Ok(())
}

/// Waits until both groups have settled: the cluster records one primary per group with
/// no failover running and every member up for every node, the servers agree (that
/// member is the only writable one and both others replicate from it), and returns the
/// primaries' indexes.
fn converge(lab: &ChaosLab, observer: &Observer, options: &RunOptions) -> anyhow::Result<BTreeMap<String, usize>> {
    let deadline = Instant::now() + options.converge_within;
    loop {
        let error = match settled(lab, observer) {
            Ok(primaries) => return Ok(primaries),
            Err(error) => error,
        };
        if Instant::now() > deadline {
            return Err(error);
        }
        options.pause(Duration::from_millis(500))?;
    }
}

fn settled(lab: &ChaosLab, observer: &Observer) -> anyhow::Result<BTreeMap<String, usize>> {
    let view = observer.now().context("no node answers")?;
    view.leader.context("no Raft leader")?;
    let mut primaries = BTreeMap::new();
    for (group, state) in &view.groups {
        let primary =
            state.primary.as_deref().and_then(member_index).with_context(|| format!("{group}: no primary"))?;
        if state.running {
            bail!("{group}: a failover is running");
        }
        if !state.all_up {
            bail!("{group}: not every member is up for every node");
        }
        primaries.insert(group.clone(), primary);
    }
    let pg = primaries[PG_GROUP];
    if lab.pg.is_in_recovery(pg)? {
        bail!("{PG_GROUP}: pg{} is recorded as primary but is in recovery", pg + 1);
    }
    let streaming = lab.pg.sql(pg, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")?;
    if streaming != "2" {
        bail!("{PG_GROUP}: {streaming} replicas stream from pg{}, not 2", pg + 1);
    }
    let redis = primaries[REDIS_GROUP];
    let (master_host, _) = lab.redis.address(redis);
    for index in 0..3 {
        let info = lab.redis.info_replication(index)?;
        let role = info.get("role").map(String::as_str).unwrap_or_default();
        if index == redis {
            if role != "master" || info.get("connected_slaves").map(String::as_str) != Some("2") {
                bail!("{REDIS_GROUP}: redis{} is not a master with 2 replicas: {info:?}", index + 1);
            }
        } else if role != "slave"
            || info.get("master_host") != Some(&master_host)
            || info.get("master_link_status").map(String::as_str) != Some("up")
        {
            bail!("{REDIS_GROUP}: redis{} does not replicate from redis{}: {info:?}", index + 1, redis + 1);
        }
    }
    Ok(primaries)
}

/// What each group's primary holds at the end.
fn read_held(lab: &ChaosLab, primaries: &BTreeMap<String, usize>) -> anyhow::Result<BTreeMap<String, BTreeSet<i64>>> {
    let parse = |text: String| -> BTreeSet<i64> { text.lines().filter_map(|line| line.trim().parse().ok()).collect() };
    let pg = parse(lab.pg.sql(primaries[PG_GROUP], &format!("SELECT id FROM {PG_TABLE}"))?);
    let redis = parse(lab.redis.command(primaries[REDIS_GROUP], &["SMEMBERS", REDIS_SET])?);
    Ok([(PG_GROUP.to_string(), pg), (REDIS_GROUP.to_string(), redis)].into())
}

/// Every change of primary, attributed to the last fault injected before it, with the time
/// from that fault to the new primary's first acknowledged write.
fn failovers(primaries: &[crate::record::PrimarySpan], faults: &[FaultEvent], writes: &[WriteRecord]) -> Vec<Failover> {
    primaries
        .windows(2)
        .filter(|pair| pair[0].member != pair[1].member || pair[0].epoch != pair[1].epoch)
        .map(|pair| {
            let fault = faults.iter().rposition(|fault| fault.at_us <= pair[1].from_us);
            let rto_us = fault.and_then(|index| {
                let at = faults[index].at_us;
                writes
                    .iter()
                    .filter(|write| write.acknowledged && write.server == pair[1].member && write.at_us >= at)
                    .map(|write| write.at_us - at)
                    .min()
            });
            Failover {
                from: pair[0].member.clone(),
                to: pair[1].member.clone(),
                recorded_at_us: pair[1].from_us,
                fault,
                rto_us,
            }
        })
        .collect()
}

/// The checks over one group's whole history.
fn judge(
    checks: &mut Vec<CheckResult>,
    group: &str,
    synchronous: bool,
    writes: &[WriteRecord],
    held: Option<&BTreeSet<i64>>,
) {
    let acknowledged = writes.iter().filter(|write| write.acknowledged).count();
    let dual = history::dual_primaries(writes);
    checks.push(CheckResult {
        name: "dual primary".into(),
        group: Some(group.into()),
        passed: dual.is_empty(),
        detail: if dual.is_empty() {
            format!("no two members acknowledged writes at the same time ({acknowledged} acknowledged writes)")
        } else {
            describe(&dual)
        },
    });
    let stale = history::stale_epoch_writes(writes);
    checks.push(CheckResult {
        name: "stale epoch".into(),
        group: Some(group.into()),
        passed: stale.is_none(),
        detail: match &stale {
            None => "every acknowledged write carries an epoch at least as high as every earlier one".into(),
            Some(violation) => describe(std::slice::from_ref(violation)),
        },
    });
    let (name, lost) = match held {
        None => {
            checks.push(CheckResult {
                name: "lost writes".into(),
                group: Some(group.into()),
                passed: false,
                detail: "not checked: the cluster did not converge, so there is no final primary to read".into(),
            });
            return;
        }
        Some(held) if synchronous => ("lost writes (synchronous: none allowed)", history::lost_writes(writes, held)),
        Some(held) => (
            "lost writes (asynchronous: bounded)",
            history::loss_beyond_bound(writes, held, ASYNC_LOSS_BOUND.as_micros() as u64),
        ),
    };
    let missing = held.map(|held| writes.iter().filter(|w| w.acknowledged && !held.contains(&w.value)).count());
    checks.push(CheckResult {
        name: name.into(),
        group: Some(group.into()),
        passed: lost.is_none(),
        detail: match &lost {
            None if synchronous => format!("all {acknowledged} acknowledged writes are on the final primary"),
            None => format!(
                "{} of {acknowledged} acknowledged writes missing, each acknowledged within {} ms of its primary's last \
                 acknowledgement (the lease window)",
                missing.unwrap_or(0),
                ASYNC_LOSS_BOUND.as_millis()
            ),
            Some(violation) => describe(std::slice::from_ref(violation)),
        },
    });
}

/// The per-episode checks: a failover where one must happen, in time; none where none may.
fn judge_episodes(
    checks: &mut Vec<CheckResult>,
    group: &str,
    played: &[Played],
    failovers: &[Failover],
    options: &RunOptions,
) {
    for (index, episode) in played.iter().enumerate() {
        let within: Vec<&Failover> = failovers
            .iter()
            .filter(|failover| {
                failover.recorded_at_us >= episode.event.at_us && failover.recorded_at_us <= episode.end_us
            })
            .collect();
        let fault = format!("fault {} ({})", index + 1, episode.event.description);
        match episode.expect.get(group).copied().unwrap_or(Expect::Either) {
            expect @ (Expect::Failover | Expect::FailoverAfterLease) => {
                let target = if expect == Expect::FailoverAfterLease {
                    options.rto_target + DEFAULT_LEASE
                } else {
                    options.rto_target
                };
                let rto = within.first().and_then(|failover| failover.rto_us);
                let passed = rto.is_some_and(|rto| rto <= target.as_micros() as u64);
                checks.push(CheckResult {
                    name: "failover in time".into(),
                    group: Some(group.into()),
                    passed,
                    detail: match (within.first(), rto) {
                        (None, _) => format!("{fault}: no failover happened"),
                        (Some(failover), Some(rto)) => format!(
                            "{fault}: {} → {}, first write on the new primary {} ms after the fault (target {} ms)",
                            failover.from,
                            failover.to,
                            rto / 1000,
                            target.as_millis()
                        ),
                        (Some(failover), None) => {
                            format!(
                                "{fault}: {} → {}, but the new primary acknowledged no write",
                                failover.from, failover.to
                            )
                        }
                    },
                });
            }
            Expect::NoFailover => checks.push(CheckResult {
                name: "no needless failover".into(),
                group: Some(group.into()),
                passed: within.is_empty(),
                detail: if within.is_empty() {
                    format!("{fault}: the primary stayed")
                } else {
                    let moves: Vec<String> = within.iter().map(|f| format!("{} → {}", f.from, f.to)).collect();
                    format!("{fault}: failed over although a quorum could see a healthy primary: {}", moves.join(", "))
                },
            }),
            Expect::Either => {}
        }
    }
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|violation| match violation {
            Violation::DualPrimary { first, second, overlap_us } => {
                format!("{first} and {second} both acknowledged writes for {} ms", overlap_us / 1000)
            }
            Violation::LostWrites { values } => {
                format!("{} acknowledged writes lost: {}", values.len(), sample(values))
            }
            Violation::LossBeyondBound { values, bound_us } => format!(
                "{} acknowledged writes lost that were acknowledged more than {} ms before their primary stopped: {}",
                values.len(),
                bound_us / 1000,
                sample(values)
            ),
            Violation::StaleEpoch { values } => format!(
                "{} writes acknowledged at a lower epoch than an earlier acknowledged write: {}",
                values.len(),
                sample(values)
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn sample(values: &[i64]) -> String {
    let shown: Vec<String> = values.iter().take(5).map(i64::to_string).collect();
    if values.len() > 5 { format!("{}, ...", shown.join(", ")) } else { shown.join(", ") }
}
