//! Fault schedules: what to break, when, and for how long, read from a scenario file or
//! generated from a seed. A schedule names hosts abstractly ("the datacenter of group
//! main's primary", "the Raft leader's datacenter"); the runner resolves them when the
//! fault is injected, so one schedule means the same thing whichever member is primary.
//!
//! A scenario file (TOML):
//!
//! ```toml
//! name = "lose the primary's datacenter, then flap a replica's link"
//! [[episode]]
//! fault = "cut"            # see `Fault` for every kind and its fields
//! host = "primary:main"    # dc1..dc3, client, primary:<group>, leader
//! hold = "8s"              # how long the fault stays before it is healed
//! settle = "5s"            # how long the run waits after the heal before the next one
//! [[episode]]
//! fault = "flap"
//! host = "dc3"
//! period = "2s"
//! hold = "10s"
//! ```
//!
//! [`Schedule::from_toml`] and [`Schedule::load`] reject what the runner could only
//! misread: unknown fields and fault kinds, an empty name, no episodes, zero holds and
//! periods, a flap slower than its hold, a partition of a host with itself, a loss outside
//! 1 to 100 percent and empty group names. [`Schedule::generate`] draws a schedule from a
//! seed, and [`Schedule::to_toml`] writes any schedule back as a scenario file, so a failing
//! seed can be kept and replayed as a file.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize};

/// A host as a schedule names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostRef {
    /// Datacenter 1 to 3 (`dc1`..`dc3`).
    Dc(u8),
    /// The client host (`client`).
    Client,
    /// The datacenter of the named group's primary at injection (`primary:<group>`).
    PrimaryOf(String),
    /// The datacenter of the Raft leader at injection (`leader`).
    Leader,
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Take the host's link down; heal brings it up.
    Cut {
        /// The host.
        host: HostRef,
    },
    /// SIGKILL every process in the host (vigil, its fence guard, the servers); heal starts
    /// vigil again (which brings PostgreSQL back as a replica) and redis-server as a replica
    /// of the current master.
    Kill {
        /// The host.
        host: HostRef,
    },
    /// Drop every packet between two hosts.
    Partition {
        /// One host.
        a: HostRef,
        /// The other.
        b: HostRef,
    },
    /// Cut the Raft leader's vigil from its peers (its QUIC port), leaving the servers
    /// beside it reachable.
    IsolateLeader,
    /// Cut the vigil node beside the group's primary from its peers, leaving the primary
    /// reachable.
    IsolatePrimaryVigil {
        /// The group.
        group: String,
    },
    /// Kill the group's primary server, wait until the leader has started the failover,
    /// then SIGKILL the leader's vigil; heal starts it again.
    KillLeaderMidFailover {
        /// The group.
        group: String,
    },
    /// SIGKILL every vigil daemon (fence guards survive, as in production) and start them
    /// all again at once.
    RestartAll,
    /// Drop `percent` of the packets arriving at the host.
    Loss {
        /// The host.
        host: HostRef,
        /// 1 to 100.
        #[serde(deserialize_with = "deserialize_percent")]
        percent: u8,
    },
    /// Cut and heal the host's link every `period` (half down, half up) while the fault is
    /// held.
    Flap {
        /// The host.
        host: HostRef,
        /// A full down-and-up cycle.
        #[serde(with = "humantime_serde")]
        period: Duration,
    },
}

/// One fault, held for a while, then healed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// How long it stays before it is healed.
    #[serde(with = "humantime_serde", default = "default_hold")]
    pub hold: Duration,
    /// How long the run waits after the heal before the next episode.
    #[serde(with = "humantime_serde", default = "default_settle")]
    pub settle: Duration,
}

/// A whole schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// A name for reports.
    pub name: String,
    /// The seed it was generated from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seed_format")]
    pub seed: Option<u64>,
    /// The episodes, run one after the other.
    // Defaulted so that a file without any gets our "no episodes" message rather than
    // serde's "missing field".
    #[serde(rename = "episode", default)]
    pub episodes: Vec<Episode>,
}

fn default_hold() -> Duration {
    Duration::from_secs(8)
}

fn default_settle() -> Duration {
    Duration::from_secs(5)
}

impl TryFrom<String> for HostRef {
    type Error = String;

