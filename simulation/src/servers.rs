//! The fake servers: one per member, with just enough of PostgreSQL and Redis to judge
//! vigil by (running, primary or replica, fenced, whom it follows, how far its history
//! goes), a client that writes to every writable server, and replication.
//!
//! Histories are positions on *branches*: the first primary writes on branch 0, and every
//! promotion starts a new branch forked where the promoted member stood. A replica can
//! stream from a server only while its own position lies on that server's history
//! (PostgreSQL follows a timeline switch only from behind the fork point); otherwise its
//! history diverged and it needs a rejoin (`pg_rewind`). Redis replicas resynchronise in
//! full, so they follow any master. What clients were told is kept per branch (the highest
//! acknowledged position), which is what the lost-write checker compares a promotion with.

use std::collections::{BTreeMap, BTreeSet};

use vigil_consensus::coordinator::SyncGeneration;
use vigil_consensus::group::{Health, MemberFacts, Verdict};

use crate::net::{Host, Net};

/// Bytes one client write adds to the replication stream.
pub const WRITE_BYTES: u64 = 100;

/// The kind of server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL: fenced read-only, stoppable by its node, guarded.
    Postgres,
    /// Redis: fenced by refusing writes (by its node, or by the guard); vigil never starts
    /// or stops it.
    Redis,
}

/// Which standbys commits on a primary wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncSetting {
    /// None: every write is acknowledged by the primary alone.
    Off,
    /// `*`: any one streaming standby.
    Any,
    /// Every one of these.
    All(BTreeSet<String>),
}

/// One fake server.
#[derive(Clone, Debug)]
pub struct Server {
    /// The member's name.
    pub name: String,
    /// Its host.
    pub host: Host,
    /// "host:port", as replicas report their upstream.
    pub address: String,
    /// Whether the server process runs.
    pub running: bool,
    /// Primary (master) or replica.
    pub primary: bool,
    /// Refusing writes (PostgreSQL read-only, Redis `min-replicas-to-write` raised).
    pub fenced: bool,
    /// The member a replica follows.
    pub upstream: Option<usize>,
    /// Whether a replica streams from its upstream now.
    pub streaming: bool,
    /// The branch its history is on.
    pub branch: u32,
    /// How far its history goes on that branch.
    pub lsn: u64,
    /// The epoch written into it (replicated to its replicas).
    pub epoch: Option<u64>,
    /// A primary's synchronous setting.
    pub sync: SyncSetting,
    /// The generation of that setting: older requests are refused.
    pub sync_generation: SyncGeneration,
    /// A fault: it reports streaming but replays nothing.
    pub stalled: bool,
}

impl Server {
    /// Whether it takes writes.
    pub fn writable(&self) -> bool {
        self.running && self.primary && !self.fenced
    }
}

/// A branch of a group's history: where it forked from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Branch {
    /// The parent branch and the position on it where this one forked.
    pub parent: Option<(u32, u64)>,
}

/// One group of servers and its history.
#[derive(Clone, Debug)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// PostgreSQL or Redis.
    pub kind: Kind,
    /// Strict synchronous mode: the lost-write checker applies.
    pub strict: bool,
    /// The servers, member `i` on host `i`.
    pub servers: Vec<Server>,
    /// Every branch ever started.
    pub branches: Vec<Branch>,
    /// The highest acknowledged position on each branch.
    pub acknowledged: BTreeMap<u32, u64>,
}

impl Group {
    /// A group whose first member is a running primary and the others its streaming replicas.
    pub fn new(name: &str, kind: Kind, strict: bool, hosts: usize, port: u16) -> Self {
        let prefix = match kind {
            Kind::Postgres => "pg",
            Kind::Redis => "redis",
        };
        let servers = (0..hosts)
            .map(|host| Server {
                name: format!("{prefix}{}", host + 1),
                host,
                address: format!("{}:{port}", host_address(host)),
                running: true,
                primary: host == 0,
                fenced: false,
                upstream: (host != 0).then_some(0),
                streaming: host != 0,
                branch: 0,
                lsn: 0,
                epoch: None,
                // A strict primary waits for any standby until vigil names one, as a promotion
                // leaves it.
                sync: if strict && host == 0 { SyncSetting::Any } else { SyncSetting::Off },
                sync_generation: SyncGeneration::default(),
                stalled: false,
            })
            .collect();
        Group {
            name: name.to_string(),
            kind,
            strict,
            servers,
            branches: vec![Branch { parent: None }],
            acknowledged: BTreeMap::new(),
        }
    }

