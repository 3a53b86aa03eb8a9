//! Host-local actions: stop a server and read where it stopped, restart it as a replica.
//! They run the PostgreSQL tools on the member's own machine, as the data directory's
//! owner when vigil runs as root (PostgreSQL refuses to run as root).
//!
//! What counts as evidence that a server is down. Releasing a dead primary's lease lets
//! another member be promoted, so it needs proof that the old one cannot take writes, and
//! "no process found" is not proof: `pg_ctl status` (like the `postmaster.pid` shortcut
//! below) looks the pid file's PID up in *this* PID namespace, so a postmaster started in
//! another one (a container, `unshare --pid`) is invisible to it, and a pid file can be
//! missing while its server runs. [`confirm_stopped`] therefore asks the server's own
//! endpoints as well and accepts only refusals: `pg_ctl status` finds no server, the TCP
//! address refuses connections (`ECONNREFUSED`; a timeout, an unreachable host or an
//! accepted connection proves nothing), and the Unix socket named in `postmaster.pid` is
//! refused or absent. Every other action's "not running" (`is_running`, the "already
//! stopped" of `stop_immediately`) only means that `pg_ctl` sees nothing to stop; before
//! starting a server, recovering it in single-user mode, rewinding or re-cloning it, the
//! actions check that the socket named in `postmaster.pid` does not answer, so a hidden
//! postmaster is never joined by a second one on the same data directory.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr as _;
use std::time::Duration;

use nix::unistd::geteuid;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_postgres::types::PgLsn;

use crate::conninfo::{ToolConnection, conf_setting, fenced_auto_conf, replica_auto_conf};
use crate::error::ActionError;

/// How to control one PostgreSQL server on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgCtl {
    /// The directory holding `pg_ctl` and `pg_controldata`, e.g. `/usr/lib/postgresql/15/bin`.
    pub bin_dir: PathBuf,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// The OS user to run the tools as (through `runuser`) when vigil runs as root;
    /// ignored otherwise, since only root can switch users.
    pub run_as: Option<String>,
    /// Starts the server in place of `pg_ctl start` (`systemctl start postgresql@15-main`,
    /// say), run with `/bin/sh -c` as vigil's own user; the server is then awaited with
    /// `pg_ctl status`.
    pub start_command: Option<String>,
    /// Stops the server cleanly in place of `pg_ctl stop -m fast`, the same way. Stops
    /// that fence (immediate ones) always use `pg_ctl stop -m immediate`: a fence must not
    /// wait for a service manager.
    pub stop_command: Option<String>,
}

impl PgCtl {
    /// Control through `pg_ctl` only.
    pub fn new(bin_dir: PathBuf, data_dir: PathBuf, run_as: Option<String>) -> Self {
        PgCtl { bin_dir, data_dir, run_as, start_command: None, stop_command: None }
    }
}

