//! Health probes for the members vigil watches. Today: PostgreSQL ([`PgProbe`]).
//!
//! A probe checks one member once and returns within its timeout whatever the member
//! does; a failure is data ([`ProbeOutcome::Failed`]), never a panic or an `Err`. Each
//! probe owns its one connection, so a hung member delays nobody else's probe.
//!
//! Invariants: this crate knows nothing of Raft or of the actions that follow a verdict
//! (`vigil-actions` depends on it for [`PgTarget`], never the other way round); it never
//! logs a password; every LSN goes through [`tokio_postgres::types::PgLsn`].

mod postgres;

pub use postgres::{PgObservation, PgProbe, PgTarget, ProbeOutcome, describe_error, session_options};