    fn try_from(text: String) -> Result<HostRef, String> {
        match text.as_str() {
            "client" => Ok(HostRef::Client),
            "leader" => Ok(HostRef::Leader),
            "dc1" => Ok(HostRef::Dc(1)),
            "dc2" => Ok(HostRef::Dc(2)),
            "dc3" => Ok(HostRef::Dc(3)),
            _ => match text.strip_prefix("primary:") {
                Some(group) if !group.is_empty() => Ok(HostRef::PrimaryOf(group.to_string())),
                _ => Err(format!("host `{text}`: expected dc1, dc2, dc3, client, leader or primary:<group>")),
            },
        }
    }
}

impl From<HostRef> for String {
    fn from(host: HostRef) -> String {
        host.to_string()
    }
}

/// The scenario-file spelling: `dc2`, `client`, `primary:main`, `leader`.
impl fmt::Display for HostRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRef::Dc(number) => write!(f, "dc{number}"),
            HostRef::Client => f.write_str("client"),
            HostRef::PrimaryOf(group) => write!(f, "primary:{group}"),
            HostRef::Leader => f.write_str("leader"),
        }
    }
}

/// Why a scenario could not be read: the message names the file (from [`Schedule::load`]),
/// the episode and the field, and says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ScheduleError {
    message: String,
}

impl ScheduleError {
    fn new(message: impl Into<String>) -> ScheduleError {
        ScheduleError { message: message.into() }
    }

    fn in_episode(number: usize, message: impl fmt::Display) -> ScheduleError {
        ScheduleError::new(format!("episode {number}: {message}"))
    }
}

impl Fault {
    /// Every fault kind, spelled as the `fault` field of a scenario file, in declaration order.
    pub const ALL_KINDS: [&'static str; 9] = [
        "cut",
        "kill",
        "partition",
        "isolate-leader",
        "isolate-primary-vigil",
        "kill-leader-mid-failover",
        "restart-all",
        "loss",
        "flap",
    ];

    /// The kind, spelled as the `fault` field of a scenario file (one of [`Fault::ALL_KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Cut { .. } => "cut",
            Fault::Kill { .. } => "kill",
            Fault::Partition { .. } => "partition",
            Fault::IsolateLeader => "isolate-leader",
            Fault::IsolatePrimaryVigil { .. } => "isolate-primary-vigil",
            Fault::KillLeaderMidFailover { .. } => "kill-leader-mid-failover",
            Fault::RestartAll => "restart-all",
            Fault::Loss { .. } => "loss",
            Fault::Flap { .. } => "flap",
        }
    }
}

/// A short phrase for logs and reports, e.g. "partition dc1 | dc3" or "flap dc3 every 2s".
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Cut { host } => write!(f, "cut {host}"),
            Fault::Kill { host } => write!(f, "kill -9 everything on {host}"),
            Fault::Partition { a, b } => write!(f, "partition {a} | {b}"),
            Fault::IsolateLeader => f.write_str("isolate the leader's vigil"),
            Fault::IsolatePrimaryVigil { group } => write!(f, "isolate the vigil beside primary:{group}"),
            Fault::KillLeaderMidFailover { group } => write!(f, "kill -9 the leader mid-failover of {group}"),
            Fault::RestartAll => f.write_str("restart every vigil"),
            Fault::Loss { host, percent } => write!(f, "{percent}% packet loss on {host}"),
            Fault::Flap { host, period } => write!(f, "flap {host} every {}", humantime::format_duration(*period)),
        }
    }
}

impl Schedule {
    /// Parses and validates a scenario file's text.
    ///
    /// Syntax, type and unknown-field errors keep the `toml` crate's message, which shows
    /// the line; validation errors name the episode (counting from 1) and the field.
    pub fn from_toml(text: &str) -> Result<Schedule, ScheduleError> {
        let schedule: Schedule = toml::from_str(text).map_err(|error| ScheduleError::new(error.to_string()))?;
        reject_fields_of_fieldless_faults(text, &schedule)?;
        schedule.validate()?;
        Ok(schedule)
    }

