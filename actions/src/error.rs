//! The one error type of the actions: its variant tells the caller what went wrong, and
//! so whether retrying can help.

/// Why an action did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The member could not be reached or the connection broke; retrying may help.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The member answered with an error; retrying the same request rarely helps.
    #[error("sql failed: {0}")]
    Sql(String),
    /// A Redis member answered a command with an error (`READONLY`, `NOREPLICAS`, a
    /// refused script or configuration change); retrying the same request rarely helps.
    #[error("redis command failed: {0}")]
    Redis(String),
    /// A PostgreSQL tool (`pg_ctl`, `pg_controldata`) exited unsuccessfully.
    #[error("command `{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error (or output), trimmed, plus the server log tail on a failed start.
        stderr: String,
    },
    /// The action did not finish in the time it was given; its effect may still happen.
    #[error("timed out {0}")]
    Timeout(String),
    /// The member is not in a state the action can work from; retrying will not help
    /// until something else changes.
    #[error("unexpected state: {0}")]
    Unexpected(String),
}