/// Runs an operator's start or stop command, then waits until `pg_ctl status` says the
/// server runs (`running` true) or not.
async fn run_command_until(
    ctl: &PgCtl,
    command_line: &str,
    running: bool,
    deadline: Instant,
) -> Result<(), ActionError> {
    // No pipes: a server started by the command inherits them and would hold them open,
    // so reading its output to the end would wait for the server to exit.
    let status = Command::new("/bin/sh")
        .args(["-c", command_line])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|error| ActionError::Command {
            command: command_line.to_string(),
            stderr: format!("could not run it: {error}"),
        })?;
    if !status.success() {
        return Err(ActionError::Command {
            command: command_line.to_string(),
            stderr: format!("it failed ({status}); its own logs say why"),
        });
    }
    loop {
        if server_running(ctl).await? == running {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ActionError::Unexpected(format!(
                "`{command_line}` succeeded, but the server in {} is {} running",
                ctl.data_dir.display(),
                if running { "still not" } else { "still" }
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the server cleanly (`pg_ctl stop -m fast`, waiting up to `timeout`) and returns
/// the location of its last checkpoint, read with `pg_controldata`.
///
/// Idempotent: a server that is already stopped is fine. Fails with `Unexpected` if the
/// data directory is not left cleanly shut down (e.g. it was killed, not stopped), since
/// then the checkpoint location is not where its WAL ends.
pub async fn stop_server(ctl: &PgCtl, timeout: Duration) -> Result<u64, ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("stopping the server in {}", ctl.data_dir.display());
    bounded(deadline, what, stop_until(ctl, deadline)).await
}

/// Turns a stopped (or running, which is stopped first) server into a replica streaming
/// from `primary_conninfo`: writes `standby.signal`, sets `primary_conninfo` in
/// `postgresql.auto.conf` (removing any `default_transaction_read_only`), and starts it
/// with `pg_ctl start -w`, logging to `<data_dir>/vigil-start.log`.
///
/// Idempotent: a server already running in recovery with that `primary_conninfo` is left
/// running (its configuration is reloaded, in case the file was edited but not loaded).
pub async fn start_as_replica(ctl: &PgCtl, primary_conninfo: &str, timeout: Duration) -> Result<(), ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("starting {} as a replica", ctl.data_dir.display());
    bounded(deadline, what, async {
        if server_running(ctl).await? {
            if already_replica_of(ctl, primary_conninfo).await? {
                run(ctl, "pg_ctl", &[os("reload"), os("-D"), ctl.data_dir.clone().into()]).await?;
                return Ok(());
            }
            stop_until(ctl, deadline).await?;
        }
        // Before the files change: they would turn a hidden, live primary into a replica at
        // its next restart.
        refuse_if_hidden_server_answers(ctl, deadline, "starting a second server in").await?;
        write_standby_signal(ctl)?;
        write_replica_auto_conf(ctl, primary_conninfo)?;

        start_until(ctl, deadline).await?;
        tracing::info!(data_dir = %ctl.data_dir.display(), "started as a replica");
        Ok(())
    })
    .await
}

/// Stops the server at once (`pg_ctl stop -m immediate`): the fence that cannot be undone
/// by a client. Already stopped is fine. Crash recovery runs at the next start.
///
/// Success means that `pg_ctl` stopped the server it found, or found none to stop; it is
/// not evidence that the server is down. A postmaster in another PID namespace, or one
/// whose `postmaster.pid` is missing, is not found, and this returns `Ok` while it still
/// takes writes. A caller that releases a lease (letting another member be promoted) must
/// call [`confirm_stopped`] first.
pub async fn stop_immediately(ctl: &PgCtl, timeout: Duration) -> Result<(), ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("stopping the server in {} immediately", ctl.data_dir.display());
    bounded(deadline, what, async {
        if !server_running(ctl).await? {
            return Ok(());
        }
        let stop = [
            os("stop"),
            os("-D"),
            ctl.data_dir.clone().into(),
            os("-m"),
            os("immediate"),
            os("-w"),
            os("-t"),
            os(&wait_seconds(deadline).to_string()),
        ];
        if let Err(error) = run(ctl, "pg_ctl", &stop).await
            && server_running(ctl).await?
        {
            return Err(error);
        }
        tracing::warn!(data_dir = %ctl.data_dir.display(), "stopped the server immediately (fenced)");
        Ok(())
    })
    .await
}

/// Whether a server runs in the data directory, as far as `pg_ctl status` can tell.
///
/// `false` is not evidence that the server is down: `pg_ctl` looks for the PID of
/// `postmaster.pid` in this PID namespace only. Use [`confirm_stopped`] for that.
pub async fn is_running(ctl: &PgCtl) -> Result<bool, ActionError> {
    server_running(ctl).await
}

/// Confirms that the server of `ctl.data_dir`, listening at `host:port`, cannot take
/// writes, and returns that evidence in words. Only refusals count (see the module
/// documentation): `pg_ctl status` finds no server in the data directory (asked always,
/// never answered from the pid file), every address `host` resolves to refuses a TCP
/// connection to `port` (`ECONNREFUSED`), and, if `postmaster.pid` exists and names a
/// Unix socket directory, its socket for `port` (and for the port in the pid file) is
/// refused or absent. The three are asked at once, all within `timeout`.
///
/// Call it before releasing the lease of a primary that was stopped or found dead: a
/// successful [`stop_immediately`] is not enough. Fails with `Unexpected`, naming what
/// still answers, while anything does (retrying helps only once it stops); with `Connect`
/// when some evidence could not be gathered (no answer in time, an unreachable host,
/// `pg_ctl` failing), since silence is not evidence that the server is down.
pub async fn confirm_stopped(ctl: &PgCtl, host: &str, port: u16, timeout: Duration) -> Result<String, ActionError> {
    let deadline = Instant::now() + timeout;
    let (status, tcp, socket) = tokio::join!(
        pg_ctl_status_finding(ctl, deadline),
        tcp_findings(host, port, deadline),
        socket_findings(&ctl.data_dir, Some(port), deadline),
    );
    let pg_ctl_sees_none = matches!(status, Finding::Refused(_));
    let findings: Vec<Finding> = std::iter::once(status).chain(tcp).chain(socket).collect();
    let answering = words_of(&findings, |finding| matches!(finding, Finding::Answers(_)));
    if !answering.is_empty() {
        // The one case pg_ctl cannot explain deserves a hint at where the server hides.
        let hint = if pg_ctl_sees_none {
            " (a postmaster pg_ctl status cannot see, e.g. in another PID namespace)"
        } else {
            ""
        };
        return Err(ActionError::Unexpected(format!(
            "the server in {} is not down: {}{hint}",
            ctl.data_dir.display(),
            answering.join("; ")
        )));
    }
    let unknown = words_of(&findings, |finding| matches!(finding, Finding::Unknown(_)));
    if !unknown.is_empty() {
        return Err(ActionError::Connect(format!(
            "could not confirm that the server in {} is down: {}",
            ctl.data_dir.display(),
            unknown.join("; ")
        )));
    }
    let evidence = words_of(&findings, |_| true).join("; ");
    tracing::info!(data_dir = %ctl.data_dir.display(), %evidence, "confirmed the server is down");
    Ok(evidence)
}

/// Starts a stopped server as it was (primary or replica, whatever its data directory
/// says), after a fence by stopping was lifted. Already running is fine.
pub async fn start_server(ctl: &PgCtl, timeout: Duration) -> Result<(), ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("starting the server in {}", ctl.data_dir.display());
    bounded(deadline, what, async {
        if server_running(ctl).await? {
            return Ok(());
        }
        start_until(ctl, deadline).await
    })
    .await
}

/// Starts a stopped primary fenced: `default_transaction_read_only` is set in its
/// `postgresql.auto.conf` first, so it refuses writes from its first moment until the
/// fence is lifted (`unfence`). For a primary that was stopped (its node died, its guard
/// stopped it) and that nothing could replace: its own node brings it back this way and
/// lifts the fence only once the cluster confirms its lease again. A server that already
/// runs is left alone.
pub async fn start_fenced(ctl: &PgCtl, timeout: Duration) -> Result<(), ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("starting the server in {} fenced", ctl.data_dir.display());
    bounded(deadline, what, async {
        if server_running(ctl).await? {
            return Ok(());
        }
        write_auto_conf(ctl, &fenced_auto_conf(&read_auto_conf(ctl)?))?;
        start_until(ctl, deadline).await
    })
    .await
}

