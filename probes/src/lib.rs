//! Health probes for the members vigil watches (PostgreSQL, Redis, TCP, HTTP, exec).
//!
//! Empty so far: the probes arrive with the group support. Each probe will check one
//! member once, return within its timeout, and report a failure as data (a `Verdict`),
//! not as an error. This crate will know nothing of Raft.
