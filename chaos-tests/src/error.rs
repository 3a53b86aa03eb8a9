//! The harness's error type: every variant names what failed and carries the evidence
//! (the command, its stderr, the server log tail) a test author needs to see why.

/// Why the harness could not set up, drive or inspect a test server.
///
/// Every variant is fatal for the test that hit it: the harness does not retry on its own
/// beyond the few places that say so.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file-system or process-spawning operation failed.
    #[error("could not {action}: {source}")]
    Io {
        /// What the harness was doing, e.g. "create the temporary directory".
        action: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A PostgreSQL tool exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, with secrets redacted.
        command: String,
        /// How it exited.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A server did not start; the log tail usually says why.
    #[error("could not start {instance} with `{command}`: {stderr}\nserver log tail:\n{log_tail}")]
    Start {
        /// The instance's name, e.g. "pg2".
        instance: String,
        /// The command line that failed.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// A condition the harness waits for did not come true in time.
    #[error("timed out waiting for {what}: {last_seen}\nserver log tail:\n{log_tail}")]
    Timeout {
        /// What the harness waited for.
        what: String,
        /// The last state or error it saw.
        last_seen: String,
        /// The last lines of the relevant server log.
        log_tail: String,
    },
    /// The caller asked for something the harness cannot do.
    #[error("invalid harness request: {0}")]
    Invalid(String),
    /// The system is not set up the way the harness needs (e.g. no `postgres` user).
    #[error("unusable environment: {0}")]
    Environment(String),
}