/// Writes the read-only fence into a stopped server's `postgresql.auto.conf`, so that
/// whoever starts it again (an operator, a service manager) gets a server that refuses
/// writes until vigil lifts the fence. Refused while a server runs in the data directory.
pub async fn persist_fence(ctl: &PgCtl) -> Result<(), ActionError> {
    if server_running(ctl).await? {
        return Err(ActionError::Unexpected(format!(
            "a server runs in {}: its fence is set over SQL, not in its files",
            ctl.data_dir.display()
        )));
    }
    write_auto_conf(ctl, &fenced_auto_conf(&read_auto_conf(ctl)?))
}

/// Rewinds a stopped server's data directory onto `source`'s timeline with
/// `pg_rewind` (the server needs `wal_log_hints = on` or data checksums). A replica that
/// crashed first finishes its crash recovery as a standby; any other server that was not
/// shut down cleanly is recovered by `pg_rewind` itself. Returns pg_rewind's last
/// line of output ("no rewind required" or "Done!").
pub async fn rewind(ctl: &PgCtl, source: &ToolConnection, timeout: Duration) -> Result<String, ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("rewinding {}", ctl.data_dir.display());
    bounded(deadline, what, async {
        if server_running(ctl).await? {
            stop_until(ctl, deadline).await?;
        }
        // pg_rewind rewrites the data directory (and may recover it in single-user mode).
        refuse_if_hidden_server_answers(ctl, deadline, "rewinding").await?;
        let args = [
            os("--target-pgdata"),
            ctl.data_dir.clone().into(),
            os("--source-server"),
            os(&source.conninfo),
            os("--progress"),
        ];
        // pg_rewind copies every file that differs from the source, configuration included:
        // the member would come back with the source's port and settings. Keep its own.
        let kept: Vec<(PathBuf, Vec<u8>)> = KEPT_ACROSS_REWIND
            .iter()
            .map(|name| ctl.data_dir.join(name))
            .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
            .collect();
        let signal = ctl.data_dir.join("standby.signal");
        // A replica that crashed (killed, its host lost) must finish its crash recovery as a
        // standby. pg_rewind would recover it in single-user mode, as a primary: that ends
        // with a shutdown checkpoint written after its last WAL record, a record the primary
        // never had, on the same timeline, which pg_rewind then cannot see, and the replica
        // can never stream again ("incorrect prev-link"). So start it as the standby it is,
        // let it reach a consistent state, and stop it cleanly first.
        if signal.exists() && !cleanly_shut_down(&read_control_data(ctl).await?) {
            tracing::warn!(data_dir = %ctl.data_dir.display(), "a crashed replica: recovering it as a standby first");
            start_until(ctl, deadline).await?;
            stop_until(ctl, deadline).await?;
        }
        // pg_rewind recovers a server that was not shut down cleanly in single-user mode,
        // which refuses to run as a standby: the signal file goes now and comes back with
        // `start_as_replica`.
        if signal.exists() {
            std::fs::remove_file(&signal).map_err(|error| file_error("removing", &signal, &error))?;
        }
        let (mut command, description) = tool(ctl, "pg_rewind", &args);
        command.env("PGPASSWORD", &source.password);
        let output = output_of(command, &description).await;
        // Also after a failure: pg_rewind may have copied the source's configuration before
        // it gave up, and a later re-clone keeps whatever configuration it finds as the
        // member's own.
        for (path, bytes) in kept {
            std::fs::write(&path, bytes).map_err(|error| file_error("restoring", &path, &error))?;
        }
        let output = output?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(ActionError::Command { command: description, stderr: text.trim().to_string() });
        }
        let last = text.lines().map(str::trim).rfind(|line| !line.is_empty()).unwrap_or("").to_string();
        tracing::info!(data_dir = %ctl.data_dir.display(), outcome = %last, "pg_rewind finished");
        Ok(last)
    })
    .await
}

