//! What a node allows the replicated spec to make it do: the programs it runs, the users it
//! runs them as, the directories it works in and the files and variables it reads secrets
//! from. Each node's own configuration file says so; the node publishes it into the
//! replicated state, the leader refuses a spec that asks a node for anything outside it, and
//! the node itself refuses a group whose spec does, should one arrive anyway.
//!
//! Paths are judged by their text: absolute, without `..`, and inside an allowed directory
//! (whole components: `/etc/vigil` allows `/etc/vigil/pg.pass`, not `/etc/vigilant`). A
//! symbolic link inside an allowed directory is the host's owner's doing, not the spec's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::{ClusterSpec, PostgresGroup, RedisGroup, SecretSource, SpecError};
use crate::types::{NodeId, NodeInfo};

/// What one node allows, as its configuration's `[allow]` section says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    /// Commands it runs as a member's `start_command` or `stop_command`, exactly as written.
    #[serde(default)]
    pub commands: BTreeSet<String>,
    /// Directories it runs PostgreSQL's programs from (a group's `bin_dir`), exactly.
    #[serde(default)]
    pub bin_dirs: BTreeSet<String>,
    /// OS users it runs them as (a group's `run_as`).
    #[serde(default)]
    pub run_as: BTreeSet<String>,
    /// Directories its members' data directories may be in (or be).
    #[serde(default)]
    pub data_dirs: BTreeSet<String>,
    /// Directories (or files) it reads secrets and TLS files from.
    #[serde(default)]
    pub secret_files: BTreeSet<String>,
    /// Environment variables it reads secrets from.
    #[serde(default)]
    pub secret_env: BTreeSet<String>,
    /// Files never read for the spec, even inside an allowed directory: the node's own TLS
    /// key, for one.
    #[serde(default)]
    pub never_read: BTreeSet<String>,
}

impl AllowList {
    fn allows_file(&self, path: &str) -> bool {
        plain_absolute(path)
            && !self.never_read.iter().any(|never| Path::new(never) == Path::new(path))
            && self.secret_files.iter().any(|allowed| Path::new(path).starts_with(allowed))
    }

    fn allows_data_dir(&self, path: &str) -> bool {
        plain_absolute(path) && self.data_dirs.iter().any(|allowed| Path::new(path).starts_with(allowed))
    }
}

/// Absolute, and no `.` or `..` anywhere (judged on the text: `Path::components` drops
/// the `.`s): `starts_with` on its components means what it says.
pub fn plain_absolute(path: &str) -> bool {
    path.starts_with('/') && path.split('/').all(|segment| segment != "." && segment != "..")
}

fn refused(field: String, message: String) -> SpecError {
    SpecError { field, message }
}

fn check_secret(field: &str, source: &SecretSource, node: &str, allow: &AllowList) -> Result<(), SpecError> {
    if let Some(file) = &source.file
        && !allow.allows_file(file)
    {
        return Err(refused(
            format!("{field}.file"),
            format!("node {node} does not allow reading {file:?} (its [allow] secret_files)"),
        ));
    }
    if let Some(variable) = &source.env
        && !allow.secret_env.contains(variable)
    {
        return Err(refused(
            format!("{field}.env"),
            format!("node {node} does not allow reading the variable {variable:?} (its [allow] secret_env)"),
        ));
    }
    Ok(())
}

fn check_postgres(field: &str, group: &PostgresGroup, node: &str, allow: &AllowList) -> Result<(), SpecError> {
    // Every node probes every member, so every node reads the passwords.
    check_secret(&format!("{field}.password"), &group.password, node, allow)?;
    check_secret(&format!("{field}.replication_password"), &group.replication_password, node, allow)?;
    if let Some(tls) = &group.tls {
        check_tls_files(field, tls.files(), node, allow)?;
    }
    let beside: Vec<_> = group.members.iter().enumerate().filter(|(_, member)| member.node == node).collect();
    if beside.is_empty() {
        return Ok(());
    }
    if !allow.bin_dirs.contains(&group.bin_dir) {
        return Err(refused(
            format!("{field}.bin_dir"),
            format!("node {node} does not allow running programs from {:?} (its [allow] bin_dirs)", group.bin_dir),
        ));
    }
    if let Some(user) = &group.run_as
        && !allow.run_as.contains(user)
    {
        return Err(refused(
            format!("{field}.run_as"),
            format!("node {node} does not allow running programs as {user:?} (its [allow] run_as)"),
        ));
    }
    for (index, member) in beside {
        let member_field = format!("{field}.members[{index}]");
        for (name, command) in [("start_command", &member.start_command), ("stop_command", &member.stop_command)] {
            if let Some(command) = command
                && !allow.commands.contains(command)
            {
                return Err(refused(
                    format!("{member_field}.{name}"),
                    format!("node {node} does not allow the command {command:?} (its [allow] commands)"),
                ));
            }
        }
        if let Some(data_dir) = &member.data_dir
            && !allow.allows_data_dir(data_dir)
        {
            return Err(refused(
                format!("{member_field}.data_dir"),
                format!("node {node} does not allow working in {data_dir:?} (its [allow] data_dirs)"),
            ));
        }
    }
    Ok(())
}

