//! A deterministic simulation of a whole vigil cluster: real coordinators
//! (`vigil_consensus::coordinator`), the real decision and state machine, driven by a
//! simulated Raft, network, PostgreSQL and Redis servers and fence guards, under seeded fault
//! schedules, with checkers that judge every run.
//!
//! What it is not: it runs no openraft, no socket, no server and no thread of its own; Raft,
//! the network and the servers are models of what the coordinator can observe of them
//! ([`raft`], [`net`], [`servers`], [`actions`]). It is the third layer of the tests (see
//! STYLE.md): whole nodes in process, one invariant checked per step, a liveness phase at
//! the end, and the seed printed on failure.
//!
//! Invariants:
//! - A run is a function of its seed and [`Config`]: one thread, one seeded ChaCha8
//!   generator per concern, `BTreeMap`s, one queue ordered by (time, sequence number). True
//!   time is simulated microseconds; no node ever sees it, only its own clocks ([`clock`]).
//! - Every effect a coordinator returns gets exactly one outcome, unless its node crashed.
//! - The checkers ([`check`]) are pure functions, each shown to bite on a doctored history.
//!
//! Entry points: [`run`] plays one schedule; [`faults::Episode`] writes a schedule by hand;
//! the `vigil-sim` binary re-runs a seed (`vigil-sim run --seed N`) or soaks.

pub mod actions;
pub mod batch;
pub mod check;
pub mod clock;
pub mod cluster;
pub mod config;
mod effects;
pub mod faults;
pub mod guard;
mod inject;
pub mod net;
mod proposals;
pub mod raft;
pub mod report;
pub mod scenarios;
pub mod servers;
pub mod trace;
mod world;

pub use check::Violation;
pub use config::{Config, RunResult, Stats};
pub use world::run;
