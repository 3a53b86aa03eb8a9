//! Turns the spec of a member into what probes and actions need: connection settings with
//! the password read on this host, `pg_ctl` settings, and `primary_conninfo`; for Redis,
//! the connection settings with its password.

use std::path::PathBuf;

use vigil_actions::{PgCtl, ToolConnection};
use vigil_consensus::spec::{PgSslMode, PostgresGroup, PostgresMember, RedisGroup, RedisMember};
use vigil_probes::{PgTarget, PgTls, RedisTarget, RedisTls, TlsMode};

use crate::spec_file::resolve_secret;

/// Why a member's settings could not be made on this node: nothing a retry mends until the
/// spec or this node's files change.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Host-local control needs the member's data directory.
    #[error("member {member} has no data_dir in the spec")]
    NoDataDir {
        /// The member.
        member: String,
    },
    /// A secret or a file the spec names could not be read on this node.
    #[error("group {group} {field}: {reason}")]
    Unreadable {
        /// The group.
        group: String,
        /// The spec field naming it.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn unreadable(group: &str, field: &'static str) -> impl FnOnce(String) -> TargetError {
    let group = group.to_string();
    move |reason| TargetError::Unreadable { group, field, reason }
}

/// Connection settings for vigil's own role on `member`.
pub fn pg_target(group: &PostgresGroup, member: &PostgresMember) -> Result<PgTarget, TargetError> {
    let password = resolve_secret(&group.password).map_err(unreadable(&group.name, "password"))?;
    Ok(PgTarget {
        host: member.host.clone(),
        port: member.port,
        user: group.user.clone(),
        password,
        database: group.database.clone(),
        timeout: group.probe_timeout,
        tls: pg_tls(group)?,
    })
}

/// The group's TLS settings for vigil's own sessions, their files read on this host.
fn pg_tls(group: &PostgresGroup) -> Result<Option<PgTls>, TargetError> {
    let Some(files) = &group.tls else { return Ok(None) };
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| unreadable(&group.name, "tls")(format!("cannot read {path}: {e}")))
    };
    let mode = match files.mode {
        PgSslMode::Disable => return Ok(None),
        PgSslMode::Require => TlsMode::Require,
        PgSslMode::VerifyCa => TlsMode::VerifyCa,
        PgSslMode::VerifyFull => TlsMode::VerifyFull,
    };
    let ca = files.ca.as_deref().map(read).transpose()?;
    let client = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(Some(PgTls { mode, ca, client }))
}

/// The libpq words of the group's TLS settings, for the tools and `primary_conninfo`: the
/// files are named, never read here (each program reads them on its own host).
pub fn pg_tls_words(group: &PostgresGroup) -> Vec<(&'static str, String)> {
    group.tls.as_ref().map(|tls| tls.libpq_words()).unwrap_or_default()
}

/// Host-local control of `member`'s server.
pub fn pg_ctl(group: &PostgresGroup, member: &PostgresMember) -> Result<PgCtl, TargetError> {
    let data_dir = member.data_dir.clone().ok_or_else(|| TargetError::NoDataDir { member: member.name.clone() })?;
    Ok(PgCtl {
        bin_dir: PathBuf::from(&group.bin_dir),
        data_dir: PathBuf::from(data_dir),
        run_as: group.run_as.clone(),
        start_command: member.start_command.clone(),
        stop_command: member.stop_command.clone(),
    })
}

/// The `primary_conninfo` a replica named `replica` uses to stream from `primary`.
pub fn primary_conninfo(group: &PostgresGroup, primary: &PostgresMember, replica: &str) -> Result<String, TargetError> {
    let password =
        resolve_secret(&group.replication_password).map_err(unreadable(&group.name, "replication_password"))?;
    let conninfo =
        vigil_actions::primary_conninfo(&primary.host, primary.port, &group.replication_user, &password, replica);
    Ok(conninfo + &vigil_actions::more_words(&pg_tls_words(group)))
}

/// The replication role's connection to `primary` for a tool run for `replica`
/// (`pg_basebackup`), its password apart from the command line.
pub fn replication_connection(
    group: &PostgresGroup,
    primary: &PostgresMember,
    replica: &str,
) -> Result<ToolConnection, TargetError> {
    let password =
        resolve_secret(&group.replication_password).map_err(unreadable(&group.name, "replication_password"))?;
    Ok(ToolConnection::new(&primary.host, primary.port, &group.replication_user, &password, replica, None)
        .with_words(&pg_tls_words(group)))
}

/// Connection settings for vigil on the Redis `member`.
pub fn redis_target(group: &RedisGroup, member: &RedisMember) -> Result<RedisTarget, TargetError> {
    let password = match &group.password {
        Some(source) => Some(resolve_secret(source).map_err(unreadable(&group.name, "password"))?),
        None => None,
    };
    Ok(RedisTarget {
        host: member.host.clone(),
        port: member.port,
        username: group.user.clone(),
        password,
        timeout: group.probe_timeout,
        tls: redis_tls(group)?,
    })
}

/// The group's TLS files, read on this host.
pub fn redis_tls(group: &RedisGroup) -> Result<Option<RedisTls>, TargetError> {
    let Some(files) = &group.tls else { return Ok(None) };
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| unreadable(&group.name, "tls")(format!("cannot read {path}: {e}")))
    };
    let client = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(Some(RedisTls { ca: read(&files.ca)?, client }))
}