/// Replaces a stopped (or running, which is stopped first) server's data directory with a
/// fresh copy of the primary's, taken with `pg_basebackup` over `source` (the replication
/// role's connection, as in `primary_conninfo`). For when `pg_rewind` cannot
/// bring the member back: nothing is deleted, the old directory is renamed beside the new
/// one (`<data_dir>.vigil-replaced-<unix ms>`, reported) for the operator to inspect and
/// remove. The member's own configuration files are kept, as across a rewind. The copy is
/// left stopped; [`start_as_replica`] starts it.
///
/// The copy is made beside the data directory (`<data_dir>.vigil-clone-<unix ms>`) and only
/// swapped in once complete: a copy that fails or is cut short (the primary unreachable
/// half-way) leaves the data directory exactly as it was, so a later attempt never mistakes
/// a partial copy, with the primary's configuration in it, for the member's own.
pub async fn reclone(ctl: &PgCtl, source: &ToolConnection, timeout: Duration) -> Result<PathBuf, ActionError> {
    let deadline = Instant::now() + timeout;
    let what = format!("re-cloning {}", ctl.data_dir.display());
    bounded(deadline, what, async {
        if server_running(ctl).await? {
            stop_until(ctl, deadline).await?;
        }
        // Moving the data directory aside under a live server would not stop it.
        refuse_if_hidden_server_answers(ctl, deadline, "re-cloning").await?;
        remove_abandoned_clones(&ctl.data_dir);
        let kept: Vec<(String, Vec<u8>)> = KEPT_ACROSS_REWIND
            .iter()
            .filter_map(|name| std::fs::read(ctl.data_dir.join(name)).ok().map(|bytes| (name.to_string(), bytes)))
            .collect();
        let metadata =
            std::fs::metadata(&ctl.data_dir).map_err(|error| file_error("reading", &ctl.data_dir, &error))?;
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis());
        let beside = |suffix: &str| {
            let mut path = ctl.data_dir.clone().into_os_string();
            path.push(format!(".{suffix}-{stamp}"));
            PathBuf::from(path)
        };
        let (clone, aside) = (beside(CLONE_SUFFIX), beside("vigil-replaced"));
        // An empty directory with the data directory's owner and mode: the server's user
        // must own it.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&clone)
            .map_err(|error| file_error("creating", &clone, &error))?;
        std::os::unix::fs::chown(&clone, Some(metadata.uid()), Some(metadata.gid()))
            .map_err(|error| file_error("giving its owner back to", &clone, &error))?;
        let args = [
            os("--pgdata"),
            clone.clone().into(),
            os("--dbname"),
            os(&source.conninfo),
            os("--wal-method=stream"),
            os("--checkpoint=fast"),
            os("--no-password"),
        ];
        let (mut command, description) = tool(ctl, "pg_basebackup", &args);
        command.env("PGPASSWORD", &source.password);
        let output = output_of(command, &description).await?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&clone);
            return Err(ActionError::Command {
                command: description,
                stderr: format!(
                    "{} (the data directory is left as it was)",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        for (name, bytes) in kept {
            let path = clone.join(name);
            std::fs::write(&path, bytes).map_err(|error| file_error("restoring", &path, &error))?;
            std::os::unix::fs::chown(&path, Some(metadata.uid()), Some(metadata.gid()))
                .map_err(|error| file_error("giving its owner back to", &path, &error))?;
        }
        std::fs::rename(&ctl.data_dir, &aside).map_err(|error| file_error("moving aside", &ctl.data_dir, &error))?;
        std::fs::rename(&clone, &ctl.data_dir).map_err(|error| file_error("moving into place", &clone, &error))?;
        tracing::warn!(data_dir = %ctl.data_dir.display(), old = %aside.display(), "re-cloned with pg_basebackup");
        Ok(aside)
    })
    .await
}

/// The suffix of a copy in progress beside a data directory.
const CLONE_SUFFIX: &str = "vigil-clone";

/// Removes copies an earlier, interrupted [`reclone`] left beside `data_dir`: they are
/// vigil's own scratch space, never a server's data.
fn remove_abandoned_clones(data_dir: &Path) {
    let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else { return };
    let prefix = format!("{}.{CLONE_SUFFIX}-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(path = %entry.path().display(), "removing an interrupted re-clone");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Configuration files in the data directory that must survive `pg_rewind` unchanged.
const KEPT_ACROSS_REWIND: [&str; 4] = ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"];

/// The log `start_as_replica` starts the server with. It lives in the data directory
/// because that is the one place the server's user can always write.
const START_LOG: &str = "vigil-start.log";
/// How many lines of server log a failed start reports.
const LOG_TAIL_LINES: usize = 30;
/// Extra time the outer bound grants beyond the `-t` given to `pg_ctl`.
const COMMAND_SLACK: Duration = Duration::from_secs(2);

/// Stops the server if it runs, then checks `pg_controldata`; the body of [`stop_server`].
async fn stop_until(ctl: &PgCtl, deadline: Instant) -> Result<u64, ActionError> {
    if let Some(command_line) = &ctl.stop_command
        && server_running(ctl).await?
    {
        run_command_until(ctl, command_line, false, deadline).await?;
        tracing::info!(data_dir = %ctl.data_dir.display(), "stopped the server");
    }
    if server_running(ctl).await? {
        let stop = [
            os("stop"),
            os("-D"),
            ctl.data_dir.clone().into(),
            os("-m"),
            os("fast"),
            os("-w"),
            os("-t"),
            os(&wait_seconds(deadline).to_string()),
        ];
        if let Err(error) = run(ctl, "pg_ctl", &stop).await {
            // Stopped by someone else in the meantime is as good as stopped by us.
            if server_running(ctl).await? {
                return Err(error);
            }
        }
        tracing::info!(data_dir = %ctl.data_dir.display(), "stopped the server");
    }
    // Single-user recovery below, and whatever the caller does next with a "stopped" data
    // directory, must not run beside a postmaster pg_ctl could not see to stop.
    refuse_if_hidden_server_answers(ctl, deadline, "taking as stopped").await?;
    let mut control = read_control_data(ctl).await?;
    if !cleanly_shut_down(&control) && !ctl.data_dir.join("standby.signal").exists() {
        // Stopped, but not cleanly (it crashed, or was killed while shutting down): recover it
        // in single-user mode, which replays all its WAL and ends with a clean shutdown
        // checkpoint, so the position reported is where its WAL really ends.
        tracing::warn!(data_dir = %ctl.data_dir.display(), state = %control.state, "not shut down cleanly: recovering it");
        let args = [os("--single"), os("-D"), ctl.data_dir.clone().into(), os("template1")];
        run(ctl, "postgres", &args).await?;
        control = read_control_data(ctl).await?;
    }
    if !cleanly_shut_down(&control) {
        return Err(ActionError::Unexpected(format!(
            "{} is {:?} after stopping, not shut down",
            ctl.data_dir.display(),
            control.state
        )));
    }
    Ok(control.checkpoint_lsn)
}

fn cleanly_shut_down(control: &ControlData) -> bool {
    control.state == "shut down" || control.state == "shut down in recovery"
}

/// Whether `pg_ctl status` finds a running server (exit 0) or none (exit 3), answered from
/// the pid file when it shows the postmaster gone.
///
/// "Not running" here is what `pg_ctl` would say, no more: a postmaster in another PID
/// namespace, or one without its pid file, looks stopped to both. Nothing may take it as
/// proof that the server is down: releasing a lease must wait for [`confirm_stopped`], and
/// every action here that would put a second process on the data directory (a start,
/// single-user recovery, a rewind, a re-clone) first asks the pid file's socket
/// ([`refuse_if_hidden_server_answers`]).
async fn server_running(ctl: &PgCtl) -> Result<bool, ActionError> {
    // A dead postmaster is told at once from its pid file, without spawning anything: this
    // is on the path of every fence after a primary died. The shortcut is as blind as
    // `pg_ctl status` (which also looks the PID up in this namespace), never blinder, so a
    // wrong "gone" costs nothing `pg_ctl` would not have cost.
    if postmaster_is_gone(&ctl.data_dir) {
        return Ok(false);
    }
    pg_ctl_status(ctl).await
}

/// `pg_ctl status` itself: a running server (exit 0) or none (exit 3).
async fn pg_ctl_status(ctl: &PgCtl) -> Result<bool, ActionError> {
    let args = [os("status"), os("-D"), ctl.data_dir.clone().into()];
    let (command, description) = tool(ctl, "pg_ctl", &args);
    let output = output_of(command, &description).await?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(command_error(description, &output)),
    }
}

/// One piece of what [`confirm_stopped`] learned, in words.
enum Finding {
    /// Evidence that the server is down: a refusal, or nothing there to ask.
    Refused(String),
    /// Something still answers: the server is not down.
    Answers(String),
    /// No evidence either way: no answer in time, an unreachable address, a failed tool.
    Unknown(String),
}

/// The words of the findings `keep` selects, in order.
fn words_of(findings: &[Finding], keep: impl Fn(&Finding) -> bool) -> Vec<&str> {
    findings
        .iter()
        .filter(|finding| keep(finding))
        .map(|finding| match finding {
            Finding::Refused(words) | Finding::Answers(words) | Finding::Unknown(words) => words.as_str(),
        })
        .collect()
}

/// What `pg_ctl status` (never the pid-file shortcut) says about the data directory.
async fn pg_ctl_status_finding(ctl: &PgCtl, deadline: Instant) -> Finding {
    let data_dir = ctl.data_dir.display();
    match tokio::time::timeout_at(deadline, pg_ctl_status(ctl)).await {
        Ok(Ok(false)) => Finding::Refused(format!("pg_ctl status finds no server running in {data_dir}")),
        Ok(Ok(true)) => match zombie_postmaster(&ctl.data_dir) {
            Some(pid) => Finding::Refused(format!(
                "pg_ctl status still counts postmaster {pid} in {data_dir}, but it has exited (not yet reaped)"
            )),
            None => Finding::Answers(format!("pg_ctl status finds a server running in {data_dir}")),
        },
        Ok(Err(error)) => Finding::Unknown(format!("pg_ctl status could not tell: {error}")),
        Err(_) => Finding::Unknown(format!("pg_ctl status for {data_dir} did not finish in time")),
    }
}

/// Whether each address `host` resolves to refuses a TCP connection to `port`. Only
/// `ECONNREFUSED` is a refusal: a silent or unreachable address may hide a live server.
async fn tcp_findings(host: &str, port: u16, deadline: Instant) -> Vec<Finding> {
    let addresses: Vec<std::net::SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(error)) => return vec![Finding::Unknown(format!("could not resolve {host}: {error}"))],
            Err(_) => return vec![Finding::Unknown(format!("resolving {host} did not finish in time"))],
        };
    if addresses.is_empty() {
        return vec![Finding::Unknown(format!("{host} resolves to no address"))];
    }
    let mut findings = Vec::with_capacity(addresses.len());
    for address in addresses {
        let finding = match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_connection)) => Finding::Answers(format!("{address} still accepts connections")),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                Finding::Refused(format!("{address} refuses TCP connections"))
            }
            Ok(Err(error)) => {
                Finding::Unknown(format!("connecting to {address} failed, which proves nothing: {error}"))
            }
            Err(_) => Finding::Unknown(format!("{address} neither accepted nor refused a connection in time")),
        };
        findings.push(finding);
    }
    findings
}

