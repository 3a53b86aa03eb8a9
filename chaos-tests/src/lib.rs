//! The chaos lab: datacenters as network namespaces on one machine, workload clients that
//! record every write, fault schedules, and checkers over the recorded histories.
//!
//! Empty so far: the lab arrives once vigil watches PostgreSQL and Redis groups. Until
//! then the process-level tests in `node/tests/` cover the Raft cluster on loopback.
