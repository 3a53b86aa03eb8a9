//! Test harnesses for vigil: real servers on this machine, started and torn down by tests.
//!
//! Today it holds one harness, [`postgres`]: a throwaway PostgreSQL 15 cluster (one
//! primary, streaming replicas) on 127.0.0.1 in a temporary directory, which the probe and
//! action crates test against. The chaos lab (datacenters as network namespaces, workload
//! clients that record every write, fault schedules, checkers over the recorded histories)
//! arrives once vigil watches PostgreSQL and Redis groups.
//!
//! Invariants: the harness is synchronous and uses only std and the OS, so it works from
//! `#[test]` and `#[tokio::test]` alike; it only ever signals processes it started itself
//! (the postmasters named in its own `postmaster.pid` files); dropping a cluster stops
//! every server it started and removes its directory.

mod error;
pub mod postgres;

pub use error::HarnessError;
