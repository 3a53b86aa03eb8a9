//! Raft consensus for vigil: the replicated cluster state, its persistent log and
//! snapshots, and the QUIC transport between nodes.
//!
//! What it is not: it knows nothing of PostgreSQL, Redis or any action; those crates
//! never depend on it, and it depends on none of them.
//!
//! Invariants:
//! - [`state::ClusterState`] changes only by applying committed entries, deterministically.
//! - A log entry is acknowledged to openraft only after it is durable on disk.
//! - A peer is identified by its certificate, never by what its messages claim.

pub mod allow;
pub mod authority;
pub mod cluster;
pub mod coordinator;
pub mod decision;
pub mod error;
pub mod group;
pub mod limits;
pub mod log_store;
pub mod node;
pub mod pki;
pub mod spec;
pub mod state;
pub mod state_machine;
pub mod tls;
pub mod transport;
pub mod types;

pub use cluster::{Cluster, Raft, SubmitError};
pub use state::{ClusterState, Command, CommandResponse, Event, EventKind};
pub use types::{NodeId, NodeInfo, TypeConfig};