/// Whether the Unix socket named in the data directory's `postmaster.pid` refuses
/// connections, for `port` and for the port the pid file names. A missing pid file, a pid
/// file naming no socket directory, or a missing socket file leaves nothing to ask.
async fn socket_findings(data_dir: &Path, port: Option<u16>, deadline: Instant) -> Vec<Finding> {
    let pid_path = data_dir.join("postmaster.pid");
    let text = match std::fs::read_to_string(&pid_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return vec![Finding::Refused(format!("no {}, so no socket to ask", pid_path.display()))];
        }
        Err(error) => return vec![Finding::Unknown(format!("could not read {}: {error}", pid_path.display()))],
    };
    let (pid_file_port, socket_dir) = pid_file_socket(&text, data_dir);
    let Some(socket_dir) = socket_dir else {
        return vec![Finding::Refused(format!("{} names no socket directory", pid_path.display()))];
    };
    let ports: std::collections::BTreeSet<u16> = port.into_iter().chain(pid_file_port).collect();
    if ports.is_empty() {
        return vec![Finding::Unknown(format!("{} names no port for its socket", pid_path.display()))];
    }
    let mut findings = Vec::with_capacity(ports.len());
    for port in ports {
        let socket = socket_dir.join(format!(".s.PGSQL.{port}"));
        let shown = socket.display();
        let finding = match tokio::time::timeout_at(deadline, tokio::net::UnixStream::connect(&socket)).await {
            Ok(Ok(_connection)) => Finding::Answers(format!("socket {shown} still accepts connections")),
            Ok(Err(error)) => match error.kind() {
                std::io::ErrorKind::NotFound => Finding::Refused(format!("no socket {shown}")),
                std::io::ErrorKind::ConnectionRefused => {
                    Finding::Refused(format!("socket {shown} refuses connections"))
                }
                // A Unix socket says "try again" only when a listener's backlog is full.
                std::io::ErrorKind::WouldBlock => {
                    Finding::Answers(format!("socket {shown} still accepts connections (its backlog is full)"))
                }
                _ => Finding::Unknown(format!("connecting to socket {shown} failed, which proves nothing: {error}")),
            },
            Err(_) => Finding::Unknown(format!("socket {shown} neither accepted nor refused a connection in time")),
        };
        findings.push(finding);
    }
    findings
}