    /// The index of the member named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|server| server.name == name)
    }

    /// The members that take writes now.
    pub fn writable(&self) -> Vec<usize> {
        (0..self.servers.len()).filter(|&index| self.servers[index].writable()).collect()
    }

    /// Whether position (`branch`, `lsn`) lies on the history that ends at (`on_branch`,
    /// `on_lsn`).
    pub fn holds(&self, branch: u32, lsn: u64, on_branch: u32, on_lsn: u64) -> bool {
        let (mut walk_branch, mut walk_lsn) = (on_branch, on_lsn);
        loop {
            if walk_branch == branch {
                return lsn <= walk_lsn;
            }
            match self.branches[walk_branch as usize].parent {
                Some((parent, fork)) => {
                    walk_branch = parent;
                    walk_lsn = walk_lsn.min(fork);
                }
                None => return false,
            }
        }
    }

    /// Starts a branch forked at the position of `member`, which becomes its writer.
    pub fn fork(&mut self, member: usize) {
        let server = &self.servers[member];
        self.branches.push(Branch { parent: Some((server.branch, server.lsn)) });
        let branch = (self.branches.len() - 1) as u32;
        self.servers[member].branch = branch;
    }

    /// Whether `replica` can stream from `source` now: both run, their hosts reach each
    /// other, and (PostgreSQL) its history lies on the source's.
    pub fn can_stream(&self, replica: usize, source: usize, net: &Net) -> bool {
        let (from, to) = (&self.servers[source], &self.servers[replica]);
        from.running
            && to.running
            && replica != source
            && net.reachable(from.host, to.host)
            && (self.kind == Kind::Redis || self.holds(to.branch, to.lsn, from.branch, from.lsn))
    }

    /// One round of replication: every running replica streams from its upstream if it can,
    /// and copies its position unless stalled.
    pub fn replicate(&mut self, net: &Net) {
        for index in 0..self.servers.len() {
            let server = &self.servers[index];
            if !server.running || server.primary {
                continue;
            }
            let streaming = server.upstream.is_some_and(|upstream| self.can_stream(index, upstream, net));
            self.servers[index].streaming = streaming;
            if streaming && !self.servers[index].stalled {
                let upstream = &self.servers[self.servers[index].upstream.expect("streaming has an upstream")];
                let (branch, lsn, epoch) = (upstream.branch, upstream.lsn, upstream.epoch);
                let replica = &mut self.servers[index];
                (replica.branch, replica.lsn, replica.epoch) = (branch, lsn, epoch);
            }
        }
    }

    /// One write from the client to every writable server. A write is acknowledged when the
    /// primary waits for no standby, or when the standbys its setting names (any one for `*`)
    /// stream from it, replay and are reachable: they then hold it. Otherwise it is written
    /// locally and the client waits (never acknowledged here).
    pub fn write(&mut self, net: &Net) {
        for primary in self.writable() {
            self.servers[primary].lsn += WRITE_BYTES;
            let holders: Option<Vec<usize>> = match &self.servers[primary].sync {
                SyncSetting::Off => Some(Vec::new()),
                SyncSetting::Any => self.ready_standbys(primary, net).into_iter().next().map(|one| vec![one]),
                SyncSetting::All(names) => {
                    let ready = self.ready_standbys(primary, net);
                    let named: Vec<usize> = names.iter().filter_map(|name| self.index_of(name)).collect();
                    (named.len() == names.len() && named.iter().all(|index| ready.contains(index))).then_some(named)
                }
            };
            let Some(holders) = holders else { continue };
            let (branch, lsn, epoch) =
                (self.servers[primary].branch, self.servers[primary].lsn, self.servers[primary].epoch);
            for holder in holders {
                let standby = &mut self.servers[holder];
                (standby.branch, standby.lsn, standby.epoch) = (branch, lsn, epoch);
            }
            let acknowledged = self.acknowledged.entry(branch).or_default();
            *acknowledged = (*acknowledged).max(lsn);
        }
    }

    /// The replicas that stream from `primary` and replay what it sends.
    fn ready_standbys(&self, primary: usize, net: &Net) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&index| {
                let server = &self.servers[index];
                !server.primary
                    && server.upstream == Some(primary)
                    && server.streaming
                    && !server.stalled
                    && self.can_stream(index, primary, net)
            })
            .collect()
    }

    /// What a probe of `member` that reached its running server sees, as the real probes
    /// classify it.
    pub fn verdict(&self, member: usize) -> Verdict {
        let server = &self.servers[member];
        if server.primary {
            let facts = MemberFacts {
                in_recovery: false,
                current_lsn: Some(server.lsn),
                epoch: server.epoch,
                ..MemberFacts::default()
            };
            let (health, reason) = match (server.fenced, self.kind) {
                (false, _) => (Health::Up, None),
                (true, Kind::Postgres) => (
                    Health::Degraded,
                    Some("primary refuses writes: cannot execute INSERT in a read-only transaction".to_string()),
                ),
                (true, Kind::Redis) => (
                    Health::Degraded,
                    Some("master refuses writes: NOREPLICAS Not enough good replicas to write.".to_string()),
                ),
            };
            return Verdict { health, facts: Some(facts), reason };
        }
        let upstream_address = server.upstream.map(|upstream| self.servers[upstream].address.clone());
        let facts = match self.kind {
            // pg_stat_wal_receiver has no row unless the receiver runs.
            Kind::Postgres => MemberFacts {
                in_recovery: true,
                receive_lsn: Some(server.lsn),
                replay_lsn: Some(server.lsn),
                receiver_status: server.streaming.then(|| "streaming".to_string()),
                upstream: if server.streaming { upstream_address } else { None },
                epoch: server.epoch,
                ..MemberFacts::default()
            },
            // INFO replication names the configured master whatever the link does.
            Kind::Redis => MemberFacts {
                in_recovery: true,
                receive_lsn: Some(server.lsn),
                replay_lsn: Some(server.lsn),
                receiver_status: Some(if server.streaming { "streaming" } else { "link down" }.to_string()),
                upstream: upstream_address,
                epoch: server.epoch,
                ..MemberFacts::default()
            },
        };
        let (health, reason) = match (server.streaming, self.kind) {
            (true, _) => (Health::Up, None),
            (false, Kind::Postgres) => {
                (Health::Degraded, Some("replica not streaming (WAL receiver not running)".to_string()))
            }
            (false, Kind::Redis) => (Health::Degraded, Some("replica's link to its master is down".to_string())),
        };
        Verdict { health, facts: Some(facts), reason }
    }
}

