//! Errors of the consensus crate, grouped by what the caller can do about them.

use std::path::{Path, PathBuf};

/// A storage failure. Storage errors are fatal for the Raft node: openraft stops, and the
/// daemon exits rather than run on with a log it cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the raft log at {path}: {source}")]
    Open {
        /// The file that failed.
        path: PathBuf,
        /// Why.
        source: Box<redb::DatabaseError>,
    },
    /// The database file cannot be read at start: corrupt (reading it failed or made the
    /// database library panic) or the disk failed.
    #[error("the raft log {path} cannot be read: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong reading it.
        reason: String,
    },
    /// A read or write of the database failed.
    #[error("raft log storage failed: {0}")]
    Database(String),
    /// A stored record did not decode.
    #[error("raft log holds a record that does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// A snapshot file does not decode.
    #[error("snapshot file {path} is corrupt: {source}")]
    SnapshotCorrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A snapshot file could not be read or written.
    #[error("snapshot file {path}: {source}")]
    SnapshotFile {
        /// The file that failed.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The blocking task that ran a write died.
    #[error("raft log writer task failed: {0}")]
    Background(String),
}

impl StoreError {
    pub(crate) fn open(path: &Path, source: redb::DatabaseError) -> Self {
        StoreError::Open { path: path.to_path_buf(), source: Box::new(source) }
    }

    pub(crate) fn snapshot_file(path: &Path, source: std::io::Error) -> Self {
        StoreError::SnapshotFile { path: path.to_path_buf(), source }
    }
}

macro_rules! database_errors {
    ($($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Database(error.to_string())
            }
        })*
    };
}

database_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<StoreError> for std::io::Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::SnapshotFile { source, path } => {
                std::io::Error::new(source.kind(), format!("snapshot file {}: {source}", path.display()))
            }
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// A failure of the QUIC transport or of a peer's answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS material could not be loaded or is unusable.
    #[error("{0}")]
    Tls(String),
    /// The local endpoint could not be bound.
    #[error("cannot bind the raft endpoint on {addr}: {source}")]
    Bind {
        /// The address that failed.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The peer could not be reached or the connection broke; retry later.
    #[error("node {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: u64,
        /// Why, in words.
        reason: String,
    },
    /// A message is larger than a frame may be: sending it again will not help.
    #[error(
        "a message to node {peer} of {bytes} bytes is over the frame limit of {limit} bytes and will never get \
         through (is the replicated state too large?)",
        limit = crate::transport::frame::MAX_FRAME_BYTES
    )]
    TooLarge {
        /// The peer.
        peer: u64,
        /// The message's size.
        bytes: usize,
    },
    /// The peer answered with something that is not a valid frame or message.
    #[error("node {peer} sent a bad message: {reason}")]
    Protocol {
        /// The peer.
        peer: u64,
        /// Why, in words.
        reason: String,
    },
    /// The peer answered, but refused or failed the request.
    #[error("node {peer} refused the request: {reason}")]
    Remote {
        /// The peer.
        peer: u64,
        /// Its reason.
        reason: String,
    },
}