/// The port (4th line) and Unix socket directory (5th line, relative to the data directory
/// if relative, as the server resolves it) of a `postmaster.pid`; either may be absent, the
/// directory when the server listens on no Unix socket.
fn pid_file_socket(text: &str, data_dir: &Path) -> (Option<u16>, Option<PathBuf>) {
    let mut lines = text.lines().skip(3);
    let port = lines.next().and_then(|line| line.trim().parse::<u16>().ok()).filter(|port| *port != 0);
    let socket_dir = lines.next().map(str::trim).filter(|dir| !dir.is_empty()).map(|dir| data_dir.join(dir));
    (port, socket_dir)
}

/// Fails if the socket named in the data directory's `postmaster.pid` still accepts
/// connections although `pg_ctl` found no server: a postmaster it cannot see (in another
/// PID namespace) runs there, and `doing` (starting a server, recovering, rewinding or
/// replacing the data directory) would put a second process on its files, or skip the stop
/// it needs. Anything short of an accepted connection lets the action go on as before,
/// with PostgreSQL's own lock files as the last guard.
async fn refuse_if_hidden_server_answers(ctl: &PgCtl, deadline: Instant, doing: &str) -> Result<(), ActionError> {
    let findings = socket_findings(&ctl.data_dir, None, deadline).await;
    let answering = words_of(&findings, |finding| matches!(finding, Finding::Answers(_)));
    if answering.is_empty() {
        return Ok(());
    }
    Err(ActionError::Unexpected(format!(
        "not {doing} {}: {}, though pg_ctl status finds no server there (a postmaster it cannot see, \
         e.g. in another PID namespace)",
        ctl.data_dir.display(),
        answering.join("; ")
    )))
}

/// Whether the data directory's postmaster is certainly not running: no `postmaster.pid`,
/// or its process gone or a zombie (killed, not yet reaped by its parent). "Certainly" as
/// far as this PID namespace can see: see [`server_running`].
fn postmaster_is_gone(data_dir: &Path) -> bool {
    let pid_file = match std::fs::read_to_string(data_dir.join("postmaster.pid")) {
        Ok(text) => text,
        Err(error) => return error.kind() == std::io::ErrorKind::NotFound && data_dir.is_dir(),
    };
    let Some(pid) = pid_file.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else {
        return false;
    };
    match process_state(pid) {
        Ok(Some(state)) => exited(&state),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// The pid of the data directory's postmaster when this PID namespace shows it exited but
/// not yet reaped (a zombie): `pg_ctl status` still counts it as running, yet it serves
/// nothing. A postmaster killed under a parent that reaps slowly (a container's init) stays
/// one for a while.
fn zombie_postmaster(data_dir: &Path) -> Option<u32> {
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid = pid_file.lines().next()?.trim().parse::<u32>().ok()?;
    process_state(pid).ok().flatten().filter(|state| exited(state)).map(|_| pid)
}

/// The state of process `pid` as /proc shows it (`R`, `S`, `Z`, ...); `None` when it has no
/// entry in this PID namespace.
fn process_state(pid: u32) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold anything.
        Ok(stat) => Ok(stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).map(String::from)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether a /proc state is that of a process that has exited.
fn exited(state: &str) -> bool {
    state == "Z" || state == "X"
}

/// Whether the running server is a standby of `primary_conninfo` already.
async fn already_replica_of(ctl: &PgCtl, primary_conninfo: &str) -> Result<bool, ActionError> {
    if !ctl.data_dir.join("standby.signal").exists() {
        return Ok(false);
    }
    let auto_conf = read_auto_conf(ctl)?;
    if conf_setting(&auto_conf, "primary_conninfo").as_deref() != Some(primary_conninfo) {
        return Ok(false);
    }
    Ok(read_control_data(ctl).await?.state == "in archive recovery")
}

/// The two lines of `pg_controldata` the actions need.
struct ControlData {
    state: String,
    checkpoint_lsn: u64,
}

async fn read_control_data(ctl: &PgCtl) -> Result<ControlData, ActionError> {
    let args = [os("-D"), ctl.data_dir.clone().into()];
    let stdout = run(ctl, "pg_controldata", &args).await?;
    parse_control_data(&stdout)
}

fn parse_control_data(text: &str) -> Result<ControlData, ActionError> {
    let field =
        |name: &str| text.lines().find_map(|line| line.strip_prefix(name)).map(|value| value.trim().to_string());
    let missing = |name: &str| ActionError::Unexpected(format!("pg_controldata printed no {name:?} line"));
    let state = field("Database cluster state:").ok_or_else(|| missing("Database cluster state:"))?;
    let location = field("Latest checkpoint location:").ok_or_else(|| missing("Latest checkpoint location:"))?;
    let checkpoint_lsn = PgLsn::from_str(&location).map_err(|_| {
        ActionError::Unexpected(format!("pg_controldata printed an invalid checkpoint location {location:?}"))
    })?;
    Ok(ControlData { state, checkpoint_lsn: checkpoint_lsn.into() })
}

fn write_standby_signal(ctl: &PgCtl) -> Result<(), ActionError> {
    let path = ctl.data_dir.join("standby.signal");
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|error| file_error("create", &path, &error))?;
    give_to_data_dir_owner(ctl, &path)
}

fn read_auto_conf(ctl: &PgCtl) -> Result<String, ActionError> {
    let path = ctl.data_dir.join("postgresql.auto.conf");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(file_error("read", &path, &error)),
    }
}