    /// Reads, parses and validates a scenario file; every error starts with the path.
    pub fn load(path: &Path) -> Result<Schedule, ScheduleError> {
        let at_path = |message: &dyn fmt::Display| ScheduleError::new(format!("{}: {message}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|error| at_path(&format_args!("could not read: {error}")))?;
        Schedule::from_toml(&text).map_err(|error| at_path(&error))
    }

    /// Checks what the types alone cannot: see the module documentation for the rules.
    ///
    /// [`Schedule::from_toml`] already calls it; it is public for schedules built in code.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.name.trim().is_empty() {
            return Err(ScheduleError::new(format!("name = {:?}: expected a name for reports", self.name)));
        }
        if self.episodes.is_empty() {
            return Err(ScheduleError::new("no episodes: expected at least one [[episode]]"));
        }
        for (index, episode) in self.episodes.iter().enumerate() {
            episode.validate().map_err(|message| ScheduleError::in_episode(index + 1, message))?;
        }
        Ok(())
    }

    /// A random schedule of `episodes` episodes over the lab's `groups`, the same for the
    /// same arguments on every machine and release (ChaCha8, whose stream is fixed).
    ///
    /// Each episode's kind is uniform over [`Fault::ALL_KINDS`]. A single host is
    /// `primary:<group>` half the time and otherwise one of `dc1`..`dc3`, because faults at
    /// the primary are the ones that force failovers. A partition either splits two of
    /// `dc1`..`dc3` and `client`, or `primary:<group>` from one of those; it never names
    /// the same host twice, though the primary's datacenter may turn out to be the other
    /// side at run time. Loss is 10 to 40 percent, flap periods 2, 3 or 4 seconds, holds 6
    /// to 10 whole seconds (so every flap cycles at least once), settles 5 seconds.
    ///
    /// # Panics
    ///
    /// If `groups` is empty or `episodes` is zero, since no valid schedule exists then.
    pub fn generate(seed: u64, episodes: usize, groups: &[&str]) -> Schedule {
        assert!(!groups.is_empty(), "Schedule::generate needs at least one group to target");
        assert!(episodes > 0, "Schedule::generate needs at least one episode");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let episodes = (0..episodes).map(|_| random_episode(&mut rng, groups)).collect();
        Schedule { name: format!("seed {seed}"), seed: Some(seed), episodes }
    }

    /// The schedule as a scenario file that [`Schedule::from_toml`] reads back equal.
    pub fn to_toml(&self) -> String {
        // The types hold nothing TOML cannot express: seeds above i64::MAX are written as
        // strings by `seed_format`, and durations as humantime strings.
        toml::to_string(self).expect("a schedule always serializes to TOML")
    }
}

