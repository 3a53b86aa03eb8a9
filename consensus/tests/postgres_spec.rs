//! PostgreSQL group settings for host-local control: start and stop commands need the data
//! directory vigil watches the server through, and re-cloning is off unless asked for.

use std::collections::BTreeMap;

use vigil_consensus::spec::ClusterSpec;
use vigil_consensus::{NodeId, NodeInfo};

fn nodes() -> BTreeMap<NodeId, NodeInfo> {
    (1..=2)
        .map(|id| {
            let info = NodeInfo {
                name: format!("n{id}"),
                datacenter: format!("dc{id}"),
                raft_addr: String::new(),
                api_addr: String::new(),
            };
            (id, info)
        })
        .collect()
}

fn spec(member_extra: &str) -> ClusterSpec {
    spec_with("", member_extra)
}

fn spec_with(group_extra: &str, member_extra: &str) -> ClusterSpec {
    toml::from_str(&format!(
        r#"
[[postgres]]
{group_extra}
name = "main"
user = "vigil"
password = {{ env = "PGPASSWORD" }}
replication_user = "replicator"
replication_password = {{ env = "REPLPASSWORD" }}
maximum_lag_on_failover = 1000

[[postgres.members]]
name = "pg1"
host = "10.0.0.1"
node = "n1"
{member_extra}

[[postgres.members]]
name = "pg2"
host = "10.0.0.2"
node = "n2"
data_dir = "/var/lib/postgresql/15/main"
"#
    ))
    .expect("the test spec parses")
}

#[test]
fn start_and_stop_commands_need_a_data_dir_and_a_command() {
    let with_dir = spec(
        "data_dir = \"/var/lib/postgresql/15/main\"\nstart_command = \"systemctl start postgresql@15-main\"\n\
         stop_command = \"systemctl stop postgresql@15-main\"",
    );
    with_dir.validate(&nodes()).unwrap();
    assert!(!with_dir.postgres[0].allow_reclone, "re-cloning must be asked for");

    let without_dir = spec("start_command = \"systemctl start postgresql@15-main\"");
    let error = without_dir.validate(&nodes()).unwrap_err();
    assert_eq!(error.field, "postgres[0].members[0].start_command");
    assert!(error.message.contains("data_dir"), "{error}");

    let empty = spec("data_dir = \"/var/lib/postgresql/15/main\"\nstop_command = \"  \"");
    assert_eq!(empty.validate(&nodes()).unwrap_err().field, "postgres[0].members[0].stop_command");
}

/// A member its own node could never fence is refused: the stop fence needs the data
/// directory; a member without one is accepted with the read-only fence, and said unguarded.
#[test]
fn a_member_that_cannot_be_fenced_is_refused_and_one_without_a_guard_is_named() {
    let mut stop = spec("");
    stop.postgres[0].fence_method = vigil_consensus::spec::FenceMethod::Stop;
    let error = stop.validate(&nodes()).unwrap_err();
    assert_eq!(error.field, "postgres[0].members[0].data_dir");
    assert!(error.message.contains("fence_method"), "{error}");

    let read_only = spec("");
    read_only.validate(&nodes()).unwrap();
    let policy = read_only.postgres[0].policy();
    assert!(!policy.members[0].guarded);
    assert!(policy.members[0].unguarded_because.is_some_and(|why| why.contains("data_dir")));
    assert!(policy.members[1].guarded && policy.members[1].unguarded_because.is_none());
}

/// Timings past an hour are refused with the field named: multiplied by the checks and the
/// lease rules, durations as long as these overflowed and panicked the API handler (the
/// probe interval) or, passing validation, killed the lease keeper (the lease).
#[test]
fn timings_longer_than_an_hour_are_refused_not_overflowed() {
    for (field, value) in [("probe_interval", "200000000000years"), ("lease_duration", "100000000000years")] {
        let long = spec_with(&format!("{field} = \"{value}\""), "");
        let error = long.validate(&nodes()).unwrap_err();
        assert_eq!(error.field, format!("postgres[0].{field}"));
        assert!(error.message.starts_with("must be at most 1h"), "{error}");
    }
    let mut hour = spec("");
    hour.postgres[0].lease_duration = vigil_consensus::spec::MAX_TIMING;
    hour.validate(&nodes()).unwrap();
}

#[test]
fn tls_settings_are_checked_and_spelt_as_libpq_spells_them() {
    let refused = |group_extra: &str| spec_with(group_extra, "").validate(&nodes()).unwrap_err().to_string();
    assert_eq!(
        refused(r#"tls = { mode = "verify-full" }"#),
        "postgres[0].tls.ca: mode \"verify-full\" checks the servers' certificates: give the CA that signed them"
    );
    assert!(refused(r#"tls = { ca = "ca.crt" }"#).starts_with("postgres[0].tls.ca: expected an absolute path"));
    assert!(refused(r#"tls = { ca = "/ca.crt", cert = "/c.crt" }"#).contains("give cert and key together"));
    let bad_mode = toml::from_str::<ClusterSpec>(
        "[[postgres]]\nname = \"m\"\nuser = \"v\"\npassword = { env = \"P\" }\nreplication_user = \"r\"\n\
         replication_password = { env = \"R\" }\nmaximum_lag_on_failover = 1\ntls = { mode = \"prefer\" }\n",
    );
    assert!(bad_mode.unwrap_err().to_string().contains("unknown variant `prefer`"));

    let spec = spec_with(r#"tls = { ca = "/etc/vigil/secrets/ca.crt", cert = "/c.crt", key = "/c.key" }"#, "");
    spec.validate(&nodes()).unwrap();
    let words = spec.postgres[0].tls.as_ref().unwrap().libpq_words();
    let words: Vec<String> = words.iter().map(|(keyword, value)| format!("{keyword}={value}")).collect();
    assert_eq!(
        words,
        ["sslmode=verify-full", "sslrootcert=/etc/vigil/secrets/ca.crt", "sslcert=/c.crt", "sslkey=/c.key"]
    );
}