/// Rewrites `postgresql.auto.conf` through a temporary file and a rename, as
/// `ALTER SYSTEM` does, so a crash never leaves half a file.
fn write_replica_auto_conf(ctl: &PgCtl, primary_conninfo: &str) -> Result<(), ActionError> {
    write_auto_conf(ctl, &replica_auto_conf(&read_auto_conf(ctl)?, primary_conninfo))
}

/// Replaces `postgresql.auto.conf` with `text`, through a temporary file and a rename.
fn write_auto_conf(ctl: &PgCtl, text: &str) -> Result<(), ActionError> {
    let path = ctl.data_dir.join("postgresql.auto.conf");
    let temporary = ctl.data_dir.join("postgresql.auto.conf.vigil-tmp");
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|error| file_error("create", &temporary, &error))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|error| file_error("write", &temporary, &error))?;
    }
    give_to_data_dir_owner(ctl, &temporary)?;
    std::fs::rename(&temporary, &path).map_err(|error| file_error("replace", &path, &error))
}

/// Makes a file we created in the data directory belong to the directory's owner, so
/// the server (running as that user) can read and later rewrite it.
fn give_to_data_dir_owner(ctl: &PgCtl, path: &Path) -> Result<(), ActionError> {
    if !geteuid().is_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(&ctl.data_dir).map_err(|error| file_error("inspect", &ctl.data_dir, &error))?;
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
        .map_err(|error| file_error("chown", path, &error))
}

fn file_error(action: &str, path: &Path, error: &std::io::Error) -> ActionError {
    ActionError::Unexpected(format!("could not {action} {}: {error}", path.display()))
}

/// Bounds a host-local action by `deadline` plus a little slack, since each `pg_ctl`
/// call is already bounded by its own `-t` computed from the same deadline.
async fn bounded<T>(
    deadline: Instant,
    what: String,
    action: impl Future<Output = Result<T, ActionError>>,
) -> Result<T, ActionError> {
    tokio::time::timeout_at(deadline + COMMAND_SLACK, action).await.unwrap_or(Err(ActionError::Timeout(what)))
}

/// Whole seconds left until `deadline`, at least one, for `pg_ctl -t`.
/// Starts a stopped server with the member's start command, or `pg_ctl start -w` logging to
/// [`START_LOG`] (whose tail a failure reports), within `deadline`.
async fn start_until(ctl: &PgCtl, deadline: Instant) -> Result<(), ActionError> {
    refuse_if_hidden_server_answers(ctl, deadline, "starting a second server in").await?;
    if let Some(command_line) = &ctl.start_command {
        return run_command_until(ctl, command_line, true, deadline).await;
    }
    let log_file = ctl.data_dir.join(START_LOG);
    let start = [
        os("start"),
        os("-D"),
        ctl.data_dir.clone().into(),
        os("-w"),
        os("-t"),
        os(&wait_seconds(deadline).to_string()),
        os("-l"),
        log_file.clone().into(),
    ];
    match run(ctl, "pg_ctl", &start).await {
        Ok(_) => Ok(()),
        Err(ActionError::Command { command, stderr }) => Err(ActionError::Command {
            command,
            stderr: format!("{stderr}\nserver log tail:\n{}", log_tail(&log_file)),
        }),
        Err(other) => Err(other),
    }
}

fn wait_seconds(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    left.as_secs_f64().ceil().max(1.0) as u64
}

fn os(text: &str) -> OsString {
    OsString::from(text)
}

/// A PostgreSQL tool as a command, and a description of it for errors. Runs as
/// `ctl.run_as` through `runuser` when we are root; with `LC_ALL=C` so the output we
/// parse is never translated; from "/" because the tools refuse to start in a working
/// directory their user cannot read.
fn tool(ctl: &PgCtl, program: &str, args: &[OsString]) -> (Command, String) {
    let program_path = ctl.bin_dir.join(program);
    let mut words: Vec<OsString> = Vec::new();
    let mut command = match (&ctl.run_as, geteuid().is_root()) {
        (Some(user), true) => {
            words.extend(["runuser", "-u", user, "--", "env", "LC_ALL=C"].map(OsString::from));
            let mut command = Command::new("runuser");
            command.args(&words[1..]);
            command
        }
        _ => {
            let mut command = Command::new(&program_path);
            command.env("LC_ALL", "C");
            command
        }
    };
    if words.is_empty() {
        words.push(program_path.into());
    } else {
        command.arg(&program_path);
        words.push(program_path.into());
    }
    command.args(args);
    words.extend(args.iter().cloned());
    command.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let description = words.iter().map(|word| word.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
    (command, description)
}

/// Runs a tool; returns its standard output, or a `Command` error.
async fn run(ctl: &PgCtl, program: &str, args: &[OsString]) -> Result<String, ActionError> {
    let (command, description) = tool(ctl, program, args);
    let output = output_of(command, &description).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(command_error(description, &output))
    }
}