impl Episode {
    /// Returns the message without the episode number, which only the schedule knows.
    fn validate(&self) -> Result<(), String> {
        if self.hold.is_zero() {
            return Err(format!("hold = {}: expected more than 0", humantime::format_duration(self.hold)));
        }
        match &self.fault {
            Fault::Cut { host } => validate_host("host", host),
            // The client host runs the writers, inside this very process: it has nothing of
            // its own to kill.
            Fault::Kill { host: HostRef::Client } => {
                Err("host = \"client\": expected a datacenter (the client host runs only the writers)".to_string())
            }
            Fault::Kill { host } => validate_host("host", host),
            Fault::Partition { a, b } => {
                validate_host("a", a)?;
                validate_host("b", b)?;
                if a == b {
                    return Err(format!("partition of {a} with itself: expected two different hosts in a and b"));
                }
                Ok(())
            }
            Fault::IsolateLeader | Fault::RestartAll => Ok(()),
            Fault::IsolatePrimaryVigil { group } | Fault::KillLeaderMidFailover { group } => {
                if group.trim().is_empty() {
                    return Err(format!("group = {group:?}: expected a group name"));
                }
                Ok(())
            }
            Fault::Loss { host, percent } => {
                validate_host("host", host)?;
                if !(1..=100).contains(percent) {
                    return Err(format!("percent = {percent}: expected 1 to 100"));
                }
                Ok(())
            }
            Fault::Flap { host, period } => {
                validate_host("host", host)?;
                if period.is_zero() {
                    return Err(format!("period = {}: expected more than 0", humantime::format_duration(*period)));
                }
                if *period > self.hold {
                    return Err(format!(
                        "period = {}: expected at most hold = {}, since the link must flap at least once",
                        humantime::format_duration(*period),
                        humantime::format_duration(self.hold),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Parsing never yields these bad hosts, but a schedule built in code can, and its
/// `to_toml` would then write a file that does not load.
fn validate_host(field: &str, host: &HostRef) -> Result<(), String> {
    match host {
        HostRef::Dc(1..=3) | HostRef::Client | HostRef::Leader => Ok(()),
        HostRef::Dc(_) => Err(format!("{field} = \"{host}\": expected dc1, dc2 or dc3")),
        HostRef::PrimaryOf(group) if group.trim().is_empty() => {
            Err(format!("{field} = \"{host}\": expected a group name after primary:"))
        }
        HostRef::PrimaryOf(_) => Ok(()),
    }
}

/// Serde lets an internally tagged unit variant (`isolate-leader`, `restart-all`) ignore
/// every other field, so `host = "dc1"` on one would silently do nothing; look at the raw
/// tables to refuse it like the other kinds' unknown fields.
fn reject_fields_of_fieldless_faults(text: &str, schedule: &Schedule) -> Result<(), ScheduleError> {
    let raw: toml::Table = toml::from_str(text).map_err(|error| ScheduleError::new(error.to_string()))?;
    let Some(raw_episodes) = raw.get("episode").and_then(toml::Value::as_array) else {
        return Ok(());
    };
    for (index, (episode, raw_episode)) in schedule.episodes.iter().zip(raw_episodes).enumerate() {
        if !matches!(episode.fault, Fault::IsolateLeader | Fault::RestartAll) {
            continue;
        }
        let Some(table) = raw_episode.as_table() else { continue };
        if let Some(field) = table.keys().find(|key| !matches!(key.as_str(), "fault" | "hold" | "settle")) {
            return Err(ScheduleError::in_episode(
                index + 1,
                format_args!(
                    "unknown field `{field}`: fault = \"{}\" expected only `hold` and `settle`",
                    episode.fault.kind()
                ),
            ));
        }
    }
    Ok(())
}

/// Serde's own message for `percent = 300` ("expected u8") would not name the field.
fn deserialize_percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let percent = i64::deserialize(deserializer)?;
    u8::try_from(percent).map_err(|_| serde::de::Error::custom(format_args!("percent = {percent}: expected 1 to 100")))
}

/// TOML integers are signed 64-bit, but seeds are any u64: seeds above `i64::MAX` are
/// written as decimal strings, and both forms are read back.
mod seed_format {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Only called for `Some` thanks to `skip_serializing_if`, but handles `None` anyway.
    pub fn serialize<S: Serializer>(seed: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match seed {
            Some(seed) if i64::try_from(*seed).is_ok() => serializer.serialize_some(seed),
            Some(seed) => serializer.serialize_some(&seed.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(SeedVisitor).map(Some)
    }

    struct SeedVisitor;

    impl Visitor<'_> for SeedVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("seed: expected an integer from 0 to 18446744073709551615 (as a string above 2^63 - 1)")
        }

        fn visit_u64<E: de::Error>(self, seed: u64) -> Result<u64, E> {
            Ok(seed)
        }

        fn visit_i64<E: de::Error>(self, seed: i64) -> Result<u64, E> {
            u64::try_from(seed).map_err(|_| E::custom(format_args!("seed = {seed}: expected 0 or more")))
        }

        fn visit_str<E: de::Error>(self, seed: &str) -> Result<u64, E> {
            seed.parse().map_err(|_| {
                E::custom(format_args!("seed = {seed:?}: expected an integer from 0 to 18446744073709551615"))
            })
        }
    }
}

/// The draw order (kind, then targets, then hold) is part of what a seed means: changing
/// it changes every seed's schedule, so old failing seeds would no longer reproduce.
fn random_episode(rng: &mut ChaCha8Rng, groups: &[&str]) -> Episode {
    let kind = Fault::ALL_KINDS[rng.random_range(0..Fault::ALL_KINDS.len())];
    let fault = match kind {
        "cut" => Fault::Cut { host: random_host(rng, groups) },
        "kill" => Fault::Kill { host: random_host(rng, groups) },
        "partition" => random_partition(rng, groups),
        "isolate-leader" => Fault::IsolateLeader,
        "isolate-primary-vigil" => Fault::IsolatePrimaryVigil { group: random_group(rng, groups) },
        "kill-leader-mid-failover" => Fault::KillLeaderMidFailover { group: random_group(rng, groups) },
        "restart-all" => Fault::RestartAll,
        "loss" => Fault::Loss { host: random_host(rng, groups), percent: rng.random_range(10..=40) },
        "flap" => Fault::Flap { host: random_host(rng, groups), period: Duration::from_secs(rng.random_range(2..=4)) },
        other => unreachable!("fault kind {other} is in ALL_KINDS but has no generator"),
    };
    Episode { fault, hold: Duration::from_secs(rng.random_range(6..=10)), settle: Duration::from_secs(5) }
}

fn random_group(rng: &mut ChaCha8Rng, groups: &[&str]) -> String {
    groups[rng.random_range(0..groups.len())].to_string()
}

fn random_dc(rng: &mut ChaCha8Rng) -> HostRef {
    HostRef::Dc(rng.random_range(1..=3))
}

fn random_host(rng: &mut ChaCha8Rng, groups: &[&str]) -> HostRef {
    if rng.random_bool(0.5) { HostRef::PrimaryOf(random_group(rng, groups)) } else { random_dc(rng) }
}

fn random_partition(rng: &mut ChaCha8Rng, groups: &[&str]) -> Fault {
    const FIXED: [HostRef; 4] = [HostRef::Dc(1), HostRef::Dc(2), HostRef::Dc(3), HostRef::Client];
    if rng.random_bool(0.5) {
        let a = HostRef::PrimaryOf(random_group(rng, groups));
        let b = FIXED[rng.random_range(0..FIXED.len())].clone();
        return Fault::Partition { a, b };
    }
    // Drawing the second from the three that remain keeps the pair distinct without retries.
    let first = rng.random_range(0..FIXED.len());
    let mut second = rng.random_range(0..FIXED.len() - 1);
    if second >= first {
        second += 1;
    }
    Fault::Partition { a: FIXED[first].clone(), b: FIXED[second].clone() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn error(text: &str) -> String {
        match Schedule::from_toml(text) {
            Ok(schedule) => panic!("expected an error, parsed {schedule:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn one_episode(body: &str) -> String {
        format!("name = \"t\"\n[[episode]]\n{body}\n")
    }

    fn all_faults() -> Vec<Fault> {
        vec![
            Fault::Cut { host: HostRef::PrimaryOf("main".into()) },
            Fault::Kill { host: HostRef::Dc(2) },
            Fault::Partition { a: HostRef::Dc(1), b: HostRef::Client },
            Fault::IsolateLeader,
            Fault::IsolatePrimaryVigil { group: "cache".into() },
            Fault::KillLeaderMidFailover { group: "main".into() },
            Fault::RestartAll,
            Fault::Loss { host: HostRef::Leader, percent: 30 },
            Fault::Flap { host: HostRef::Dc(3), period: Duration::from_secs(2) },
        ]
    }

    #[test]
    fn schedule_parses_the_module_doc_example() {
        let text = "name = \"lose the primary's datacenter, then flap a replica's link\"\n\
            [[episode]]\nfault = \"cut\"\nhost = \"primary:main\"\nhold = \"8s\"\nsettle = \"5s\"\n\
            [[episode]]\nfault = \"flap\"\nhost = \"dc3\"\nperiod = \"2s\"\nhold = \"10s\"\n";
        let schedule = Schedule::from_toml(text).unwrap();
        assert_eq!(schedule.seed, None);
        assert_eq!(
            schedule.episodes,
            vec![
                Episode {
                    fault: Fault::Cut { host: HostRef::PrimaryOf("main".into()) },
                    hold: Duration::from_secs(8),
                    settle: Duration::from_secs(5),
                },
                Episode {
                    fault: Fault::Flap { host: HostRef::Dc(3), period: Duration::from_secs(2) },
                    hold: Duration::from_secs(10),
                    settle: default_settle(),
                },
            ]
        );
    }

    #[test]
    fn schedule_kind_matches_the_serde_tag_and_all_kinds() {
        let faults = all_faults();
        let kinds: Vec<&str> = faults.iter().map(Fault::kind).collect();
        assert_eq!(kinds, Fault::ALL_KINDS);
        for fault in faults {
            let episode = Episode { fault: fault.clone(), hold: default_hold(), settle: default_settle() };
            let table: toml::Table = toml::from_str(&toml::to_string(&episode).unwrap()).unwrap();
            assert_eq!(table["fault"].as_str(), Some(fault.kind()));
        }
    }

    #[test]
    fn schedule_display_phrases() {
        let phrases: Vec<String> = all_faults().iter().map(ToString::to_string).collect();
        assert_eq!(
            phrases,
            [
                "cut primary:main",
                "kill -9 everything on dc2",
                "partition dc1 | client",
                "isolate the leader's vigil",
                "isolate the vigil beside primary:cache",
                "kill -9 the leader mid-failover of main",
                "restart every vigil",
                "30% packet loss on leader",
                "flap dc3 every 2s",
            ]
        );
        for host in ["dc1", "dc2", "dc3", "client", "leader", "primary:main"] {
            let parsed = HostRef::try_from(host.to_string()).unwrap();
            assert_eq!(parsed.to_string(), host);
            assert_eq!(String::from(parsed), host);
        }
    }

    #[test]
    fn schedule_rejects_an_empty_name() {
        let message = error("name = \" \"\n[[episode]]\nfault = \"restart-all\"\n");
        assert_eq!(message, "name = \" \": expected a name for reports");
    }

    #[test]
    fn schedule_rejects_no_episodes() {
        assert_eq!(error("name = \"t\"\n"), "no episodes: expected at least one [[episode]]");
        assert_eq!(error("name = \"t\"\nepisode = []\n"), "no episodes: expected at least one [[episode]]");
    }

    #[test]
    fn schedule_rejects_a_zero_hold() {
        let message = error(&one_episode("fault = \"cut\"\nhost = \"dc1\"\nhold = \"0s\""));
        assert_eq!(message, "episode 1: hold = 0s: expected more than 0");
    }

    #[test]
    fn schedule_rejects_a_bad_percent() {
        let text = "name = \"t\"\n[[episode]]\nfault = \"restart-all\"\n\
            [[episode]]\nfault = \"loss\"\nhost = \"dc2\"\npercent = 0\n";
        assert_eq!(error(text), "episode 2: percent = 0: expected 1 to 100");
        let message = error(&one_episode("fault = \"loss\"\nhost = \"dc2\"\npercent = 101"));
        assert_eq!(message, "episode 1: percent = 101: expected 1 to 100");
        // Out of u8's range serde fails first; the toml message still names the field.
        let message = error(&one_episode("fault = \"loss\"\nhost = \"dc2\"\npercent = 300"));
        assert!(message.contains("percent = 300: expected 1 to 100"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn schedule_rejects_a_bad_flap_period() {
        let text = "name = \"t\"\n[[episode]]\nfault = \"restart-all\"\n[[episode]]\nfault = \"restart-all\"\n\
            [[episode]]\nfault = \"flap\"\nhost = \"dc3\"\nperiod = \"0s\"\n";
        assert_eq!(error(text), "episode 3: period = 0s: expected more than 0");
        let message = error(&one_episode("fault = \"flap\"\nhost = \"dc3\"\nperiod = \"10s\"\nhold = \"8s\""));
        assert_eq!(
            message,
            "episode 1: period = 10s: expected at most hold = 8s, since the link must flap at least once"
        );
        // One full cycle is enough.
        Schedule::from_toml(&one_episode("fault = \"flap\"\nhost = \"dc3\"\nperiod = \"8s\"\nhold = \"8s\"")).unwrap();
    }

    #[test]
    fn schedule_rejects_a_partition_of_a_host_with_itself() {
        let message = error(&one_episode("fault = \"partition\"\na = \"dc1\"\nb = \"dc1\""));
        assert_eq!(message, "episode 1: partition of dc1 with itself: expected two different hosts in a and b");
    }

    #[test]
    fn schedule_rejects_killing_the_client_host() {
        let message = error(&one_episode("fault = \"kill\"\nhost = \"client\""));
        assert_eq!(
            message,
            "episode 1: host = \"client\": expected a datacenter (the client host runs only the writers)"
        );
    }

    #[test]
    fn schedule_rejects_empty_group_names() {
        let message = error(&one_episode("fault = \"isolate-primary-vigil\"\ngroup = \"\""));
        assert_eq!(message, "episode 1: group = \"\": expected a group name");
        let message = error(&one_episode("fault = \"kill-leader-mid-failover\"\ngroup = \" \""));
        assert_eq!(message, "episode 1: group = \" \": expected a group name");
        let message = error(&one_episode("fault = \"cut\"\nhost = \"primary:\""));
        assert!(message.contains("host `primary:`: expected dc1, dc2, dc3, client, leader or primary:<group>"));
        let message = error(&one_episode("fault = \"cut\"\nhost = \"primary: \""));
        assert_eq!(message, "episode 1: host = \"primary: \": expected a group name after primary:");
    }

    #[test]
    fn schedule_validates_hosts_built_in_code() {
        let schedule = Schedule {
            name: "t".into(),
            seed: None,
            episodes: vec![Episode {
                fault: Fault::Partition { a: HostRef::Dc(1), b: HostRef::Dc(4) },
                hold: default_hold(),
                settle: default_settle(),
            }],
        };
        assert_eq!(schedule.validate().unwrap_err().to_string(), "episode 1: b = \"dc4\": expected dc1, dc2 or dc3");
    }

    #[test]
    fn schedule_rejects_unknown_fields_and_kinds_with_their_location() {
        let message = error(&one_episode("fault = \"cut\"\nhost = \"dc1\"\nport = 5432"));
        assert!(message.contains("unknown field `port`") && message.contains("line 2"), "{message}");
        let message = error(&one_episode("fault = \"cutt\"\nhost = \"dc1\""));
        assert!(message.contains("unknown variant `cutt`") && message.contains("line 2"), "{message}");
        let message = error("name = \"t\"\nbogus = 1\n[[episode]]\nfault = \"restart-all\"\n");
        assert!(message.contains("unknown field `bogus`") && message.contains("line 2"), "{message}");
        let message = error(&one_episode("host = \"dc1\""));
        assert!(message.contains("missing field `fault`"), "{message}");
        let message = error(&one_episode("fault = \"cut\"\nhost = \"dc1\"\nhold = \"8 parsecs\""));
        assert!(message.contains("hold = \"8 parsecs\"") && message.contains("line 5"), "{message}");
    }

    #[test]
    fn schedule_rejects_fields_on_fieldless_faults() {
        let text = "name = \"t\"\n[[episode]]\nfault = \"cut\"\nhost = \"dc1\"\n\
            [[episode]]\nfault = \"restart-all\"\nhost = \"dc1\"\n";
        assert_eq!(
            error(text),
            "episode 2: unknown field `host`: fault = \"restart-all\" expected only `hold` and `settle`"
        );
        let message = error(&one_episode("fault = \"isolate-leader\"\ngroup = \"main\""));
        assert_eq!(
            message,
            "episode 1: unknown field `group`: fault = \"isolate-leader\" expected only `hold` and `settle`"
        );
        Schedule::from_toml(&one_episode("fault = \"isolate-leader\"\nhold = \"3s\"\nsettle = \"1s\"")).unwrap();
    }

    #[test]
    fn schedule_load_prefixes_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "name = \"t\"\n[[episode]]\nfault = \"nope\"\n").unwrap();
        let message = Schedule::load(&path).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: TOML parse error at line 2", path.display())), "{message}");
        std::fs::write(&path, "name = \"t\"\n").unwrap();
        let message = Schedule::load(&path).unwrap_err().to_string();
        assert_eq!(message, format!("{}: no episodes: expected at least one [[episode]]", path.display()));
        let missing = dir.path().join("missing.toml");
        let message = Schedule::load(&missing).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: could not read: ", missing.display())), "{message}");
    }

    #[test]
    fn schedule_generate_is_reproducible() {
        let groups = ["main", "cache"];
        assert_eq!(Schedule::generate(17, 20, &groups), Schedule::generate(17, 20, &groups));
        let schedules: Vec<Schedule> = (0..8).map(|seed| Schedule::generate(seed, 6, &groups)).collect();
        for (i, one) in schedules.iter().enumerate() {
            for other in &schedules[i + 1..] {
                assert_ne!(one.episodes, other.episodes, "{} and {} drew the same episodes", one.name, other.name);
            }
        }
        let schedule = Schedule::generate(17, 3, &groups);
        assert_eq!((schedule.name.as_str(), schedule.seed), ("seed 17", Some(17)));
    }

    #[test]
    fn schedule_generate_stays_in_its_ranges() {
        let groups = ["main", "cache"];
        let mut kinds = BTreeMap::new();
        let (mut primary_hosts, mut single_hosts) = (0, 0);
        for seed in 0..200 {
            let schedule = Schedule::generate(seed, 10, &groups);
            schedule.validate().unwrap();
            for episode in &schedule.episodes {
                *kinds.entry(episode.fault.kind()).or_insert(0) += 1;
                assert!((6..=10).contains(&episode.hold.as_secs()) && episode.hold.subsec_nanos() == 0);
                assert_eq!(episode.settle, Duration::from_secs(5));
                let host = match &episode.fault {
                    Fault::Cut { host } | Fault::Kill { host } => Some(host),
                    Fault::Loss { host, percent } => {
                        assert!((10..=40).contains(percent));
                        Some(host)
                    }
                    Fault::Flap { host, period } => {
                        assert!([2, 3, 4].map(Duration::from_secs).contains(period));
                        Some(host)
                    }
                    Fault::Partition { a, b } => {
                        assert_ne!(a, b);
                        assert!(!matches!(b, HostRef::Leader | HostRef::PrimaryOf(_)));
                        assert!(!matches!(a, HostRef::Leader));
                        None
                    }
                    Fault::IsolatePrimaryVigil { group } | Fault::KillLeaderMidFailover { group } => {
                        assert!(groups.contains(&group.as_str()));
                        None
                    }
                    Fault::IsolateLeader | Fault::RestartAll => None,
                };
                if let Some(host) = host {
                    single_hosts += 1;
                    match host {
                        HostRef::PrimaryOf(group) => {
                            assert!(groups.contains(&group.as_str()));
                            primary_hosts += 1;
                        }
                        HostRef::Dc(1..=3) => {}
                        other => panic!("generated host {other}"),
                    }
                }
            }
        }
        // 2000 draws over 9 kinds: about 222 each, so these bounds only catch a broken draw.
        assert_eq!(kinds.keys().copied().collect::<Vec<_>>(), {
            let mut all = Fault::ALL_KINDS.to_vec();
            all.sort_unstable();
            all
        });
        assert!(kinds.values().all(|count| (150..300).contains(count)), "{kinds:?}");
        let share = f64::from(primary_hosts) / f64::from(single_hosts);
        assert!((0.4..0.6).contains(&share), "primary share {share}");
    }

    #[test]
    fn schedule_round_trips_through_toml() {
        for seed in [0, 1, 17, u64::from(u32::MAX), i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let schedule = Schedule::generate(seed, 12, &["main", "cache"]);
            let text = schedule.to_toml();
            assert_eq!(Schedule::from_toml(&text).unwrap(), schedule, "{text}");
        }
        let text = Schedule::generate(3, 2, &["main"]).to_toml();
        assert!(text.contains("hold = \"") && text.contains("settle = \"5s\""), "{text}");
        let hand_written = Schedule {
            name: "every kind".into(),
            seed: None,
            episodes: all_faults()
                .into_iter()
                .map(|fault| Episode { fault, hold: Duration::from_millis(8500), settle: default_settle() })
                .collect(),
        };
        assert_eq!(Schedule::from_toml(&hand_written.to_toml()).unwrap(), hand_written);
    }

    #[test]
    fn schedule_reads_seeds_in_both_forms() {
        let body = "[[episode]]\nfault = \"restart-all\"\n";
        let seed = |line: &str| Schedule::from_toml(&format!("name = \"t\"\n{line}\n{body}")).map(|s| s.seed);
        assert_eq!(seed("seed = 42"), Ok(Some(42)));
        assert_eq!(seed("seed = \"18446744073709551615\""), Ok(Some(u64::MAX)));
        let message = seed("seed = -1").unwrap_err().to_string();
        assert!(message.contains("seed = -1: expected 0 or more"), "{message}");
        let message = seed("seed = \"x\"").unwrap_err().to_string();
        assert!(message.contains("seed = \"x\": expected an integer"), "{message}");
    }

    #[test]
    fn schedule_ci_scenarios_cover_every_kind_once() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut counts: BTreeMap<&str, Vec<String>> = Fault::ALL_KINDS.iter().map(|kind| (*kind, Vec::new())).collect();
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|extension| extension != "toml") {
                continue;
            }
            files += 1;
            let schedule = Schedule::load(&path).unwrap_or_else(|error| panic!("{error}"));
            for episode in &schedule.episodes {
                counts.get_mut(episode.fault.kind()).unwrap().push(path.display().to_string());
            }
        }
        assert!(files > 0, "no scenario files in {}", dir.display());
        for (kind, paths) in counts {
            assert_eq!(paths.len(), 1, "fault kind {kind} appears in {paths:?}, expected exactly once");
        }
    }
}