fn check_redis(field: &str, group: &RedisGroup, node: &str, allow: &AllowList) -> Result<(), SpecError> {
    if let Some(password) = &group.password {
        check_secret(&format!("{field}.password"), password, node, allow)?;
    }
    if let Some(tls) = &group.tls {
        let files = [("ca", Some(&tls.ca)), ("cert", tls.cert.as_ref()), ("key", tls.key.as_ref())];
        check_tls_files(field, files.into_iter().filter_map(|(name, path)| Some((name, path?))), node, allow)?;
    }
    Ok(())
}

/// Every TLS file a group names (`(field name, path)`) must be one the node reads secrets from.
fn check_tls_files<'a>(
    field: &str,
    files: impl Iterator<Item = (&'static str, &'a String)>,
    node: &str,
    allow: &AllowList,
) -> Result<(), SpecError> {
    for (name, path) in files {
        if !allow.allows_file(path) {
            return Err(refused(
                format!("{field}.tls.{name}"),
                format!("node {node} does not allow reading {path:?} (its [allow] secret_files)"),
            ));
        }
    }
    Ok(())
}

/// Checks what `spec` asks of the node named `node`, with its allow-list: the first field
/// it does not allow, and why.
pub fn check_node(spec: &ClusterSpec, node: &str, allow: &AllowList) -> Result<(), SpecError> {
    for (index, group) in spec.postgres.iter().enumerate() {
        check_postgres(&format!("postgres[{index}]"), group, node, allow)?;
    }
    for (index, group) in spec.redis.iter().enumerate() {
        check_redis(&format!("redis[{index}]"), group, node, allow)?;
    }
    Ok(())
}

/// Checks `spec` against the allow-list every node of `nodes` published in `published`. A node
/// that has published none yet allows nothing.
pub fn check_cluster(
    spec: &ClusterSpec,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    published: &BTreeMap<NodeId, AllowList>,
) -> Result<(), SpecError> {
    for (id, info) in nodes {
        let Some(allow) = published.get(id) else {
            if spec.groups().next().is_none() {
                continue;
            }
            return Err(refused(
                "spec".to_string(),
                format!(
                    "node {} has not published what it allows yet (a node does when it starts; is it running?)",
                    info.name
                ),
            ));
        };
        check_node(spec, &info.name, allow)?;
    }
    Ok(())
}

/// The groups of `spec` that the node named `node` refuses, each with the first field it
/// does not allow.
pub fn refused_groups(spec: &ClusterSpec, node: &str, allow: &AllowList) -> BTreeMap<String, SpecError> {
    let mut refused = BTreeMap::new();
    for (index, group) in spec.postgres.iter().enumerate() {
        if let Err(error) = check_postgres(&format!("postgres[{index}]"), group, node, allow) {
            refused.insert(group.name.clone(), error);
        }
    }
    for (index, group) in spec.redis.iter().enumerate() {
        if let Err(error) = check_redis(&format!("redis[{index}]"), group, node, allow) {
            refused.insert(group.name.clone(), error);
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::{AllowList, plain_absolute};

    #[test]
    fn a_path_is_allowed_by_whole_components_and_never_with_dot_dot() {
        let allow = AllowList {
            secret_files: ["/etc/vigil".to_string()].into(),
            never_read: ["/etc/vigil/node.key".to_string()].into(),
            ..AllowList::default()
        };
        assert!(allow.allows_file("/etc/vigil/pg.pass"));
        assert!(allow.allows_file("/etc/vigil"), "an allowed file named exactly");
        assert!(!allow.allows_file("/etc/vigilant/pg.pass"));
        assert!(!allow.allows_file("/etc/vigil/../shadow"));
        assert!(!allow.allows_file("/etc/vigil/./x"));
        assert!(!allow.allows_file("etc/vigil/pg.pass"));
        assert!(!allow.allows_file("/etc/vigil/node.key"), "the node's own key, never");
        assert!(!allow.allows_file("/etc/vigil//node.key"), "nor spelt another way");
        assert!(plain_absolute("/"));
    }
}
