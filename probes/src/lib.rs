//! Health probes for the members vigil watches: PostgreSQL ([`PgProbe`]) and Redis
//! ([`RedisProbe`]).
//!
//! A probe checks one member once and returns within its timeout whatever the member
//! does; a failure is data ([`ProbeOutcome::Failed`], [`RedisOutcome::Failed`]), never a
//! panic or an `Err`. Each probe owns its one connection, so a hung member delays nobody
//! else's probe. A master or primary also gets a heartbeat write, which tells a member that
//! takes writes from one that only answers reads (read-only, too few replicas, or a Redis
//! master whose writes are paused).
//!
//! Invariants: this crate knows nothing of Raft or of the actions that follow a verdict
//! (`vigil-actions` depends on it for [`PgTarget`] and [`RedisTarget`], never the other way
//! round); it never logs a password, and no failure reason contains one; every LSN goes
//! through [`tokio_postgres::types::PgLsn`].

mod postgres;
mod postgres_tls;
mod redis;

pub use self::postgres::{
    PgConnection, PgObservation, PgProbe, PgTarget, ProbeOutcome, describe_error, session_options,
};
pub use self::postgres_tls::{PgTls, TlsMode};
pub use self::redis::{
    EPOCH_KEY, HEARTBEAT_KEY_PREFIX, RedisObservation, RedisOutcome, RedisProbe, RedisReplicaInfo, RedisTarget,
    RedisTls, describe_redis_error, is_server_error, parse_info,
};