/// The address of host `host` (10.0.1.1 for the first).
pub fn host_address(host: Host) -> String {
    format!("10.0.{}.1", host + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_behind_the_fork_follows_the_new_branch_and_one_ahead_does_not() {
        let mut group = Group::new("main", Kind::Postgres, false, 3, 5432);
        group.servers[0].lsn = 1_000;
        group.servers[1].lsn = 900;
        group.servers[2].lsn = 1_000;
        group.servers[1].primary = true;
        group.fork(1);
        group.servers[1].lsn = 1_200;
        assert!(group.holds(0, 900, 1, 1_200), "its own past");
        assert!(!group.holds(0, 1_000, 1, 1_200), "the old primary went further than the fork");
        group.servers[2].upstream = Some(1);
        let net = Net::new(3);
        assert!(!group.can_stream(2, 1, &net), "diverged: needs a rewind");
        group.servers[2].lsn = 800;
        assert!(group.can_stream(2, 1, &net));
    }

    #[test]
    fn a_strict_primary_acknowledges_only_what_its_standby_holds() {
        let mut net = Net::new(3);
        let mut group = Group::new("main", Kind::Postgres, true, 3, 5432);
        group.servers[0].sync = SyncSetting::All(BTreeSet::from(["pg2".to_string()]));
        group.write(&net);
        assert_eq!(group.acknowledged.get(&0), Some(&WRITE_BYTES));
        assert_eq!(group.servers[1].lsn, WRITE_BYTES);
        net.cut(0, 1, true);
        group.replicate(&net);
        group.write(&net);
        assert_eq!(group.acknowledged.get(&0), Some(&WRITE_BYTES), "blocked: not acknowledged");
        assert_eq!(group.servers[0].lsn, 2 * WRITE_BYTES, "but written locally");
    }
}
