//! Failover actions vigil performs on PostgreSQL members: promote a replica, record the
//! group's epoch on the new primary, re-point replicas, wait for replay, stop a server
//! and restart it as a replica.
//!
//! Every action is idempotent: asking twice for what is already true succeeds without
//! doing it again (a promoted primary is never promoted twice). SQL actions take a
//! [`vigil_probes::PgTarget`] and open one short-lived connection each; host-local actions
//! take a [`PgCtl`] and run the PostgreSQL tools, as the data directory's owner through
//! `runuser` when vigil runs as root. Each action is bounded in time and reports failure
//! as an [`ActionError`] whose variant says what kind of thing went wrong.
//!
//! Invariants: this crate knows nothing of Raft (the caller decides and carries the
//! epoch); it depends on `vigil-probes` only for `PgTarget`; every LSN is parsed and
//! printed through [`tokio_postgres::types::PgLsn`]; no password is ever logged.
//! Not yet here: fencing, VIP and DNS moves, pg_rewind, backups, notifications.

mod conninfo;
mod ctl;
mod error;
mod sql;

pub use conninfo::primary_conninfo;
pub use ctl::{PgCtl, is_running, rewind, start_as_replica, start_server, stop_immediately, stop_server};
pub use error::ActionError;
pub use sql::{
    Promoted, checkpoint, fence_read_only, promote, repoint, require_all, set_synchronous_standby_names,
    synchronous_state, unfence, wait_for_replay, wait_for_upstream, write_epoch,
};
