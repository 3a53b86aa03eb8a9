//! Failover actions vigil performs on members. PostgreSQL: promote a replica, record the
//! group's epoch on the new primary, re-point replicas, wait for replay, fence a primary
//! read-only, stop a server and restart it as a replica, rewind it (`pg_rewind`) or
//! re-clone it (`pg_basebackup`). Redis: promote a replica (`REPLICAOF NO ONE`), record the
//! epoch, re-point a replica, wait for it to follow its master or reach an offset, pause
//! and resume writes, require replicas for writes.
//!
//! Every action is idempotent: asking twice for what is already true succeeds without
//! doing it again (a promoted primary or master is never promoted twice). SQL actions take
//! a [`vigil_probes::PgTarget`] and Redis actions a [`vigil_probes::RedisTarget`], and open
//! one short-lived connection each; host-local actions take a [`PgCtl`] and run the
//! PostgreSQL tools, as the data directory's owner through `runuser` when vigil runs as
//! root. Each action is bounded in time and reports failure as an [`ActionError`] whose
//! variant says what kind of thing went wrong.
//!
//! Invariants: this crate knows nothing of Raft (the caller decides and carries the
//! epoch); it depends on `vigil-probes` only for the targets and their connection and
//! parsing helpers; every LSN is parsed and printed through
//! [`tokio_postgres::types::PgLsn`]; a stored epoch never goes down; no password is ever
//! logged. Not yet here: VIP and DNS moves, backups, notifications.

mod conninfo;
mod ctl;
mod error;
mod redis;
mod sql;
mod sync_setting;

pub use self::redis::{
    FENCE_CHECK_KEY, RedisMasterAuth, RedisPromoted, RedisRole, redis_pause_writes, redis_promote, redis_repoint,
    redis_role, redis_set_min_replicas, redis_unpause, redis_wait_for_offset, redis_wait_for_upstream,
    redis_write_epoch, redis_write_refusal, redis_write_settings,
};
pub use conninfo::{ToolConnection, more_words, primary_conninfo};
pub use ctl::{
    PgCtl, confirm_stopped, is_running, persist_fence, reclone, rewind, start_as_replica, start_fenced, start_server,
    stop_immediately, stop_server,
};
pub use error::ActionError;
pub use sql::{
    BornFenced, Promoted, checkpoint, fence_read_only, in_recovery, prepare_for_promotion, promote,
    promote_born_fenced, read_only_in_force, repoint, unfence, wait_for_replay, wait_for_upstream,
    wait_until_read_write, write_epoch,
};
pub use sync_setting::{
    GENERATION_PARAMETER, Generation, SynchronousState, require_all, set_synchronous_standby_names, synchronous_state,
};
