//! Three `vigil` processes beside three real redis-server processes (redis1 the master),
//! with a Redis group applied: the lab of the Redis tests and the Redis failover benchmark.

use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_chaos_tests::redis::{REDIS_PASSWORD, RedisCluster};

use super::TestCluster;

/// How long the lab waits for anything.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The timings of the tests unless a test gives its own: as patient as the PostgreSQL lab's.
pub const DEFAULT_TIMINGS: &str = "down_after = \"1s\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"800ms\"\n";

/// Three vigil nodes beside three redis-servers, group "cache" applied.
pub struct RedisLab {
    pub vigil: TestCluster,
    pub redis: RedisCluster,
    pub spec_path: std::path::PathBuf,
}

/// The spec of group "cache" over `redis`, with the password written into `lab_dir`.
pub fn spec_toml(lab_dir: &std::path::Path, redis: &RedisCluster, extra_group: &str, member_extra: &[&str]) -> String {
    let password = lab_dir.join("redis.password");
    std::fs::write(&password, format!("{REDIS_PASSWORD}\n")).unwrap();
    let mut text = format!(
        "[[redis]]\nname = \"cache\"\npassword = {{ file = \"{}\" }}\n{lag}{timings}{extra_group}\n",
        password.display(),
        lag = if extra_group.contains("maximum_lag") { "" } else { "maximum_lag_on_failover = 1048576\n" },
        timings = if extra_group.contains("down_after") { "" } else { DEFAULT_TIMINGS },
    );
    for (index, instance) in redis.instances().iter().enumerate() {
        let (host, port) = redis.address(index);
        text.push_str(&format!(
            "\n[[redis.members]]\nname = \"{}\"\nhost = \"{host}\"\nport = {port}\nnode = \"n{}\"\n{}\n",
            instance.name,
            index + 1,
            member_extra.get(index).copied().unwrap_or("")
        ));
    }
    text
}

impl RedisLab {
    pub fn start(extra_group: &str, member_extra: &[&str], env: &[(u64, &str, &str)]) -> RedisLab {
        let redis = RedisCluster::start(3).expect("redis cluster");
        let mut vigil = TestCluster::new(3);
        for (id, key, value) in env {
            vigil.set_env(*id, key, value);
        }
        vigil.start_all();
        vigil.wait_for_agreed_leader(&[1, 2, 3], TIMEOUT);
        let spec_path = vigil.dir.path().join("cluster.toml");
        std::fs::write(&spec_path, spec_toml(vigil.dir.path(), &redis, extra_group, member_extra)).unwrap();
        let lab = RedisLab { vigil, redis, spec_path };
        let applied = lab.vigil.cli(1, &["apply", "-f", lab.spec_path.to_str().unwrap()]);
        assert!(applied.status.success(), "apply failed: {}", String::from_utf8_lossy(&applied.stderr));
        lab.wait_for("redis1 recorded as master and every member up", |group| {
            group["primary"] == "redis1"
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

    /// Waits for the run with this id to end and returns it.
    pub fn wait_for_run(&self, run_id: u64) -> Value {
        let group = self
            .wait_for("the failover to end", |group| group["running"].is_null() && group["last_run"]["id"] == run_id);
        group["last_run"].clone()
    }

    pub fn index_of(&self, member: &str) -> usize {
        self.redis.instances().iter().position(|instance| instance.name == member).unwrap()
    }

    /// Whether `replica` replicates from `master` with its link up.
    pub fn follows(&self, replica: &str, master: &str) -> bool {
        let (_, port) = self.redis.address(self.index_of(master));
        self.redis.info_replication(self.index_of(replica)).is_ok_and(|info| {
            info.get("role").map(String::as_str) == Some("slave")
                && info.get("master_port") == Some(&port.to_string())
                && info.get("master_link_status").map(String::as_str) == Some("up")
        })
    }

    pub fn runs(&self) -> Vec<Value> {
        let node = (1..=3).find(|id| self.vigil.nodes[id].child.is_some()).unwrap();
        let output = self.vigil.cli(node, &["history", "cache", "--json"]);
        let history: Value = serde_json::from_slice(&output.stdout).unwrap();
        history["failovers"]["cache"].as_array().cloned().unwrap_or_default()
    }
}
