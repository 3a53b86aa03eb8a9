//! Exit codes of the `vigil` command, as documented in the README.

/// Success.
pub const OK: u8 = 0;
/// Any other failure.
pub const OTHER: u8 = 1;
/// Bad command-line usage (also what clap uses).
pub const USAGE: u8 = 2;
/// Invalid configuration or TLS files.
pub const CONFIG: u8 = 3;
/// The node could not be reached (down, wrong address, or TLS refused).
pub const UNREACHABLE: u8 = 4;
/// The cluster has no leader, so nothing can be written.
pub const NO_LEADER: u8 = 5;
/// The cluster refused the request (for example, the member already exists).
pub const REFUSED: u8 = 6;
/// `vigil run`: the node's stored state cannot be used: its Raft log or snapshot file does
/// not read at start (the message names the file), or storage failed while it ran and Raft
/// stopped. Not worth a blind restart loop: look at the disk and the file named.
pub const STORAGE: u8 = 7;

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The message, one line, lowercase.
    pub message: String,
}

impl Failure {
    /// A usage error.
    pub fn usage(message: String) -> Self {
        Self { code: USAGE, message }
    }
    /// A configuration error.
    pub fn config(message: String) -> Self {
        Self { code: CONFIG, message }
    }
    /// The node could not be reached.
    pub fn unreachable(message: String) -> Self {
        Self { code: UNREACHABLE, message }
    }
    /// There is no leader.
    pub fn no_leader(message: String) -> Self {
        Self { code: NO_LEADER, message }
    }
    /// The cluster refused.
    pub fn refused(message: String) -> Self {
        Self { code: REFUSED, message }
    }
    /// The node's storage cannot be used.
    pub fn storage(message: String) -> Self {
        Self { code: STORAGE, message }
    }
    /// Anything else.
    pub fn other(message: String) -> Self {
        Self { code: OTHER, message }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::other(format!("{error:#}"))
    }
}
