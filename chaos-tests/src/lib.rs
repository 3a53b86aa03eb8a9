//! Test harnesses for vigil and the chaos runs built on them: real servers and real
//! networks on this machine, started and torn down by tests.
//!
//! Harnesses: [`netns`], the lab — datacenters as network namespaces on a private bridge,
//! with knobs to cut a host's link, partition two hosts, lose packets, block a port and kill
//! everything a host runs; [`postgres`], a throwaway PostgreSQL 15 cluster (one primary,
//! streaming replicas); and [`redis`], a throwaway Redis cluster (one master, replicas).
//! Both clusters run either on 127.0.0.1 or spread over the hosts of a lab, and the probe
//! and action crates test against them.
//!
//! Chaos runs: [`lab`] puts a vigil node, a PostgreSQL and a Redis member in each of three
//! datacenters; [`schedule`] says which faults to inject and when (from a file or a seed);
//! [`workload`] writes and records every write; [`observe`] follows the cluster's status;
//! [`runner`] plays a schedule and applies the checkers of [`history`]; [`record`] and
//! [`report`] hold and render the outcome.
//!
//! Invariants: every API here is synchronous (a writer runs its own single-threaded
//! runtime on its own thread), so it works from `#[test]` and `#[tokio::test]` alike; they only ever signal processes they started
//! themselves (the postmasters named in their own `postmaster.pid` files, the
//! `redis-server` children they spawned, the children a lab spawned) or processes found
//! inside a lab's own namespaces; network traffic stays on loopback or inside those
//! namespaces, and the root namespace's interfaces, routes and firewall are never touched;
//! dropping a cluster or a lab stops everything it started and removes its directory,
//! nftables tables and namespaces.

mod error;
pub mod history;
pub mod lab;
pub mod netns;
pub mod observe;
pub mod postgres;
pub mod record;
pub mod redis;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod workload;

pub use error::HarnessError;