async fn output_of(mut command: Command, description: &str) -> Result<std::process::Output, ActionError> {
    let could_not_run = |error: std::io::Error| ActionError::Command {
        command: description.to_string(),
        stderr: format!("could not run it: {error}"),
    };
    // A group of its own, killed whole if the action is dropped (timed out, or the daemon
    // stops): killing `runuser` alone would leave the tool it started running, unsupervised.
    let child = command.process_group(0).spawn().map_err(could_not_run)?;
    let group = KillGroupOnDrop(child.id());
    let output = child.wait_with_output().await.map_err(could_not_run)?;
    std::mem::forget(group);
    Ok(output)
}

/// Kills a process group when dropped, unless forgotten once the process has exited.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn command_error(command: String, output: &std::process::Output) -> ActionError {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let said = if stderr.is_empty() { stdout } else { stderr };
    ActionError::Command { command, stderr: format!("{} ({})", said, output.status) }
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(no log at {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing pid file, or one naming a process that cannot exist, means no postmaster;
    /// one naming a live process (this test) is left to `pg_ctl status`.
    #[test]
    fn a_dead_postmaster_is_told_from_its_pid_file() {
        let dir = std::env::temp_dir().join(format!("vigil-pidfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(postmaster_is_gone(&dir), "no pid file");
        // Above the kernel's largest possible pid (4194304): no such process.
        std::fs::write(dir.join("postmaster.pid"), "4194305\n/data\n").unwrap();
        assert!(postmaster_is_gone(&dir), "a pid that cannot exist");
        std::fs::write(dir.join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).unwrap();
        assert!(!postmaster_is_gone(&dir), "a live process");
        std::fs::write(dir.join("postmaster.pid"), "garbage\n").unwrap();
        assert!(!postmaster_is_gone(&dir), "an unreadable pid is left to pg_ctl");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!postmaster_is_gone(&dir), "a missing data directory is left to pg_ctl");
    }

    /// A postmaster that exited but was not yet reaped (a zombie) is told apart from a live
    /// one, which `pg_ctl status` cannot do.
    #[test]
    fn an_exited_postmaster_not_yet_reaped_is_told_from_its_pid_file() {
        let dir = std::env::temp_dir().join(format!("vigil-zombie-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("true").spawn().expect("run true");
        let pid = child.id();
        // It exits at once; until this test waits for it, it stays a zombie.
        for _ in 0..1000 {
            if process_state(pid).unwrap().as_deref() == Some("Z") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(process_state(pid).unwrap().as_deref(), Some("Z"), "the child never became a zombie");
        std::fs::write(dir.join("postmaster.pid"), format!("{pid}\n/data\n")).unwrap();
        assert_eq!(zombie_postmaster(&dir), Some(pid));
        child.wait().unwrap();

        std::fs::write(dir.join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).unwrap();
        assert_eq!(zombie_postmaster(&dir), None, "a live process");
        std::fs::write(dir.join("postmaster.pid"), "4194305\n/data\n").unwrap();
        assert_eq!(zombie_postmaster(&dir), None, "no process at all is no zombie");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The 4th and 5th lines of `postmaster.pid` name the port and the socket directory;
    /// a server without Unix sockets writes an empty 5th line.
    #[test]
    fn the_pid_file_names_the_socket_to_ask() {
        let data_dir = Path::new("/pg/data");
        let pid_file = "4242\n/pg/data\n1700000000\n5433\n/run/pg\n127.0.0.1\n  5433001    0\nready   \n";
        assert_eq!(pid_file_socket(pid_file, data_dir), (Some(5433), Some(PathBuf::from("/run/pg"))));
        let relative = "4242\n/pg/data\n1700000000\n5433\nsockets\n";
        assert_eq!(pid_file_socket(relative, data_dir), (Some(5433), Some(PathBuf::from("/pg/data/sockets"))));
        let no_socket = "4242\n/pg/data\n1700000000\n5433\n\n127.0.0.1\n";
        assert_eq!(pid_file_socket(no_socket, data_dir), (Some(5433), None));
        // The socket directory is filled in once the first socket exists; until then the line
        // is empty. A truncated file names nothing.
        let starting = "4242\n/pg/data\n1700000000\n5433\n\n";
        assert_eq!(pid_file_socket(starting, data_dir), (Some(5433), None));
        assert_eq!(pid_file_socket("4242\n/pg/data\n", data_dir), (None, None));
    }

    const CONTROL_DATA: &str = "\
pg_control version number:            1300
Database cluster state:               shut down in recovery
pg_control last modified:             Thu 26 Nov 2026 01:02:03 PM UTC
Latest checkpoint location:           0/3000028
Latest checkpoint's REDO location:    0/3000028
";

    #[test]
    fn control_data_yields_state_and_checkpoint() {
        let control = parse_control_data(CONTROL_DATA).unwrap();
        assert_eq!(control.state, "shut down in recovery");
        assert_eq!(control.checkpoint_lsn, 0x3000028);
    }

    #[test]
    fn control_data_without_a_checkpoint_is_unexpected() {
        let error = parse_control_data("Database cluster state: shut down\n").err().unwrap();
        assert!(matches!(error, ActionError::Unexpected(ref m) if m.contains("Latest checkpoint")));
    }

    #[test]
    fn commands_run_as_the_owner_only_when_root() {
        let ctl = PgCtl::new("/pg/bin".into(), "/pg/data".into(), Some("postgres".into()));
        let (_, description) = tool(&ctl, "pg_ctl", &[os("status")]);
        if geteuid().is_root() {
            assert_eq!(description, "runuser -u postgres -- env LC_ALL=C /pg/bin/pg_ctl status");
        } else {
            assert_eq!(description, "/pg/bin/pg_ctl status");
        }
    }
}
