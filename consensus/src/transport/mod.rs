//! The Raft transport: QUIC (quinn) with mutual TLS between the nodes of one cluster.
//!
//! One connection per peer and direction, reused; one bidirectional stream per RPC; each
//! message a length-prefixed JSON frame.

pub mod client;
pub mod endpoint;
pub mod frame;
pub mod network;
pub mod rpc;
pub mod server;
pub mod signed;
