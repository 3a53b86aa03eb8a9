//! Bad input gets a clear error naming the field or file, a documented non-zero exit code,
//! and leaves the data dir untouched.

// The run-time storage test times a real process with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use common::{TestCluster, vigil};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Rewrites node 1's configuration with `edit`, then checks that both `check-config` and
/// `run` refuse it with exit code 3 and a message containing `expected`, and that `run`
/// created no data dir.
fn assert_config_refused(edit: impl Fn(&str) -> String, expected: &str) {
    let cluster = TestCluster::new(3);
    let config = &cluster.nodes[&1].config;
    let original = std::fs::read_to_string(config).unwrap();
    let edited = edit(&original);
    assert_ne!(edited, original, "the edit changed nothing");
    std::fs::write(config, edited).unwrap();

    let checked = vigil(&["check-config", config.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(3), "check-config: {}", stderr(&checked));
    assert!(stderr(&checked).contains(expected), "check-config said {:?}, expected {expected:?}", stderr(&checked));

    let run = vigil(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(3), "run: {}", stderr(&run));
    assert!(stderr(&run).contains(expected), "run said {:?}, expected {expected:?}", stderr(&run));
    assert!(!cluster.data_dir(1).exists(), "run wrote to the data dir despite a bad config");
}

#[test]
fn unknown_field_is_named() {
    assert_config_refused(|c| c.replace("[node]\n", "[node]\ncolour = \"blue\"\n"), "unknown field `colour`");
}

#[test]
fn bad_address_is_named() {
    assert_config_refused(
        |c| {
            let start = c.find("raft_addr = \"").unwrap();
            let end = c[start..].find('\n').unwrap() + start;
            format!("{}raft_addr = \"not-an-address\"{}", &c[..start], &c[end..])
        },
        "node.raft_addr: expected IP:PORT",
    );
}

#[test]
fn bad_duration_is_named() {
    assert_config_refused(|c| c.replace("heartbeat_interval = \"50ms\"", "heartbeat_interval = \"soon\""), "soon");
}

#[test]
fn impossible_raft_timings_are_refused() {
    assert_config_refused(
        |c| c.replace("election_timeout_min = \"150ms\"", "election_timeout_min = \"90ms\""),
        "raft.election_timeout_min: must be more than twice raft.heartbeat_interval",
    );
}

/// A duration so long that doubling it would overflow is refused with the cap named, not a
/// panic.
#[test]
fn an_overlong_raft_timing_is_refused() {
    assert_config_refused(
        |c| c.replace("heartbeat_interval = \"50ms\"", "heartbeat_interval = \"200000000000years\""),
        "raft.heartbeat_interval: must be at most 1h",
    );
}

/// A node key that others may read is refused, naming the field and the way out.
#[test]
fn a_key_readable_by_others_is_refused() {
    let cluster = TestCluster::new(1);
    let key = cluster.dir.path().join("certs/node1.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = cluster.nodes[&1].config.to_str().unwrap().to_string();
    let checked = vigil(&["check-config", &config]);
    assert_eq!(checked.status.code(), Some(3), "{}", stderr(&checked));
    assert!(stderr(&checked).contains("tls.key"), "{}", stderr(&checked));
    assert!(stderr(&checked).contains("mode 644") && stderr(&checked).contains("chmod 600"), "{}", stderr(&checked));
}

/// An operator name that is not a plain name (a path, say) is refused before anything is
/// written.
#[test]
fn an_operator_name_that_is_a_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let init = vigil(&["certs", "init", "--out", out.to_str().unwrap(), "--nodes", "1", "--operator", "../x"]);
    assert_eq!(init.status.code(), Some(1), "{}", stderr(&init));
    assert!(stderr(&init).contains("--operator: \"../x\" is not a name"), "{}", stderr(&init));
    assert!(!dir.path().join("x.key").exists() && !out.join("ca.key").exists(), "something was written");
    assert!(vigil(&["certs", "init", "--out", out.to_str().unwrap(), "--nodes", "1"]).status.success());
    let issue = vigil(&["certs", "issue", "--dir", out.to_str().unwrap(), "--operator", "a/b", "--role", "admin"]);
    assert_ne!(issue.status.code(), Some(0));
    assert!(stderr(&issue).contains("is not a name"), "{}", stderr(&issue));
}

/// An operator certificate needs a role, and only admin or viewer is one.
#[test]
fn an_operator_certificate_needs_a_known_role() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    assert!(vigil(&["certs", "init", "--out", out.to_str().unwrap(), "--nodes", "1"]).status.success());
    let none = vigil(&["certs", "issue", "--dir", out.to_str().unwrap(), "--operator", "bob"]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    assert!(stderr(&none).contains("--role <ROLE>"), "{}", stderr(&none));
    let unknown = vigil(&["certs", "issue", "--dir", out.to_str().unwrap(), "--operator", "bob", "--role", "root"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("expected admin or viewer"), "{}", stderr(&unknown));
    assert!(!out.join("bob.key").exists(), "nothing is written");
}

#[test]
fn missing_certificate_file_is_named() {
    assert_config_refused(|c| c.replace("certs/node1.crt", "certs/nowhere.crt"), "nowhere.crt: cannot read");
}

#[test]
fn node_id_missing_from_initial_members_is_refused() {
    assert_config_refused(
        |c| c.replacen("[[initial_members]]\nid = 1\n", "[[initial_members]]\nid = 7\n", 1),
        "node.id: node 1 is not in initial_members",
    );
}

#[test]
fn certificate_of_another_node_is_refused() {
    assert_config_refused(
        |c| c.replace("certs/node1.crt", "certs/node2.crt").replace("certs/node1.key", "certs/node2.key"),
        "names node 2, but this node's id is 1",
    );
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    assert_config_refused(|c| c.replace("certs/node1.key", "certs/node2.key"), "does not match certificate");
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let cluster = TestCluster::new(3);
    let foreign = cluster.dir.path().join("foreign");
    assert!(vigil(&["certs", "init", "--out", foreign.to_str().unwrap(), "--nodes", "1"]).status.success());
    let config = &cluster.nodes[&1].config;
    let text = std::fs::read_to_string(config).unwrap().replace("certs/node1.", "foreign/node1.");
    std::fs::write(config, text).unwrap();
    let checked = vigil(&["check-config", config.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(3));
    assert!(stderr(&checked).contains("is not valid for the cluster CA"), "{}", stderr(&checked));
}

/// A data dir that belongs to another node is refused before anything is written.
#[test]
fn data_dir_of_another_node_is_refused() {
    let mut cluster = TestCluster::new(3);
    cluster.start(1);
    let owner_file = cluster.data_dir(1).join("vigil-node.json");
    cluster.wait_until("node 1 to claim its data dir", Duration::from_secs(10), || owner_file.exists());
    cluster.stop(1);
    let before = std::fs::read(cluster.data_dir(1).join("raft-log.redb")).unwrap();
    let config2 = &cluster.nodes[&2].config;
    let text = std::fs::read_to_string(config2).unwrap().replace("data/n2", "data/n1");
    std::fs::write(config2, text).unwrap();
    let run = vigil(&["run", "--config", config2.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(3));
    assert!(stderr(&run).contains("holds the data of node 1"), "{}", stderr(&run));
    assert_eq!(std::fs::read(cluster.data_dir(1).join("raft-log.redb")).unwrap(), before, "node 1's log changed");
}

/// The CLI against a node that does not answer says so and exits with 4.
#[test]
fn unreachable_node_is_said_plainly() {
    let cluster = TestCluster::new(1);
    let output = cluster.cli(1, &["status"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("node unreachable"), "{}", stderr(&output));
}

/// With one of three voters up there is no leader: status prints and exits 5, and a write
/// is refused with exit 5.
#[test]
fn no_leader_is_said_plainly() {
    let mut cluster = TestCluster::new(3);
    cluster.start(1);
    cluster.wait_until("node 1's API", Duration::from_secs(10), || cluster.status(1).is_some());
    let status = cluster.cli(1, &["status"]);
    assert_eq!(status.status.code(), Some(5), "{}", stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("NONE"), "table does not say there is no leader");
    let note = cluster.cli(1, &["note", "hello"]);
    assert_eq!(note.status.code(), Some(5), "{}", stderr(&note));
    assert!(stderr(&note).contains("no leader"), "{}", stderr(&note));
}

/// An operator certificate from another CA is refused by the API, and the CLI says the
/// node is unreachable because of TLS.
#[test]
fn cli_with_a_foreign_certificate_is_refused() {
    let mut cluster = TestCluster::new(1);
    // A one-node cluster elects itself.
    cluster.start(1);
    cluster.wait_for_agreed_leader(&[1], Duration::from_secs(10));
    let foreign = cluster.dir.path().join("foreign");
    assert!(vigil(&["certs", "init", "--out", foreign.to_str().unwrap(), "--nodes", "1"]).status.success());
    let endpoint = format!("127.0.0.1:{}", cluster.nodes[&1].api_port);
    let output = vigil(&[
        "status",
        "--endpoint",
        &endpoint,
        "--ca",
        foreign.join("ca.crt").to_str().unwrap(),
        "--cert",
        foreign.join("admin.crt").to_str().unwrap(),
        "--key",
        foreign.join("admin.key").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("not signed by our CA"), "{}", stderr(&output));
}

/// `certs init` writes keys readable by the owner only and refuses to overwrite.
#[test]
fn certs_init_protects_keys_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let first = vigil(&["certs", "init", "--out", out.to_str().unwrap(), "--nodes", "1,2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    for name in ["ca.key", "node1.key", "node2.key", "admin.key"] {
        let mode = std::fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
    }
    let ca_before = std::fs::read(out.join("ca.crt")).unwrap();
    let second = vigil(&["certs", "init", "--out", out.to_str().unwrap(), "--nodes", "1"]);
    assert_ne!(second.status.code(), Some(0));
    assert!(stderr(&second).contains("refusing to overwrite"), "{}", stderr(&second));
    assert_eq!(std::fs::read(out.join("ca.crt")).unwrap(), ca_before);
}

/// Every log line carries the node id, in text and in JSON.
#[test]
fn log_lines_carry_the_node_id_in_text_and_json() {
    let mut cluster = TestCluster::new(1);
    cluster.start(1);
    cluster.wait_for_agreed_leader(&[1], Duration::from_secs(10));
    cluster.stop(1);
    let text = cluster.log_of(1);
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(line.contains(" node=1 "), "text line without the node id: {line}");
    }
    let config = cluster.nodes[&1].config.clone();
    let json_log = cluster.dir.path().join("json.log");
    let file = std::fs::File::create(&json_log).unwrap();
    let mut child = std::process::Command::new(common::vigil_bin())
        .args(["run", "--config", config.to_str().unwrap(), "--log-format", "json"])
        .stderr(file)
        .spawn()
        .unwrap();
    cluster.wait_for_agreed_leader(&[1], Duration::from_secs(10));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    let lines = std::fs::read_to_string(&json_log).unwrap();
    assert!(!lines.is_empty());
    for line in lines.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(value["node"], 1, "{line}");
    }
}

/// A node that ran once, stopped, then has `damage` done to its data dir: `vigil run` stops
/// at start with the storage exit code and a message naming `file`.
fn assert_storage_refused(damage: impl FnOnce(&std::path::Path), file: &str, expected: &str) {
    let mut cluster = TestCluster::new(1);
    cluster.start(1);
    cluster.wait_for_agreed_leader(&[1], Duration::from_secs(10));
    cluster.note(1, "before the damage");
    cluster.stop(1);
    let data = cluster.data_dir(1);
    damage(&data);
    let run = vigil(&["run", "--config", cluster.nodes[&1].config.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(7), "run: {}", stderr(&run));
    let named = data.join(file);
    assert!(stderr(&run).contains(named.to_str().unwrap()), "the file is not named: {}", stderr(&run));
    assert!(stderr(&run).contains(expected), "expected {expected:?}: {}", stderr(&run));
}

/// A Raft log overwritten with garbage stops the node at start, naming the file.
#[test]
fn a_corrupted_log_stops_the_node_naming_the_file() {
    assert_storage_refused(
        |data| {
            let path = data.join("raft-log.redb");
            let length = std::fs::metadata(&path).unwrap().len() as usize;
            std::fs::write(&path, vec![0x5a; length]).unwrap();
        },
        "raft-log.redb",
        "raft log",
    );
}

/// A snapshot that does not decode stops the node at start, naming the file.
#[test]
fn a_corrupted_snapshot_stops_the_node_naming_the_file() {
    assert_storage_refused(
        |data| {
            std::fs::create_dir_all(data.join("snapshots")).unwrap();
            std::fs::write(data.join("snapshots/snapshot.json"), b"{\"meta\": [1, 2").unwrap();
        },
        "snapshots/snapshot.json",
        "is corrupt",
    );
}

#[test]
fn an_allowed_path_that_is_not_plain_is_named() {
    assert_config_refused(
        |c| c.replace("data_dirs = [", "data_dirs = [\"/var/lib/../../etc\", "),
        "allow.data_dirs[0]: expected an absolute path without . or .., got \"/var/lib/../../etc\"",
    );
    assert_config_refused(
        |c| c.replace("[allow]\n", "[allow]\ncommands = [\" \"]\n"),
        "allow.commands[0]: must not be empty",
    );
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The disk under the Raft log fills up while the node runs: Raft stops on the failed write,
/// and the daemon exits with the storage exit code (7) rather than run on without consensus,
/// so that its service manager restarts it or pages someone.
#[test]
fn a_storage_failure_at_run_time_stops_the_daemon_with_exit_code_7() {
    let mut cluster = TestCluster::new(1);
    let data = cluster.data_dir(1);
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs (the test needs root)");
    let _mount = Mounted(data.clone());
    cluster.start(1);
    cluster.wait_for_agreed_leader(&[1], Duration::from_secs(10));
    cluster.note(1, "before the disk fills");

    // Fill what is left of the file system.
    let filler = data.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = cluster.nodes.get_mut(&1).unwrap().child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the daemon ran on with a full disk:\n{}", cluster.log_of(1));
        let _ = cluster.cli(1, &["note", &"x".repeat(2000)]);
    };
    cluster.nodes.get_mut(&1).unwrap().child = None;
    assert_eq!(status.code(), Some(7), "{}", cluster.log_of(1));
    let log = cluster.log_of(1);
    assert!(log.contains("raft stopped"), "the log does not say why: {log}");
}
