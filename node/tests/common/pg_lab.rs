//! Three `vigil` processes beside three real PostgreSQL servers, with a spec applied: the
//! lab the PostgreSQL tests and the failover benchmark share.

use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_chaos_tests::postgres::PgCluster;

use super::TestCluster;

/// The timings of the tests, unless a test gives its own: a little more patient than the
/// defaults, because the tests share two cores and their disk with each other.
pub const DEFAULT_TIMINGS: &str = "down_after = \"1s\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"800ms\"\n";

/// How long the lab waits for anything.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Three vigil nodes beside three PostgreSQL servers (pg1 primary), with the spec applied.
pub struct Lab {
    pub vigil: TestCluster,
    pub pg: PgCluster,
    pub spec_path: std::path::PathBuf,
}

/// The spec of group "main" over `pg`, with secrets written into `lab_dir`.
pub fn spec_toml(lab_dir: &std::path::Path, pg: &PgCluster, extra_group: &str, member_extra: &[&str]) -> String {
    let timings = if extra_group.contains("down_after") { "" } else { DEFAULT_TIMINGS };
    vigil_chaos_tests::lab::postgres_spec(lab_dir, pg, "main", &format!("{timings}{extra_group}"), member_extra)
        .expect("the spec")
}

impl Lab {
    pub fn start(extra_group: &str, member_extra: &[&str], env: &[(u64, &str, &str)]) -> Lab {
        Self::start_with(extra_group, member_extra, env, super::ClusterOptions::default())
    }

    /// Like [`Lab::start`], with node configuration options (Raft timings).
    pub fn start_with(
        extra_group: &str,
        member_extra: &[&str],
        env: &[(u64, &str, &str)],
        options: super::ClusterOptions,
    ) -> Lab {
        let pg = PgCluster::start(3).expect("postgres cluster");
        Self::start_on(pg, extra_group, member_extra, env, options)
    }

    /// Like [`Lab::start_with`], over PostgreSQL servers already started.
    pub fn start_on(
        pg: PgCluster,
        extra_group: &str,
        member_extra: &[&str],
        env: &[(u64, &str, &str)],
        options: super::ClusterOptions,
    ) -> Lab {
        let mut vigil = TestCluster::with_options(3, options);
        for (id, key, value) in env {
            vigil.set_env(*id, key, value);
        }
        vigil.start_all();
        Self::apply_spec(vigil, pg, extra_group, member_extra)
    }

    /// Like [`Lab::start`], with the Raft leader on another node than pg1's: nodes 2 and 3
    /// elect one of themselves before node 1 starts.
    pub fn start_led_away_from_the_primary() -> Lab {
        let pg = PgCluster::start(3).expect("postgres cluster");
        let mut vigil = TestCluster::new(3);
        vigil.start(2);
        vigil.start(3);
        vigil.wait_for_agreed_leader(&[2, 3], TIMEOUT);
        vigil.start(1);
        Self::apply_spec(vigil, pg, "", &[])
    }

    /// Applies the spec of group "main" once the nodes agree on a leader, and waits until
    /// pg1 is its primary and every member is up.
    fn apply_spec(vigil: TestCluster, pg: PgCluster, extra_group: &str, member_extra: &[&str]) -> Lab {
        vigil.wait_for_agreed_leader(&[1, 2, 3], TIMEOUT);
        let spec_path = vigil.dir.path().join("cluster.toml");
        std::fs::write(&spec_path, spec_toml(vigil.dir.path(), &pg, extra_group, member_extra)).unwrap();
        let lab = Lab { vigil, pg, spec_path };
        let applied = lab.vigil.cli(1, &["apply", "-f", lab.spec_path.to_str().unwrap()]);
        assert!(applied.status.success(), "apply failed: {}", String::from_utf8_lossy(&applied.stderr));
        // Every node has reported on every member, and a majority sees each one up (a test
        // may cut one node's view on purpose).
        lab.wait_for("pg1 recorded as primary and every member up", |group| {
            group["primary"] == "pg1"
                && group["members"].as_array().unwrap().iter().all(|member| {
                    let verdicts = member["verdicts"].as_object().unwrap();
                    verdicts.len() == 3 && verdicts.values().filter(|verdict| *verdict == "up").count() >= 2
                })
        });
        lab
    }

    pub fn group(&self) -> Option<Value> {
        for id in 1..=3 {
            if self.vigil.nodes[&id].child.is_none() {
                continue;
            }
            if let Some(status) = self.vigil.status(id)
                && let Some(group) = status["groups"].as_array().and_then(|groups| groups.first())
            {
                return Some(group.clone());
            }
        }
        None
    }

    pub fn wait_for(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(group) = self.group()
                && condition(&group)
            {
                return group;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (1..=3).map(|id| format!("--- n{id}\n{}", self.vigil.log_of(id))).collect();
                panic!(
                    "timed out waiting for {what}; group: {:#}\n{}",
                    self.group().unwrap_or_default(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        (1..=3).map(|id| format!("--- n{id}\n{}", self.vigil.log_of(id))).collect::<Vec<_>>().join("\n")
    }

    /// Waits for the run with this id to end and returns it.
    pub fn wait_for_run(&self, run_id: u64) -> Value {
        let group = self
            .wait_for("the failover to end", |group| group["running"].is_null() && group["last_run"]["id"] == run_id);
        group["last_run"].clone()
    }

    pub fn index_of(&self, member: &str) -> usize {
        self.pg.instances().iter().position(|instance| instance.name == member).unwrap()
    }

    /// The timeline of `member`, which must be a primary.
    pub fn timeline(&self, member: &str) -> u32 {
        let index = self.index_of(member);
        // The checkpoint's timeline lags a promotion; the current WAL file's does not.
        let sql = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";
        let answer =
            self.pg.sql(index, sql).unwrap_or_else(|error| panic!("{member}'s timeline: {error}\n{}", self.logs()));
        answer.parse().unwrap()
    }

    pub fn streams_from(&self, replica: &str, primary: &str) -> bool {
        let port = self.pg.instances()[self.index_of(primary)].port;
        let sql =
            "SELECT coalesce((SELECT sender_port::text FROM pg_stat_wal_receiver WHERE status = 'streaming'), '')";
        self.pg.sql(self.index_of(replica), sql).map(|answer| answer == port.to_string()).unwrap_or(false)
    }

    pub fn runs(&self) -> Vec<Value> {
        let output = self.vigil.cli(self.any_running_node(), &["history", "main", "--json"]);
        let history: Value = serde_json::from_slice(&output.stdout).unwrap();
        history["failovers"]["main"].as_array().cloned().unwrap_or_default()
    }

    pub fn any_running_node(&self) -> u64 {
        (1..=3).find(|id| self.vigil.nodes[id].child.is_some()).unwrap()
    }
}
